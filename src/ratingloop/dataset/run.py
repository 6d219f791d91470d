"""Stage 4, dataset: `ratingloop build --format sft|kto|dpo|reward|weighted --out DIR`, top to bottom.

    result = build_dataset(engine, "dpo", Path("data/dpo"), BuildConfig())   # the newest signals run
    result = build_dataset(engine, "kto", out, cfg, signals=load_signals(engine, run_id))

Reads a recorded signals run (the newest unless the caller passes one; `ratingloop signals` records
them - a build never fits the rater model) and the store's texts, writes DIR (see write.py) and one
`dataset_snapshots` row naming the signals run. The manifest lists exactly the counted ratings behind
its rows and each split's prompt keys (what evaluation holds out). A build that yields no rows raises
RatingloopError naming the filters that removed them; a legal but small one, or one from a signals
run older than the newest ratings, logs a warning and lists it in the manifest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

import ratingloop
from ratingloop.dataset.answers import Pool, load_pool
from ratingloop.dataset.config import BuildConfig, check_format
from ratingloop.dataset.formats import BUILDERS, kto_weights
from ratingloop.dataset.pairs import dpo_rows
from ratingloop.dataset.rows import FilterLog, Row
from ratingloop.dataset.split import dedupe_rows, split_rows
from ratingloop.dataset.write import content_hash, record_snapshot, remove_build_files, write_manifest, write_splits
from ratingloop.errors import RatingloopError
from ratingloop.provenance import git_revision
from ratingloop.signals import StoredSignals, load_signals, ratings_since
from ratingloop.store.writes import new_id

log = logging.getLogger(__name__)

UNIT = {"sft": "rows", "kto": "rows", "dpo": "pairs", "reward": "rows", "weighted": "rows"}
HINT = {
    "sft": "lower sft_min_reward or z, or collect more ratings or corrections",
    "kto": "lower z, or collect more ratings so rewards are clearly positive or negative",
    "dpo": "DPO needs two answers to one prompt that raters compared (and agreed on) or whose rewards clearly differ, "
           "or a correction; ask raters to compare answers, lower pair_z / pair_min_gap, log several answers per "
           "prompt, or collect corrections",
    "reward": "lower min_confidence or collect more ratings",
    "weighted": "lower min_confidence or weighted_min_abs, or collect more ratings",
}


@dataclass(frozen=True)
class BuildResult:
    snapshot_id: str
    format: str
    out_dir: Path
    n_train: int
    n_eval: int
    content_hash: str
    manifest: dict[str, Any]
    warnings: list[str]


def build_dataset(engine: Engine, fmt: str, out_dir: Path, cfg: BuildConfig,
                  signals: StoredSignals | None = None, raters: frozenset[str] | None = None) -> BuildResult:
    """Build the `fmt` training set into `out_dir` from `signals` (default: the newest recorded run) and
    record its snapshot. `raters`: from these raters' ratings only (a cohort's training set); the manifest
    records how many."""
    check_format(fmt)
    cfg.validate()
    started = datetime.now(timezone.utc)  # a user deleted from now on may be in what we read: not recorded
    if signals is None:
        signals = load_signals(engine)
    pool = load_pool(engine, signals, cfg, raters)
    filters = FilterLog(dict(pool.log.removed), dict(pool.log.why))

    # --- rows, cleaned and split ---------------------------------------------------------------
    comparisons: dict[str, Any] | None = None
    if fmt == "dpo":
        rows, comparisons = dpo_rows(pool, cfg, filters)
    else:
        rows = BUILDERS[fmt](pool, cfg, filters)
    if cfg.dedupe:
        rows = dedupe_rows(rows, filters)
    if not rows:
        raise RatingloopError(f"build --format {fmt}: 0 {UNIT[fmt]} from {pool.n_interactions} rated interactions: "
                              f"{filters.explain()}. {HINT[fmt]}")
    train, eval_ = split_rows(rows, cfg.eval_fraction, cfg.split_salt, cfg.min_eval_prompts)
    warnings = _warnings(fmt, train, eval_, cfg) + _stale(engine, signals, raters)
    for w in warnings:
        log.warning("build %s: %s", fmt, w)

    # --- write, then record: a snapshot row never points at a folder that was not written -----------
    created_at = datetime.now(timezone.utc)
    snapshot_id = new_id()
    manifest = _manifest(fmt, snapshot_id, created_at, pool, filters, train, eval_, cfg, signals, warnings)
    if raters is not None:
        manifest["raters"] = len(raters)  # only these raters' ratings (a cohort's set); not their ids
    if comparisons is not None:  # which comparisons became pairs, and why the others did not
        manifest["comparisons"] = comparisons
    write_splits(out_dir, train, eval_)
    write_manifest(out_dir, manifest)
    try:
        record_snapshot(engine, snapshot_id, created_at, out_dir, manifest, signals.run_id, read_since=started)
    except RatingloopError:
        remove_build_files(out_dir)
        raise
    log.info("build %s: %d interactions -> %d answers, %d corrections -> %d %s (train %d, eval %d); removed: %s",
             fmt, pool.n_interactions, len(pool.answers), len(pool.corrections), len(rows), UNIT[fmt], len(train),
             len(eval_), filters.explain())
    return BuildResult(snapshot_id, fmt, out_dir, len(train), len(eval_), manifest["content_hash"], manifest,
                       warnings)


def _warnings(fmt: str, train: list[Row], eval_: list[Row], cfg: BuildConfig) -> list[str]:
    out = []
    if len(train) < cfg.warn_below:
        out.append(f"only {len(train)} {UNIT[fmt]} in train after cleaning (warn_below={cfg.warn_below}): "
                   "one step will overfit them; collect more ratings before trusting a model trained on this")
    if not eval_:
        out.append("the eval split is empty (too few prompts to hold any out): evaluation will have no held-out data")
    if fmt == "kto" and len({r.data["label"] for r in train}) < 2:
        out.append("kto train split has only one label; KTO learns from both desirable and undesirable answers")
    return out


def _stale(engine: Engine, signals: StoredSignals, raters: frozenset[str] | None) -> list[str]:
    """A warning when ratings arrived after the signals run this build reads: legal (a build is
    reproducible from a named run), but the newest ratings are not in it. A build from some raters only
    (a cohort's) counts theirs: nobody else's would be in it anyway."""
    n = ratings_since(engine, signals, raters)
    if not n:
        return []
    when = signals.last_rating_at.isoformat() if signals.last_rating_at else "none"
    return [f"{n} rating(s) arrived after signals run {signals.run_id} (newest it read: {when}) and are not in "
            "this build; run `ratingloop signals` to record a new run, then build again"]


def _manifest(fmt: str, snapshot_id: str, created_at: datetime, pool: Pool, filters: FilterLog, train: list[Row],
              eval_: list[Row], cfg: BuildConfig, signals: StoredSignals, warnings: list[str]) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "snapshot_id": snapshot_id,
        "signals_run_id": signals.run_id,
        "format": fmt,
        "created_at": created_at.isoformat(),
        "ratingloop_version": ratingloop.__version__,
        "git_revision": git_revision(),
        "columns": list(train[0].data),
        "rows": {"train": len(train), "eval": len(eval_)},
        "prompts": {"train": len({r.prompt_key for r in train}), "eval": len({r.prompt_key for r in eval_})},
        "inputs": {"rated_interactions": pool.n_interactions, "answers": len(pool.answers),
                   "corrections": len(pool.corrections), "comparisons": len(pool.comparisons),
                   "flagged_raters": sorted(signals.flagged), "content_prior": signals.content},
        "filters": filters.as_list(),
        "pii_scrubbed": pool.n_scrubbed if cfg.scrub_pii else None,
        "content_hash": content_hash(train, eval_),
        "config": cfg.as_dict(),
        "warnings": warnings,
        # exactly the ratings the signals run counted behind these rows, and the prompts each split holds
        # (evaluation holds out prompts in no training set: `ratingloop.dataset.prompt_key` of a prompt)
        "rating_ids": sorted({rid for r in (*train, *eval_) for rid in r.rating_ids}),
        "prompt_keys": {"train": sorted({r.prompt_key for r in train}), "eval": sorted({r.prompt_key for r in eval_})},
    }
    if fmt == "kto":
        manifest["kto"] = kto_weights(train)  # pass these to KTOConfig(desirable_weight=..., undesirable_weight=...)
    return manifest
