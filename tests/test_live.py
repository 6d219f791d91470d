"""The live check: users' ratings of the version that serves against those of the one its promotion
replaced, and the loop's rollback when the new one is clearly worse."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from sqlalchemy import Engine

from build_store import KEY
from ratingloop.evaluate import LiveConfig, live_check
from ratingloop.loop import watch_live
from ratingloop.models.registry import active_version, finish_run, list_events, promote, start_run
from ratingloop.store import Limits, open_engine
from ratingloop.store.jsonl import import_lines
from tiny import save_random_adapter, save_varied_base


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = save_varied_base(tmp_path_factory.mktemp("base"))
    return save_random_adapter(base, tmp_path_factory.mktemp("adapter"))


def served(engine: Engine, model: str, n: int, p_up: float, seed: int) -> None:
    """n interactions answered by `model`, each rated once by its user: thumbs up with probability p_up."""
    rng = random.Random(seed)
    lines = [json.dumps({"id": f"{model}-{seed}-{i}", "model": model, "user_id": f"u{i}",
                         "messages": [{"role": "user", "content": f"question {i}"}], "response": f"answer {i}",
                         "ratings": [{"rater_id": f"u{i}", "kind": "thumbs",
                                      "value": 1 if rng.random() < p_up else -1}]}).encode() for i in range(n)]
    assert not import_lines(engine, lines, Limits(), user_key=KEY).bad


def promoted(engine: Engine, adapter: Path) -> str:
    run = start_run(engine, method="kto", config={}, base_model=str(adapter.parent))
    version = finish_run(engine, run, adapter_path=adapter, metrics={})
    promote(engine, version, actor="test")
    return version


def test_a_clearly_worse_version_is_rolled_back_with_the_numbers(db_url: str, adapter: Path) -> None:
    engine = open_engine(db_url)
    served(engine, "base", 80, 0.75, seed=1)
    version = promoted(engine, adapter)
    served(engine, version, 80, 0.3, seed=2)
    check = live_check(engine)
    assert check is not None and check.rollback and check.active == version and check.previous == "base"
    assert check.n_active == check.n_previous == 80 and check.p_value is not None and check.p_value < 0.01
    assert check.mean_active is not None and check.mean_previous is not None
    assert check.mean_active < check.mean_previous
    said: list[str] = []
    watch_live(engine, said.append)
    assert active_version(engine) is None  # the base serves again
    event = list_events(engine)[-1]
    assert event.action == "rollback" and event.actor == "live-check" and "worse" in (event.reason or "")
    assert said and version in said[0]
    assert live_check(engine) is None  # nothing left to undo


def test_as_good_or_too_few_ratings_keeps_the_version(sqlite_url: str, adapter: Path) -> None:
    engine = open_engine(sqlite_url)
    served(engine, "base", 80, 0.6, seed=3)
    version = promoted(engine, adapter)
    served(engine, version, 20, 0.0, seed=4)
    few = live_check(engine)
    assert few is not None and not few.rollback and "too few" in few.reason and few.n_active == 20
    served(engine, version, 80, 0.75, seed=5)  # with the 20 above, as good as the base on average
    same = live_check(engine, LiveConfig(min_ratings=50))
    assert same is not None and not same.rollback and "not worse" in same.reason
    watch_live(engine)
    assert (active := active_version(engine)) is not None and active.id == version
