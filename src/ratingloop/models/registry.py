"""The registry: training runs and the model versions they produce, with their lineage.

Stage 5 (train) writes here; evaluation, serving and the loop read it. A run is recorded as
``running`` before any work starts and ends either ``succeeded`` - in the same transaction as its
``candidate`` ModelVersion, so a succeeded run always has its version - or ``failed`` with the reason
and no version. Rows are written with SQLAlchemy Core through `write_transaction`.

    run_id = start_run(engine, method="sft", config=cfg, base_model=str(base))
    version_id = finish_run(engine, run_id, adapter_path=out_dir, metrics={"train_loss": 1.2})
    list_versions(engine)  # newest first

What serves is the one ``active`` version, or the base model when none is. `promote`, `rollback` and
`reject` change it, each in one transaction that also appends a version_events row (who, why, the
evaluation behind it), serialised with each other (SQLite's BEGIN IMMEDIATE; a PostgreSQL advisory
lock), so at every moment exactly one version or the base serves - a crash mid-way leaves the old
state - and a partial unique index refuses a second active row whatever code writes it.

    promote(engine, version_id, actor="gate", evaluation_id=eval_id)
    rollback(engine, actor="alice")  # (from, to): back to what served before the last promotion

Beside the active version, cohort versions (trained for one cohort of users, ratingloop.personal) serve their
cohort while their status is `cohort` (`promote_cohort`, `retire_cohort`); see the section below.

A version trained on a dataset snapshot that a user's deletion purged is `tainted_at` (`taint_versions`),
and so is every version trained on top of it: weights cannot forget what they learnt, so the registry
records it; what serves is the operator's call (`versions list` shows it).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator, cast

from sqlalchemy import Connection, Engine, Table, func, insert, select, text, update

from ratingloop.errors import RatingloopError
from ratingloop.store import Footprint
from ratingloop.store import tables as t
from ratingloop.store.db import write_transaction
from ratingloop.store.writes import new_id

training_runs = cast(Table, t.TrainingRun.__table__)
model_versions = cast(Table, t.ModelVersion.__table__)
dataset_snapshots = cast(Table, t.DatasetSnapshot.__table__)
version_events = cast(Table, t.VersionEvent.__table__)
evaluations = cast(Table, t.Evaluation.__table__)

log = logging.getLogger(__name__)

COHORT = "cohort"  # the status of a cohort version while it serves its cohort's users
VERSION_STATUSES = ("candidate", "active", COHORT, "rejected", "retired")
VERDICTS = ("promote", "reject")
REWARD_METHODS = ("reward",)  # versions that score answers; they never serve
_PG_REGISTRY_LOCK = 0x7265_6769_7374  # "regist": one registry action at a time on PostgreSQL


@dataclass(frozen=True)
class RunRow:
    id: str
    created_at: datetime
    finished_at: datetime | None
    method: str
    status: str  # running | succeeded | failed
    config: dict[str, Any]
    dataset_snapshot_id: str | None
    base_model: str
    parent_version_id: str | None
    metrics: dict[str, Any]
    log_path: str | None
    error: str | None
    round_id: str | None = None  # the loop round that started it


@dataclass(frozen=True)
class VersionRow:
    id: str
    created_at: datetime
    base_model: str
    adapter_path: str | None
    parent_id: str | None
    training_run_id: str | None
    dataset_snapshot_id: str | None
    metrics: dict[str, Any]
    status: str  # candidate | active | cohort | rejected | retired
    traffic_share: float
    tainted_at: datetime | None = None  # trained (it or an ancestor) on a snapshot purged since
    personal_run_id: str | None = None  # a cohort version: the personal run whose cohort it was trained for
    cohort: int | None = None  # ... and that cohort; None for a global version

    @property
    def scope(self) -> str:
        """"global", or "cohort N of personal run R"."""
        return "global" if self.cohort is None else f"cohort {self.cohort} of personal run {self.personal_run_id}"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def start_run(engine: Engine, *, method: str, config: dict[str, Any], base_model: str,
              dataset_snapshot_id: str | None = None, parent_version_id: str | None = None,
              log_path: str | Path | None = None, round_id: str | None = None) -> str:
    """Record a run as ``running`` and return its id (a ULID)."""
    run_id = new_id()
    with write_transaction(engine) as conn:
        conn.execute(insert(training_runs).values(
            id=run_id, created_at=_now(), finished_at=None, method=method, status="running", config=config,
            dataset_snapshot_id=dataset_snapshot_id, base_model=base_model, parent_version_id=parent_version_id,
            metrics={}, log_path=str(log_path) if log_path is not None else None, error=None, round_id=round_id))
    return run_id


def update_run(engine: Engine, run_id: str, **values: Any) -> None:
    """Fill in what became known while the run went on (its dataset snapshot, its resolved base)."""
    allowed = {"config", "dataset_snapshot_id", "base_model", "parent_version_id", "log_path", "metrics"}
    unknown = set(values) - allowed
    if unknown:
        raise ValueError(f"update_run: cannot set {sorted(unknown)}; settable: {sorted(allowed)}")
    with write_transaction(engine) as conn:
        conn.execute(update(training_runs).where(training_runs.c.id == run_id).values(**values))


def finish_run(engine: Engine, run_id: str, *, adapter_path: str | Path | None, metrics: dict[str, Any]) -> str:
    """Mark the run succeeded and create its candidate version, together; return the version id."""
    version_id = new_id()
    now = _now()
    with write_transaction(engine) as conn:
        run = conn.execute(select(training_runs).where(training_runs.c.id == run_id)).mappings().first()
        if run is None:
            raise RatingloopError(f"training run {run_id!r} is not in the registry")
        if run["status"] != "running":
            raise RatingloopError(f"training run {run_id} is {run['status']}, not running; it cannot succeed again")
        conn.execute(update(training_runs).where(training_runs.c.id == run_id).values(
            status="succeeded", finished_at=now, metrics=metrics, error=None))
        conn.execute(insert(model_versions).values(
            id=version_id, created_at=now, base_model=run["base_model"],
            adapter_path=str(adapter_path) if adapter_path is not None else None,
            parent_id=run["parent_version_id"], training_run_id=run_id,
            dataset_snapshot_id=run["dataset_snapshot_id"], metrics=metrics, status="candidate", traffic_share=0.0))
    return version_id


def fail_run(engine: Engine, run_id: str, error: str, metrics: dict[str, Any] | None = None) -> None:
    """Mark the run failed with its reason; no version is created."""
    values: dict[str, Any] = {"status": "failed", "finished_at": _now(), "error": error}
    if metrics is not None:
        values["metrics"] = metrics
    with write_transaction(engine) as conn:
        conn.execute(update(training_runs).where(training_runs.c.id == run_id).values(**values))


def reopen_run(engine: Engine, run_id: str) -> None:
    """Set a failed (or orphaned `running`) run back to running, for `train --resume`."""
    with write_transaction(engine) as conn:
        run = conn.execute(select(training_runs.c.status).where(training_runs.c.id == run_id)).first()
        if run is None:
            raise RatingloopError(f"training run {run_id!r} is not in the registry")
        if run.status == "succeeded":
            raise RatingloopError(f"training run {run_id} already succeeded; it cannot run again")
        conn.execute(update(training_runs).where(training_runs.c.id == run_id).values(
            status="running", finished_at=None, error=None))


def snapshot_exists(engine: Engine, snapshot_id: str) -> bool:
    with engine.connect() as conn:
        query = select(dataset_snapshots.c.id).where(dataset_snapshots.c.id == snapshot_id)
        return conn.execute(query).first() is not None


def get_run(engine: Engine, run_id: str) -> RunRow:
    with engine.connect() as conn:
        row = conn.execute(select(training_runs).where(training_runs.c.id == run_id)).mappings().first()
    if row is None:
        raise RatingloopError(f"training run {run_id!r} is not in the registry; `ratingloop versions list` shows runs")
    return RunRow(**row)


def list_runs(engine: Engine) -> list[RunRow]:
    """Every training run, newest first (ULIDs sort by creation time)."""
    with engine.connect() as conn:
        rows = conn.execute(select(training_runs).order_by(training_runs.c.id.desc())).mappings().all()
    return [RunRow(**r) for r in rows]


def get_version(engine: Engine, version_id: str) -> VersionRow:
    with engine.connect() as conn:
        row = conn.execute(select(model_versions).where(model_versions.c.id == version_id)).mappings().first()
    if row is None:
        raise RatingloopError(f"model version {version_id!r} is not in the registry; `ratingloop versions list` "
                              "shows the versions")
    return VersionRow(**row)


def list_versions(engine: Engine, status: str | None = None) -> list[VersionRow]:
    """Model versions, newest first; only those with `status` when given."""
    if status is not None and status not in VERSION_STATUSES:
        raise RatingloopError(f"status {status!r} is not one of {', '.join(VERSION_STATUSES)}")
    query = select(model_versions).order_by(model_versions.c.id.desc())
    if status is not None:
        query = query.where(model_versions.c.status == status)
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [VersionRow(**r) for r in rows]


def active_version(engine: Engine) -> VersionRow | None:
    """The version that serves now; None when none is active, i.e. the base model serves."""
    active = list_versions(engine, "active")
    return active[0] if active else None


# --- what serves: promote, rollback, reject ---------------------------------------------------------------


@dataclass(frozen=True)
class EventRow:
    id: str
    created_at: datetime
    action: str  # promote | rollback | reject | traffic | cohort (serves its cohort) | retire (stops serving it)
    version_id: str | None  # promote/rollback: what became active (None: the base); reject: the rejected one
    previous_id: str | None  # what was active before (promote, rollback)
    actor: str
    reason: str | None
    evaluation_id: str | None


@contextmanager
def _registry_transaction(engine: Engine) -> Iterator[Connection]:
    """A write transaction that no other registry action interleaves with: on SQLite BEGIN IMMEDIATE
    already admits one writer; PostgreSQL (READ COMMITTED) needs the lock, or two promotions would
    each retire the old active row and the second would then hit the one-active index."""
    with write_transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_REGISTRY_LOCK})
        yield conn


def version_method(engine: Engine, version_id: str) -> str | None:
    """The training method behind a version (sft, kto, reward, ...); None when no run made it."""
    version = get_version(engine, version_id)
    if version.training_run_id is None:
        return None
    with engine.connect() as conn:
        query = select(training_runs.c.method).where(training_runs.c.id == version.training_run_id)
        return cast(str | None, conn.execute(query).scalar_one_or_none())


def check_servable(engine: Engine, version_id: str) -> VersionRow:
    """The version when it may become active; RatingloopError saying why not (unknown, a reward model,
    a missing or corrupt model folder)."""
    from ratingloop.models.files import check_model_files

    version = get_version(engine, version_id)
    method = version_method(engine, version_id)
    if method in REWARD_METHODS:
        raise RatingloopError(f"version {version_id} is a reward model (method {method}); it scores answers and "
                              "cannot serve them; promote a version trained with sft, kto, dpo, ...")
    try:
        check_model_files(version.adapter_path)
    except RatingloopError as e:
        raise RatingloopError(f"version {version_id} cannot serve: {e}. Retrain it, or promote another "
                              "(`ratingloop versions list`)") from e
    return version


def promote(engine: Engine, version_id: str, *, actor: str, reason: str | None = None,
            evaluation_id: str | None = None) -> None:
    """Make `version_id` the one active version: the old active one becomes `retired`, in one transaction
    with the event. Promoting the version that is already active changes nothing (a retried gate).
    A cohort version is refused: `promote_cohort` serves it to its cohort."""
    version = check_servable(engine, version_id)
    if version.cohort is not None:
        raise RatingloopError(f"version {version_id} was trained for {version.scope}; it serves that cohort's users "
                              "and cannot become the global active version")
    with _registry_transaction(engine) as conn:
        _check_evaluation(conn, evaluation_id)
        previous = _active_id(conn)
        if previous == version_id:
            log.info("promote %s: already active; nothing to do", version_id)
            return
        _switch(conn, previous, version_id)
        _event(conn, "promote", version_id, previous, actor, reason, evaluation_id)
    log.info("promoted %s (was %s) by %s", version_id, previous or "the base", actor)


def reject(engine: Engine, version_id: str, *, actor: str, reasons: list[str],
           evaluation_id: str | None = None) -> None:
    """Mark a version `rejected` with the reasons (an event row). The active version cannot be rejected:
    roll back first, so that something whole always serves."""
    if get_version(engine, version_id).status == COHORT:
        raise RatingloopError(f"version {version_id} serves its cohort; `ratingloop versions retire {version_id}` "
                              "first, then reject it")
    with _registry_transaction(engine) as conn:
        _check_evaluation(conn, evaluation_id)
        if _active_id(conn) == version_id:
            raise RatingloopError(f"version {version_id} is active; `ratingloop versions rollback` first, then "
                                  "reject it")
        conn.execute(update(model_versions).where(model_versions.c.id == version_id).values(
            status="rejected", traffic_share=0.0))
        _rebalance(conn)
        _event(conn, "reject", version_id, None, actor, "; ".join(reasons) or None, evaluation_id)
    log.info("rejected %s by %s: %s", version_id, actor, "; ".join(reasons))


def rollback(engine: Engine, *, actor: str, reason: str | None = None) -> tuple[str | None, str | None]:
    """Undo the newest promotion not yet undone: what it replaced serves again; returns (from, to), None
    meaning the base. RatingloopError when there is nothing to roll back to, or the version to return to
    can no longer serve (its folder is gone: promote another instead)."""
    with _registry_transaction(engine) as conn:
        current, target = _rollback_target(engine, conn)
        _switch(conn, current, target)
        _event(conn, "rollback", target, current, actor, reason, None)
    log.info("rolled back from %s to %s by %s", current or "the base", target or "the base", actor)
    return current, target


def rollback_plan(engine: Engine) -> tuple[str | None, str | None]:
    """What `rollback` would do now, (from, to), changing nothing; the same errors as `rollback`."""
    with engine.connect() as conn:
        return _rollback_target(engine, conn)


def set_traffic_share(engine: Engine, version_id: str, share: float, *, actor: str) -> None:
    """Serve `version_id` to `share` of users (by a stable hash of their id; serve/routing.py) beside the
    active version, which takes whatever the others leave; 0 ends the split. The version must be able to
    serve and must not be active or rejected; the shares of the non-active versions add up to at most 1."""
    if not 0.0 <= share <= 1.0:
        raise RatingloopError(f"share {share}: must be between 0 and 1")
    version = check_servable(engine, version_id)
    with _registry_transaction(engine) as conn:
        status = conn.execute(select(model_versions.c.status).where(model_versions.c.id == version_id)).scalar_one()
        if status == "active":
            raise RatingloopError(f"version {version_id} is active: it serves whatever share the others leave; "
                                  "set the share of the version to try beside it instead")
        if status == "rejected":
            raise RatingloopError(f"version {version_id} was rejected; it gets no traffic")
        if version.cohort is not None:
            raise RatingloopError(f"version {version_id} was trained for {version.scope}; it serves that cohort's "
                                  "users (`versions promote`), not a share of everyone")
        others = conn.execute(select(func.coalesce(func.sum(model_versions.c.traffic_share), 0.0)).where(
            model_versions.c.status != "active", model_versions.c.id != version_id)).scalar_one()
        if others + share > 1.0 + 1e-9:
            raise RatingloopError(f"share {share}: the other versions already take {others:.0%} of users; "
                                  f"at most {1 - others:.0%} is left")
        conn.execute(update(model_versions).where(model_versions.c.id == version.id).values(traffic_share=share))
        _rebalance(conn)
        _event(conn, "traffic", version_id, None, actor, f"traffic share {share:.0%}", None)
    log.info("version %s serves %.0f%% of users (by %s)", version_id, share * 100, actor)


def _rollback_target(engine: Engine, conn: Connection) -> tuple[str | None, str | None]:
    undoable = _undoable_promotions(conn)
    current = _active_id(conn)
    if not undoable or undoable[-1].previous_id == current:
        raise RatingloopError("nothing to roll back to: no promotion in the registry's history is left to undo "
                              "(`ratingloop versions list` shows the versions; `versions promote V` makes one "
                              "active)")
    target = undoable[-1].previous_id
    if target is not None:
        check_servable(engine, target)
    return current, target


# --- cohort versions: one per cohort of a personal run, beside the global active version ------------------
#
# A cohort version is trained for one cohort (ratingloop.personal) on top of the global version, and serves
# that cohort's users (serve/routing.py) while its status is `cohort`; everyone else, and anyone its personal
# run did not place in the cohort, gets the global active version. It never becomes `active` and never takes a
# traffic share, so the global history (promote, rollback) is untouched by it.


def set_cohort(engine: Engine, version_id: str, personal_run_id: str, cohort: int) -> None:
    """Scope a candidate to `cohort` of personal run `personal_run_id`, before its evaluation. Repeating it
    (a resumed round) changes nothing; a version already scoped elsewhere, or serving, is refused."""
    version = get_version(engine, version_id)
    if (version.personal_run_id, version.cohort) == (personal_run_id, cohort):
        return
    if version.status != "candidate" or version.cohort is not None:
        raise RatingloopError(f"version {version_id} is {version.status} ({version.scope}); only a global candidate "
                              "can be trained for a cohort")
    with _registry_transaction(engine) as conn:
        found = conn.execute(select(t.PersonalCohort.__table__.c.cohort).where(
            t.PersonalCohort.__table__.c.run_id == personal_run_id,
            t.PersonalCohort.__table__.c.cohort == cohort)).first()
        if found is None:
            raise RatingloopError(f"personal run {personal_run_id!r} has no cohort {cohort}; `ratingloop cohorts` "
                                  "lists the cohorts of the newest run")
        conn.execute(update(model_versions).where(model_versions.c.id == version_id).values(
            personal_run_id=personal_run_id, cohort=cohort))


def promote_cohort(engine: Engine, version_id: str, *, actor: str, reason: str | None = None,
                   evaluation_id: str | None = None) -> list[str]:
    """Serve cohort version `version_id` to its cohort's users, in one transaction with its event: the version
    that served the same cohort retires, and so does a cohort version of an older personal run most of whose
    users are in this cohort now (the cohorts were refitted; this one replaces it). Returns the retired ids.
    Serving it already changes nothing (a retried gate)."""
    version = check_servable(engine, version_id)
    if version.cohort is None:
        raise RatingloopError(f"version {version_id} is a global version; `versions promote` makes it active")
    if version.status == COHORT:
        log.info("promote %s to %s: already serving it; nothing to do", version_id, version.scope)
        return []
    if version.status != "candidate":
        raise RatingloopError(f"version {version_id} is {version.status}; only a candidate can start to serve "
                              f"{version.scope}")
    with _registry_transaction(engine) as conn:
        _check_evaluation(conn, evaluation_id)
        replaced = _replaced_cohort_versions(conn, version)
        if replaced:
            conn.execute(update(model_versions).where(model_versions.c.id.in_(replaced)).values(status="retired"))
        conn.execute(update(model_versions).where(model_versions.c.id == version_id).values(status=COHORT))
        _event(conn, "cohort", version_id, replaced[0] if replaced else None, actor,
               f"serves {version.scope}" + (f": {reason}" if reason else ""), evaluation_id)
    log.info("version %s serves %s (replacing %s) by %s", version_id, version.scope, ", ".join(replaced) or "none",
             actor)
    return replaced


def retire_cohort(engine: Engine, version_id: str, *, actor: str, reason: str | None = None) -> None:
    """Stop serving cohort version `version_id`: its cohort's users get the global active version again."""
    version = get_version(engine, version_id)
    if version.status != COHORT:
        raise RatingloopError(f"version {version_id} is {version.status}, not serving a cohort; nothing to retire")
    with _registry_transaction(engine) as conn:
        conn.execute(update(model_versions).where(model_versions.c.id == version_id).values(status="retired"))
        _event(conn, "retire", version_id, None, actor, reason or f"stops serving {version.scope}", None)
    log.info("version %s no longer serves %s (by %s)", version_id, version.scope, actor)


def _replaced_cohort_versions(conn: Connection, version: VersionRow) -> list[str]:
    users = t.PersonalUser.__table__.c
    serving = conn.execute(select(model_versions.c.id, model_versions.c.personal_run_id, model_versions.c.cohort)
                           .where(model_versions.c.status == COHORT)).all()
    mine = set(conn.execute(select(users.user_id).where(users.run_id == version.personal_run_id,
                                                        users.cohort == version.cohort)).scalars())
    replaced: list[str] = []
    for row in serving:
        if (row.personal_run_id, row.cohort) == (version.personal_run_id, version.cohort):
            replaced.insert(0, row.id)  # the one it replaces outright comes first
        elif str(row.personal_run_id) < str(version.personal_run_id):
            theirs = set(conn.execute(select(users.user_id).where(users.run_id == row.personal_run_id,
                                                                  users.cohort == row.cohort)).scalars())
            if theirs and len(theirs & mine) * 2 > len(theirs):
                replaced.append(row.id)
    return replaced


def list_events(engine: Engine) -> list[EventRow]:
    """The registry's history, oldest first."""
    with engine.connect() as conn:
        return [EventRow(**r) for r in conn.execute(
            select(version_events).order_by(version_events.c.created_at, version_events.c.id)).mappings()]


def _active_id(conn: Connection) -> str | None:
    query = select(model_versions.c.id).where(model_versions.c.status == "active")
    return cast(str | None, conn.execute(query).scalar_one_or_none())


def _switch(conn: Connection, old: str | None, new: str | None) -> None:
    """Old active -> retired before new -> active: the one-active index is checked per statement."""
    if old is not None:
        conn.execute(update(model_versions).where(model_versions.c.id == old).values(
            status="retired", traffic_share=0.0))
    if new is not None:
        conn.execute(update(model_versions).where(model_versions.c.id == new).values(status="active"))
    _rebalance(conn)


def _rebalance(conn: Connection) -> None:
    """The active version's share is what the versions on a traffic split leave."""
    others = conn.execute(select(func.coalesce(func.sum(model_versions.c.traffic_share), 0.0)).where(
        model_versions.c.status != "active")).scalar_one()
    conn.execute(update(model_versions).where(model_versions.c.status == "active").values(
        traffic_share=max(0.0, 1.0 - others)))


def _undoable_promotions(conn: Connection) -> list[EventRow]:
    """The promotions a rollback can still undo: replay the history, a rollback undoing the newest one."""
    stack: list[EventRow] = []
    query = (select(version_events).where(version_events.c.action.in_(("promote", "rollback")))
             .order_by(version_events.c.created_at, version_events.c.id))
    for row in conn.execute(query).mappings():
        if row["action"] == "promote":
            stack.append(EventRow(**row))
        elif stack:
            stack.pop()
    return stack


def _event(conn: Connection, action: str, version_id: str | None, previous_id: str | None, actor: str,
           reason: str | None, evaluation_id: str | None) -> None:
    # History is replayed in created_at order; two events within a clock tick (or a clock step back)
    # must still sort in the order they happened, so each is at least 1 us after the newest one.
    newest = conn.execute(select(version_events.c.created_at).order_by(version_events.c.created_at.desc())
                          .limit(1)).scalar_one_or_none()
    now = _now()
    if newest is not None and now <= newest:
        now = newest + timedelta(microseconds=1)
    conn.execute(insert(version_events).values(
        id=new_id(), created_at=now, action=action, version_id=version_id, previous_id=previous_id,
        actor=actor[:200], reason=reason, evaluation_id=evaluation_id))


def _check_evaluation(conn: Connection, evaluation_id: str | None) -> None:
    if evaluation_id is None:
        return
    if conn.execute(select(evaluations.c.id).where(evaluations.c.id == evaluation_id)).first() is None:
        raise RatingloopError(f"evaluation {evaluation_id!r} is not in the store")


def taint_versions(conn: Connection, footprint: Footprint) -> None:
    """In a user's deleting transaction, after the dataset stage's purge: versions trained on a purged
    snapshot, and their descendants, are tainted (once; the first deletion's time stays)."""
    v, s = model_versions.c, dataset_snapshots.c
    rows = conn.execute(select(v.id, v.parent_id, v.tainted_at, s.purged_at)
                        .join(dataset_snapshots, s.id == v.dataset_snapshot_id, isouter=True)).all()
    tainted = {r.id for r in rows if r.tainted_at is not None or r.purged_at is not None}
    grew = True
    while grew:  # down the lineage: a child of a tainted version learnt from it
        before = len(tainted)
        tainted |= {r.id for r in rows if r.parent_id in tainted}
        grew = len(tainted) > before
    new = [r.id for r in rows if r.id in tainted and r.tainted_at is None]
    if new:
        conn.execute(update(model_versions).where(v.id.in_(new)).values(tainted_at=footprint.deleted_at))
        log.warning("%d model version(s) were trained on a deleted user's data and are marked tainted: %s",
                    len(new), ", ".join(new))


# --- evaluations -------------------------------------------------------------------------------------------


def record_evaluation(engine: Engine, candidate_id: str, against_id: str | None, verdict: str,
                      report: dict[str, Any]) -> str:
    """Store one evaluation (candidate vs `against_id`, None = the base) with its full report; its id."""
    if verdict not in VERDICTS:
        raise RatingloopError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
    for version_id in (candidate_id, against_id):
        if version_id is not None:
            get_version(engine, version_id)
    evaluation_id = new_id()
    with write_transaction(engine) as conn:
        conn.execute(insert(evaluations).values(id=evaluation_id, created_at=_now(), candidate_id=candidate_id,
                                                against_id=against_id, verdict=verdict, report=report))
    return evaluation_id


def latest_evaluation(engine: Engine, version_id: str) -> dict[str, Any] | None:
    """The newest evaluation of `version_id` as a candidate: id, created_at, candidate_id, against_id,
    verdict, report; None when it was never evaluated."""
    query = (select(evaluations).where(evaluations.c.candidate_id == version_id)
             .order_by(evaluations.c.created_at.desc(), evaluations.c.id.desc()).limit(1))
    with engine.connect() as conn:
        row = conn.execute(query).mappings().first()
    return dict(row) if row is not None else None

