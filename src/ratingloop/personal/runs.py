"""Personalisation: a personal run recorded in the store, and read back by whoever needs a user's weights or cohort.

`record_personal` fits once from a stored signals run (the newest by default) and writes, in ONE transaction, a
`personal_runs` row (config, the chosen K and the held-out log-likelihood of each K tried, a summary), a
`personal_users` row per end user and a `personal_cohorts` row per cohort. `load_personal` reads a run with
its cohorts (the newest by default); `user_weights` one user's row, or says why they have none. `ratingloop
cohorts` and `ratingloop users show` print these; later stages (cohort adapters, routing) read them and never
refit. Runs are derived rows keyed by their id: a new run never edits an old one - except when a user is
deleted: `purge_user` removes their weights from every run (a cohort's size and mean weights are aggregates of
at least `min_cohort_users` users, and stay).

    run = record_personal(engine)                 # fit + write; PersonalConfig() defaults
    run = load_personal(engine)                   # the newest run, or None
    user_weights(engine, "u1").cohort
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select

from ratingloop.errors import RatingloopError
from ratingloop.personal.config import PersonalConfig
from ratingloop.personal.features import OVERALL_KINDS, USER_SOURCES, UserRatings, user_ratings
from ratingloop.personal.fit import PersonalFit, fit_personal
from ratingloop.signals import load_signals
from ratingloop.store import Footprint
from ratingloop.store import tables as t
from ratingloop.store.db import write_transaction
from ratingloop.store.writes import new_id

log = logging.getLogger(__name__)

CHUNK = 500  # rows per INSERT: under SQLite's bound-parameter cap


@dataclass(frozen=True)
class Cohort:
    cohort: int  # 0 is the largest
    n_users: int
    weights: dict[str, float]  # its users' mean weights
    description: str  # what sets it apart, in words


@dataclass(frozen=True)
class StoredPersonal:
    """One recorded personal run and its cohorts, as later stages and the CLI read it."""

    run_id: str
    created_at: datetime
    signals_run_id: str
    config: dict[str, Any]
    k: int  # cohorts chosen (0: nobody could be placed)
    heldout: list[dict[str, Any]]  # per K tried: k, cohorts, loglik, per_rating, n_ratings (cohorts.HeldOut)
    # n_users, n_placed, n_few, n_constant, n_ratings, features, population (weights), length_mean / length_sd
    # (how a new answer's length feature is made), left_out (aspects on too few answers), notes
    summary: dict[str, Any]
    cohorts: list[Cohort]

    @property
    def notes(self) -> list[str]:
        return list(self.summary.get("notes", []))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"created_at": self.created_at.isoformat()}


@dataclass(frozen=True)
class UserWeights:
    """One user's row of a personal run: what `ratingloop users show` prints."""

    run_id: str
    user_id: str
    weights: dict[str, float]  # feature -> sds of their own ratings per unit of the feature
    mean_rating: float
    rating_sd: float
    n_ratings: int
    cohort: int | None
    status: str  # placed | few | constant
    cohort_description: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def record_personal(engine: Engine, cfg: PersonalConfig = PersonalConfig(),  # noqa: B008 - frozen, never mutated
                    signals_run_id: str | None = None) -> StoredPersonal:
    """Fit weights and cohorts from the signals run `signals_run_id` (default: the newest) and record the run.
    Raises RatingloopError when there is no signals run, or nothing to fit, or a user was deleted meanwhile."""
    cfg.check()
    started = datetime.now(timezone.utc)
    stored = load_signals(engine, signals_run_id)
    data = user_ratings(engine, stored, cfg.min_feature_ratings)
    fit = fit_personal(data, cfg)
    run = StoredPersonal(new_id(), datetime.now(timezone.utc), stored.run_id, asdict(cfg), fit.k,
                         [h.as_dict() for h in fit.heldout], _summary(data, fit),
                         [Cohort(c.cohort, c.n_users, c.weights, c.description) for c in fit.cohorts])
    with write_transaction(engine) as conn:
        if conn.execute(select(func.count()).where(t.deleted_users.c.deleted_at >= started)).scalar_one():
            raise RatingloopError("a user was deleted while personal weights were fitted; run it again")
        _write(conn, run, fit)
    log.info("personal run %s from signals run %s: %d users (%d placed), K=%d", run.run_id, stored.run_id,
             run.summary["n_users"], run.summary["n_placed"], run.k)
    return run


def load_personal(engine: Engine, run_id: str | None = None) -> StoredPersonal | None:
    """The personal run `run_id`, or the newest one (None when the store has none)."""
    with engine.connect() as conn:
        run = _run_row(conn, run_id)
        if run is None:
            return None
        c = t.personal_cohorts.c
        cohorts = [Cohort(x.cohort, x.n_users, dict(x.weights), x.description) for x in
                   conn.execute(select(t.personal_cohorts).where(c.run_id == run.id).order_by(c.cohort))]
    return StoredPersonal(run.id, run.created_at, run.signals_run_id, dict(run.config), run.k, list(run.heldout),
                          dict(run.summary), cohorts)


def newer_signals_run(engine: Engine, run: StoredPersonal) -> str | None:
    """The newest signals run's id when it is not the one `run` was fitted from (its weights are then stale)."""
    s = t.signals_runs.c
    with engine.connect() as conn:
        newest = conn.execute(select(s.id).where(s.scope.is_(None)).order_by(s.created_at.desc(), s.id.desc())
                              .limit(1)).scalar()
    return newest if newest is not None and newest != run.signals_run_id else None


def user_weights(engine: Engine, user_id: str, run_id: str | None = None) -> UserWeights:
    """`user_id`'s weights and cohort in the personal run `run_id` (default: the newest). Raises RatingloopError
    saying why when they have none: no run yet, an unknown user, no ratings, none that counted."""
    with engine.connect() as conn:
        run = _run_row(conn, run_id)
        if run is None:
            raise RatingloopError("no personal run in this store: `ratingloop cohorts --fit` fits one from the "
                                  "newest signals run")
        u, c = t.personal_users.c, t.personal_cohorts.c
        row = conn.execute(select(t.personal_users).where(u.run_id == run.id, u.user_id == user_id)).first()
        if row is None:
            raise RatingloopError(_why_absent(conn, run, user_id))
        about = conn.execute(select(c.description).where(c.run_id == run.id, c.cohort == row.cohort)).scalar() \
            if row.cohort is not None else None
    return UserWeights(run.id, user_id, dict(row.weights), row.mean_rating, row.rating_sd, row.n_ratings, row.cohort,
                       row.status, about)


def cohort_members(engine: Engine, run_id: str) -> dict[int, tuple[frozenset[str], int]]:
    """Per cohort of personal run `run_id`: the users it placed there and how many ratings they gave."""
    u = t.personal_users.c
    members: dict[int, tuple[set[str], int]] = {}
    with engine.connect() as conn:
        for row in conn.execute(select(u.cohort, u.user_id, u.n_ratings).where(u.run_id == run_id,
                                                                                 u.cohort.is_not(None))):
            users, n = members.setdefault(row.cohort, (set(), 0))
            users.add(row.user_id)
            members[row.cohort] = (users, n + row.n_ratings)
    return {c: (frozenset(users), n) for c, (users, n) in sorted(members.items())}


def purge_user(conn: Connection, footprint: Footprint) -> None:
    """A deleted user's weights in every personal run, inside the deleting transaction."""
    conn.execute(delete(t.personal_users).where(t.personal_users.c.user_id == footprint.user_id))


def _run_row(conn: Connection, run_id: str | None) -> Any:
    p = t.personal_runs.c
    query = select(t.personal_runs)
    query = query.where(p.id == run_id) if run_id is not None else query.order_by(p.created_at.desc(), p.id.desc())
    run = conn.execute(query.limit(1)).first()
    if run is None and run_id is not None:
        raise RatingloopError(f"personal run {run_id!r} is not in this store; `ratingloop cohorts` shows the newest")
    return run


def _why_absent(conn: Connection, run: Any, user_id: str) -> str:
    r, i = t.ratings.c, t.interactions.c
    n_rated = conn.execute(select(func.count()).where(r.rater_id == user_id)).scalar_one()
    if not n_rated:
        n_asked = conn.execute(select(func.count()).where(i.user_id == user_id)).scalar_one()
        if not n_asked:
            return f"user {user_id!r} is not in this store: no interactions and no ratings under that id"
        return (f"user {user_id!r} has {n_asked} interaction(s) but has rated none: weights come from a user's own "
                "ratings of their answers")
    sr = t.signals_raters.c
    flagged = conn.execute(select(sr.reasons).where(sr.run_id == run.signals_run_id, sr.rater_id == user_id,
                                                    sr.flagged.is_(True))).scalar()
    if flagged is not None:
        return (f"user {user_id!r}'s ratings did not count in signals run {run.signals_run_id}: flagged "
                f"({'; '.join(flagged)}); see `ratingloop raters`")
    signals = conn.execute(select(t.signals_runs.c.last_rating_at).where(t.signals_runs.c.id == run.signals_run_id)
                           ).scalar()
    newer = conn.execute(select(func.count()).where(r.rater_id == user_id, r.created_at > signals)).scalar_one() \
        if signals is not None else n_rated
    if newer:
        return (f"user {user_id!r} has {n_rated} rating(s), {newer} of them newer than signals run "
                f"{run.signals_run_id}, which personal run {run.id} was fitted from: run `ratingloop signals`, then "
                "`ratingloop cohorts --fit`")
    return (f"user {user_id!r} has {n_rated} rating(s), but no overall rating ({', '.join(OVERALL_KINDS)}) as an "
            f"end user ({' or '.join(USER_SOURCES)} source) counted in signals run {run.signals_run_id}: weights "
            "say what drives a user's overall ratings of their answers")


def _summary(data: UserRatings, fit: PersonalFit) -> dict[str, Any]:
    status = [u.status for u in fit.users]
    return {"n_users": len(fit.users), "n_placed": status.count("placed"), "n_few": status.count("few"),
            "n_constant": status.count("constant"), "n_ratings": len(data.y), "features": list(fit.features),
            "population": fit.population, "length_mean": round(data.length_mean, 6),
            "length_sd": round(data.length_sd, 6), "left_out": data.left_out, "notes": fit.notes}


def _write(conn: Connection, run: StoredPersonal, fit: PersonalFit) -> None:
    conn.execute(insert(t.personal_runs).values(id=run.run_id, created_at=run.created_at,
                                                signals_run_id=run.signals_run_id, config=run.config, k=run.k,
                                                heldout=run.heldout, summary=run.summary))
    rows = [{"run_id": run.run_id, "user_id": u.user_id, "weights": u.weights, "mean_rating": u.mean_rating,
             "rating_sd": u.rating_sd, "n_ratings": u.n_ratings, "cohort": u.cohort, "status": u.status}
            for u in fit.users]
    for k in range(0, len(rows), CHUNK):
        conn.execute(insert(t.personal_users), rows[k:k + CHUNK])
    if run.cohorts:
        conn.execute(insert(t.personal_cohorts), [{"run_id": run.run_id} | asdict(c) for c in run.cohorts])
