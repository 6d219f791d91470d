"""Stage 1, the store: deleting an end user, for privacy - their rows gone, a keyed tombstone left, and no
copy of what was deleted left behind in the database file.

    footprint = delete_user(engine, "u1", user_key=settings.feedback_secret(), purges=[...])

One transaction removes the user's interactions (with every rating on them, comparisons that name one of them
among others included) and every rating they gave,
runs each later stage's purge step (`Purge`) on what they left (`Footprint`: their ids and texts, read
just before the rows go), and writes a tombstone so that no later import or request brings the old data
back (store/writes.py refuses it with 410). `ratingloop.privacy.forget_user` passes every stage's purge
step; this module knows none of them.

No copy in the file: on SQLite the deleting connection runs with `PRAGMA secure_delete=ON`, so freed
cells and pages are overwritten with zeros rather than unlinked, and afterwards the WAL (which still
holds pages as they were written) is checkpointed into the database file and truncated. PostgreSQL
keeps deleted rows in their pages as dead tuples until VACUUM reclaims them: autovacuum does so in
time; `VACUUM interactions, ratings` does it now.

A deletion and the recording of a dataset snapshot never interleave (`lock_against_deletions`), so a
build that read the user's data before the deletion cannot record its snapshot after it.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Sequence

from sqlalchemy import Connection, Engine, delete, insert, select, text

from ratingloop.errors import FieldError, InvalidInput
from ratingloop.store import tables as t
from ratingloop.store.writes import legacy_user_hash, user_hash

log = logging.getLogger(__name__)

_PG_DELETION_LOCK = 0x6465_6C65_7465  # "delete": deletions vs snapshot recording on PostgreSQL


@dataclass(frozen=True)
class Footprint:
    """What a deleted user left in the store, read in the deleting transaction: what later stages purge."""

    user_id: str
    deleted_at: datetime
    interaction_ids: frozenset[str]  # their interactions
    rating_ids: frozenset[str]  # every rating removed: theirs, and every one on their interactions
    prompts: tuple[list[dict[str, Any]], ...]  # the messages of their interactions
    texts: tuple[str, ...]  # their interactions' responses and the text of every removed rating
    interactions: int  # rows removed
    ratings: int


Purge = Callable[[Connection, Footprint], None]  # a stage's purge step, inside the deleting transaction


def delete_user(engine: Engine, user_id: str, *, user_key: bytes, purges: Sequence[Purge] = ()) -> Footprint:
    """Remove a user's interactions (with every rating on them or comparing them) and every rating they gave, run
    `purges`, and leave a tombstone keyed by `user_key` (`writes.user_hash`); all in one transaction."""
    if not user_id:
        raise InvalidInput([FieldError("user_id", "is empty; name the user to delete")])
    I, R, C = t.interactions, t.ratings, t.compared_interactions
    with _deleting(engine) as conn:
        theirs = select(I.c.id).where(I.c.user_id == user_id).scalar_subquery()
        compares_theirs = select(C.c.rating_id).where(C.c.interaction_id.in_(theirs)).scalar_subquery()
        touched = (R.c.rater_id == user_id) | R.c.interaction_id.in_(theirs) | R.c.id.in_(compares_theirs)
        asked = conn.execute(select(I.c.id, I.c.messages, I.c.response).where(I.c.user_id == user_id)).all()
        rated = conn.execute(select(R.c.id, R.c.text).where(touched)).all()
        n_ratings = conn.execute(delete(R).where(touched)).rowcount
        n_inter = conn.execute(delete(I).where(I.c.user_id == user_id)).rowcount
        conn.execute(delete(t.raters).where(t.raters.c.id == user_id))
        footprint = Footprint(
            user_id, datetime.now(timezone.utc), frozenset(row.id for row in asked), frozenset(row.id for row in rated),
            tuple(row.messages or [] for row in asked),
            tuple([row.response for row in asked if row.response] + [row.text for row in rated if row.text]),
            n_inter, n_ratings)
        for purge in purges:
            purge(conn, footprint)
        _tombstone(conn, footprint, user_key)
    log.info("deleted a user: %d interactions, %d ratings", n_inter, n_ratings)
    return footprint


def lock_against_deletions(conn: Connection) -> None:
    """Hold off user deletions until this transaction ends (PostgreSQL; SQLite's BEGIN IMMEDIATE already
    admits one writer at a time). A snapshot's recording takes it before checking the tombstones."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_DELETION_LOCK})


def _tombstone(conn: Connection, footprint: Footprint, user_key: bytes) -> None:
    """One tombstone per user, keyed by `user_key`; a legacy (unsalted) one of theirs is folded into it."""
    D = t.deleted_users
    hashes = [user_hash(footprint.user_id, user_key), legacy_user_hash(footprint.user_id)]
    before = conn.execute(select(D.c.interactions_deleted, D.c.ratings_deleted).where(D.c.user_hash.in_(hashes))).all()
    conn.execute(delete(D).where(D.c.user_hash.in_(hashes)))
    conn.execute(insert(D), {
        "user_hash": hashes[0], "deleted_at": footprint.deleted_at,
        "interactions_deleted": footprint.interactions + sum(row[0] for row in before),
        "ratings_deleted": footprint.ratings + sum(row[1] for row in before),
    })


@contextmanager
def _deleting(engine: Engine) -> Iterator[Connection]:
    """A write transaction that leaves no deleted content in the database file (see the module's notes)."""
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        if sqlite:  # on the driver's connection: outside SQLAlchemy's transaction, which it must precede
            conn.connection.dbapi_connection.execute("PRAGMA secure_delete=ON")  # type: ignore[union-attr]
        try:
            conn = conn.execution_options(ratingloop_write=True)
            with conn.begin():
                lock_against_deletions(conn)
                yield conn
        finally:
            if sqlite:
                conn.connection.dbapi_connection.execute("PRAGMA secure_delete=OFF")  # type: ignore[union-attr]
    if sqlite:
        truncate_wal(engine)


def truncate_wal(engine: Engine) -> None:
    """Copy SQLite's WAL into the database file and truncate it to 0 bytes (it waits for readers, up to
    the busy timeout); a warning when a reader held on past that."""
    with engine.connect() as conn:
        busy, frames, done = conn.connection.dbapi_connection.execute(  # type: ignore[union-attr]
            "PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    if busy:
        log.warning("the WAL of %s could not be truncated (a reader held it: %s of %s frames copied); "
                    "deleted rows stay in it until the next checkpoint", engine.url.database, done, frames)
