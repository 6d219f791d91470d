"""Shared fixtures. Every store test runs on real SQLite and on real PostgreSQL.

PostgreSQL: RATINGLOOP_TEST_POSTGRES_URL (default postgres@127.0.0.1:5432/test, trust auth). Each test
gets its own schema, created and dropped around it. Unreachable PostgreSQL skips those tests locally
and fails the run when CI=true, so a broken database never passes as a skip.
"""

from __future__ import annotations

import os

# Before anything loads torch: its OpenMP threads sleep when they wait instead of spinning. The suite runs on two
# workers on two cores (and starts servers and CLI processes, which inherit this); with spinning threads two
# training tests side by side ran a KTO step at 37.6 s each, with sleeping ones at 17.5 s (alone: 9.0 s either way).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import logging  # noqa: E402
import signal
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import create_engine, text

from file_order import file_of, file_ranks
from ratingloop.config import Settings
from ratingloop.store.db import dispose_engines
from servers import running_server_at

pytest_plugins = ["train_support"]  # the training tests' tiny base and example store

PG_URL = os.environ.get("RATINGLOOP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
ADMIN_KEY = "test-admin-key"
UNLIMITED = {"RATINGLOOP_TOKEN_RATINGS_PER_S": "0", "RATINGLOOP_ADDRESS_REQUESTS_PER_S": "0"}


@pytest.hookimpl(trylast=True)  # after `-m` and `-k` deselect: only the tests that run count
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first, each file's tests in their own order (tests/file_order.py says why); with
    `--no-loadscope-reorder` (addopts) xdist queues the files in this order."""
    ranks = file_ranks(items)
    items.sort(key=lambda item: ranks[file_of(item)])  # stable: ties keep the collection order


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No test reads the developer's ~/.ratingloop or a stray RATINGLOOP_* variable, and every test starts with
    Python's own Ctrl-C handling, which the processes it starts inherit: in full runs a worker's SIGINT was found
    ignored (by an earlier test or a library it ran), and the demo started for the Ctrl-C test never saw it."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    for name in list(os.environ):
        if name.startswith("RATINGLOOP_") and name != "RATINGLOOP_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("RATINGLOOP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)  # keeps a stray .env out
    yield
    dispose_engines()
    # DBOS gives its logger a StreamHandler on sys.stderr as it is when DBOS first starts in a process; under a
    # test's capsys that is pytest's capture stream, closed after the test, and every later DBOS start in the
    # worker flushes it ("I/O operation on closed file")
    for handler in logging.getLogger("dbos").handlers:
        if type(handler) is logging.StreamHandler and handler.stream not in (sys.__stderr__, sys.__stdout__):
            handler.stream = sys.__stderr__  # not setStream: it flushes the closed one first


@pytest.fixture(scope="session")
def default_model() -> Path:
    """The real default model's converted folder, in the machine's model cache (~/.ratingloop/models).

    Converted once per machine, as `ratingloop model pull` does; the slow end-to-end tests share it.
    tests/test_models_default.py checks the pull and conversion themselves in a fresh folder.
    """
    from ratingloop.models.pull import ModelPullError, pull_default_model

    try:
        return Path(pull_default_model(Path.home() / ".ratingloop").path)
    except ModelPullError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the default model cannot be pulled under CI: {e}")
        pytest.skip(f"the default model cannot be pulled here: {e}")


@pytest.fixture(scope="session")
def pg_server() -> str:
    try:
        engine = create_engine(PG_URL)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as e:  # noqa: BLE001 - any failure to connect means "no server"
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {PG_URL} is unreachable under CI=true: {e}")
        pytest.skip(f"PostgreSQL at {PG_URL} is unreachable: {e}")
    return PG_URL


@contextmanager
def fresh_schema(server: str) -> Iterator[str]:
    """A URL of a fresh, empty schema on the real PostgreSQL `server`, dropped when the block ends."""
    schema = f"rl_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in server else "?"
    try:
        yield f"{server}{sep}options=-csearch_path%3D{schema}"
    finally:
        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty schema on the real server, dropped after the test."""
    with fresh_schema(pg_server) as url:
        yield url


@pytest.fixture
def other_url(db_url: str, tmp_path: Path) -> Iterator[str]:
    """A second empty store on the same kind of database as `db_url` (import -> export -> import elsewhere)."""
    if db_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'other.db'}"
        return
    with fresh_schema(db_url.split("?")[0]) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """Both real databases: the test runs once on SQLite, once on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return request.getfixturevalue(name)


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=db_url, data_dir=tmp_path / "data", admin_key=ADMIN_KEY)


@pytest.fixture
def running_server(db_url: str, tmp_path: Path) -> Iterator[str]:
    """A real `ratingloop serve --backend none` process on a free port; yields its base URL. Its rate limits
    are off: the tests that use it send thousands of ratings from one address on purpose."""
    with running_server_at(db_url, tmp_path, env=UNLIMITED) as base:
        yield base

