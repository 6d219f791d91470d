"""Stage 2, serving: the admin dashboard - what the ratings say about each version, as plots.

Reads the store (ratings joined to the version that answered, the newest signals run, the registry);
writes nothing. `GET /dashboard` is a static page (no data in it); it fetches `GET /v1/dashboard`
(admin) with the key the user typed, kept in the tab's sessionStorage. That JSON holds the figures and
the plots as inline SVG:

    ratings   per version and day (hour when the ratings span under two days): count and mean rating,
              split by kind and by aspect; ratings are put on [-1, 1] by signals/normalise.py
    values    per kind, how often each raw value was given (thumbs -1/1, stars 1..5, implicit signals)
    raters    the newest signals run's reliability per rater, and the flagged ones with why (never refit)
    versions  `versions list` with each evaluated version's win rate and CI, and who serves what share

Judge ratings (`ratingloop label`, a reward model's) are left out: this is what people said. The queries
are plain functions of an Engine, for tests and scripts:

    ratings_over_time(engine), rating_values(engine), rater_summary(engine), version_summary(engine)
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from fastapi import APIRouter, Request
from sqlalchemy import ColumnElement, Engine, func, literal_column, select
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from ratingloop.errors import RatingloopError
from ratingloop.models import version_rows
from ratingloop.models.registry import latest_evaluation
from ratingloop.serve.errors import json_response
from ratingloop.signals import KIND_CODE, RATING_KINDS, RaterSignal, load_signals, rewards
from ratingloop.store import tables as t

STATIC = Path(__file__).with_name("static")
NOT_LOGGED = "(not logged)"  # the version of an interaction logged without `model`
ALL = "thumbs, stars, scale and aspect ratings"  # the pool of deliberate ratings
PAGE_HEADERS = {  # the page runs only its own script; SVG carries inline styles
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}
NO_RATINGS = "no ratings yet: log interactions and their ratings (POST /v1/interactions, /v1/feedback, " \
             "or `ratingloop import`)"


# --- the figures ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    """The ratings of one version in one time bucket, of one kind and aspect."""

    version: str  # the interaction's `model`: "base", a version id, whatever the product logged
    bucket: str  # "2026-11-01" by day, "2026-11-01T10:00" by hour (UTC)
    kind: str
    aspect: str
    n: int
    scored: int  # how many have a reward (a comment without text has none)
    mean: float | None  # their mean reward in [-1, 1]; None when none is scored


@dataclass(frozen=True)
class RatingsOverTime:
    unit: str  # "day", or "hour" when the ratings span under two days
    cells: list[Cell]

    @property
    def versions(self) -> list[str]:
        return sorted({c.version for c in self.cells})

    def pooled(self, by: str | None) -> dict[str, list[Cell]]:
        """Cells pooled over all but version, bucket and `by` ("kind", "aspect", or None: one pool). Only
        deliberate ratings (thumbs, stars, scale, aspect) are pooled unless split by kind."""
        cells = self.cells if by == "kind" else [c for c in self.cells if c.kind in RATING_KINDS]
        groups: dict[tuple[str, str, str], list[Cell]] = defaultdict(list)
        for c in cells:
            groups[(getattr(c, by) if by else ALL, c.version, c.bucket)].append(c)
        out: dict[str, list[Cell]] = defaultdict(list)
        for (name, version, bucket), part in sorted(groups.items(), key=lambda kv: (_order(kv[0][0]), kv[0])):
            out[name].append(_pool(version, bucket, name, part))
        return dict(out)


def _order(name: str) -> int:
    """Kinds in the store's order, the overall aspect before the others, then by name."""
    return KIND_CODE.get(name, -1 if name == "overall" else len(KIND_CODE))


def _pool(version: str, bucket: str, name: str, cells: list[Cell]) -> Cell:
    scored = sum(c.scored for c in cells)
    total = sum(c.mean * c.scored for c in cells if c.mean is not None)
    return Cell(version, bucket, name, name, sum(c.n for c in cells), scored, total / scored if scored else None)


def ratings_over_time(engine: Engine) -> RatingsOverTime:
    """Every human rating, counted per version, time bucket, kind and aspect, with its mean reward."""
    R, I = t.ratings.c, t.interactions.c
    human = R.source != "judge"
    with engine.connect() as conn:
        first, last = conn.execute(select(func.min(R.created_at), func.max(R.created_at)).where(human)).one()
        if first is None:
            return RatingsOverTime("day", [])
        unit = "hour" if _when(last) - _when(first) < timedelta(days=2) else "day"
        bucket = _bucket(engine.dialect.name, R.created_at, unit)
        cols = (I.model, bucket, R.kind, R.aspect, R.value, R.scale_min, R.scale_max, R.signal)
        joined = t.ratings.join(t.interactions, I.id == R.interaction_id)
        # equal ratings are counted in SQL; comments one by one, as their reward is their text's sentiment
        grouped = conn.execute(select(*cols, func.count()).select_from(joined)
                               .where(human, R.kind != "comment").group_by(*cols)).all()
        comments = conn.execute(select(*cols, R.text).select_from(joined).where(human, R.kind == "comment")).all()
    rows = [(*row, None) for row in grouped] + [(*row[:8], 1, row[8]) for row in comments]
    model, when, kind, aspect, value, lo, hi, signal, n, text = (list(col) for col in zip(*rows, strict=True))
    reward = rewards(np.asarray([KIND_CODE[k] for k in kind]), _floats(value), _floats(lo), _floats(hi), signal, text)
    sums: dict[tuple[str, str, str, str], list[float]] = defaultdict(lambda: [0, 0, 0.0])  # n, scored, total
    for i, r in enumerate(reward.tolist()):
        acc = sums[(model[i] if model[i] is not None else NOT_LOGGED, _label(when[i], unit), kind[i], aspect[i])]
        acc[0] += n[i]
        if math.isfinite(r):
            acc[1] += n[i]
            acc[2] += r * n[i]
    cells = [Cell(*key, int(n), int(k), total / k if k else None) for key, (n, k, total) in sorted(sums.items())]
    return RatingsOverTime(unit, cells)


def _bucket(dialect: str, column: Any, unit: str) -> ColumnElement[str]:
    """The UTC day ('YYYY-MM-DD') or hour ('YYYY-MM-DD HH') of `column`, as text. Constants are inlined:
    PostgreSQL matches a GROUP BY expression to the SELECT's only when they read the same."""
    if dialect == "postgresql":
        fmt = "'YYYY-MM-DD'" if unit == "day" else "'YYYY-MM-DD HH24'"
        return func.to_char(func.timezone(literal_column("'UTC'"), column), literal_column(fmt))
    # SQLite keeps UTC datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff'
    return func.substr(column, literal_column("1"), literal_column("10" if unit == "day" else "13"))


def _label(raw: str, unit: str) -> str:
    return raw[:10] if unit == "day" else f"{raw[:10]}T{raw[11:13]}:00"


def _when(value: datetime | str) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) else value  # SQLite's min()/max() give text


def _floats(values: Iterable[float | None]) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], float)


@dataclass(frozen=True)
class Histogram:
    kind: str
    n: int
    counts: list[tuple[str, int]]  # (raw value "-1", "4.5", or implicit signal; ratings), in value order


def rating_values(engine: Engine) -> list[Histogram]:
    """Per kind, how often each raw value was given; a scale's unused marks count 0."""
    R = t.ratings.c
    cols = (R.kind, R.value, R.scale_min, R.scale_max, R.signal)
    with engine.connect() as conn:
        rows = conn.execute(select(*cols, func.count()).where(R.source != "judge").group_by(*cols)).all()
    counts: dict[str, dict[float | str, int]] = defaultdict(lambda: defaultdict(int))
    totals: dict[str, int] = defaultdict(int)
    marks: dict[str, set[float]] = defaultdict(set)
    for kind, value, lo, hi, signal, n in rows:
        totals[kind] += n
        if kind == "implicit":
            counts[kind][signal or "?"] += n
        elif value is not None:
            counts[kind][float(value)] += n
            marks[kind] |= _marks(kind, lo, hi)
    out = []
    for kind in sorted(totals, key=lambda k: KIND_CODE.get(k, 99)):
        for mark in marks[kind]:
            counts[kind].setdefault(mark, 0)
        ordered = sorted(counts[kind].items(), key=lambda kv: (isinstance(kv[0], str), kv[0]))
        out.append(Histogram(kind, totals[kind], [(_mark(k), n) for k, n in ordered]))
    return out


def _marks(kind: str, lo: float | None, hi: float | None) -> set[float]:
    """Every mark of a small whole-number scale, so the ones nobody gave show as 0."""
    if kind == "thumbs":
        return {-1.0, 1.0}
    if lo is None or hi is None or not (float(lo).is_integer() and float(hi).is_integer()) or hi - lo > 10:
        return set()
    return {float(v) for v in range(int(lo), int(hi) + 1)}


def _mark(value: float | str) -> str:
    return value if isinstance(value, str) else f"{value:g}"


@dataclass(frozen=True)
class RaterSummary:
    run_id: str
    created_at: str
    n_ratings: int  # the ratings the run read
    raters: list[RaterSignal]  # flagged first, then by ratings given (as `ratingloop raters`)

    @property
    def flagged(self) -> list[RaterSignal]:
        return [r for r in self.raters if r.flagged]


def rater_summary(engine: Engine) -> RaterSummary | None:
    """The newest signals run's rater estimates; None when no run was recorded."""
    try:
        run = load_signals(engine)
    except RatingloopError:  # no run yet: what the page says instead
        return None
    raters = sorted(run.raters, key=lambda r: (not r.flagged, -r.n, r.rater_id))
    return RaterSummary(run.run_id, run.created_at.isoformat(), int(run.summary.get("n_ratings", 0)), raters)


@dataclass(frozen=True)
class VersionSummary:
    id: str
    status: str
    method: str | None
    traffic_share: float  # as stored; `serving_shares` turns the shares into who answers what
    verdict: str | None  # of its newest evaluation
    win_rate: float | None  # that evaluation's win rate and its CI, None if never evaluated
    ci_low: float | None
    ci_high: float | None
    created_at: str


def version_summary(engine: Engine) -> list[VersionSummary]:
    """`versions list`, newest first, with each version's newest evaluation's win rate."""
    out = []
    for row in version_rows(engine):
        evaluation = latest_evaluation(engine, row["id"]) if row["evaluation_id"] else None
        report = evaluation["report"] if evaluation else {}
        out.append(VersionSummary(row["id"], row["status"], row["method"], float(row["traffic_share"]),
                                  row["verdict"], report.get("win_rate"), report.get("ci_low"),
                                  report.get("ci_high"), row["created_at"]))
    return out


def serving_shares(versions: list[VersionSummary]) -> dict[str, float]:
    """Who answers requests for the active model (serve/routing.py): each non-active version its
    traffic share of users, the active version (the base when none is) the rest."""
    split = {v.id: v.traffic_share for v in versions if v.status != "active" and v.traffic_share > 0}
    active = next((v.id for v in versions if v.status == "active"), "base")
    return {active: max(0.0, 1.0 - sum(split.values())), **split}


def dashboard(engine: Engine) -> dict[str, Any]:
    """Everything `GET /v1/dashboard` answers: per section its figures and plots (SVG), or a note saying why
    there are none yet."""
    from ratingloop.serve import dashboard_plots as plots  # matplotlib loads on the first call, not at startup

    over_time, values = ratings_over_time(engine), rating_values(engine)
    raters, versions = rater_summary(engine), version_summary(engine)
    with plots.rendering():
        return {"generated_at": datetime.now(timezone.utc).isoformat(),
                "ratings": _ratings_section(over_time, plots), "values": _values_section(values, plots),
                "raters": _raters_section(raters, plots), "versions": _versions_section(versions, plots)}


def _ratings_section(over_time: RatingsOverTime, plots: Any) -> dict[str, Any]:
    if not over_time.cells:
        return {"note": NO_RATINGS}
    colors = plots.version_colors(over_time.versions)
    return {"unit": over_time.unit, "versions": over_time.versions,
            "all": [asdict(c) for c in over_time.pooled(None).get(ALL, [])],
            "cells": [asdict(c) for c in over_time.cells],
            "plots": {by or "all": plots.over_time(pooled, colors) for by in (None, "kind", "aspect")
                      if (pooled := over_time.pooled(by))}}  # only comments, say: no pool of ratings to draw


def _values_section(values: list[Histogram], plots: Any) -> dict[str, Any]:
    if not values:
        return {"note": NO_RATINGS}
    return {"kinds": [asdict(h) for h in values], "plot": plots.histograms(values)}


def _raters_section(raters: RaterSummary | None, plots: Any) -> dict[str, Any]:
    if raters is None or not raters.raters:
        return {"note": "no signals run yet: `ratingloop signals` fits the rater model and records one"}
    return {"run_id": raters.run_id, "created_at": raters.created_at, "n_ratings": raters.n_ratings,
            "raters": [asdict(r) for r in raters.raters], "flagged": [asdict(r) for r in raters.flagged],
            "plot": plots.raters(raters.raters)}


def _versions_section(versions: list[VersionSummary], plots: Any) -> dict[str, Any]:
    if not versions:
        return {"note": "no versions yet: the base model answers everything (`ratingloop train` registers one)"}
    shares = serving_shares(versions)
    return {"rows": [asdict(v) for v in versions], "serving": shares, "plot": plots.versions(versions, shares)}


# --- the routes ----------------------------------------------------------------------------------------------

def dashboard_router(engine: Engine, require_admin: Callable[[Request], None]) -> APIRouter:
    """/dashboard (the page and its script and style, no data) and /v1/dashboard (admin: the data)."""
    router = APIRouter()
    files = {name: (STATIC / name).read_bytes() for name in ("dashboard.html", "dashboard.js", "dashboard.css")}
    media = {"html": "text/html; charset=utf-8", "js": "text/javascript; charset=utf-8", "css": "text/css"}

    def static(name: str) -> Response:
        return Response(files[name], media_type=media[name.rsplit(".", 1)[1]], headers=PAGE_HEADERS)

    @router.get("/dashboard", include_in_schema=False)
    async def page() -> Response:
        return static("dashboard.html")

    @router.get("/dashboard/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in files or name.endswith(".html"):
            return Response(status_code=404)
        return static(name)

    @router.get("/v1/dashboard", summary="The dashboard's figures and plots (inline SVG)")
    async def data(request: Request) -> Response:
        require_admin(request)
        return json_response(await run_in_threadpool(dashboard, engine), headers={"Cache-Control": "no-store"})

    return router
