"""Stage 4, dataset: a deleted user out of the built datasets.

A snapshot whose rows used any rating the deletion removed (its manifest's `rating_ids`: the ratings on
the user's interactions, and those they gave, corrections included) held their data, so it is purged:
in the deleting transaction (`purge_user`) its row gets `purged_at` and its manifest loses those rating
ids; after the commit (`remove_purged_files`) its folder loses what the build wrote (train/, eval/,
*.jsonl) and its manifest.json becomes a purge notice. Nothing trains on a purged snapshot again:
`ratingloop train` refuses the notice, and refuses the snapshot by id when a copy of the folder turns up.
Its prompt keys stay in the row (hashes of whole conversations): evaluation still needs to know which
prompts the versions trained on it have seen.

Another snapshot's manifest names the user only when they were a flagged rater (`inputs.flagged_raters`,
their ratings left out of its rows): the id is removed there, in the row and in manifest.json.

    purge_user(conn, footprint)                  # inside store.delete_user's transaction
    remove_purged_files(engine, footprint)       # after it commits; safe to run again
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, select, update

from ratingloop.dataset.write import remove_build_files, write_manifest
from ratingloop.store import Footprint
from ratingloop.store import tables as t

log = logging.getLogger(__name__)

snapshots = cast(Table, t.DatasetSnapshot.__table__)


def purge_user(conn: Connection, footprint: Footprint) -> None:
    """Mark the snapshots that held the user's data purged, and take their id and rating ids out of manifests."""
    s = snapshots.c
    for row in conn.execute(select(s.id, s.manifest, s.purged_at)).all():
        manifest, held = _without_user(row.manifest or {}, footprint)
        if manifest is None:
            continue
        values: dict[str, Any] = {"manifest": manifest}
        if held and row.purged_at is None:
            values["purged_at"] = footprint.deleted_at
        conn.execute(update(snapshots).where(s.id == row.id).values(**values))
        if held:
            log.info("dataset snapshot %s held a deleted user's data: purged", row.id)


def remove_purged_files(engine: Engine, footprint: Footprint) -> None:
    """The files of purged snapshots (a purge notice in their place), and the user's id out of other
    snapshots' manifest.json. A folder that a later build has taken over is left alone."""
    s = snapshots.c
    with engine.connect() as conn:
        rows = conn.execute(select(s.id, s.format, s.path, s.manifest, s.purged_at).where(s.path.is_not(None))).all()
    for row in rows:
        folder = Path(row.path)
        on_disk = _manifest(folder)
        if on_disk is None or on_disk.get("snapshot_id") != row.id or "purged_at" in on_disk:
            continue
        if row.purged_at is not None:
            remove_build_files(folder)
            write_manifest(folder, _notice(row.id, row.format, row.purged_at, folder))
        elif footprint.user_id in (on_disk.get("inputs") or {}).get("flagged_raters", []):
            write_manifest(folder, dict(row.manifest))


def purged_at(engine: Engine, snapshot_id: str) -> datetime | None:
    """When the snapshot was purged (a user whose data it held was deleted); None if it was not."""
    with engine.connect() as conn:
        found: datetime | None = conn.execute(select(snapshots.c.purged_at).where(
            snapshots.c.id == snapshot_id)).scalar_one_or_none()
    return found


def _without_user(manifest: dict[str, Any], footprint: Footprint) -> tuple[dict[str, Any] | None, bool]:
    """The manifest without the user's rating ids and id (None when it names neither), and whether its rows
    held their data."""
    ids = list(manifest.get("rating_ids") or [])
    inputs = dict(manifest.get("inputs") or {})
    flagged = list(inputs.get("flagged_raters") or [])
    held = not footprint.rating_ids.isdisjoint(ids)
    if not held and footprint.user_id not in flagged:
        return None, False
    inputs["flagged_raters"] = [r for r in flagged if r != footprint.user_id]
    return {**manifest, "rating_ids": [r for r in ids if r not in footprint.rating_ids], "inputs": inputs}, held


def _notice(snapshot_id: str, fmt: str, when: datetime, folder: Path) -> dict[str, Any]:
    return {"snapshot_id": snapshot_id, "format": fmt, "purged_at": when.isoformat(),
            "purged": "this dataset held data of a user who has since been deleted: its rows were removed and "
                      f"nothing trains on it again; build a new one (ratingloop build --format {fmt} --out {folder})"}


def _manifest(folder: Path) -> dict[str, Any] | None:
    try:
        found = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None
