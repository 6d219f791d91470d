"""Looking at the data: what `ratingloop report` reads from the store - every number on its page.

Reads, through SQLAlchemy Core: every rating's time, kind and source (bucketed by hour, day, week or month,
whichever gives a readable number of bars), the store's counts (`store_stats`), the newest signals run
(`load_signals`; its rewards and raters), and the dataset snapshots (each build's manifest: rows kept per
split and what each filter removed, and why). Writes nothing.

    data = gather(engine)                # ReportData
    data.ratings.counts["thumbs"], data.run.raters, data.builds[0].filters
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
from sqlalchemy import Engine, func, select

from ratingloop.errors import RatingloopError
from ratingloop.signals import StoredSignals, load_signals
from ratingloop.store import store_stats
from ratingloop.store import tables as t
from ratingloop.store.records import KINDS

JUDGE = "judge (a reward model's)"  # the series of ratings with source "judge", whatever their kind
MAX_BUILDS = 30  # the newest builds drawn and listed; the page says how many there are in all
UNITS = (("hour", 2), ("day", 120), ("week", 3 * 365))  # the finest unit whose span (days) the ratings stay within


@dataclass(frozen=True)
class RatingsOverTime:
    unit: str  # hour | day | week | month
    starts: list[datetime]  # each bucket's start (UTC), oldest first; buckets without ratings included
    counts: dict[str, list[int]]  # series (a kind, or JUDGE) -> ratings per bucket, in the store's kind order


@dataclass(frozen=True)
class BuildView:
    snapshot_id: str
    created_at: datetime
    format: str
    signals_run_id: str | None
    rows: dict[str, int]  # train, eval
    inputs: dict[str, Any]  # rated_interactions, answers, corrections, comparisons, ...
    filters: list[dict[str, Any]]  # {"filter", "removed", "why"}, in the order the build applied them
    warnings: list[str]
    purged: bool  # a deleted user's data was in it: its files are gone, nothing trains on it


@dataclass(frozen=True)
class ReportData:
    generated_at: datetime
    stats: dict[str, Any]  # `ratingloop stats --json`
    ratings: RatingsOverTime
    run: StoredSignals | None  # the newest signals run, None when none was recorded
    builds: list[BuildView]  # the newest MAX_BUILDS, newest first
    n_builds: int  # all of them


def gather(engine: Engine) -> ReportData:
    """Everything the page shows, read once."""
    try:
        run: StoredSignals | None = load_signals(engine)
    except RatingloopError:  # no run recorded yet: the page says how to record one
        run = None
    builds, n_builds = _builds(engine)
    return ReportData(datetime.now(timezone.utc), store_stats(engine), ratings_over_time(engine), run, builds,
                      n_builds)


def ratings_over_time(engine: Engine) -> RatingsOverTime:
    """Ratings per time bucket and kind (a reward model's ratings as one series of their own)."""
    r = t.ratings.c
    with engine.connect() as conn:
        rows = conn.execute(select(r.created_at, r.kind, r.source == "judge")).all()
    if not rows:
        return RatingsOverTime("day", [], {})
    seconds = np.asarray([when.timestamp() for when, _, _ in rows])
    span_days = (seconds.max() - seconds.min()) / 86400
    unit = next((name for name, days in UNITS if span_days < days), "month")
    bucket = _buckets(seconds, unit)
    first, last = int(bucket.min()), int(bucket.max())
    names = [*KINDS, JUDGE]
    series = np.asarray([len(KINDS) if judge else names.index(kind) for _, kind, judge in rows])
    counts = {names[k]: np.bincount(bucket[series == k] - first, minlength=last - first + 1).tolist()
              for k in sorted(set(series.tolist()))}
    return RatingsOverTime(unit, [_start(b, unit) for b in range(first, last + 1)], counts)


def _buckets(seconds: np.ndarray, unit: str) -> np.ndarray:
    """Integer bucket numbers: hours, days or weeks (Monday to Sunday) since the epoch, or months since 1970."""
    days = np.floor(seconds / 86400).astype(np.int64)
    if unit == "hour":
        return np.floor(seconds / 3600).astype(np.int64)
    if unit == "day":
        return days
    if unit == "week":
        return (days + 3) // 7  # the epoch was a Thursday: +3 makes weeks start on Mondays
    months: np.ndarray = days.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64)
    return months


def _start(bucket: int, unit: str) -> datetime:
    if unit == "hour":
        return datetime.fromtimestamp(bucket * 3600, timezone.utc)
    if unit == "day":
        return datetime.fromtimestamp(bucket * 86400, timezone.utc)
    if unit == "week":
        return datetime.fromtimestamp((bucket * 7 - 3) * 86400, timezone.utc)
    return datetime(1970 + bucket // 12, bucket % 12 + 1, 1, tzinfo=timezone.utc)


def _builds(engine: Engine) -> tuple[list[BuildView], int]:
    d = t.DatasetSnapshot.__table__.c
    query = select(t.DatasetSnapshot.__table__).order_by(d.created_at.desc(), d.id.desc()).limit(MAX_BUILDS)
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(t.DatasetSnapshot.__table__)).scalar_one()
        rows = conn.execute(query).mappings().all()
    out = []
    for row in rows:
        m = row["manifest"] or {}
        out.append(BuildView(row["id"], row["created_at"], row["format"], row["signals_run_id"],
                             dict(m.get("rows") or {"train": row["n_rows"], "eval": 0}), dict(m.get("inputs") or {}),
                             list(m.get("filters") or []), list(m.get("warnings") or []),
                             row["purged_at"] is not None))
    return out, int(total)
