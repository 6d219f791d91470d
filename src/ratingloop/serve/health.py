"""Stage 2, serving: is the store usable, and what to say while it is not.

While the database refuses connections or its disk is full, writes answer 503 with `Retry-After` (an
outage, not a bug: no traceback, no database error text in the answer) and the log gets one line when
the outage starts and one when it ends, however many requests it turned away. `/healthz` answers 503
while an outage lasts, when the database does not answer, when it is a read-only replica, or when the
disk beside a SQLite store is nearly full; it probes at most once a second, on its own thread, so a
flood that fills the server's thread pool does not make it slow.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, make_url, text

from ratingloop.store.db import driver_message

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5
PROBE_EVERY_S = 1.0


class Outage:
    """Counts the requests turned away while the store is unusable; logs the start and the end once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.since: float | None = None
        self.last: float = 0.0
        self.refused = 0
        self.reason = ""

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self.refused += 1
            self.last = time.monotonic()
            if self.since is None:
                self.since = time.monotonic()
                self.reason = _reason(exc)
                log.warning("store unavailable (%s); answering 503 until it recovers", self.reason)

    def ok(self) -> None:
        if self.since is None:  # the common case, without the lock
            return
        with self._lock:
            if self.since is not None:
                log.warning("store available again after %.1f s; %d requests were answered 503",
                            time.monotonic() - self.since, self.refused)
                self.since, self.refused, self.reason = None, 0, ""

    @property
    def ongoing(self) -> bool:
        """Failing now: a write failed within the last few seconds and none has succeeded since."""
        return self.since is not None and time.monotonic() - self.last < 2 * RETRY_AFTER_S


def _reason(exc: BaseException) -> str:
    return f"{type(getattr(exc, 'orig', None) or exc).__name__}: {driver_message(exc)[:160]}"


class StoreHealth:
    def __init__(self, engine: Engine, outage: Outage, min_free_bytes: int):
        self._engine = engine
        self._outage = outage
        self._min_free = min_free_bytes
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ratingloop-health")
        self._last: tuple[float, dict[str, Any]] | None = None
        database = make_url(str(engine.url)).database if engine.dialect.name == "sqlite" else None
        self._sqlite_dir = Path(database).expanduser().resolve().parent if database and database != ":memory:" else None

    async def check(self) -> dict[str, Any]:
        """{"ok": bool, "problem": str | None}; probed at most once a second."""
        now = time.monotonic()
        if self._last is None or now - self._last[0] >= PROBE_EVERY_S:
            result = await asyncio.get_running_loop().run_in_executor(self._pool, self._probe)
            self._last = (time.monotonic(), result)
        result = self._last[1]
        if result["ok"] and self._outage.ongoing:
            return {"ok": False, "problem": f"writes are failing ({self._outage.reason})"}
        return result

    def _probe(self) -> dict[str, Any]:
        try:
            with self._engine.connect() as conn:
                postgres = self._engine.dialect.name == "postgresql"
                if postgres and conn.execute(text("SELECT pg_is_in_recovery()")).scalar():
                    return {"ok": False, "problem": "the database is a read-only replica"}
                conn.execute(text("SELECT 1"))
        except Exception as e:
            return {"ok": False, "problem": f"the database does not answer ({type(e).__name__})"}
        if self._sqlite_dir is not None:
            free = shutil.disk_usage(self._sqlite_dir).free
            if free < self._min_free:
                return {"ok": False, "problem": f"the disk holding the store has {free // 2**20} MiB free "
                                                f"(RATINGLOOP_MIN_FREE_DISK_BYTES: {self._min_free // 2**20} MiB)"}
        if not self._outage.ongoing:
            self._outage.ok()  # no write has failed for a while and the database answers: over
        return {"ok": True, "problem": None}

    def close(self) -> None:
        self._pool.shutdown(wait=False)
