"""On a CPU, training projects the LM head only where the loss reads (train.common.project_answer_positions_only).

TRL's fused LM head gathers the labelled positions before the 49k-column projection only where Triton runs; on a
CPU it projected every position, prompt and padding included - about 40% of a KTO step on the default model.
The patch must change how much is computed, not what: the same log-probabilities, entropies and gradients.
"""

from __future__ import annotations

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
