"""Waiting on another thread's work without going deaf to Ctrl-C.

A process-wide signal such as a terminal's SIGINT may be delivered to any thread. Python runs its handler
(raising KeyboardInterrupt) only in the main thread, and only when that thread next runs Python code; a main
thread blocked in `Future.result()` with no timeout waits in the OS until the future is done - minutes, for a
chat on a busy CPU or a loop round - however often the user presses Ctrl-C. Waiting in short slices lets it
see the interrupt within one slice (tests/test_waits.py sends the signal to another thread on purpose).
"""

from __future__ import annotations

from concurrent.futures import Future, wait
from typing import Any, TypeVar

R = TypeVar("R")

SLICE_S = 0.25


def done(future: Future[Any]) -> None:
    """Return once `future` is done (its outcome untouched), woken every SLICE_S seconds so that a pending
    Ctrl-C is raised here."""
    while not future.done():
        wait([future], timeout=SLICE_S)


def result(future: Future[R]) -> R:
    """`future.result()`, waited for as `done` waits."""
    done(future)
    return future.result()
