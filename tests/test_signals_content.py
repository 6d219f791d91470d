"""The content prior (signals/content.py) on single-rated data: simulated answers whose text carries their
quality (simulate/texts.py), cross-fitting, the auto switch, user-level troll flags, and what cleaning
buys downstream (the SFT/KTO sets, a reward model).

Fast tests use synthetic features (quality plus noise in a few dimensions) in place of sentence
embeddings; the slow test runs the real path: text -> store -> all-MiniLM-L6-v2 -> signals -> build.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import orjson
import pytest
from scipy.stats import spearmanr
from sqlalchemy import func, select

from ratingloop.dataset import BuildConfig, build_dataset
from ratingloop.errors import ConfigError
from ratingloop.models.embed import prompt_text
from ratingloop.signals import StoredSignals, record_signals
from ratingloop.signals.content import (
    ContentConfig,
    ContentData,
    cross_fitted_prior,
    decide,
    length_feature,
    project,
    rater_folds,
    with_length,
)
from ratingloop.signals.load import LoadedRatings
from ratingloop.signals.normalise import rewards
from ratingloop.signals.observations import observations
from ratingloop.signals.report import SignalsConfig, SignalsResult, signals_from_loaded
from ratingloop.simulate import SimConfig, SimRatings, simulate
from ratingloop.simulate.ratings import to_raw
from ratingloop.simulate.texts import RUDE, import_lines_for, interaction_id, rater_id, sim_texts
from ratingloop.store import open_engine
from ratingloop.store import tables as t
from ratingloop.store.jsonl import import_lines
from ratingloop.store.records import Limits

KEY = b"test-user-key"  # the server's secret, which tombstones are keyed with (store.writes.user_hash)

INVERTERS = {"inverter": 1.0}


def loaded(sim: SimRatings) -> LoadedRatings:
    return LoadedRatings(to_raw(sim), [interaction_id(i) for i in range(sim.n_items)],
                         [rater_id(r) for r in range(sim.n_raters)], sim.truth.topic.astype(np.int64),
                         tuple(f"t{k}" for k in range(int(sim.truth.topic.max()) + 1)))


def synthetic(sim: SimRatings, n_unrated: int = 0, noise: float = 0.6, seed: int = 0) -> ContentData:
    """Features a linear model reads quality from (corr ~0.85), standing in for sentence embeddings."""
    rng = np.random.default_rng(seed)
    q = np.concatenate([sim.truth.quality, rng.standard_normal(n_unrated)])
    x = np.outer(q, rng.standard_normal(16)) / 4.0 + noise * rng.standard_normal((len(q), 16))
    ids = [interaction_id(i) for i in range(len(q))]
    return ContentData(ids, x, sim.n_items, rater_folds([rater_id(r) for r in range(sim.n_raters)], 5))


def flagged(result: SignalsResult | StoredSignals) -> set[str]:
    return {r.rater_id for r in result.raters if r.flagged}


def inverters(sim: SimRatings, min_ratings: int = 0) -> set[str]:
    n = np.bincount(sim.rater, minlength=sim.n_raters)
    return {rater_id(r) for r in np.flatnonzero(sim.truth.is_troll & (n >= max(min_ratings, 1)))}


# --- simulated text -------------------------------------------------------------------------------

def test_simulated_answers_carry_quality_but_do_not_repeat() -> None:
    sim = simulate(SimConfig(n_items=2000, single_rated=True, seed=1))
    a, b = sim_texts(sim.truth, seed=3), sim_texts(sim.truth, seed=3)
    assert a == b  # deterministic for a seed
    q = sim.truth.quality
    rude_re = re.compile("|".join(re.sub(r"\\\{\w+\\\}", ".+?", re.escape(s)) for s in RUDE))
    rude = np.asarray([len(rude_re.findall(text)) for text in a.answers])
    assert rude[q < -1].mean() > 0.8 > 0.05 > rude[q > 1].mean()  # the worse the answer, the ruder
    assert len(set(a.answers)) > 0.97 * len(a.answers)  # slots and mixtures: memorising strings cannot work


def test_simulated_world_imports_with_unrated_interactions(tmp_path: Path) -> None:
    sim = simulate(SimConfig(n_items=60, n_raters=10, single_rated=True, seed=2))
    rated = np.arange(60) < 40
    part = replace(sim, rater=sim.rater[rated[sim.item]], item=sim.item[rated[sim.item]],
                   kind=sim.kind[rated[sim.item]], value=sim.value[rated[sim.item]],
                   scale_min=sim.scale_min[rated[sim.item]], scale_max=sim.scale_max[rated[sim.item]])
    engine = open_engine(f"sqlite:///{tmp_path / 's.db'}")
    report = import_lines(engine, import_lines_for(part, sim_texts(sim.truth)), Limits(), user_key=KEY)
    assert not report.bad and report.interactions_new == 60 and report.ratings_new == 40
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.ratings)).scalar() == 40
        tags = conn.execute(select(t.interactions.c.tags).where(t.interactions.c.id == interaction_id(0))).scalar()
    assert tags == {"topic": sim_texts(sim.truth).topic_names[int(sim.truth.topic[0])]}


# --- cross-fitting and the switch ------------------------------------------------------------------

def test_a_raters_own_ratings_never_move_the_prior_that_judges_them() -> None:
    sim = simulate(SimConfig(n_items=800, n_raters=40, single_rated=True, seed=5))
    data = synthetic(sim, n_unrated=50)
    obs = observations(to_raw(sim))
    before = cross_fitted_prior(data, obs, ContentConfig())
    victim = int(np.argmax(np.bincount(obs.rater, minlength=obs.n_raters)))
    fold = int(data.rater_fold[victim])
    flipped = replace(obs, value=np.where(obs.rater == victim, -obs.value, obs.value))  # the victim inverts
    after = cross_fitted_prior(data, flipped, ContentConfig())
    mine = np.zeros(len(before.mean), bool)
    mine[obs.item[obs.rater == victim]] = True
    judged_with_me = before.judged_by == fold  # the victim's fold: the same model, fitted without them
    assert mine[: sim.n_items].sum() > 20 and (judged_with_me >= mine).all()
    assert np.array_equal(before.mean[judged_with_me], after.mean[judged_with_me])
    assert np.array_equal(before.var[judged_with_me], after.var[judged_with_me])
    # everyone else's prior did learn from the victim's ratings (so the equality above is no accident)
    others = before.judged_by != fold
    assert np.abs(before.mean[others] - after.mean[others]).max() > 1e-3
    # and the prior tracks quality, unrated interactions included
    assert np.corrcoef(before.mean[: sim.n_items], sim.truth.quality)[0, 1] > 0.7
    assert (before.judged_by[sim.n_items:] == -2).all() and before.var.max() <= 1.0


def test_auto_turns_the_prior_on_for_mostly_single_rated_stores_only() -> None:
    single = simulate(SimConfig(n_items=600, n_raters=40, single_rated=True))
    multi = simulate(SimConfig(n_items=300, n_raters=40, n_ratings=1500))
    tiny = simulate(SimConfig(n_items=50, n_raters=8, single_rated=True))
    assert decide(loaded(single), ContentConfig())[0]
    on, why = decide(loaded(multi), ContentConfig())
    assert not on and "check each other" in why
    assert not decide(loaded(tiny), ContentConfig())[0]
    # ~170 single ratings: where the prior was measured to rank answers better (bench/results.md, issue 12)
    assert decide(loaded(simulate(SimConfig(n_items=170, n_raters=40, single_rated=True))), ContentConfig())[0]
    on, why = decide(loaded(simulate(SimConfig(n_items=100, n_raters=40, single_rated=True))), ContentConfig())
    assert not on and "at least 150" in why
    on, why = decide(loaded(single), ContentConfig(auto_max_interactions=500))  # too many to embed each run
    assert not on and "content.mode=on" in why
    assert decide(loaded(multi), ContentConfig(mode="on"))[0]
    assert not decide(loaded(single), ContentConfig(mode="off"))[0]
    with pytest.raises(ConfigError, match="mode='sometimes'"):
        decide(loaded(single), ContentConfig(mode="sometimes"))


def test_content_prior_flags_single_rated_inverters_and_says_why() -> None:
    sim = simulate(SimConfig(n_items=3000, n_raters=120, single_rated=True, troll_frac=0.2, troll_mix=INVERTERS,
                             activity_sigma=0.5, seed=7))
    cfg = SignalsConfig()
    on = signals_from_loaded(loaded(sim), cfg, content=synthetic(sim, n_unrated=100))
    off = signals_from_loaded(loaded(sim), cfg)
    truth, judged = inverters(sim), inverters(sim, min_ratings=8)
    hits = flagged(on) & truth
    assert len(hits) / len(flagged(on)) >= 0.8 and len(hits & judged) / len(judged) >= 0.7
    assert len(flagged(off) & truth) <= 2  # one rating per answer: the flat prior cannot tell
    reasons = [r.reasons[0] for r in on.raters if r.rater_id in hits]
    assert all("content model" in reason for reason in reasons), reasons[:3]
    q = sim.truth.quality
    assert spearmanr([s.reward for s in on.interactions], q)[0] > spearmanr([s.reward for s in off.interactions], q)[0]
    assert len(on.unrated) == 100 and all(s.n_ratings == 0 and 0 < s.confidence < 1 for s in on.unrated)
    assert on.content is not None and off.content is None and off.unrated == []


def test_multi_rated_data_is_left_to_the_raters() -> None:
    """Forced on where raters check each other, the prior changes little: interactions rated by raters
    of several folds keep the flat prior, and the raters' agreement decides."""
    sim = simulate(SimConfig(n_items=400, n_raters=60, n_ratings=3200, seed=4))
    on = signals_from_loaded(loaded(sim), SignalsConfig(), content=synthetic(sim))
    off = signals_from_loaded(loaded(sim), SignalsConfig())
    assert on.content is not None and on.content["flat_items"] > 0.9 * sim.n_items
    q = sim.truth.quality
    r_on, r_off = (spearmanr([s.reward for s in res.interactions], q)[0] for res in (on, off))
    assert abs(r_on - r_off) < 0.02 and len(flagged(on)) <= len(flagged(off)) + 1


# --- the real path: text -> store -> sentence encoder -> signals -> build ---------------------------------

def recording(store: dict[str, Any]) -> Any:
    """The default embedder, keeping what it computed (the reward-model check reuses it)."""
    from ratingloop.signals.content import default_embedder

    embed = default_embedder()

    def wrapped(prompts: Sequence[Any], answers: Sequence[str]) -> np.ndarray:
        x = embed(prompts, answers)
        store.update({(prompt_text(p), a): row for p, a, row in zip(prompts, answers, x, strict=True)})
        return x

    return wrapped


def rows_of(out: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for split in ("train", "eval") for x in (out / f"{split}.jsonl").read_bytes().splitlines()]


@pytest.mark.slow
def test_cleaned_single_rated_data_trains_better_than_raw(tmp_path: Path) -> None:
    """1,500 answers, each rated once by its asker; 20% of the 60 askers invert. A fifth of the answers
    are stored unrated (held out). Thresholds: precision >= 0.8 (FDR control aims at ~0.98); recall
    >= 0.7 among inverters with 8+ ratings (fewer cannot outweigh an honest rater's noise; measured 0.9)."""
    sim = simulate(SimConfig(n_items=1500, n_raters=60, single_rated=True, troll_frac=0.2, troll_mix=INVERTERS,
                             activity_sigma=0.5, seed=1))
    texts = sim_texts(sim.truth, seed=1)
    held = np.random.default_rng(0).random(sim.n_items) < 0.2
    keep = ~held[sim.item]
    part = replace(sim, rater=sim.rater[keep], item=sim.item[keep], kind=sim.kind[keep], value=sim.value[keep],
                   scale_min=sim.scale_min[keep], scale_max=sim.scale_max[keep])
    engine = open_engine(f"sqlite:///{tmp_path / 'store.db'}")
    assert not import_lines(engine, import_lines_for(part, texts), Limits(), user_key=KEY).bad
    vectors: dict[Any, np.ndarray] = {}
    on = record_signals(engine, embed=recording(vectors))  # auto: single-rated, so on
    off = record_signals(engine, SignalsConfig(content=ContentConfig(mode="off")))
    assert on.content is not None and len(on.unrated) == held.sum()

    # the inverters are found, by their answers' content; the flat prior finds none
    n = np.bincount(part.rater, minlength=sim.n_raters)
    truth = {rater_id(r) for r in np.flatnonzero(sim.truth.is_troll & (n > 0))}
    judged = {rater_id(r) for r in np.flatnonzero(sim.truth.is_troll & (n >= 8))}
    hits = flagged(on) & truth
    assert len(hits) / len(flagged(on)) >= 0.8 and len(hits & judged) / len(judged) >= 0.7
    assert len(flagged(off) & truth) <= 1
    q = sim.truth.quality
    item = {interaction_id(i): i for i in range(sim.n_items)}
    ranked = [spearmanr([s.reward for s in res], q[[item[s.interaction_id] for s in res]])[0]
              for res in (on.interactions, off.interactions, on.unrated)]
    assert ranked[0] > ranked[1] + 0.2 and ranked[2] > 0.6  # unrated answers get a useful reward too

    # the KTO set built from cleaned signals labels far more answers, and far more of them rightly
    answer = {a: i for i, a in enumerate(texts.answers)}
    share = {}
    for name, res in (("on", on), ("off", off)):
        build_dataset(engine, "kto", tmp_path / name, BuildConfig(), signals=res)
        rows = rows_of(tmp_path / name)
        good = np.asarray([q[answer[r["completion"][0]["content"]]] > 0 for r in rows])
        label = np.asarray([r["label"] for r in rows])
        share[name] = (float(good[label].mean()), float((label == good).mean()), len(rows))
    assert share["on"][0] >= share["off"][0] + 0.1 and share["on"][1] >= share["off"][1] + 0.1
    assert share["on"][2] > 1.3 * share["off"][2]

    # a reward model (BayesianRidge on the same embeddings' top 128 components) fitted on cleaned rewards
    # ranks the held-out answers better than one fitted on the raw ratings
    from sklearn.linear_model import BayesianRidge

    x = project(np.stack([vectors[(texts.prompts[i], texts.answers[i])] for i in range(sim.n_items)]), 128)
    clean = [s for s in on.interactions if s.n_ratings > 0]
    raw = rewards(part.kind.astype(np.int64), part.value, part.scale_min, part.scale_max)
    fits = {"clean": BayesianRidge().fit(x[[item[s.interaction_id] for s in clean]], [s.reward for s in clean]),
            "raw": BayesianRidge().fit(x[part.item], raw)}
    rho = {k: spearmanr(m.predict(x[held]), q[held])[0] for k, m in fits.items()}
    assert rho["clean"] > rho["raw"] + 0.02, rho


def test_the_answers_length_is_a_content_feature() -> None:
    """A sentence embedding barely sees length, which raters often reward or punish: the standardised log word
    count can join the features (ContentConfig.length_weight), computed from no ratings at all."""
    z = length_feature(["one", "one two three", "a " * 50, "a " * 200])
    assert abs(z.mean()) < 1e-9 and abs(z.std() - 1.0) < 1e-9
    assert list(np.argsort(z)) == [0, 1, 2, 3]
    assert (length_feature(["same length", "other words"]) == 0).all()  # nothing to say where all are alike

    # appended after the projection on the leading component's scale: the embedding's components stay as they were
    x = np.random.default_rng(0).standard_normal((4, 3)) * [3.0, 1.0, 0.5]
    joined = with_length(x, ["one", "one two three", "a " * 50, "a " * 200], 1.0)
    assert joined.shape == (4, 4) and np.array_equal(joined[:, :3], x)
    assert joined[:, 3].std() == pytest.approx(x[:, 0].std())
    assert with_length(x, ["a", "b", "c", "d"], 0.0) is x


@pytest.mark.parametrize("grader", ["concise", "direct"])
def test_the_length_feature_helps_where_raters_reward_length_and_costs_nothing_where_not(
        tmp_path: Path, grader: str) -> None:
    """Single-rated askers (a fifth inverting) whose hidden preference is the answer's length (`concise`) or
    its opening (`direct`), features that carry no quality (random vectors, standing in for an embedding
    that misses both): the length feature lifts the rewards' rank correlation with the truth where length
    is what is rated, and leaves it alone where it is not."""
    from ratingloop.simulate.single import AskerConfig, single_rated

    rng = np.random.default_rng(3)
    words = "the a of to and in it is for on that with as this by".split()
    openers = ["Sure, ", "Certainly! ", "", "", ""]
    answers = [openers[i % 5] + " ".join(rng.choice(words, int(np.exp(rng.uniform(1.6, 5.0))))) + "."
               for i in range(480)]
    prompts = [[{"role": "user", "content": f"question {i % 60}"}] for i in range(480)]
    world = single_rated(prompts, answers, AskerConfig(grader=grader, invert_frac=0.2, seed=1))
    engine = open_engine(f"sqlite:///{tmp_path / 's.db'}")
    assert not import_lines(engine, world.lines, Limits(), user_key=KEY).bad

    def embed(ps: Sequence[Any], ans: Sequence[str]) -> np.ndarray:
        return np.random.default_rng(len(ans)).standard_normal((len(ans), 32))

    index = {iid: i for i, iid in enumerate(world.ids)}
    rho = {}
    for weight in (0.0, 1.0):
        cfg = SignalsConfig(content=ContentConfig(mode="on", length_weight=weight))
        result = signals_from_loaded(*_loaded_and_content(engine, cfg, embed))
        got = [(index[s.interaction_id], s.reward) for s in result.interactions]
        rho[weight] = spearmanr([r for _, r in got], world.score[[i for i, _ in got]])[0]
    if grader == "concise":
        assert rho[1.0] > rho[0.0] + 0.15, rho
    else:
        assert abs(rho[1.0] - rho[0.0]) < 0.05, rho


def _loaded_and_content(engine: Any, cfg: SignalsConfig, embed: Any) -> tuple[Any, ...]:
    from ratingloop.signals.content import content_data
    from ratingloop.signals.load import load_ratings

    loaded_ = load_ratings(engine, cfg.topic_tag)
    return loaded_, cfg, None, content_data(engine, loaded_, cfg.content, embed)
