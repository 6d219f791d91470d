"""Stage 5, train --method dro (Direct Reward Optimisation, Richemond et al. 2024).

The loss first, with no language model: optimised on a tabular bandit from uniformly logged answers it
must reach the closed form pi* = pi_ref exp(r/tau) / Z and V* = tau log Z, and its gradients must be the
DRO-V steps. Then on a tiny random Llama (tests/tiny.py): answers with a high reward gain likelihood over
the base and those with a low reward lose it, the value head is saved beside the adapter, a run killed
after a checkpoint resumes to the same adapter and value head, and bad input stops before training.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from sqlalchemy import Engine
from transformers import TrainerCallback

from ratingloop.errors import RatingloopError
from ratingloop.loop import train_from_store
from ratingloop.models import generate, load_for_generation
from ratingloop.models.registry import get_run, list_runs, list_versions
from ratingloop.train import TrainConfig, resume, train
from ratingloop.train.dro import dro_loss
from ratingloop.train.pointwise import completion_logps
from train_support import pairs_folder, rows_of, store

FAST = TrainConfig(lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=2e-2, max_steps=6, batch_size=4,
                   max_length=96, logging_steps=1, save_steps=0, value_learning_rate=1e-2)



@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny tensors: thread hand-offs would cost more than the arithmetic on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- the loss, on a bandit --------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [0.1, 0.5, 2.0])
def test_dro_loss_reaches_the_closed_form_on_a_bandit(tau: float, one_thread: None) -> None:
    """Two prompts, four answers each, a skewed reference, answers logged by a uniform behaviour policy."""
    gen = torch.Generator().manual_seed(0)
    prompts, answers, n = 2, 4, 256
    ref_logits = torch.randn(prompts, answers, generator=gen) * 1.5
    log_ref = ref_logits.log_softmax(-1)
    reward = torch.rand(prompts, answers, generator=gen) * 2 - 1
    x = torch.randint(0, prompts, (n,), generator=gen)
    y = torch.randint(0, answers, (n,), generator=gen)  # uniform logging, not the reference

    logits = ref_logits.clone().requires_grad_(True)  # the policy starts at the reference
    value = torch.zeros(prompts, requires_grad=True)
    opt = torch.optim.Adam([logits, value], lr=0.1)
    steps = 1000
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    for _ in range(steps):
        out = dro_loss(logits.log_softmax(-1)[x, y], log_ref[x, y], value[x], reward[x, y], tau)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        schedule.step()

    z = (log_ref.exp() * (reward / tau).exp()).sum(-1)
    pi_star = log_ref.exp() * (reward / tau).exp() / z[:, None]
    torch.testing.assert_close(logits.detach().softmax(-1), pi_star, atol=1e-5, rtol=0)
    torch.testing.assert_close(value.detach(), tau * z.log(), atol=1e-5, rtol=0)
    assert float(out.objective) < 1e-10
    assert not torch.allclose(pi_star, log_ref.exp(), atol=1e-2)  # the answer is not the starting point


def test_dro_loss_reports_l_and_steps_on_dro_v_gradients() -> None:
    """Its value is L = 1/2 mean (r - V - tau log pi/pi_ref)^2; the policy steps on dL/dlog pi / tau with V held,
    the value on dL/dV with the log-ratio held."""
    gen = torch.Generator().manual_seed(1)
    tau = 0.3
    logps = torch.randn(5, generator=gen).requires_grad_(True)
    ref = torch.randn(5, generator=gen)
    values = torch.randn(5, generator=gen).requires_grad_(True)
    rewards = torch.rand(5, generator=gen) * 2 - 1

    out = dro_loss(logps, ref, values, rewards, tau)
    want = 0.5 * (rewards - values - tau * (logps - ref)).pow(2).mean()
    assert float(out.loss.detach()) == pytest.approx(float(want.detach())) == pytest.approx(float(out.objective))
    got_logps, got_values = torch.autograd.grad(out.loss, [logps, values])
    want_logps, want_values = torch.autograd.grad(want, [logps, values])
    torch.testing.assert_close(got_logps, want_logps / tau)
    torch.testing.assert_close(got_values, want_values)


# --- a real run ------------------------------------------------------------------------------------------
def test_dro_moves_answers_by_reward_saves_the_value_head_and_registers(engine: Engine, tiny_base: Path,
                                                                       tmp_path: Path) -> None:
    from safetensors.torch import load_file

    data = pairs_folder(tmp_path / "pairs", "score", good=0.9, bad=-0.9)
    out = tmp_path / "run"
    result = train(engine, "dro", out_dir=out, data_dir=data, base=tiny_base, cfg=FAST, progress=False)

    m = result.metrics
    assert m["steps"] == FAST.max_steps and math.isfinite(m["train_loss"]) and m["beta"] == FAST.beta
    assert all(math.isfinite(m[k]) for k in ("dro/value", "dro/log_ratio", "dro/reward"))
    logged = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    first = next(x for x in logged if x.get("step") == 1 and "loss" in x)
    assert first["dro/log_ratio"] == pytest.approx(0.0, abs=1e-5)  # the policy starts as the reference
    assert first["dro/value"] == pytest.approx(0.0, abs=1e-5)  # the head starts at the mean reward, here 0

    # log pi(y|x) - log pi_ref(y|x): up for the high-reward answers, down for the low-reward ones
    rows = rows_of(data)
    model, tok = load_for_generation(str(out), dtype="fp32", device="cpu")
    base, _ = load_for_generation(str(tiny_base), dtype="fp32", device="cpu")
    ratio = [a - b for a, b in zip(completion_logps(model, tok, rows), completion_logps(base, tok, rows), strict=True)]
    high = [d for d, r in zip(ratio, rows, strict=True) if r["score"] > 0]
    low = [d for d, r in zip(ratio, rows, strict=True) if r["score"] < 0]
    assert min(high) > 0 > max(low), (high, low)

    # the value head sits beside the adapter, moved from its start; the adapter holds LoRA weights only
    head = load_file(str(out / "value_head.safetensors"))
    assert head["weight"].shape == (1, model.config.hidden_size) and float(head["weight"].abs().sum()) > 0
    assert all("lora_" in k for k in load_file(str(out / "adapter_model.safetensors")))
    answers = generate((model, tok), [{"id": 1, "messages": [{"role": "user", "content": "Refund?"}]}],
                       max_tokens=4, progress=False)
    assert [a["id"] for a in answers] == [1]

    [run] = list_runs(engine)
    assert (run.method, run.status) == ("dro", "succeeded") and run.metrics["dro/value"] == m["dro/value"]
    [version] = list_versions(engine)
    assert (version.status, version.training_run_id) == ("candidate", run.id)


class Crash(TrainerCallback):  # type: ignore[misc]
    """Kills the run once the trainer has written the checkpoint at `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            raise RuntimeError(f"killed after the checkpoint at step {self.step}")


def test_dro_resumes_to_the_same_adapter_and_value_head(engine: Engine, tiny_base: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    data = pairs_folder(tmp_path / "pairs", "score", good=0.8, bad=-0.6)
    cfg = replace(FAST, max_steps=4, save_steps=2, batch_size=2)
    whole = train(engine, "dro", out_dir=tmp_path / "whole", data_dir=data, base=tiny_base, cfg=cfg,
                  progress=False)

    out = tmp_path / "killed"
    with pytest.raises(RuntimeError, match="killed after the checkpoint"):
        train(engine, "dro", out_dir=out, data_dir=data, base=tiny_base, cfg=cfg, progress=False,
              callbacks=[Crash(2)])
    assert (out / "checkpoints" / "checkpoint-2" / "value_head.safetensors").is_file()
    [killed] = [r for r in list_runs(engine) if r.id != whole.run_id]
    resumed = resume(engine, killed.id, progress=False)
    assert get_run(engine, resumed.run_id).status == "succeeded" and resumed.metrics["steps"] == 4

    for name in ("adapter_model.safetensors", "value_head.safetensors"):
        want, got = load_file(str(whole.out_dir / name)), load_file(str(out / name))
        assert want.keys() == got.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")


def test_full_fine_tuning_keeps_the_value_head_out_of_the_model(engine: Engine, tiny_base: Path,
                                                                tmp_path: Path) -> None:
    """Built from the store; every weight trains against a frozen copy, and model.safetensors stays a plain LM."""
    from safetensors.torch import load_file

    out = tmp_path / "full"
    cfg = replace(FAST, lora=False, learning_rate=1e-3, max_steps=2, bf16=False)  # fp32: log-ratio 0 at step 1
    train_from_store(engine, "dro", out_dir=out, base=tiny_base, cfg=cfg, progress=False)
    assert not any(k.startswith("value_head") for k in load_file(str(out / "model.safetensors")))
    assert set(load_file(str(out / "value_head.safetensors"))) == {"weight", "bias"}
    logged = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert next(x for x in logged if x.get("step") == 1)["dro/log_ratio"] == pytest.approx(0.0, abs=1e-5)
    load_for_generation(str(out), dtype="fp32", device="cpu")  # loads as a model of its own


# --- bad input --------------------------------------------------------------------------------------------
def test_constant_rewards_stop_before_training(engine: Engine, tiny_base: Path, tmp_path: Path) -> None:
    data = pairs_folder(tmp_path / "flat", "score", good=0.5, bad=0.5)
    with pytest.raises(RatingloopError, match=r"every one of the 8 train rows has the score \+0.5000.*tell answers"):
        train(engine, "dro", out_dir=tmp_path / "run", data_dir=data, base=tiny_base, cfg=FAST, progress=False)
    [run] = list_runs(engine)
    assert run.status == "failed" and list_versions(engine) == []


def test_an_empty_store_stops_before_training(tiny_base: Path, tmp_path: Path) -> None:
    empty = store(tmp_path, [])
    with pytest.raises(RatingloopError, match=r"--method dro: cannot build its dataset.*no ratings.*ratingloop import"):
        train_from_store(empty, "dro", out_dir=tmp_path / "run", base=tiny_base, cfg=FAST, progress=False)
    assert list_runs(empty) == [] and list_versions(empty) == []  # signals failed: nothing was trained


def test_dro_needs_a_positive_tau(engine: Engine, tiny_base: Path, tmp_path: Path) -> None:
    from ratingloop.errors import ConfigError

    data = pairs_folder(tmp_path / "pairs", "score", good=0.9, bad=-0.9)
    with pytest.raises(ConfigError, match=r"train.beta=0.0: DRO's tau must be > 0"):
        train(engine, "dro", out_dir=tmp_path / "run", data_dir=data, base=tiny_base, cfg=replace(FAST, beta=0.0),
              progress=False)
