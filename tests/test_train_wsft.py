"""Stage 5, train --method wsft (rating-weighted SFT), on a tiny random Llama saved to disk as the base (tests/tiny.py).

The loss itself is checked on numbers (SFT where every weight is 1, a push-down that fades as the answer
falls below the base, scale-free in the weights); then a LoRA run on prompts that each have a good and a
bad answer must raise the good answers' likelihood and lower the bad ones', save an adapter that reloads
and generates, and register a candidate. Full fine-tuning keeps a frozen copy of the base as reference.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from sqlalchemy import Engine

from ratingloop.errors import RatingloopError
from ratingloop.loop import train_from_store
from ratingloop.models import generate, load_for_generation
from ratingloop.models.registry import list_runs, list_versions
from ratingloop.train import TrainConfig, train
from ratingloop.train.pointwise import completion_logps
from ratingloop.train.wsft import wsft_loss
from train_support import pairs_folder, rows_of

FAST = TrainConfig(lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=2e-2, max_steps=6, batch_size=4,
                   max_length=96, logging_steps=1, save_steps=0)


# --- the loss, on numbers -------------------------------------------------------------------------------
def test_all_weights_one_is_sft() -> None:
    mean_logps = torch.tensor([-2.0, -1.0, -0.5])
    loss = wsft_loss(mean_logps, torch.zeros(3), torch.ones(3), margin=0.5, weight_scale=1.0)
    assert float(loss) == pytest.approx(float(-mean_logps.mean()))
    # the same weights at any scale, normalised by their mean |w|, give the same loss
    half = wsft_loss(mean_logps, torch.zeros(3), torch.full((3,), 0.5), margin=0.5, weight_scale=0.5)
    assert float(half) == pytest.approx(float(loss))
    # while a batch weaker than the data's typical weight steps less
    weak = wsft_loss(mean_logps, torch.zeros(3), torch.full((3,), 0.25), margin=0.5, weight_scale=0.5)
    assert float(weak) == pytest.approx(float(loss) / 2)


@pytest.mark.parametrize("below, slope", [(0.0, 1.0), (0.5, 2 / (1 + math.e)), (1.5, 2 / (1 + math.e ** 3))])
def test_the_push_down_is_sft_reversed_and_fades_below_the_base(below: float, slope: float) -> None:
    """For a bad answer (weight -1) the loss falls as its log-likelihood falls: at the base's likelihood as fast
    as SFT's rises, at one margin (0.5 nats/token) below at 54% of that, at three margins at 10%."""
    ref = torch.tensor([-1.0])
    mean_logps = (ref - below).requires_grad_(True)
    loss = wsft_loss(mean_logps, ref, torch.tensor([-1.0]), margin=0.5, weight_scale=1.0)
    (grad,) = torch.autograd.grad(loss, mean_logps)
    assert float(grad) == pytest.approx(slope, rel=1e-5)
    assert float(loss.detach()) > 0


def test_the_push_down_is_bounded_below() -> None:
    ref = torch.zeros(4)
    mean_logps = torch.tensor([0.0, -5.0, -50.0, -500.0])
    per_row = [float(wsft_loss(mean_logps[i:i + 1], ref[i:i + 1], torch.tensor([-1.0]), 0.5, 1.0)) for i in range(4)]
    assert per_row == sorted(per_row, reverse=True) and all(x >= 0 for x in per_row)
    assert per_row[-1] < 1e-100  # pushing a dead answer further gains nothing: no incentive to diverge


# --- a real run ------------------------------------------------------------------------------------------
def test_wsft_raises_good_answers_lowers_bad_ones_and_registers(engine: Engine, tiny_base: Path,
                                                               tmp_path: Path) -> None:
    data = pairs_folder(tmp_path / "pairs", "weight", good=0.9, bad=-0.9)
    out = tmp_path / "run"
    result = train(engine, "wsft", out_dir=out, data_dir=data, base=tiny_base, cfg=FAST, progress=False)

    m = result.metrics
    assert m["steps"] == FAST.max_steps and math.isfinite(m["train_loss"]) and math.isfinite(m["last_loss"])
    assert math.isfinite(m["wsft/nll"]) and m["wsft/log_ratio"] < 0 and m["wsft_margin"] == FAST.wsft_margin

    # summed over each answer's tokens: the good ones more likely than under the base, the bad ones less
    rows = rows_of(data)
    model, tok = load_for_generation(str(out), dtype="fp32", device="cpu")
    base, _ = load_for_generation(str(tiny_base), dtype="fp32", device="cpu")
    moved = [a - b for a, b in zip(completion_logps(model, tok, rows), completion_logps(base, tok, rows), strict=True)]
    good = [d for d, r in zip(moved, rows, strict=True) if r["weight"] > 0]
    bad = [d for d, r in zip(moved, rows, strict=True) if r["weight"] < 0]
    assert min(good) > 0 > max(bad), (good, bad)

    answers = generate((model, tok), [{"id": 1, "messages": [{"role": "user", "content": "Refund?"}]}],
                       max_tokens=4, progress=False)
    assert [a["id"] for a in answers] == [1] and isinstance(answers[0]["response"], str)

    [run] = list_runs(engine)
    assert (run.id, run.method, run.status) == (result.run_id, "wsft", "succeeded")
    assert run.metrics["wsft/log_ratio"] == m["wsft/log_ratio"]
    [version] = list_versions(engine)
    assert (version.status, version.training_run_id, version.adapter_path) == ("candidate", run.id,
                                                                               str(out.resolve()))


def test_full_fine_tuning_pushes_against_a_frozen_copy(engine: Engine, tiny_base: Path, tmp_path: Path) -> None:
    """Built from the store, every weight trains; the reference is the base as it was (log-ratio 0 at step 1)."""
    out = tmp_path / "full"
    cfg = replace(FAST, lora=False, learning_rate=1e-3, max_steps=2, bf16=False)  # fp32: log-ratio 0 at step 1
    result = train_from_store(engine, "wsft", out_dir=out, base=tiny_base, cfg=cfg, progress=False)
    assert (out / "config.json").is_file() and not (out / "adapter_config.json").exists()
    logged = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    first = next(x for x in logged if x.get("step") == 1 and "loss" in x)
    assert first["wsft/log_ratio"] == pytest.approx(0.0, abs=1e-5)  # the example's first batch has bad answers
    assert math.isfinite(result.metrics["last_loss"])


# --- bad input --------------------------------------------------------------------------------------------
def test_all_zero_weights_stop_before_training(engine: Engine, tiny_base: Path, tmp_path: Path) -> None:
    data = pairs_folder(tmp_path / "zeros", "weight", good=0.0, bad=0.0)
    with pytest.raises(RatingloopError, match=r"all 8 train rows have weight 0.*collect more ratings"):
        train(engine, "wsft", out_dir=tmp_path / "run", data_dir=data, base=tiny_base, cfg=FAST, progress=False)
    [run] = list_runs(engine)
    assert run.status == "failed" and "weight 0" in (run.error or "")
    assert list_versions(engine) == [] and not (tmp_path / "run" / "adapter_config.json").exists()
