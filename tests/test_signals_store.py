"""Signals from the store (signals/load.py, report.py, runs.py): real SQLite and PostgreSQL, ratings imported
through the store's own JSONL path, rows as `ratingloop signals` / `ratingloop raters` print them, and a
signals run recorded once and read back by the build and `raters` without fitting again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from sqlalchemy import Engine, func, select
from typer.testing import CliRunner

from ratingloop.cli import app
from ratingloop.dataset import BuildConfig, build_dataset, prompt_key
from ratingloop.errors import RatingloopError
from ratingloop.signals import load_signals, purge_user, record_signals
from ratingloop.signals.report import SignalsConfig, compute_signals
from ratingloop.store import Limits, delete_user, open_engine
from ratingloop.store import tables as t
from ratingloop.store.jsonl import import_lines

KEY = b"test-user-key"  # the server's secret, which tombstones are keyed with (store.writes.user_hash)


@pytest.fixture
def engine(db_url: str) -> Engine:
    return open_engine(db_url)


def _line(iid: str, ratings: list[dict], topic: str = "billing") -> bytes:
    """Interaction c-NN was asked by asker-(NN mod 4); the same line again only adds ratings."""
    asker = f"asker-{int(iid[-2:]) % 4}" if iid[-2:].isdigit() else None
    return orjson.dumps({"id": iid, "messages": [{"role": "user", "content": f"q {iid}"}], "response": f"a {iid}",
                         "tags": {"topic": topic}, "ratings": ratings, "user_id": asker})


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
    report = import_lines(engine, lines, Limits(), user_key=KEY)
    assert not report.bad, report.bad
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
    import_lines(engine, [_line("c-00", change)], Limits(), user_key=KEY)
    after = compute_signals(engine).interactions[0]
    assert after.n_ratings == before.n_ratings  # replaced, not added
    assert np.sign(after.reward) == -np.sign(before.reward)


def test_empty_store_says_so(engine: Engine) -> None:
    with pytest.raises(RatingloopError, match="no ratings"):
        compute_signals(engine)


def test_too_few_ratings_says_how_many(engine: Engine) -> None:
    import_lines(engine, [_line("c-1", [{"rater_id": "u1", "kind": "thumbs", "value": 1},
                                        {"rater_id": "u1", "kind": "comment", "text": "ok"}])], Limits(),
                 user_key=KEY)
    with pytest.raises(RatingloopError, match="only 1 overall rating"):
        compute_signals(engine, SignalsConfig(min_ratings=3))


# --- a signals run in the store: recorded once, read by everything downstream -------------------------------

def _add(engine: Engine, line: bytes) -> None:
    assert not import_lines(engine, [line], Limits(), user_key=KEY).bad


def _ratings_of(engine: Engine, rater: str) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(t.ratings.c.id).where(t.ratings.c.rater_id == rater)).scalars())


def _count(engine: Engine, table: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def test_a_run_is_recorded_once_and_read_back_as_it_was(engine: Engine) -> None:
    _world(engine)
    # rated by the inverter alone: still a rated interaction, with no rating that counts
    _add(engine, _line("troll-only", [{"rater_id": "troll", "kind": "stars", "value": 5}]))
    stored = record_signals(engine)
    assert load_signals(engine) == stored  # rows, counted ratings, config, summary: what every stage reads
    assert load_signals(engine, stored.run_id) == stored
    assert len(stored.interactions) == 41 and stored.unrated == []
    assert {s.interaction_id: s.n_ratings for s in stored.interactions}["troll-only"] == 0
    s = stored.summary
    assert (s["n_ratings"], s["n_interactions"], s["n_raters"], s["n_flagged"]) == (40 * 9 + 10 + 1, 41, 9, 1)
    assert stored.flagged == {"troll"} and s["mu_a"] > 0 and s["content"] is None
    # the ratings that count: everyone's latest, the flagged inverter's left out
    counted = {rid for ids in stored.counted.values() for rid in ids}
    assert counted == set().union(*(_ratings_of(engine, f"u{r}") for r in range(8)))
    assert s["n_counted"] == len(counted) == 40 * 8 + 10 and "troll-only" not in stored.counted
    assert stored.config["content"]["mode"] == "auto" and stored.last_rating_at is not None
    assert _count(engine, t.signals_ratings) == len(counted) and _count(engine, t.signals_raters) == 9


def test_a_later_rating_leaves_the_older_one_uncounted(engine: Engine) -> None:
    _world(engine, troll=False)
    first = record_signals(engine)
    old = set(first.counted["c-00"])
    _add(engine, _line("c-00", [{"rater_id": "u0", "kind": "stars", "value": 1}]))
    second = record_signals(engine)
    assert load_signals(engine).run_id == second.run_id and load_signals(engine, first.run_id) == first
    new = set(second.counted["c-00"])
    assert len(new) == len(old) and len(new - old) == 1 and (old - new) <= _ratings_of(engine, "u0")
    assert second.summary["n_superseded"] == 1


def test_build_and_raters_read_the_run_without_refitting(engine: Engine, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _world(engine)
    stored = record_signals(engine)

    def refit(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the rater model was fitted again")

    monkeypatch.setattr("ratingloop.signals.report.fit_excluding_trolls", refit)
    monkeypatch.setattr("ratingloop.signals.runs.compute_signals", refit)
    result = build_dataset(engine, "reward", tmp_path / "reward", BuildConfig(min_confidence=0.0))
    assert result.manifest["signals_run_id"] == stored.run_id
    shown = CliRunner().invoke(app, ["raters", "--json", "--db", engine.url.render_as_string(hide_password=False)])
    assert shown.exit_code == 0, shown.output
    assert {r["rater_id"]: r["bias"] for r in json.loads(shown.stdout)} == {r.rater_id: r.bias for r in stored.raters}


def test_the_manifest_lists_exactly_the_counted_ratings_behind_its_rows(engine: Engine, tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    _world(engine)
    _add(engine, _line("c-00", [{"rater_id": "u0", "kind": "stars", "value": 1}]))  # supersedes
    stored = record_signals(engine)
    late = [{"rater_id": "u1", "kind": "thumbs", "value": 1, "created_at": "2999-01-01T00:00:00Z"}]
    _add(engine, _line("c-01", late))  # after the run: not in it, and the build says so
    result = build_dataset(engine, "reward", tmp_path / "reward", BuildConfig(min_confidence=0.0))
    rows = [orjson.loads(x) for split in ("train", "eval") for x in (tmp_path / "reward" / f"{split}.jsonl")
            .read_bytes().splitlines()]
    assert len(rows) == 40  # every rated answer is a row here, so every counted rating is behind one
    assert result.manifest["rating_ids"] == sorted(rid for ids in stored.counted.values() for rid in ids)
    assert not set(result.manifest["rating_ids"]) & (_ratings_of(engine, "troll") | _ratings_of(engine, "u1")
                                                     - {rid for ids in stored.counted.values() for rid in ids})
    keys = result.manifest["prompt_keys"]
    assert not set(keys["train"]) & set(keys["eval"])
    assert set(keys["train"]) | set(keys["eval"]) == {prompt_key(r["prompt"]) for r in rows}
    assert len(keys["eval"]) == result.manifest["prompts"]["eval"]
    assert any("1 rating(s) arrived after signals run" in w for w in result.warnings)
    assert "arrived after signals run" in caplog.text and result.manifest["warnings"] == result.warnings
    with engine.connect() as conn:
        snapshot = conn.execute(select(t.DatasetSnapshot.__table__)).one()
    assert snapshot.signals_run_id == stored.run_id


def test_a_deleted_user_leaves_no_signals_rows(engine: Engine) -> None:
    _world(engine)
    record_signals(engine)
    given = _ratings_of(engine, "u3")
    with engine.connect() as conn:
        asked = set(conn.execute(select(t.interactions.c.id).where(t.interactions.c.user_id == "asker-1")).scalars())
    assert len(asked) == 10 and _count(engine, t.signals_ratings, t.signals_ratings.c.rating_id.in_(given)) == 40
    delete_user(engine, "u3", user_key=KEY, purges=[purge_user])
    delete_user(engine, "asker-1", user_key=KEY, purges=[purge_user])
    sr, si = t.signals_ratings.c, t.signals_interactions.c
    assert _count(engine, t.signals_raters, t.signals_raters.c.rater_id == "u3") == 0
    assert _count(engine, t.signals_ratings, sr.rating_id.in_(given)) == 0
    assert _count(engine, t.signals_ratings, sr.interaction_id.in_(asked)) == 0
    assert _count(engine, t.signals_interactions, si.interaction_id.in_(asked)) == 0
    left = load_signals(engine)
    assert len(left.interactions) == 30 and "u3" not in {r.rater_id for r in left.raters}
    assert not {rid for ids in left.counted.values() for rid in ids} & given


def test_no_run_says_run_signals_first(engine: Engine, tmp_path: Path) -> None:
    _world(engine)
    with pytest.raises(RatingloopError, match="run `ratingloop signals` first"):
        build_dataset(engine, "sft", tmp_path / "sft", BuildConfig())
    with pytest.raises(RatingloopError, match="run `ratingloop signals` first"):
        load_signals(engine)
    record_signals(engine)
    with pytest.raises(RatingloopError, match="'nope' is not in this store"):
        load_signals(engine, "nope")
