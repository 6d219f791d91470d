"""The single-rated simulator: every answer asked by one user who rates it once (or never), by a hidden grader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from ratingloop.errors import ConfigError
from ratingloop.simulate.graders import concise, grader_for
from ratingloop.simulate.single import AskerConfig, cut_variants, single_rated, support_answers
from ratingloop.store import open_engine
from ratingloop.store import tables as t
from ratingloop.store.jsonl import import_lines
from ratingloop.store.records import Limits

KEY = b"test-user-key"  # the server's secret, which tombstones are keyed with (store.writes.user_hash)


@pytest.fixture(scope="module")
def world_inputs() -> tuple[list, list[str]]:
    return support_answers(600, seed=3)


def test_shares_askers_and_tags_follow_the_config(world_inputs: tuple[list, list[str]]) -> None:
    prompts, answers = world_inputs
    world = single_rated(prompts, answers, AskerConfig(n_askers=50, invert_frac=0.2, unrated_frac=0.2, seed=1))
    assert len(world.lines) == len(world.ids) == 600
    assert world.inverting.sum() == 10  # exactly 20% of 50 askers
    assert 0.15 < 1 - world.rated.mean() < 0.25
    assert np.isnan(world.value[~world.rated]).all() and not np.isnan(world.value[world.rated]).any()
    stars = world.value[world.rated & ~world.thumbs]
    assert set(np.unique(stars)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert set(np.unique(world.value[world.rated & world.thumbs])) == {-1.0, 1.0}
    line = json.loads(world.lines[int(np.flatnonzero(world.rated)[0])])
    assert grader_for(line["tags"]) is not None and line["tags"]["simulated"]["grader"] == "concise"
    assert line["ratings"][0]["rater_id"] == line["user_id"]  # rated by the person who asked
    assert np.allclose(world.score, [concise(p, a) for p, a in zip(prompts, answers, strict=True)])


def test_honest_askers_rate_the_hidden_score_and_inverters_the_opposite(world_inputs: tuple[list, list[str]]) -> None:
    prompts, answers = world_inputs
    world = single_rated(prompts, answers, AskerConfig(n_askers=30, thumbs_frac=0.0, seed=2))
    rated = world.rated
    inverted = world.inverting[world.asker]
    honest = np.corrcoef(world.score[rated & ~inverted], world.value[rated & ~inverted])[0, 1]
    trolls = np.corrcoef(world.score[rated & inverted], world.value[rated & inverted])[0, 1]
    assert honest > 0.4 and trolls < -0.4, (honest, trolls)
    naive = world.naive_label()
    assert np.isnan(naive[~rated]).all()
    assert ((naive[rated] == 1.0) == (world.value[rated] >= 4)).all()


def test_same_seed_same_world_and_the_lines_import(tmp_path: Path, world_inputs: tuple[list, list[str]]) -> None:
    prompts, answers = world_inputs
    a = single_rated(prompts[:80], answers[:80], AskerConfig(seed=5))
    b = single_rated(prompts[:80], answers[:80], AskerConfig(seed=5))
    c = single_rated(prompts[:80], answers[:80], AskerConfig(seed=6))
    assert a.lines == b.lines and a.lines != c.lines
    engine = open_engine(f"sqlite:///{tmp_path / 'store.db'}")
    assert not import_lines(engine, a.lines, Limits(), user_key=KEY).bad
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(t.interactions)) == 80
        assert conn.scalar(select(func.count()).select_from(t.ratings)) == int(a.rated.sum())


def test_cut_variants_are_prefixes_at_sentence_ends_within_the_word_limits() -> None:
    reply = " ".join(f"Sentence number {i} says a little more about the question." for i in range(30))
    cuts = cut_variants(reply, np.random.default_rng(0), n=3, max_words=120)
    assert len(cuts) == 3 and len(set(cuts)) == 3
    for cut in cuts:
        assert reply.startswith(cut) and len(cut.split()) <= 120
        assert cut.endswith(".") or len(cut.split()) == 120


def test_bad_config_names_every_problem() -> None:
    with pytest.raises(ConfigError, match="invert_frac=1.5.*grader='polite'"):
        single_rated([], [], AskerConfig(invert_frac=1.5, grader="polite"))
    with pytest.raises(ConfigError, match="2 prompts but 1 answers"):
        single_rated([[{"role": "user", "content": "hi"}]] * 2, ["hello there friend"])
