"""loop.train_from_store: signals -> build -> train through the store, as `ratingloop train` without --data and
every loop round run it. Real SQLite, the example store, a tiny random base (tests/train_support.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from ratingloop.errors import RatingloopError
from ratingloop.loop import train_from_store
from ratingloop.models.registry import get_version, list_runs
from ratingloop.signals import load_signals
from ratingloop.store import tables as t
from ratingloop.train import TrainConfig, dataset_format

FAST = TrainConfig(lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=2e-2, max_steps=2, batch_size=4,
                   max_length=128, logging_steps=1)


def test_one_signals_run_feeds_the_build_that_feeds_the_run(engine: Engine, tiny_base: Path, tmp_path: Path) -> None:
    out = tmp_path / "kto"
    result = train_from_store(engine, "kto", out_dir=out, base=tiny_base, cfg=FAST, round_id="round-1",
                              progress=False)
    signals = load_signals(engine)  # the run it recorded, the newest
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert manifest["format"] == dataset_format("kto") == "kto" and manifest["signals_run_id"] == signals.run_id
    counted = {rid for ids in signals.counted.values() for rid in ids}
    assert manifest["rating_ids"] and set(manifest["rating_ids"]) <= counted
    with engine.connect() as conn:
        snapshot = conn.execute(select(t.DatasetSnapshot.__table__)).one()
        assert conn.execute(select(func.count()).select_from(t.signals_runs)).scalar_one() == 1
    assert snapshot.id == result.dataset_snapshot_id and snapshot.signals_run_id == signals.run_id
    [run] = list_runs(engine)
    assert run.round_id == "round-1" and run.status == "succeeded" and run.dataset_snapshot_id == snapshot.id
    assert get_version(engine, result.version_id).training_run_id == run.id


def test_a_folder_holding_a_model_is_refused_before_anything_is_recorded(engine: Engine, tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "adapter_config.json").write_text("{}")
    with pytest.raises(RatingloopError, match="already holds a model"):
        train_from_store(engine, "sft", out_dir=out, cfg=FAST, progress=False)
    with pytest.raises(RatingloopError, match="choose one of sft, wsft, kto"):
        train_from_store(engine, "ppo", out_dir=tmp_path / "other", cfg=FAST, progress=False)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.signals_runs)).scalar_one() == 0
    assert list_runs(engine) == [] and not (out / "data").exists()
