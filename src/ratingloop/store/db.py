"""Opening the store: engines for SQLite (WAL, the embedded default) and PostgreSQL, and migrations
applied on first use so that a new user never runs a setup step by hand.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from ratingloop.errors import StoreError

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
_PG_MIGRATION_LOCK = 0x7261_7469_6E67  # "rating": serialises concurrent first use on PostgreSQL

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def open_engine(url: str, *, migrate: bool = True) -> Engine:
    """An engine for `url`, migrated to the latest schema. Cached per URL within the process."""
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = new_engine(url)
            if migrate:
                upgrade(engine)
            _engines[url] = engine
        return engine


def dispose_engines() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def new_engine(url: str) -> Engine:
    """A fresh, unmigrated, uncached engine for `url` (SQLite pragmas set); most code wants open_engine."""
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise StoreError(f"database URL {url!r} is not a valid SQLAlchemy URL: {e}") from None
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    elif parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":  # plain postgresql:// means psycopg 3 here
            parsed = parsed.set(drivername="postgresql+psycopg")
        kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        if "prepare_threshold" not in parsed.query:
            # No server-side prepared statements: psycopg prepares a query after 5 runs and PostgreSQL
            # then settles on a generic plan, costed while the table was small; as the ratings table
            # grows that plan (a sequential scan for `idempotency_key IN (...)`) made each group
            # commit ~10x slower (measured 4.9 ms vs 0.5 ms per lookup). Also what PgBouncer needs.
            kwargs["connect_args"] = {"prepare_threshold": None}
    try:
        engine = create_engine(parsed, **kwargs)
    except Exception as e:  # a missing driver, say
        raise StoreError(f"cannot use database {parsed.render_as_string()}: {e}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
    return engine


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that will write. On SQLite it takes the write lock up front (BEGIN IMMEDIATE):
    a deferred transaction that reads, then writes, fails at once with "database is locked" when
    another writer got in between, instead of waiting its turn."""
    with engine.connect() as conn:
        conn = conn.execution_options(ratingloop_write=True)
        with conn.begin():
            yield conn


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the one writer; NORMAL sync is durable across crashes of the
    # process (not of the OS) and is what WAL is designed for.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    # Checkpoint the WAL every ~40 MB instead of SQLite's 4 MB: each checkpoint fsyncs, and with the
    # ratings table's random-key indexes that halved the insert rate here (11k vs 21k rows/s).
    cursor.execute("PRAGMA wal_autocheckpoint=10000")
    cursor.close()
    # let SQLAlchemy's "begin" event (below) emit BEGIN itself, as SQLAlchemy's docs recommend
    dbapi_connection.isolation_level = None


def _sqlite_begin(conn: Connection) -> None:
    immediate = conn.get_execution_options().get("ratingloop_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _alembic_config(connection: Any) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def upgrade(engine: Engine) -> str | None:
    """Apply every pending migration; returns the revision the database is at afterwards."""
    head = head_revision()
    try:
        if current_revision(engine) == head:
            return head
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            if MigrationContext.configure(conn).get_current_revision() != head:
                log.info("migrating %s to %s", engine.url.render_as_string(), head)
                command.upgrade(_alembic_config(conn), "head")
    except OperationalError as e:
        raise StoreError(
            f"cannot open database {engine.url.render_as_string()}: {e.orig}. "
            "Check RATINGLOOP_DATABASE_URL or --db."
        ) from None
    return head


def unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database cannot be used right now (unreachable, refusing connections, out of
    disk, locked too long) rather than that a statement is wrong: such a failure is retried later, by
    the caller, and never blamed on the data."""
    if isinstance(exc, (OperationalError, InterfaceError, PoolTimeout)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def driver_message(exc: BaseException) -> str:
    """A database error's first line, from the driver, without the statement and parameters SQLAlchemy
    appends (which may hold users' data): what a log line or an import report may show."""
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0][:200]
