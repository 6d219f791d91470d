"""Stage 3, signals: a signals run recorded in the store, and read back by every later stage.

`ratingloop signals` fits the rater model once (`report.compute_signals`) and `record_signals` writes
the run in ONE transaction: a `signals_runs` row (config, summary, the newest rating it saw), and its
rows - `signals_interactions` (reward, confidence, aspects; unrated ones with n_ratings 0),
`signals_raters` (estimates and flags) and `signals_ratings` (the ratings that counted: the latest
per rater, interaction, aspect and channel, flagged raters left out). `load_signals` reads a run back
(the newest by default) as `StoredSignals`; `build`, `raters`, evaluation and the loop read that and
never refit. Runs are derived rows keyed by their id: a new run never edits an old one - except when a
user is deleted: `purge_user` removes their rows from every run (see below).

    stored = record_signals(engine)            # fit + write; SignalsConfig() defaults
    stored = load_signals(engine)              # the newest run, or load_signals(engine, run_id)
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select
from sqlalchemy.exc import IntegrityError

from ratingloop.errors import RatingloopError
from ratingloop.signals.content import Embedder
from ratingloop.signals.prior import ContentPrior
from ratingloop.signals.report import InteractionSignal, RaterSignal, SignalsConfig, SignalsResult, compute_signals
from ratingloop.store import Footprint
from ratingloop.store import tables as t
from ratingloop.store.db import write_transaction
from ratingloop.store.writes import new_id

log = logging.getLogger(__name__)

CHUNK = 500  # rows per INSERT / ids per IN (...): under SQLite's bound-parameter cap


@dataclass(frozen=True)
class StoredSignals:
    """One recorded signals run, as later stages read it."""

    run_id: str
    created_at: datetime
    config: dict[str, Any]  # the SignalsConfig it ran with, as a dict
    # n_ratings (read), n_counted, n_superseded, n_interactions (rated), n_unrated, n_raters, n_flagged,
    # mu_a / mu_b (the fit's population scale and offset: reward = mu_a * quality + mu_b), content (the
    # content prior's summary, None when it was off)
    summary: dict[str, Any]
    last_rating_at: datetime | None  # the newest rating it read; ratings after this are not in it
    interactions: list[InteractionSignal]  # rated interactions, by id
    unrated: list[InteractionSignal]  # stored, unrated: the content prior's reward (n_ratings 0)
    raters: list[RaterSignal]
    counted: dict[str, list[str]]  # interaction id -> ids of the ratings that count
    scope: str | None = None  # None: everyone's ratings; else whose (a cohort's)

    @property
    def flagged(self) -> set[str]:
        return {r.rater_id for r in self.raters if r.flagged}

    @property
    def content(self) -> dict[str, Any] | None:
        content: dict[str, Any] | None = self.summary.get("content")
        return content


def record_signals(engine: Engine, cfg: SignalsConfig = SignalsConfig(),  # noqa: B008 - frozen, never mutated
                   *, prior: ContentPrior | None = None, embed: Embedder | None = None,
                   raters: frozenset[str] | None = None, scope: str | None = None) -> StoredSignals:
    """Fit the rater model on everything in the store (once) and record the run with its rows.
    With `raters`, on their ratings only, recorded under `scope` (say "cohort 1 of personal run R"): a cohort's
    own rewards, where a minority the whole population's fit would flag for disagreeing is not. A scoped run is
    read by its id only; `load_signals(engine)` keeps meaning everyone's newest run.
    Raises RatingloopError when there is too little to fit, or when a user was deleted meanwhile."""
    if (raters is None) != (scope is None):
        raise ValueError("record_signals: give raters and scope together")
    started = datetime.now(timezone.utc)
    result = compute_signals(engine, cfg, prior, embed, raters)
    # as load_signals will read it back: config as JSON, counted ratings by interaction and rating id
    config = json.loads(json.dumps(asdict(cfg) | {"prior": type(prior).__name__ if prior is not None else None}))
    counted = {iid: sorted(ids) for iid, ids in sorted(result.counted.items())}
    stored = StoredSignals(new_id(), datetime.now(timezone.utc), config, _summary(result), result.last_rating_at,
                           result.interactions, result.unrated, result.raters, counted, scope)
    try:
        with write_transaction(engine) as conn:
            _refuse_if_deleted_since(conn, started)
            _write(conn, stored)
    except IntegrityError as e:  # a rating or interaction it read is gone: deleted while we fitted
        raise RatingloopError("the store changed while signals ran (a rating or interaction it read was deleted); "
                              f"run `ratingloop signals` again ({type(e.orig).__name__})") from None
    log.info("signals run %s: %d ratings read, %d counted -> %d rated + %d unrated interactions, %d raters "
             "(%d flagged)", stored.run_id, stored.summary["n_ratings"], stored.summary["n_counted"],
             len(stored.interactions), len(stored.unrated), len(stored.raters), stored.summary["n_flagged"])
    return stored


def load_signals(engine: Engine, run_id: str | None = None) -> StoredSignals:
    """The signals run `run_id`, or the newest one of everyone's ratings (not a cohort's). Never fits anything."""
    with engine.connect() as conn:
        run = run_row(conn, run_id)
        if run is None:
            raise RatingloopError("no signals run in this store: run `ratingloop signals` first (it fits the rater "
                                  "model once and records the rewards every later stage reads)")
        return _read(conn, run)


def run_row(conn: Connection, run_id: str | None = None) -> Any:
    """The `signals_runs` row of `run_id`, or of the newest run (None when the store has none): what a reader
    of a few of a run's rows (`signals.explain`) starts from instead of loading all of them. An unknown
    `run_id` raises RatingloopError."""
    r = t.signals_runs.c
    query = select(t.signals_runs)
    query = query.where(r.id == run_id) if run_id is not None else (
        query.where(r.scope.is_(None)).order_by(r.created_at.desc(), r.id.desc()))
    run = conn.execute(query.limit(1)).first()
    if run is None and run_id is not None:
        raise RatingloopError(f"signals run {run_id!r} is not in this store; `ratingloop raters` shows the "
                              "newest run, or run `ratingloop signals` first to record one")
    return run


def ratings_since(engine: Engine, stored: StoredSignals, raters: frozenset[str] | None = None) -> int:
    """How many ratings the store holds that `stored` did not read (arrived after it, or imported with
    an older timestamp since): what a build warns about. Comparisons count like any rating: a run reads
    them. `raters`: count only theirs (a run fitted on one cohort's raters read nobody else's). (The loop's
    trigger counts against its last round instead: `rounds.new_ratings`.)"""
    c = t.ratings.c
    theirs = [] if raters is None else [c.rater_id.in_(sorted(raters))]
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).where(*theirs).select_from(t.ratings)).scalar_one()
        newer = 0
        if stored.last_rating_at is not None:
            newer = conn.execute(select(func.count()).where(c.created_at > stored.last_rating_at, *theirs)
                                 ).scalar_one()
    return max(int(newer), int(total) - int(stored.summary.get("n_ratings", 0)))


def purge_user(conn: Connection, footprint: Footprint) -> None:
    """A deleted user's rows in every signals run, inside the deleting transaction. Their signals_ratings and
    signals_interactions rows go with their ratings and interactions (ON DELETE CASCADE); their rater
    estimates (signals_raters) have no such key, so they go here. A run's config and summary hold counts and
    settings only: no id or text of anyone's."""
    conn.execute(delete(t.signals_raters).where(t.signals_raters.c.rater_id == footprint.user_id))


def _summary(result: SignalsResult) -> dict[str, Any]:
    return {"n_ratings": result.n_ratings, "n_counted": sum(len(v) for v in result.counted.values()),
            "n_superseded": result.n_superseded, "n_interactions": len(result.interactions),
            "n_unrated": len(result.unrated), "n_raters": len(result.raters),
            "n_flagged": sum(r.flagged for r in result.raters),
            "mu_a": round(float(result.fit.mu_a), 6), "mu_b": round(float(result.fit.mu_b), 6),
            "content": _finite(result.content)}


def _finite(content: dict[str, float] | None) -> dict[str, float | None] | None:
    """NaN and infinities as null: PostgreSQL's JSONB has no NaN."""
    if content is None:
        return None
    return {k: v if math.isfinite(v) else None for k, v in content.items()}


def _refuse_if_deleted_since(conn: Connection, started: datetime) -> None:
    """A user deleted while we fitted must not come back as derived rows (their rater estimates have no
    foreign key to catch it); the interactions and ratings themselves are caught by theirs."""
    d = t.deleted_users.c
    if conn.execute(select(func.count()).where(d.deleted_at >= started)).scalar_one():
        raise RatingloopError("a user was deleted while signals ran; run `ratingloop signals` again")


def _write(conn: Connection, s: StoredSignals) -> None:
    conn.execute(insert(t.signals_runs).values(id=s.run_id, created_at=s.created_at, config=s.config,
                                               summary=s.summary, last_rating_at=s.last_rating_at,
                                               n_ratings=s.summary["n_ratings"], scope=s.scope))
    _insert(conn, t.signals_interactions, [
        {"run_id": s.run_id, "interaction_id": x.interaction_id, "reward": x.reward, "confidence": x.confidence,
         "n_ratings": x.n_ratings, "aspects": x.aspects} for x in (*s.interactions, *s.unrated)])
    _insert(conn, t.signals_raters, [
        {"run_id": s.run_id, "rater_id": x.rater_id, "n": x.n, "bias": x.bias, "scale": x.scale,
         "reliability": x.reliability, "flagged": x.flagged, "reasons": x.reasons} for x in s.raters])
    _insert(conn, t.signals_ratings, [{"run_id": s.run_id, "rating_id": rid, "interaction_id": iid}
                                      for iid, ids in s.counted.items() for rid in ids])


def _insert(conn: Connection, table: Any, rows: list[dict[str, Any]]) -> None:
    for k in range(0, len(rows), CHUNK):
        conn.execute(insert(table), rows[k:k + CHUNK])


def _read(conn: Connection, run: Any) -> StoredSignals:
    si, sr, sc = t.signals_interactions.c, t.signals_raters.c, t.signals_ratings.c
    counted: dict[str, list[str]] = {}
    for row in conn.execute(select(sc.interaction_id, sc.rating_id).where(sc.run_id == run.id)
                            .order_by(sc.interaction_id, sc.rating_id)):
        counted.setdefault(row.interaction_id, []).append(row.rating_id)
    raters = [RaterSignal(x.rater_id, x.n, x.bias, x.scale, x.reliability, bool(x.flagged), list(x.reasons or []))
              for x in conn.execute(select(t.signals_raters).where(sr.run_id == run.id).order_by(sr.rater_id))]
    rated_by_flagged = _rated_by(conn, [x.rater_id for x in raters if x.flagged], run.last_rating_at)
    rated: list[InteractionSignal] = []
    unrated: list[InteractionSignal] = []
    for x in conn.execute(select(t.signals_interactions).where(si.run_id == run.id).order_by(si.interaction_id)):
        signal = InteractionSignal(x.interaction_id, x.reward, x.confidence, x.n_ratings, dict(x.aspects or {}))
        # n_ratings counts only unflagged raters' ratings: one rated by flagged raters alone is still rated
        is_rated = x.n_ratings > 0 or x.interaction_id in counted or x.interaction_id in rated_by_flagged
        (rated if is_rated else unrated).append(signal)
    return StoredSignals(run.id, run.created_at, dict(run.config), dict(run.summary), run.last_rating_at, rated,
                         unrated, raters, counted, run.scope)


def _rated_by(conn: Connection, rater_ids: list[str], until: datetime | None) -> set[str]:
    """Interactions that `rater_ids` rated, or compared, up to `until` (the run's newest rating)."""
    if not rater_ids or until is None:
        return set()
    c, ci = t.ratings.c, t.compared_interactions.c
    out: set[str] = set()
    for k in range(0, len(rater_ids), CHUNK):
        theirs = (c.rater_id.in_(rater_ids[k:k + CHUNK]), c.created_at <= until)
        out.update(conn.execute(select(c.interaction_id).distinct().where(*theirs)).scalars())
        compared = select(ci.interaction_id).distinct().join(t.ratings, ci.rating_id == c.id).where(*theirs)
        out.update(conn.execute(compared).scalars())
    return out
