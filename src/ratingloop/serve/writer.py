"""Stage 2, serving: group commit for the write API.

Concurrent requests hand their WriteUnits to one writer thread, which applies everything waiting in a
single transaction (judging each unit on its own) and answers each request once its rows are
committed. Under load one commit serves many requests; alone, a request waits for nobody.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import Any

from sqlalchemy import Engine

from ratingloop.store import UnitResult, WriteUnit, write_units

log = logging.getLogger(__name__)

MAX_GROUP = 512  # units per transaction; bounds the latency of the last request in a group


class GroupWriter:
    def __init__(self, engine: Engine):
        self._engine = engine
        self._queue: queue.SimpleQueue[tuple[WriteUnit, asyncio.Future[UnitResult]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ratingloop-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    async def write(self, unit: WriteUnit) -> UnitResult:
        if self._thread is None:
            raise RuntimeError("the writer is not running: serve the app with its lifespan "
                               "(uvicorn does; in tests use `with TestClient(app)`)")
        future: asyncio.Future[UnitResult] = asyncio.get_running_loop().create_future()
        self._queue.put((unit, future))
        return await future

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            group = [item]
            stop = False
            while len(group) < MAX_GROUP:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                group.append(more)
            self._commit(group)
            if stop:
                return

    def _commit(self, group: list[tuple[WriteUnit, asyncio.Future[UnitResult]]]) -> None:
        try:
            results: list[Any] = write_units(self._engine, [unit for unit, _ in group])
        except Exception as e:  # the database failed: every request in the group learns it
            log.exception("group commit of %d units failed", len(group))
            results = [e] * len(group)
        for (_, future), result in zip(group, results, strict=True):
            future.get_loop().call_soon_threadsafe(_settle, future, result)


def _settle(future: asyncio.Future[UnitResult], result: Any) -> None:
    if future.done():  # the client went away
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
