"""Stage 2, serving: which version answers a chat request, and noticing when that changes.

A request's `model` is ``active`` (also the default), ``base``, or a version id. ``active`` is split by
traffic share: each non-active version with a `traffic_share` answers that share of users, picked by a
stable hash of the user id, so a user sees one version until the shares change; the active version
answers the rest, and every request that names no user. Before that, a user in a cohort that a cohort version
serves (ratingloop.personal; registry status ``cohort``) gets that version: their cohort is the one the
version's personal run placed them in (the newest such run when several serve them). A user no run placed - new,
or with too few ratings - gets ``active`` as everyone else.

The registry is changed by other processes (the loop, `ratingloop versions promote|rollback|share`), so
a server polls it (`Router.watch`, about once a second: one small query) and swaps its routes when
they change - after the new versions are loaded, so nobody waits on a load. A request keeps the
version it was routed to until it finishes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from sqlalchemy import Engine, func, select, tuple_

from ratingloop.models import base_ref, servable_versions
from ratingloop.models.registry import COHORT
from ratingloop.store import tables as t

log = logging.getLogger(__name__)

BASE = "base"
ACTIVE = "active"


@dataclass(frozen=True)
class Target:
    """A model that can answer: `version` is a version id or "base"; `ref` what the loader takes."""

    version: str
    ref: str


class UnknownModel(LookupError):
    pass


def user_bucket(user: str) -> float:
    """Where a user falls in [0, 1): the same for the same id, on every server and every restart."""
    digest = hashlib.sha256(user.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@dataclass(frozen=True)
class Routes:
    active: Target
    base: Target
    split: tuple[tuple[Target, float], ...] = ()  # the non-active versions on a traffic split, by id
    versions: dict[str, Target] = field(default_factory=dict)  # every version that can answer by its id
    cohorts: dict[str, Target] = field(default_factory=dict)  # user id -> the cohort version serving them

    def pick(self, model: str | None, user: str | None) -> Target:
        """The target for a request's `model` and `user`; UnknownModel when nothing by that name serves."""
        if model in (None, "", ACTIVE):
            if user is not None and user in self.cohorts:
                return self.cohorts[user]
            if user is None or not self.split:
                return self.active
            at, upto = user_bucket(user), 0.0
            for target, share in self.split:
                upto += share
                if at < upto:
                    return target
            return self.active
        if model == BASE:
            return self.base
        if model in self.versions:
            return self.versions[model]
        raise UnknownModel(model)

    @property
    def live(self) -> set[Target]:
        """What answers `active` requests: worth keeping loaded."""
        return {self.active, *(target for target, _ in self.split), *self.cohorts.values()}


Members = dict[tuple[str, int], frozenset[str]]  # (personal run, cohort) -> its users


def load_routes(engine: Engine, base: str | None = None, members: Members | None = None) -> Routes:
    """The routes the registry describes now. `base` (serve --model) overrides the registry's base.
    `members`: the cohorts' users read last time, reused while each serving cohort has as many users."""
    base_target = Target(BASE, base or base_ref(engine))
    rows = servable_versions(engine)
    versions = {r["id"]: Target(r["id"], str(r["adapter_path"])) for r in rows}
    active = next((versions[r["id"]] for r in rows if r["status"] == "active"), base_target)
    split = tuple((versions[r["id"]], float(r["traffic_share"])) for r in rows
                  if r["status"] != "active" and r["traffic_share"] > 0)
    serving = sorted(((str(r["personal_run_id"]), int(r["cohort"]), versions[r["id"]]) for r in rows
                      if r["status"] == COHORT), key=lambda x: (x[0], x[1]), reverse=True)  # newest run first
    cohorts: dict[str, Target] = {}
    if serving:
        found = cohort_members(engine, [(run, cohort) for run, cohort, _ in serving], members)
        if members is not None:
            members.clear()
            members.update(found)
        for run, cohort, target in serving:
            for user in found.get((run, cohort), ()):
                cohorts.setdefault(user, target)
    return Routes(active=active, base=base_target, split=split, versions=versions, cohorts=cohorts)


def cohort_members(engine: Engine, cohorts: list[tuple[str, int]], cached: Members | None = None) -> Members:
    """The users each (personal run, cohort) placed: one counting query, and the users themselves only for
    cohorts whose count changed since `cached` (a deleted user leaves their cohort at once)."""
    u = t.personal_users.c
    where = tuple_(u.run_id, u.cohort).in_(cohorts)
    with engine.connect() as conn:
        counts = {(r.run_id, r.cohort): r.n for r in conn.execute(
            select(u.run_id, u.cohort, func.count().label("n")).where(where).group_by(u.run_id, u.cohort))}
        stale = [key for key, n in counts.items() if cached is None or len(cached.get(key, ())) != n]
        found = {key: cached[key] for key in counts if key not in stale and cached is not None}
        if stale:
            users: dict[tuple[str, int], set[str]] = {key: set() for key in stale}
            for r in conn.execute(select(u.run_id, u.cohort, u.user_id).where(tuple_(u.run_id, u.cohort).in_(stale))):
                users[(r.run_id, r.cohort)].add(r.user_id)
            found |= {key: frozenset(v) for key, v in users.items()}
    return found


class Router:
    """The current routes, refreshed from the registry by `watch`; `warm` is awaited for each target that
    starts to answer `active` requests before the routes switch to it."""

    def __init__(self, engine: Engine, *, base: str | None = None, poll_s: float = 1.0):
        self._engine, self._base, self._poll_s = engine, base, poll_s
        self._members: Members = {}
        self.routes = load_routes(engine, base, self._members)

    async def refresh(self, warm: Callable[[Target], Awaitable[object]] | None = None) -> bool:
        """Read the registry once; switch when it changed. True when the routes changed."""
        new = await asyncio.to_thread(load_routes, self._engine, self._base, self._members)
        if new == self.routes:
            return False
        if warm is not None:
            for target in new.live - self.routes.live:
                await warm(target)
        old, self.routes = self.routes, new
        if old.active != new.active or old.split != new.split or set(old.cohorts.values()) != set(new.cohorts.values()):
            log.info("now serving %s%s%s (was %s)", new.active.version,
                     "".join(f", {t.version} to {s:.0%} of users" for t, s in new.split),
                     "".join(f", {t.version} to its cohort" for t in sorted(set(new.cohorts.values()),
                                                                            key=lambda x: x.version)),
                     old.active.version)
        return True

    async def watch(self, warm: Callable[[Target], Awaitable[object]] | None = None) -> None:
        """Refresh every poll_s until cancelled; a failing read (the store down) keeps the old routes."""
        while True:
            await asyncio.sleep(self._poll_s)
            try:
                await self.refresh(warm)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - keep serving what we have; say why once per failure
                log.warning("could not read the registry (%s: %s); serving %s meanwhile", type(e).__name__, e,
                            self.routes.active.version)
