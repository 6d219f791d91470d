"""Signals from the store (signals/load.py, signals/report.py): real SQLite, ratings imported through
the store's own JSONL path, rows as `ratingloop signals` / `ratingloop raters` will print them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from sqlalchemy import Engine

from ratingloop.errors import RatingloopError
from ratingloop.signals.report import SignalsConfig, compute_signals
from ratingloop.store import Limits, open_engine
from ratingloop.store.jsonl import import_lines


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return open_engine(f"sqlite:///{tmp_path / 'signals.db'}")


def _line(iid: str, ratings: list[dict], topic: str = "billing") -> bytes:
    return orjson.dumps({"id": iid, "messages": [{"role": "user", "content": f"q {iid}"}], "response": f"a {iid}",
                         "tags": {"topic": topic}, "ratings": ratings})


def _world(engine: Engine, troll: bool = True) -> np.ndarray:
    """40 interactions of known quality rated by 8 honest raters (thumbs or stars) and one inverter."""
    rng = np.random.default_rng(0)
    q = rng.standard_normal(40)
    lines = []
    for k in range(40):
        ratings = []
        for r in range(8):
            y = 0.5 * q[k] + (0.3 if r == 0 else 0.0) + 0.1 * rng.standard_normal()
            if r % 2:
                ratings.append({"rater_id": f"u{r}", "kind": "thumbs", "value": 1 if y > 0 else -1})
            else:
                ratings.append({"rater_id": f"u{r}", "kind": "stars", "value": int(np.clip(np.rint(3 + 2 * y), 1, 5))})
        if troll:
            inverted = int(np.clip(np.rint(3 - q[k]), 1, 5))
            ratings.append({"rater_id": "troll", "kind": "stars", "value": inverted})
        if k < 5:
            ratings.append({"rater_id": "u2", "kind": "aspect", "aspect": "accuracy", "value": 5 if q[k] > 0 else 1})
            ratings.append({"rater_id": "u2", "kind": "comment", "text": "great, thanks!" if q[k] > 0 else "useless"})
        lines.append(_line(f"c-{k:02d}", ratings))
    report = import_lines(engine, lines, Limits())
    assert not report.bad
    return q


def test_signals_rows_track_quality_and_flag_the_inverter(engine: Engine) -> None:
    q = _world(engine)
    result = compute_signals(engine)
    rows = {s.interaction_id: s for s in result.interactions}
    assert len(rows) == 40
    reward = np.asarray([rows[f"c-{k:02d}"].reward for k in range(40)])
    assert np.corrcoef(reward, q)[0, 1] > 0.9
    for s in result.interactions:
        assert -1 <= s.reward <= 1 and 0 <= s.confidence <= 1 and s.aspects["overall"] == s.reward
        assert s.n_ratings >= 8
    assert set(rows["c-00"].aspects) == {"overall", "accuracy"}
    raters = {r.rater_id: r for r in result.raters}
    assert raters["troll"].flagged and raters["troll"].reasons[0].startswith("inverter:")
    assert raters["troll"].scale < 0 and raters["troll"].reliability == 0
    assert not any(r.flagged for rid, r in raters.items() if rid != "troll")
    assert raters["u0"].bias > raters["u2"].bias  # u0 is the lenient one
    assert all(0 <= r.reliability <= 1 for r in raters.values())


def test_a_later_rating_supersedes_an_earlier_one(engine: Engine) -> None:
    _world(engine, troll=False)
    before = compute_signals(engine).interactions[0]
    change = [{"rater_id": f"u{r}", "kind": "stars", "value": 1 if before.reward > 0 else 5} for r in range(8)]
    import_lines(engine, [_line("c-00", change)], Limits())
    after = compute_signals(engine).interactions[0]
    assert after.n_ratings == before.n_ratings  # replaced, not added
    assert np.sign(after.reward) == -np.sign(before.reward)


def test_empty_store_says_so(engine: Engine) -> None:
    with pytest.raises(RatingloopError, match="no ratings"):
        compute_signals(engine)


def test_too_few_ratings_says_how_many(engine: Engine) -> None:
    import_lines(engine, [_line("c-1", [{"rater_id": "u1", "kind": "thumbs", "value": 1},
                                        {"rater_id": "u1", "kind": "comment", "text": "ok"}])], Limits())
    with pytest.raises(RatingloopError, match="only 1 overall rating"):
        compute_signals(engine, SignalsConfig(min_ratings=3))
