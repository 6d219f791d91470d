"""The registry: training runs and the model versions they produce, with their lineage.

Stage 5 (train) writes here; evaluation, serving and the loop read it. A run is recorded as
``running`` before any work starts and ends either ``succeeded`` - in the same transaction as its
``candidate`` ModelVersion, so a succeeded run always has its version - or ``failed`` with the reason
and no version. Rows are written with SQLAlchemy Core through `write_transaction`.

    run_id = start_run(engine, method="sft", config=cfg, base_model=str(base))
    version_id = finish_run(engine, run_id, adapter_path=out_dir, metrics={"train_loss": 1.2})
    list_versions(engine)  # newest first
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Engine, Table, insert, select, update

from ratingloop.errors import RatingloopError
from ratingloop.store import tables as t
from ratingloop.store.db import write_transaction
from ratingloop.store.writes import new_id

training_runs = cast(Table, t.TrainingRun.__table__)
model_versions = cast(Table, t.ModelVersion.__table__)
dataset_snapshots = cast(Table, t.DatasetSnapshot.__table__)

VERSION_STATUSES = ("candidate", "active", "rejected", "retired")


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
    status: str  # candidate | active | rejected | retired
    traffic_share: float


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
