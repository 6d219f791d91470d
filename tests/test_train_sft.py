"""Stage 5, train --method sft, on a tiny random Llama saved to disk as the base (tests/tiny.py).

The example store (examples/support-chat.jsonl) is imported per test; `train` builds its sft set,
trains a LoRA adapter for a few steps and registers the run and a candidate version.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from ratingloop.dataset import BuildConfig, build_dataset
from ratingloop.errors import RatingloopError
from ratingloop.loop import train_from_store
from ratingloop.models import ModelLoadError, generate, load_for_generation
from ratingloop.models.registry import list_runs, list_versions
from ratingloop.signals import record_signals
from ratingloop.train import TrainConfig, train
from train_support import EXAMPLE, sha256

# a few quick steps at a rate a hidden-32 model notices; the defaults are for the real model
FAST = TrainConfig(lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=2e-2, max_steps=6, batch_size=4,
                   max_length=128, logging_steps=1)



def test_sft_trains_saves_and_registers_a_candidate(engine: Engine, tiny_base: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    base_hash = sha256(tiny_base / "model.safetensors")
    out = tmp_path / "run"
    result = train_from_store(engine, "sft", out_dir=out, base=tiny_base, cfg=FAST, progress=False)

    # the loss is finite, recorded, and falls over the steps
    m = result.metrics
    assert m["steps"] == FAST.max_steps and math.isfinite(m["train_loss"])
    assert m["last_loss"] < m["first_loss"], m

    # the adapter holds LoRA weights only, and they moved from their init (B starts at zero);
    # the base folder is untouched
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert weights and all("lora_" in k for k in weights)
    assert any(float(v.abs().sum()) > 0 for k, v in weights.items() if "lora_B" in k)
    assert sha256(tiny_base / "model.safetensors") == base_hash
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_base.resolve())

    # it reloads as a model reference and generates, and differs from the base
    model, tok = load_for_generation(str(out), dtype="fp32", device="cpu")
    base_model, _ = load_for_generation(str(tiny_base), dtype="fp32", device="cpu")
    merged = dict(model.named_parameters())
    assert any(not p.equal(merged[n]) for n, p in base_model.named_parameters() if n in merged)
    answers = generate((model, tok), [{"id": 1, "messages": [{"role": "user", "content": "Refund?"}]}],
                       max_tokens=4, progress=False)
    assert [a["id"] for a in answers] == [1] and isinstance(answers[0]["response"], str)

    # the registry: a succeeded run and its candidate, both naming the dataset snapshot
    [run] = list_runs(engine)
    assert run.id == result.run_id and run.status == "succeeded" and run.finished_at is not None
    assert run.dataset_snapshot_id == result.dataset_snapshot_id is not None
    assert run.config["lora_r"] == 4 and run.metrics["steps"] == FAST.max_steps and run.error is None
    [version] = list_versions(engine)
    assert (version.id, version.status, version.training_run_id) == (result.version_id, "candidate", run.id)
    assert version.dataset_snapshot_id == run.dataset_snapshot_id
    assert version.adapter_path == str(out.resolve()) and version.base_model == str(tiny_base.resolve())

    # run.json reproduces it
    doc = json.loads((out / "run.json").read_text())
    assert doc["seed"] == FAST.seed and doc["config"]["max_steps"] == FAST.max_steps
    assert doc["version_id"] == version.id and "trl" in doc["packages"]
    assert (out / "data" / "train").is_dir()  # built from the store, without --data


def assert_failed_without_version(engine: Engine) -> str:
    [run] = list_runs(engine)
    assert run.status == "failed" and run.error and run.finished_at is not None
    assert list_versions(engine) == []
    return run.error


def test_empty_data_dir_stops_before_training(engine: Engine, tiny_base: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(RatingloopError, match=r"no train split.*ratingloop build --format sft"):
        train(engine, "sft", out_dir=tmp_path / "run", data_dir=tmp_path / "empty", base=tiny_base, cfg=FAST,
              progress=False)
    assert "no train split" in assert_failed_without_version(engine)
    assert not (tmp_path / "run" / "adapter_config.json").exists()


def test_wrong_format_data_dir_is_named(engine: Engine, tiny_base: Path, tmp_path: Path) -> None:
    build_dataset(engine, "kto", tmp_path / "kto", BuildConfig(), record_signals(engine))
    with pytest.raises(RatingloopError, match=r"'kto' dataset, but --method sft needs 'sft'"):
        train(engine, "sft", out_dir=tmp_path / "run", data_dir=tmp_path / "kto", base=tiny_base, cfg=FAST,
              progress=False)
    assert_failed_without_version(engine)


def test_base_that_cannot_load_stops_before_training(engine: Engine, tmp_path: Path) -> None:
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(ModelLoadError, match="neither config.json"):
        train_from_store(engine, "sft", out_dir=tmp_path / "run", base=tmp_path / "not-a-model", cfg=FAST,
                         progress=False)
    assert "neither config.json" in assert_failed_without_version(engine)


def test_config_problems_are_all_named() -> None:
    from ratingloop.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        TrainConfig(lora_r=0, learning_rate=-1.0, max_steps=0).validate()
    assert all(key in str(e.value) for key in ("train.lora_r", "train.learning_rate", "train.max_steps"))


def test_existing_adapter_folder_is_not_overwritten(engine: Engine, tiny_base: Path, tmp_path: Path) -> None:
    out: Any = tmp_path / "run"
    out.mkdir()
    (out / "adapter_config.json").write_text("{}")
    with pytest.raises(RatingloopError, match="already holds a model"):
        train_from_store(engine, "sft", out_dir=out, base=tiny_base, cfg=FAST, progress=False)
    assert list_runs(engine) == []


def test_cli_train_then_versions_list(tiny_base: Path, tmp_path: Path) -> None:
    """`ratingloop train` and `ratingloop versions list` as a user types them, on the tiny base."""
    from typer.testing import CliRunner

    from ratingloop.cli import app

    runner = CliRunner()
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    assert runner.invoke(app, ["import", str(EXAMPLE), "--db", db]).exit_code == 0
    out = tmp_path / "adapter"
    args = ["train", "--method", "sft", "--base", str(tiny_base), "--out", str(out), "--db", db,
            "--set", "train.max_steps=2", "--set", "train.batch_size=4", "--set", "train.max_length=128"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "adapter_config.json").is_file()
    listed = runner.invoke(app, ["versions", "list", "--json", "--db", db])
    assert listed.exit_code == 0, listed.output
    versions = json.loads(listed.stdout)
    assert [v["status"] for v in versions] == ["candidate"]
    assert versions[0]["adapter_path"] == str(out) and versions[0]["dataset_snapshot_id"]
    # without --data the chain's other stages take their settings too: [build] and [signals], file or --set
    (tmp_path / "chain.toml").write_text("[build]\nsft_min_reward = -1.0\n")
    chained = runner.invoke(app, [*args[:6], str(tmp_path / "chained"), *args[7:], "--config",
                                  str(tmp_path / "chain.toml"), "--set", "build.z=0", "--set", "signals.min_ratings=3"])
    assert chained.exit_code == 0, chained.output
    manifest = json.loads((tmp_path / "chained" / "data" / "manifest.json").read_text())
    default = json.loads((out / "data" / "manifest.json").read_text())
    assert manifest["config"]["sft_min_reward"] == -1.0 and manifest["config"]["z"] == 0.0
    assert manifest["rows"]["train"] > default["rows"]["train"]  # a looser build keeps more answers
    with_data = runner.invoke(app, ["train", "--method", "sft", "--data", str(out / "data"), "--out",
                                    str(tmp_path / "w"), "--db", db, "--set", "build.z=0"])
    assert with_data.exit_code == 2 and "built already" in with_data.output
    bad = runner.invoke(app, ["train", "--method", "sft", "--out", str(tmp_path / "x"), "--db", db,
                              "--set", "train.lora_rank=4"])
    assert bad.exit_code != 0 and "train.lora_rank: unknown key" in str(bad.exception)
    no_out = runner.invoke(app, ["train", "--method", "sft", "--db", db])
    assert no_out.exit_code == 2 and "--out" in no_out.output
    mixed = runner.invoke(app, ["train", "--resume", "01ABC", "--out", str(tmp_path / "y"), "--db", db])
    assert mixed.exit_code == 2 and "give it alone" in mixed.output
    unknown = runner.invoke(app, ["train", "--method", "ppo", "--out", str(tmp_path / "z"), "--db", db])
    assert unknown.exit_code != 0 and "choose one of sft, wsft, kto, dro, dpo, reward, grpo" in str(unknown.exception)
