"""On a CPU, training projects the LM head only where the loss reads (train.common.project_answer_positions_only),
and folds each tile of logits in fewer passes (train.lm_head.fold_tiles_lean).

TRL's fused LM head gathers the labelled positions before the 49k-column projection only where Triton runs; on a
CPU it projected every position, prompt and padding included - about 40% of a KTO step on the default model.
Its CPU tile folds then made ~12 passes over each tile. Both patches must change how much is computed, not what:
the same log-probabilities, entropies, top-1 flags and gradients.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

from tiny import tiny_causal_lm, tiny_tokenizer


def batch(tok: Any) -> dict[str, torch.Tensor]:
    """Two left-padded (prompt, answer) rows whose prompt tokens carry no label, as TRL's collators build them."""
    rows = [("Where is my refund?", "It was sent today and reaches your card within five days."),
            ("Hi", "Hello! How can I help?")]
    ids = [(tok(p)["input_ids"], tok(a)["input_ids"]) for p, a in rows]
    width = max(len(p) + len(a) for p, a in ids)
    input_ids, attention, labels = [], [], []
    for p, a in ids:
        pad = width - len(p) - len(a)
        input_ids.append([tok.pad_token_id] * pad + p + a)
        attention.append([0] * pad + [1] * (len(p) + len(a)))
        labels.append([-100] * (pad + len(p)) + a)
    return {"input_ids": torch.tensor(input_ids), "attention_mask": torch.tensor(attention),
            "labels": torch.tensor(labels)}


def scored(model: Any, inputs: dict[str, torch.Tensor]) -> tuple[Any, list[torch.Tensor]]:
    """The fused head's outputs and every weight's gradient of their sum."""
    model.zero_grad()
    out = model(**inputs, fused_lm_head=True)
    (out.log_probs.sum() + out.entropy.sum()).backward()
    return out, [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_the_cpu_lm_head_projects_only_labelled_positions_and_computes_the_same(monkeypatch: pytest.MonkeyPatch
                                                                                ) -> None:
    import trl.kernels.chunked_logprob as kernels
    import trl.trainer.utils as trl_utils
    from trl.trainer.utils import add_fused_lm_head

    from ratingloop.train.common import project_answer_positions_only

    tok = tiny_tokenizer(["Where is my refund? It was sent today and reaches your card within five days.",
                          "Hi Hello! How can I help?"])
    model = tiny_causal_lm(tok)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits"))  # as KTOTrainer asks for them
    inputs = batch(tok)
    labelled = int((inputs["labels"][:, 1:] != -100).sum())
    assert labelled < inputs["labels"][:, 1:].numel() * 0.8  # prompt and padding are a real share of the batch

    rows: list[int] = []
    apply = trl_utils._ChunkedLogProbFunction.apply

    def spy(hidden: torch.Tensor, *args: Any) -> Any:
        rows.append(hidden.shape[0])
        return apply(hidden, *args)

    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", spy)
    monkeypatch.setattr(trl_utils, "_use_triton", kernels._use_triton)  # TRL as installed: no Triton on a CPU
    before, grads_before = scored(model, inputs)
    assert rows == [inputs["labels"][:, 1:].numel()]  # every position projected

    project_answer_positions_only()
    project_answer_positions_only()  # idempotent: wrapping twice would still be correct, but is not done
    assert trl_utils._use_triton.ratingloop_cpu and trl_utils._use_triton is not kernels._use_triton
    after, grads_after = scored(model, inputs)
    assert rows[1] == labelled  # only the answer positions

    mask = before.label_mask
    assert torch.equal(mask, after.label_mask)
    for name in ("log_probs", "entropy", "mean_logits"):
        a, b = getattr(before, name), getattr(after, name)
        assert torch.allclose(a[mask], b[mask], atol=1e-5), name
        assert torch.all(b[~mask] == 0), name  # unlabelled positions are zeros, as TRL fills them
    assert torch.allclose(before.loss, after.loss, atol=1e-6)
    assert len(grads_before) == len(grads_after) > 0
    for g0, g1 in zip(grads_before, grads_after, strict=True):
        assert torch.allclose(g0, g1, atol=1e-5, rtol=1e-4)


# --- the lean tile folds -----------------------------------------------------------------------------------------
def trls_folds(monkeypatch: pytest.MonkeyPatch) -> None:
    """TRL's own CPU folds in place for this test (an earlier training test in this process may have put the lean
    ones there), restored after it."""
    import trl.kernels.chunked_logprob as kernels

    for name in ("_forward_tile", "_backward_tile"):
        fold = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, getattr(fold, "original", fold))
    assert not getattr(kernels._forward_tile, "ratingloop_lean", False)


def chunked(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, outputs: tuple[str, ...],
            temperature: float = 1.0, entropy_grad: bool = False) -> tuple[list[Any], torch.Tensor]:
    """ChunkedLogProbFunction's outputs over 64-column tiles (so a 300-token vocabulary takes five) under bf16
    autocast, as training runs it, and the hidden states' gradient of the log-probabilities' sum."""
    from trl.kernels import ChunkedLogProbFunction

    h = hidden.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ChunkedLogProbFunction.apply(h, weight, None, targets, temperature, 64, None, 1.0, outputs)
    loss = out[0].sum() + (out[1].sum() if entropy_grad else 0)
    loss.backward()
    assert h.grad is not None
    return [None if x is None else x.detach() for x in out], h.grad


@pytest.mark.parametrize("outputs", [("log_probs",), ("log_probs", "entropy", "is_top1"),
                                     ("log_probs", "entropy", "mean_logits"), ("log_probs", "log_sum_sq_probs")])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_the_lean_folds_compute_what_trls_folds_do(monkeypatch: pytest.MonkeyPatch, outputs: tuple[str, ...],
                                                   temperature: float) -> None:
    import trl.kernels.chunked_logprob as kernels

    from ratingloop.train import lm_head

    torch.manual_seed(0)
    n, width, vocab = 40, 16, 300
    weight = torch.randn(vocab, width).bfloat16()
    hidden = torch.randn(n, width).bfloat16()
    targets = torch.randint(0, vocab, (n,))
    # ties for the top-1 flag: some targets share their logit with the top token, before or after it in the
    # vocabulary (argmax takes the first), some are the single top token, in every tile
    logits = hidden.float() @ weight.float().t()
    top = logits.argmax(-1)
    for i in range(0, n, 4):
        targets[i] = top[i]  # the top token itself
    for i in range(1, n, 4):
        twin = (int(top[i]) + 97) % vocab
        weight[twin] = weight[top[i]]  # an exact twin of row i's top token
        targets[i] = twin
    trls_folds(monkeypatch)
    trls, trl_grad = chunked(hidden, weight, targets, outputs, temperature)

    lm_head.fold_tiles_lean()
    lm_head.fold_tiles_lean()  # idempotent
    assert kernels._forward_tile.ratingloop_lean and kernels._backward_tile.ratingloop_lean
    ours, our_grad = chunked(hidden, weight, targets, outputs, temperature)

    for name, a, b in zip(("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1"), trls, ours,
                          strict=True):
        assert (a is None) == (b is None), name
        if a is None:
            continue
        if name == "is_top1":
            assert torch.equal(a, b)
            assert 0 < int(a.sum()) < n  # both kinds of row are there, and the twins after the top count as not top-1
        else:
            assert torch.allclose(a, b, atol=2e-5, rtol=1e-5), (name, (a - b).abs().max())
    assert torch.allclose(trl_grad.float(), our_grad.float(), atol=1e-2, rtol=1e-2)  # both rounded to bf16
    assert float((trl_grad.float() - our_grad.float()).abs().max()) <= float(trl_grad.float().abs().max()) * 1e-2


def test_an_entropy_gradient_goes_to_trls_fold(monkeypatch: pytest.MonkeyPatch) -> None:

    from ratingloop.train import lm_head

    torch.manual_seed(1)
    weight, hidden = torch.randn(300, 16).bfloat16(), torch.randn(24, 16).bfloat16()
    targets = torch.randint(0, 300, (24,))
    trls_folds(monkeypatch)
    _, trl_grad = chunked(hidden, weight, targets, ("log_probs", "entropy"), entropy_grad=True)
    lm_head.fold_tiles_lean()
    _, our_grad = chunked(hidden, weight, targets, ("log_probs", "entropy"), entropy_grad=True)
    assert torch.equal(trl_grad, our_grad)


@pytest.mark.parametrize("method", ["dpo", "kto", "sft"])
def test_a_run_with_the_lean_folds_trains_the_adapter_trls_folds_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                    method: str) -> None:
    """A few steps of a recipe, once with TRL's folds and once with the lean ones: the same adapter after."""
    import trl.kernels.chunked_logprob as kernels
    from datasets import Dataset

    from ratingloop.train import common, lm_head
    from ratingloop.train.config import TrainConfig
    from ratingloop.train.data import TrainData
    from ratingloop.train.run import recipe

    words = "refund card order today week help thanks sorry please wait account parcel".split()
    rng = random.Random(0)

    def say(k: int) -> str:
        return " ".join(rng.choices(words, k=k))

    rows = []
    for _ in range(16):
        prompt = [{"role": "user", "content": say(rng.randint(2, 6))}]
        good, bad = say(rng.randint(2, 30)), say(rng.randint(2, 30))
        rows.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": good}],
                     "rejected": [{"role": "assistant", "content": bad}]} if method == "dpo" else
                    {"prompt": prompt, "completion": [{"role": "assistant", "content": good}],
                     **({"label": rng.random() < 0.5} if method == "kto" else {})})
    tok = tiny_tokenizer(words)
    cfg = TrainConfig.for_method(method, lora_r=4, lora_alpha=8, max_steps=3, batch_size=4, max_length=128,
                                 learning_rate=1e-2, save_steps=0, eval_after_training=False)
    adapters = []
    for run in ("trl", "lean"):
        trls_folds(monkeypatch)
        monkeypatch.setattr(common, "fold_tiles_lean", (lambda: None) if run == "trl" else lm_head.fold_tiles_lean)
        model = tiny_causal_lm(tok)
        data = TrainData(Dataset.from_list(rows), None, None, {}, tmp_path / run)
        trainer = recipe(method).make_trainer(model, tok, data, cfg, tmp_path / run, False)
        assert bool(getattr(kernels._forward_tile, "ratingloop_lean", False)) == (run == "lean")
        trainer.train()
        adapters.append({k: v.detach().float().clone() for k, v in trainer.model.named_parameters()
                         if v.requires_grad})
    trl_run, lean_run = adapters
    assert trl_run.keys() == lean_run.keys() and trl_run
    moved = max(float(v.abs().max()) for k, v in trl_run.items() if "lora_B" in k)
    assert moved > 1e-3  # the adapter did train
    for k in trl_run:
        assert torch.allclose(trl_run[k], lean_run[k], atol=moved * 1e-3), k
