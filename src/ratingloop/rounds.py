"""Stage 7, the loop's bookkeeping: round and step records, the one-runner lock, and the durable engine.

`loop.py` says what a round does; this module makes a round survive a crash. Three parts:

* Records (`loop_rounds`, `loop_steps` in the store): why a round started, each step's status, attempts,
  timing and output, and the round's outcome. `ratingloop loop status` reads only these, so it never
  touches the durable engine and can run beside a live loop.
* The runner lock: one `ratingloop loop` per store. SQLite: an flock on `<store>.loop-lock` beside the
  database file; PostgreSQL: a session advisory lock. The OS or the server drops either when the process
  dies, SIGKILL included, so a crash never leaves a stale lock to clear by hand. It is taken BEFORE the
  durable engine starts: DBOS's launch re-queues every PENDING workflow of its executor, and when a
  second process launched beside a running round that round's steps ran twice at once (measured).
* The durable engine, DBOS Transact: the round is a DBOS workflow whose id is the round id, and each
  step a DBOS step, checkpointed in DBOS's system database - SQLite `<store>.dbos.db` beside a SQLite
  store, the schema `dbos` (or `<schema>_dbos`) in the same PostgreSQL database as a PostgreSQL store. On
  the next launch DBOS resumes a killed round: steps that finished are not run again (their recorded
  output is replayed), the interrupted step runs again, so every step must be safe to repeat (loop.py
  says how each one is).

    with runner_lock(engine, wait=False), Durable(engine, run_round) as durable:
        durable.resume_pending()
        durable.run(round_id, spec)
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from sqlalchemy import Engine, func, insert, select, text, update

from ratingloop import waits
from ratingloop.errors import RatingloopError
from ratingloop.store import tables as t
from ratingloop.store.db import write_transaction
from ratingloop.store.writes import new_id

log = logging.getLogger(__name__)

WORKFLOW = "ratingloop_round"
# DBOS recovers only workflows of the running application version. A fixed version lets a round killed
# under one release resume under the next; change it only when the round's steps change incompatibly.
ENGINE_VERSION = "round-1"
_PG_RUNNER_LOCK = 0x7261_7469_6E67_6C70  # "ratinglp": the loop's advisory lock on a PostgreSQL store
LOCK_POLL_S = 2.0


class LoopBusy(RatingloopError):
    """Another `ratingloop loop` holds this store's runner lock."""


@dataclass(frozen=True)
class StepRow:
    name: str
    seq: int
    status: str  # running | succeeded | failed | skipped
    attempts: int
    started_at: datetime
    finished_at: datetime | None
    detail: dict[str, Any]
    error: str | None

    @property
    def duration_s(self) -> float | None:
        return (self.finished_at - self.started_at).total_seconds() if self.finished_at else None


@dataclass(frozen=True)
class RoundRow:
    id: str
    created_at: datetime
    finished_at: datetime | None
    status: str  # running | succeeded | failed
    outcome: str | None  # promoted | rejected | failed
    trigger: str
    ratings_until: datetime | None
    ratings_total: int
    new_ratings: int
    version_id: str | None
    spec: dict[str, Any]
    error: str | None
    steps: list[StepRow] = field(default_factory=list)

    @property
    def duration_s(self) -> float | None:
        return (self.finished_at - self.created_at).total_seconds() if self.finished_at else None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "outcome": self.outcome, "trigger": self.trigger,
                "created_at": self.created_at.isoformat(),
                "finished_at": self.finished_at.isoformat() if self.finished_at else None,
                "duration_s": self.duration_s, "new_ratings": self.new_ratings, "version_id": self.version_id,
                "error": self.error,
                "steps": [{"name": s.name, "status": s.status, "attempts": s.attempts, "duration_s": s.duration_s,
                           "started_at": s.started_at.isoformat(), "detail": s.detail, "error": s.error}
                          for s in self.steps]}


def _now() -> datetime:
    return datetime.now(timezone.utc)


# --- records ---------------------------------------------------------------------------------------

def usable_ratings(engine: Engine) -> tuple[int, datetime | None]:
    """How many ratings people gave (judge ratings, which `label` writes, never start a round) and the newest's time.
    Comparisons count: the signals step fits them, as `signals.ratings_since` counts them for a build."""
    r = t.ratings.c
    with engine.connect() as conn:
        n, newest = conn.execute(select(func.count(), func.max(r.created_at)).where(r.source != "judge")).one()
    if isinstance(newest, datetime) and newest.tzinfo is None:  # func.max loses the column's type on SQLite
        newest = newest.replace(tzinfo=timezone.utc)
    elif isinstance(newest, str):
        newest = datetime.fromisoformat(newest).replace(tzinfo=timezone.utc)
    return int(n), newest


def new_ratings(engine: Engine) -> int:
    """Usable ratings that arrived since the last round started (all of them before the first round).

    Counted, not dated: imported ratings carry their own (possibly old) timestamps."""
    total, _ = usable_ratings(engine)
    last = last_round(engine)
    return total if last is None else max(0, total - last.ratings_total)


def start_round(engine: Engine, *, trigger: str, spec: dict[str, Any]) -> str:
    """Record a new round as running; returns its id (also the durable engine's workflow id)."""
    total, newest = usable_ratings(engine)
    previous = last_round(engine)
    round_id = new_id()
    with write_transaction(engine) as conn:
        conn.execute(insert(t.loop_rounds).values(
            id=round_id, created_at=_now(), finished_at=None, status="running", outcome=None, trigger=trigger,
            ratings_until=newest, ratings_total=total,
            new_ratings=total if previous is None else max(0, total - previous.ratings_total),
            version_id=None, spec=spec, error=None))
    return round_id


def finish_round(engine: Engine, round_id: str, *, outcome: str, version_id: str | None = None,
                 error: str | None = None) -> None:
    status = "failed" if outcome == "failed" else "succeeded"
    with write_transaction(engine) as conn:
        conn.execute(update(t.loop_rounds).where(t.loop_rounds.c.id == round_id).values(
            status=status, outcome=outcome, finished_at=_now(), error=error,
            **({"version_id": version_id} if version_id else {})))


def set_round_version(engine: Engine, round_id: str, version_id: str) -> None:
    with write_transaction(engine) as conn:
        conn.execute(update(t.loop_rounds).where(t.loop_rounds.c.id == round_id).values(version_id=version_id))


def step_started(engine: Engine, round_id: str, name: str, seq: int) -> None:
    """Mark a step running; a step that runs again after a crash counts one more attempt."""
    s = t.loop_steps.c
    with write_transaction(engine) as conn:
        found = conn.execute(select(s.attempts).where(s.round_id == round_id, s.name == name)).first()
        if found is None:
            conn.execute(insert(t.loop_steps).values(round_id=round_id, name=name, seq=seq, status="running",
                                                     attempts=1, started_at=_now(), finished_at=None, detail={},
                                                     error=None))
        else:
            conn.execute(update(t.loop_steps).where(s.round_id == round_id, s.name == name).values(
                status="running", attempts=found.attempts + 1, started_at=_now(), finished_at=None, error=None))


def step_finished(engine: Engine, round_id: str, name: str, status: str, detail: dict[str, Any],
                  error: str | None = None) -> None:
    s = t.loop_steps.c
    with write_transaction(engine) as conn:
        conn.execute(update(t.loop_steps).where(s.round_id == round_id, s.name == name).values(
            status=status, finished_at=_now(), detail=_json_safe(detail), error=error))


def _json_safe(value: Any) -> Any:
    """NaN and infinities (a win rate over no prompts) as null: PostgreSQL's JSON rejects them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def list_rounds(engine: Engine, limit: int | None = 20) -> list[RoundRow]:
    """The newest rounds first, each with its steps in order."""
    query = select(t.loop_rounds).order_by(t.loop_rounds.c.id.desc())
    if limit is not None:
        query = query.limit(limit)
    with engine.connect() as conn:
        rounds = conn.execute(query).mappings().all()
        ids = [r["id"] for r in rounds]
        steps = conn.execute(select(t.loop_steps).where(t.loop_steps.c.round_id.in_(ids))
                             .order_by(t.loop_steps.c.seq)).mappings().all() if ids else []
    by_round: dict[str, list[StepRow]] = {}
    for s in steps:
        by_round.setdefault(s["round_id"], []).append(StepRow(**{k: v for k, v in s.items() if k != "round_id"}))
    return [RoundRow(**r, steps=by_round.get(r["id"], [])) for r in rounds]


def last_round(engine: Engine) -> RoundRow | None:
    rounds = list_rounds(engine, limit=1)
    return rounds[0] if rounds else None


def unfinished_rounds(engine: Engine) -> list[RoundRow]:
    """Rounds a killed process left running, oldest first."""
    return [r for r in reversed(list_rounds(engine, limit=None)) if r.status == "running"]


# --- one runner per store ----------------------------------------------------------------------------

@contextmanager
def runner_lock(engine: Engine, *, wait: bool) -> Iterator[None]:
    """Hold this store's loop lock for the block; raise LoopBusy when another process holds it (or, with
    `wait`, poll until it is free)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:  # the lock lives as long as this session
            _acquire(lambda: bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                               {"k": _PG_RUNNER_LOCK}).scalar()), wait, "another process")
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_RUNNER_LOCK})
                conn.commit()
        return
    import fcntl

    path = Path(f"{_sqlite_file(engine)}.loop-lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        def take() -> bool:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return True

        _acquire(take, wait, lambda: f"process {path.read_text().strip() or '?'} ({path})")
        yield
    finally:
        os.close(fd)  # closing drops the flock


def _acquire(take: Callable[[], bool], wait: bool, holder: str | Callable[[], str]) -> None:
    said = False
    while not take():
        who = holder() if callable(holder) else holder
        if not wait:
            raise LoopBusy(f"another `ratingloop loop` runs on this store ({who} holds the runner lock); "
                           "`ratingloop loop status` shows its rounds; add --wait to start when it stops")
        if not said:
            log.warning("waiting for the other `ratingloop loop` on this store to stop (%s)", who)
            said = True
        time.sleep(LOCK_POLL_S)


def _sqlite_file(engine: Engine) -> Path:
    database = engine.url.database
    if not database or database == ":memory:":
        raise RatingloopError("ratingloop loop needs a store in a file or on PostgreSQL, not an in-memory SQLite "
                              "database; pass --db sqlite:///PATH or set RATINGLOOP_DATABASE_URL")
    return Path(database).expanduser().resolve()


# --- the durable engine ---------------------------------------------------------------------------------

def system_database(engine: Engine) -> tuple[str, str | None]:
    """DBOS's system database for this store: (URL, schema). Beside the store, on the same backend."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            schema = str(conn.execute(text("SELECT current_schema()")).scalar())
        return engine.url.render_as_string(hide_password=False), "dbos" if schema == "public" else f"{schema}_dbos"
    store = _sqlite_file(engine)
    return f"sqlite:///{store.with_name(store.stem + '.dbos' + store.suffix)}", None


RoundFn = Callable[[str, dict[str, Any]], dict[str, Any]]
_registered: dict[str, Callable[..., Any]] = {}


class Durable:
    """DBOS launched for one store, with the round workflow registered; a context manager.

    DBOS is a process-wide singleton: one store per process at a time (the CLI opens one)."""

    def __init__(self, engine: Engine, round_fn: RoundFn):
        self.engine = engine
        self.round_fn = round_fn

    def __enter__(self) -> Durable:
        from dbos import DBOS, DBOSConfig

        if WORKFLOW not in _registered:  # DBOS keeps registrations for the life of the process
            _registered[WORKFLOW] = DBOS.workflow(name=WORKFLOW, max_recovery_attempts=5)(_round_workflow)
        _round_fns[WORKFLOW] = self.round_fn
        url, schema = system_database(self.engine)
        config: DBOSConfig = {"name": "ratingloop", "system_database_url": url, "application_version": ENGINE_VERSION,
                              "log_level": "WARNING", "max_executor_threads": 4}
        if schema is not None:
            config["dbos_system_schema"] = schema
        started = time.monotonic()
        # launching resumes a killed process's round in DBOS's thread at once, which imports torch there; a module
        # this thread imports meanwhile that looks torch up in sys.modules (scipy.stats, in the loop's watch_live)
        # found it half-imported and raised (tests/test_loop.py, a loop killed mid-round). torch loads here first.
        import torch  # noqa: F401
        DBOS(config=config)
        DBOS.launch()
        log.debug("durable engine up in %.2fs (system database %s)", time.monotonic() - started, url)
        return self

    def __exit__(self, *exc: Any) -> None:
        from dbos import DBOS

        DBOS.destroy(destroy_registry=False)

    def pending(self) -> list[str]:
        """Rounds the engine holds unfinished (a killed process's), oldest first."""
        from dbos import DBOS

        found = DBOS.list_workflows(name=WORKFLOW, status=["PENDING", "ENQUEUED"], sort_desc=False)
        return [w.workflow_id for w in found]

    def wait(self, round_id: str) -> dict[str, Any]:
        """The result of a round the engine is resuming (its launch re-queued it)."""
        from dbos import DBOS

        result: dict[str, Any] = DBOS.retrieve_workflow(round_id).get_result()
        return result

    def run(self, round_id: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Run round `round_id` under the engine and wait for its result."""
        from dbos import DBOS, SetWorkflowID

        with SetWorkflowID(round_id):
            handle = DBOS.start_workflow(_registered[WORKFLOW], round_id, spec)
        future = getattr(handle, "future", None)  # DBOS runs the round in a thread of its own
        if future is not None:
            waits.done(future)  # so that Ctrl-C reaches the caller during a round, not after it; DBOS's
            # get_result below then reads the outcome as it always did (a cancelled round's from its database)
        result: dict[str, Any] = handle.get_result()
        return result


_round_fns: dict[str, RoundFn] = {}


def _round_workflow(round_id: str, spec: dict[str, Any]) -> dict[str, Any]:
    return _round_fns[WORKFLOW](round_id, spec)


def durable_step(engine: Engine, round_id: str, name: str, seq: int,
                 fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one step of the round inside the engine: checkpointed, and recorded in loop_steps.

    `fn` returns the step's output (JSON-able, small); {"status": "failed" | "skipped", "error": ...} in it
    records that status. An exception propagates and fails the round."""
    from dbos import DBOS

    def recorded() -> dict[str, Any]:
        step_started(engine, round_id, name, seq)
        try:
            output = fn()
        except BaseException as e:
            step_finished(engine, round_id, name, "failed", {}, f"{type(e).__name__}: {e}")
            raise
        status = str(output.get("status", "succeeded"))
        step_finished(engine, round_id, name, status, output, output.get("error"))
        return output

    if DBOS.workflow_id is None:  # outside the engine (tests of one step): just run it, recorded
        return recorded()
    result: dict[str, Any] = DBOS.run_step({"name": name}, recorded)
    return result
