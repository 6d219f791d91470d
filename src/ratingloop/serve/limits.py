"""Stage 2, serving: rate limits, so that one caller cannot fill the store or starve the others.

Token buckets, one per key: a feedback token (counted in ratings), an admin key (ratings too) and a
client address (requests, for callers without the admin key: it is checked before any body is read).
A bucket holds `burst` and refills at `rate` per second; a request that finds too little answers 429
with `Retry-After` saying when it would fit. Buckets live in the server process (each worker has its
own), cost a few hundred bytes each and are forgotten once full again.

The defaults are far beyond a person clicking (a person rates a few answers a minute; a page that
sends a thumbs, three aspects and a comment at once spends 5 of a token's 60) and far below what
fills a disk (one token: ~260k ratings a day instead of 60,000 in seconds).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable

from ratingloop.errors import RatingloopError


class TooManyRequests(RatingloopError):
    status = 429

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))


@dataclass(frozen=True)
class Rate:
    """`rate` per second, up to `burst` at once; a rate of 0 means no limit."""

    rate: float
    burst: float

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0


class Buckets:
    """Token buckets by key. Thread-safe; O(1) per check; memory bounded by forgetting full buckets."""

    MAX_KEYS = 100_000

    def __init__(self, limit: Rate, what: str, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.what = what
        self._clock = clock
        self._level: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str, cost: float = 1.0) -> None:
        """Spend `cost` from `key`'s bucket, or raise TooManyRequests saying when to retry."""
        if self.limit.unlimited:
            return
        rate, burst = self.limit.rate, self.limit.burst
        if cost > burst:
            raise TooManyRequests(f"{self.what}: {cost:g} at once is more than the limit of {burst:g}; "
                                  "send fewer at a time", retry_after=1)
        now = self._clock()
        with self._lock:
            tokens, at = self._level.get(key, (burst, now))
            tokens = min(burst, tokens + (now - at) * rate)
            if tokens < cost:
                self._level[key] = (tokens, now)
                wait = (cost - tokens) / rate
                raise TooManyRequests(f"{self.what}: over the limit of {rate:g}/s (bursts of {burst:g}); "
                                      f"retry in {math.ceil(wait)} s", retry_after=wait)
            self._level[key] = (tokens - cost, now)
            if len(self._level) > self.MAX_KEYS:
                self._forget_full(now)

    def _forget_full(self, now: float) -> None:
        rate, burst = self.limit.rate, self.limit.burst
        self._level = {k: (tok, at) for k, (tok, at) in self._level.items() if tok + (now - at) * rate < burst}
