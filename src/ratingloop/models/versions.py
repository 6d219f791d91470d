"""The registry as users see it: the rows of `ratingloop versions list`, and which model answers for
`generate --model active|base|ID`. Reads the registry (models/registry.py); writes nothing.

    choose_model(engine, None)  # ModelChoice: the active version's folder, or the base when none is active
    version_rows(engine)        # newest first: id, status, method, parent, traffic_share, created_at, verdict, ...
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from ratingloop.errors import RatingloopError
from ratingloop.models.registry import (
    REWARD_METHODS,
    VersionRow,
    active_version,
    evaluations,
    model_versions,
    training_runs,
)


@dataclass(frozen=True)
class ModelChoice:
    ref: str  # what models.load.resolve_model takes: a folder, a cached hub id, or "default"
    version_id: str | None  # the registry version behind it; None for the base or an outside folder
    label: str  # for messages: "version 01J... (active)", "the base default (no version is active)"


def choose_model(engine: Engine, ref: str | None = "active") -> ModelChoice:
    """Turn ``active`` (also None, the default), ``base`` or a version id into the model to load; anything
    else (a folder, a hub id, ``default``) passes through. The base is what the newest registered version
    was trained on (what the loop trains on), else the default model."""
    ref = "active" if ref is None or not ref.strip() else ref.strip()
    if ref == "active":
        version = active_version(engine)
        if version is None:
            base = base_ref(engine)
            return ModelChoice(base, None, f"the base {base} (no version is active)")
        return _of(version, "active")
    if ref == "base":
        base = base_ref(engine)
        return ModelChoice(base, None, f"the base {base}")
    if not Path(ref).expanduser().exists():
        with engine.connect() as conn:
            row = conn.execute(select(model_versions).where(model_versions.c.id == ref)).mappings().first()
        if row is not None:
            return _of(VersionRow(**row), row["status"])
    return ModelChoice(ref, None, ref)


def _of(version: VersionRow, status: str) -> ModelChoice:
    if version.adapter_path is None:
        raise RatingloopError(f"version {version.id} records no model folder; it cannot answer")
    return ModelChoice(version.adapter_path, version.id, f"version {version.id} ({status})")


def base_ref(engine: Engine) -> str:
    """The base model that serves when no version is active: the newest non-reward version's base."""
    query = (select(model_versions.c.base_model)
             .join(training_runs, training_runs.c.id == model_versions.c.training_run_id, isouter=True)
             .where(training_runs.c.method.is_(None) | training_runs.c.method.not_in(REWARD_METHODS))
             .order_by(model_versions.c.id.desc()).limit(1))
    with engine.connect() as conn:
        base = conn.execute(query).scalar_one_or_none()
    return str(base) if base else "default"


def version_rows(engine: Engine) -> list[dict[str, Any]]:
    """Every version, newest first, with its method and its newest evaluation's verdict (None if never
    evaluated): what `versions list --json` prints (JSON-ready: created_at as ISO 8601)."""
    v, r, e = model_versions, training_runs, evaluations
    newest = (select(e.c.verdict, e.c.id).where(e.c.candidate_id == v.c.id)
              .order_by(e.c.created_at.desc(), e.c.id.desc()).limit(1))
    query = (select(v, r.c.method, newest.with_only_columns(e.c.verdict).scalar_subquery().label("verdict"),
                    newest.with_only_columns(e.c.id).scalar_subquery().label("evaluation_id"))
             .join(r, r.c.id == v.c.training_run_id, isouter=True).order_by(v.c.id.desc()))
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    # every model_versions column as before (scripts read adapter_path, metrics), plus the names
    return [{"id": x["id"], "status": x["status"], "method": x["method"], "parent": x["parent_id"],
             "traffic_share": x["traffic_share"], "created_at": x["created_at"].isoformat(),
             "verdict": x["verdict"], "evaluation_id": x["evaluation_id"],
             "tainted_at": x["tainted_at"].isoformat() if x["tainted_at"] else None,  # trained on a purged snapshot
             "cohort": x["cohort"], "personal_run_id": x["personal_run_id"],  # a cohort version's cohort; None: global
             **{k: x[k] for k in ("base_model", "adapter_path", "parent_id", "training_run_id",
                                  "dataset_snapshot_id", "metrics")}} for x in rows]


def servable_versions(engine: Engine) -> list[dict[str, Any]]:
    """Every version that can answer (not a reward model, a model folder recorded), oldest first, with
    its status and traffic share: one query, cheap enough for a server to poll every second."""
    v, r = model_versions, training_runs
    query = (select(v.c.id, v.c.status, v.c.traffic_share, v.c.adapter_path, v.c.created_at, v.c.personal_run_id,
                    v.c.cohort)
             .join(r, r.c.id == v.c.training_run_id, isouter=True)
             .where(v.c.adapter_path.is_not(None), r.c.method.is_(None) | r.c.method.not_in(REWARD_METHODS))
             .order_by(v.c.id))
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]
