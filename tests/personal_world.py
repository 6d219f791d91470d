"""A store of simulated users in groups (simulate.groups) with a signals run recorded: what the personal tests read."""

from __future__ import annotations

from sqlalchemy import Engine

from ratingloop.signals import SignalsConfig, StoredSignals, record_signals
from ratingloop.signals.content import ContentConfig
from ratingloop.simulate.groups import GroupedWorld, GroupsConfig, grouped_users
from ratingloop.store import Limits
from ratingloop.store.jsonl import import_lines

KEY = b"test-user-key"  # the server's secret, which tombstones are keyed with (store.writes.user_hash)
NO_CONTENT = SignalsConfig(content=ContentConfig(mode="off"))  # no sentence encoder: this stage reads the run only


def grouped_store(engine: Engine, cfg: GroupsConfig) -> tuple[GroupedWorld, StoredSignals]:
    world = grouped_users(cfg)
    report = import_lines(engine, world.lines, Limits(), user_key=KEY)
    assert not report.bad, report.bad
    return world, record_signals(engine, NO_CONTENT)
