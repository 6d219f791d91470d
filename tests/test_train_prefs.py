"""Stage 5, train --method kto and --method dpo, on a tiny random Llama saved to disk as the base (tests/tiny.py).

The example store (examples/support-chat.jsonl) is imported per test; `train` builds the method's set
from it, trains a LoRA adapter for a few steps against the adapter-disabled base as reference, and
registers the run and a candidate version. A store without preference pairs stops DPO before training.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Engine

from ratingloop.dataset import BuildConfig, build_dataset
from ratingloop.errors import RatingloopError
from ratingloop.loop import train_from_store
from ratingloop.models import generate, load_for_generation
from ratingloop.models.registry import list_runs, list_versions
from ratingloop.signals import record_signals
from ratingloop.train import METHODS, TrainConfig, train
from train_support import EXAMPLE, sha256, store

FAST = TrainConfig(lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=2e-2, max_steps=4, batch_size=4,
                   max_length=128, logging_steps=1)



def test_methods_include_kto_and_dpo() -> None:
    assert {"sft", "kto", "dpo"} <= set(METHODS)


@pytest.mark.parametrize("method", ["kto", "dpo"])
def test_trains_saves_and_registers_a_candidate(method: str, engine: Engine, tiny_base: Path,
                                                tmp_path: Path) -> None:
    from safetensors.torch import load_file

    base_hash = sha256(tiny_base / "model.safetensors")
    out = tmp_path / "run"
    result = train_from_store(engine, method, out_dir=out, base=tiny_base, cfg=FAST, progress=False)

    # a few steps, a finite loss, and the method's own figures recorded
    m = result.metrics
    assert m["steps"] == FAST.max_steps and math.isfinite(m["train_loss"])
    assert math.isfinite(m["first_loss"]) and math.isfinite(m["last_loss"])
    assert any(k.startswith("rewards/") for k in m), m
    assert m["eval_rows"] > 0 and "eval_loss" in m  # the eval split's pass after training (the default)
    if method == "kto":  # the builder's class-balance weights, from the manifest
        weights = json.loads((out / "data" / "manifest.json").read_text())["kto"]
        assert (m["desirable_weight"], m["undesirable_weight"]) == (
            pytest.approx(weights["desirable_weight"]), pytest.approx(weights["undesirable_weight"]))
        assert weights["desirable_weight"] != weights["undesirable_weight"]  # the example store is unbalanced

    # LoRA weights only, moved from their init (B starts at zero); the base folder is untouched
    weights_ = load_file(str(out / "adapter_model.safetensors"))
    assert weights_ and all("lora_" in k for k in weights_)
    assert any(float(v.abs().sum()) > 0 for k, v in weights_.items() if "lora_B" in k)
    assert sha256(tiny_base / "model.safetensors") == base_hash
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_base.resolve())

    # it reloads as a model reference and generates
    model, tok = load_for_generation(str(out), dtype="fp32", device="cpu")
    answers = generate((model, tok), [{"id": 1, "messages": [{"role": "user", "content": "Refund?"}]}],
                       max_tokens=4, progress=False)
    assert [a["id"] for a in answers] == [1] and isinstance(answers[0]["response"], str)

    # the registry: a succeeded run of this method and its candidate, both naming the dataset snapshot
    [run] = list_runs(engine)
    assert (run.id, run.method, run.status, run.error) == (result.run_id, method, "succeeded", None)
    assert run.dataset_snapshot_id == result.dataset_snapshot_id is not None
    [version] = list_versions(engine)
    assert (version.id, version.status, version.training_run_id) == (result.version_id, "candidate", run.id)
    assert version.dataset_snapshot_id == run.dataset_snapshot_id
    assert version.adapter_path == str(out.resolve())

    # run.json and log.jsonl
    doc = json.loads((out / "run.json").read_text())
    assert doc["method"] == method and doc["version_id"] == version.id
    logged = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert sum("loss" in x for x in logged) >= FAST.max_steps


def no_pairs_lines() -> list[bytes]:
    """One answer per prompt and no corrections: nothing DPO can pair."""
    seen, out = set(), []
    for raw in EXAMPLE.read_bytes().splitlines():
        if not raw.strip():
            continue
        x = json.loads(raw)
        key = json.dumps(x["messages"])
        if key in seen:
            continue
        seen.add(key)
        x["ratings"] = [r for r in x["ratings"] if r.get("kind") != "correction"]
        out.append(json.dumps(x).encode())
    return out


def test_dpo_without_pairs_stops_before_training(tiny_base: Path, tmp_path: Path) -> None:
    engine = store(tmp_path, no_pairs_lines())
    with pytest.raises(RatingloopError, match=r"--method dpo.*0 pairs.*two answers to one prompt") as e:
        train_from_store(engine, "dpo", out_dir=tmp_path / "run", base=tiny_base, cfg=FAST, progress=False)
    assert "corrections" in str(e.value) and "--method kto" in str(e.value)  # how to get pairs, or what else to run
    assert list_runs(engine) == [] and list_versions(engine) == []  # the build failed: nothing was trained
    assert not (tmp_path / "run" / "adapter_config.json").exists()


def test_dpo_data_dir_with_the_wrong_format_is_named(engine: Engine, tiny_base: Path, tmp_path: Path) -> None:
    build_dataset(engine, "kto", tmp_path / "kto", BuildConfig(), record_signals(engine))
    with pytest.raises(RatingloopError, match=r"'kto' dataset, but --method dpo needs 'dpo'"):
        train(engine, "dpo", out_dir=tmp_path / "run", data_dir=tmp_path / "kto", base=tiny_base, cfg=FAST,
              progress=False)
    assert list_versions(engine) == []


def test_the_eval_pass_after_training_can_be_left_to_the_gate(engine: Engine, tiny_base: Path, tmp_path: Path) -> None:
    """train.eval_after_training=false (the loop's setting for policies): the same run, no eval-split pass."""
    result = train_from_store(engine, "kto", out_dir=tmp_path / "run", base=tiny_base,
                              cfg=replace(FAST, eval_after_training=False), progress=False)
    assert result.metrics["eval_rows"] > 0
    assert not [k for k in result.metrics if k.startswith("eval_") and k != "eval_rows"], result.metrics


def test_a_run_shows_one_bar_with_steps_loss_and_tokens_per_second(engine: Engine, tiny_base: Path, tmp_path: Path,
                                                                   capfd: pytest.CaptureFixture[str]) -> None:
    """Issue 14: rich's bar in place of transformers' tqdm - the steps, the latest loss, tokens/s, an ETA."""
    train_from_store(engine, "kto", out_dir=tmp_path / "run", base=tiny_base, cfg=FAST, progress=True)
    said = capfd.readouterr()
    bar = [line for line in said.err.splitlines() if "training kto" in line]
    assert bar, said.err
    assert f"{FAST.max_steps}/{FAST.max_steps}" in bar[-1] and re.search(r"loss \d+\.\d{4}", bar[-1]), bar
    assert re.search(r"\d+ tokens/s", bar[-1]), bar
    # no tqdm bar for the steps beside it (loading the base draws transformers' own, which the CLI turns off)
    steps_bars = [x for x in said.err.replace("\r", "\n").splitlines() if ("it/s" in x or "s/it" in x)
                  and "Loading weights" not in x]
    assert not steps_bars, steps_bars
    assert "{'loss'" not in said.out + said.err  # no log dicts printed
