"""Stage 5, train: open a built dataset folder and check it fits the method, before any training.

A folder from `ratingloop build --format F --out DIR` holds DIR/train and DIR/eval
(`datasets.save_to_disk`) and DIR/manifest.json (format, snapshot id). Everything that can be wrong
with it - missing, empty, another format, other columns - is found here and named with the command
that makes the right one. A method may read a second format (ALSO_READS): `reward` fits scores from a
reward folder and Bradley-Terry from a dpo folder of pairs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ratingloop.errors import ConfigError, RatingloopError

# method -> (the build format it reads, the columns its trainer needs)
NEEDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "sft": ("sft", ("prompt", "completion")),
    "kto": ("kto", ("prompt", "completion", "label")),
    "dpo": ("dpo", ("prompt", "chosen", "rejected")),
    "wsft": ("weighted", ("prompt", "completion", "weight")),
    "dro": ("reward", ("prompt", "completion", "score")),
    "reward": ("reward", ("prompt", "completion", "score")),
    "grpo": ("reward", ("prompt",)),  # only the prompts: GRPO samples its own answers and scores them
}


def dataset_format(method: str) -> str:
    """The `ratingloop build --format` a method trains on (kto -> kto, wsft -> weighted, dro -> reward, ...)."""
    if method not in NEEDS:
        raise ConfigError(f"--method {method!r}: choose one of {', '.join(NEEDS)}")
    return NEEDS[method][0]


# method -> further build formats it reads, by the folder's manifest (or, without one, its columns)
ALSO_READS: dict[str, tuple[str, ...]] = {"reward": ("dpo",)}
# what an empty train split lacks, where "collect more ratings" is not the whole story
MISSING: dict[str, str] = {
    "dpo": "no preference pairs (DPO needs two answers to one prompt whose rewards clearly differ, or an answer "
           "and its correction): log several answers per prompt or collect corrections, or train --method kto",
}


@dataclass
class TrainData:
    train: Any  # datasets.Dataset
    eval: Any | None  # None when the eval split is missing or empty
    snapshot_id: str | None  # from manifest.json; None for a folder not built by ratingloop
    manifest: dict[str, Any]
    data_dir: Path


def load_train_data(data_dir: Path, method: str) -> TrainData:
    """The train/eval splits of `data_dir`, checked for `method`; RatingloopError says what is wrong."""
    fmt, columns = NEEDS[method]
    formats = (fmt, *ALSO_READS.get(method, ()))
    fix = f"build one with `ratingloop build --format {fmt} --out {data_dir}`, or train without --data"
    if not data_dir.is_dir():
        raise RatingloopError(f"--data {data_dir}: no such folder; {fix}")
    manifest = _manifest(data_dir)
    if manifest.get("purged_at"):
        raise RatingloopError(f"--data {data_dir}: dataset snapshot {manifest.get('snapshot_id')} was purged at "
                              f"{manifest['purged_at']} (it held data of a user who was deleted); {fix}")
    if manifest.get("format") not in (None, *formats):
        raise RatingloopError(f"--data {data_dir}: is a {manifest['format']!r} dataset, but --method {method} "
                              f"needs {' or '.join(map(repr, formats))}; {fix}")
    train = _split(data_dir, "train", fix)
    if train is None:
        raise RatingloopError(f"--data {data_dir}: no train split ({data_dir / 'train'} is missing); {fix}")
    fmt, columns = _read_as(method, manifest.get("format"), train.column_names)
    fix = f"build one with `ratingloop build --format {fmt} --out {data_dir}`, or train without --data"
    missing = [c for c in columns if c not in train.column_names]
    if missing:
        raise RatingloopError(f"--data {data_dir}: the train split has columns {train.column_names}, not "
                              f"{', '.join(columns)} (missing {', '.join(missing)}); {fix}")
    if len(train) == 0:
        what = MISSING.get(method, "collect more ratings")
        raise RatingloopError(f"--data {data_dir}: the train split is empty; {what}, then {fix}")
    eval_ = _split(data_dir, "eval", fix)
    return TrainData(train, eval_ if eval_ is not None and len(eval_) else None, manifest.get("snapshot_id"),
                     manifest, data_dir)


def _read_as(method: str, recorded: str | None, found: list[str]) -> tuple[str, tuple[str, ...]]:
    """The format (and its columns) `method` reads this folder as: the manifest's, or for a folder without
    one the first of the method's formats whose columns are all there (the main one when none is)."""
    options = [NEEDS[method]] + [_columns_of(f) for f in ALSO_READS.get(method, ())]
    for fmt, columns in options:
        if fmt == recorded or (recorded is None and set(columns) <= set(found)):
            return fmt, columns
    return options[0]


def _columns_of(fmt: str) -> tuple[str, tuple[str, ...]]:
    return next((f, c) for f, c in NEEDS.values() if f == fmt)


def _manifest(data_dir: Path) -> dict[str, Any]:
    path = data_dir / "manifest.json"
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RatingloopError(f"--data {data_dir}: manifest.json is unreadable ({e}); rebuild the folder") from e
    return manifest if isinstance(manifest, dict) else {}


def _split(data_dir: Path, name: str, fix: str) -> Any | None:
    from datasets import Dataset, DatasetInfo, load_from_disk

    path = data_dir / name
    if not path.exists():
        return None
    try:
        if not json.loads((path / "state.json").read_text()).get("_data_files"):
            # a 0-row split (the builder writes one when no prompt is held out): datasets 5.2 saves it
            # with no data file and then cannot load it back, so it is rebuilt from its recorded columns
            features = DatasetInfo.from_directory(str(path)).features
            return Dataset.from_dict({k: [] for k in features}, features=features)
        return load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - any loader failure means "not a saved dataset"
        raise RatingloopError(f"--data {data_dir}: {path} is not a saved dataset ({type(e).__name__}: {e}); "
                              f"{fix}") from e
