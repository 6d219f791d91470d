"""Stage 4, dataset (`ratingloop build`): a built dataset to disk and to the store.

Writes, under the output folder:
    train/, eval/            `datasets.Dataset.save_to_disk` (load with `datasets.load_from_disk`)
    train.jsonl, eval.jsonl  the same rows, one JSON object a line (what the content hash covers)
    manifest.json            format, counts, filters and what each removed, hash, config, rating ids
and records one `dataset_snapshots` row (SQLAlchemy Core) whose manifest is the same document and
which names the signals run it was built from, so `ratingloop train` and the registry can say which
ratings trained a version. A snapshot is not recorded when a user was deleted after the build began
reading the store: their data may be in its rows (the caller removes the files; see purge.py).
"""

from __future__ import annotations

import hashlib
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import orjson
from sqlalchemy import Engine, func, insert, select

from ratingloop.dataset.rows import Row
from ratingloop.errors import RatingloopError
from ratingloop.store import lock_against_deletions
from ratingloop.store import tables as t
from ratingloop.store.db import write_transaction

SPLITS = ("train", "eval")


def jsonl_bytes(rows: Sequence[Row]) -> bytes:
    return b"".join(orjson.dumps(r.data) + b"\n" for r in rows)


def content_hash(train: Sequence[Row], eval_: Sequence[Row]) -> str:
    """sha256 over both JSONL files: equal hashes mean equal training data, whatever the folder."""
    return hashlib.sha256(jsonl_bytes(train) + b"\0" + jsonl_bytes(eval_)).hexdigest()


def write_splits(out_dir: Path, train: Sequence[Row], eval_: Sequence[Row]) -> None:
    from datasets import Dataset  # heavy (pyarrow, pandas): only when a build writes
    from datasets.utils import logging as datasets_logging

    was_on = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()  # a "Saving the dataset" bar per split; the build has its own status
    try:
        _save_splits(out_dir, train, eval_, Dataset)
    finally:
        if was_on:
            datasets_logging.enable_progress_bar()


def _save_splits(out_dir: Path, train: Sequence[Row], eval_: Sequence[Row], Dataset: Any) -> None:

    out_dir.mkdir(parents=True, exist_ok=True)
    train_ds = Dataset.from_list([r.data for r in train])
    # an empty eval split still carries train's columns, so a loader can concatenate or map it
    eval_ds = (Dataset.from_list([r.data for r in eval_], features=train_ds.features) if eval_ else
               Dataset.from_dict({name: [] for name in train_ds.features}, features=train_ds.features))
    for name, ds, rows in (("train", train_ds, train), ("eval", eval_ds, eval_)):
        target = out_dir / name
        if target.exists():
            shutil.rmtree(target)  # a rebuild into the same folder replaces the split, never mixes
        ds.save_to_disk(str(target))
        (out_dir / f"{name}.jsonl").write_bytes(jsonl_bytes(rows))


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    (out_dir / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")


def remove_build_files(out_dir: Path) -> None:
    """What `write_splits` and `write_manifest` wrote, and nothing else of the folder."""
    for name in SPLITS:
        shutil.rmtree(out_dir / name, ignore_errors=True)
        (out_dir / f"{name}.jsonl").unlink(missing_ok=True)
    (out_dir / "manifest.json").unlink(missing_ok=True)


def record_snapshot(engine: Engine, snapshot_id: str, created_at: datetime, out_dir: Path,
                    manifest: dict[str, Any], signals_run_id: str | None = None, *,
                    read_since: datetime | None = None) -> None:
    """Record the snapshot row; RatingloopError, recording nothing, when a user was deleted at or after
    `read_since` (when the build began reading the store)."""
    table = t.DatasetSnapshot.__table__
    with write_transaction(engine) as conn:
        lock_against_deletions(conn)
        deleted = t.deleted_users.c.deleted_at
        if read_since is not None and conn.execute(select(func.count()).where(deleted >= read_since)).scalar_one():
            raise RatingloopError("a user was deleted while this build ran, so their data may be in its rows; "
                                  "nothing was recorded: run the build again")
        conn.execute(insert(table).values(  # type: ignore[arg-type]
            id=snapshot_id, created_at=created_at, format=manifest["format"], content_hash=manifest["content_hash"],
            path=str(out_dir.resolve()), n_rows=manifest["rows"]["train"] + manifest["rows"]["eval"],
            config=manifest["config"], manifest=manifest, signals_run_id=signals_run_id))
