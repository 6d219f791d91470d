"""The rater model and troll detection (signals/raters.py, signals/trolls.py) on simulated data with
known truth. Small sets (<= 20k ratings), so each test takes well under a second."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import spearmanr

from ratingloop.signals.normalise import KIND_CODE
from ratingloop.signals.observations import Observations, RawRatings, observations
from ratingloop.signals.raters import fit_raters
from ratingloop.signals.trolls import fit_excluding_trolls
from ratingloop.simulate import SimConfig, simulate
from ratingloop.simulate.ratings import to_raw


def naive_mean(obs: Observations) -> np.ndarray:
    cnt = np.bincount(obs.item, minlength=obs.n_items)
    return np.bincount(obs.item, obs.value, obs.n_items) / np.maximum(cnt, 1)


def test_reward_beats_naive_mean_by_010_with_20pct_trolls() -> None:
    for seed in (0, 1):
        sim = simulate(SimConfig(n_items=2000, n_raters=200, n_ratings=10_000, troll_frac=0.2, seed=seed))
        obs = observations(to_raw(sim))
        fit, _ = fit_excluding_trolls(obs, topic=sim.truth.topic)
        rated = np.bincount(obs.item, minlength=obs.n_items) > 0
        truth = sim.truth.quality[rated]
        ours = spearmanr(fit.reward()[rated], truth)[0]
        naive = spearmanr(naive_mean(obs)[rated], truth)[0]
        assert ours >= naive + 0.10, (seed, ours, naive)


def fit_and_flag(cfg: SimConfig) -> tuple[Any, Any, list[Any], np.ndarray]:
    """Simulate, fit with troll exclusion; the flags also as a mask over raters."""
    sim = simulate(cfg)
    fit, flags = fit_excluding_trolls(observations(to_raw(sim)), topic=sim.truth.topic)
    flagged = np.zeros(sim.n_raters, bool)
    flagged[[f.rater for f in flags]] = True
    return sim, fit, flags, flagged


def test_trolls_flagged_with_precision_and_recall_08() -> None:
    # ~100 ratings per rater: enough to judge each one (a rater with 3 ratings is never flagged)
    sim, fit, flags, flagged = fit_and_flag(
        SimConfig(n_items=2000, n_raters=200, n_ratings=20_000, troll_frac=0.2, activity_sigma=0.3))
    troll = sim.truth.is_troll
    precision = (flagged & troll).sum() / flagged.sum()
    recall = (flagged & troll).sum() / troll.sum()
    assert precision >= 0.8 and recall >= 0.8, (precision, recall)
    assert all(f.reason and f.evidence["n"] >= 8 for f in flags)
    assert (fit.weight[flagged] == 0).all() and (fit.weight[~flagged] == 1).all()  # excluded, reported
    kinds = {f.kind for f in flags}
    assert {"inverter", "random", "constant"} <= kinds


def _obs(rater: list[int], item: list[int], value: list[float], binary: list[bool] | None = None,
         n_raters: int | None = None, n_items: int | None = None) -> Observations:
    return Observations(rater=np.asarray(rater, np.int32), item=np.asarray(item, np.int32),
                        value=np.asarray(value, float),
                        binary=np.zeros(len(rater), bool) if binary is None else np.asarray(binary),
                        n_raters=n_raters or max(rater) + 1, n_items=n_items or max(item) + 1)


def _calibrated_world(rng: np.random.Generator, n_common: int = 150, n_crowd: int = 15
                      ) -> tuple[list[int], list[int], list[float], np.ndarray]:
    """A crowd of honest star raters on `n_common` interactions, as (rater, item, reward) lists."""
    q = rng.standard_normal(n_common)
    r, i, x = [], [], []
    for k in range(n_crowd):
        b = 0.2 * rng.standard_normal()
        for j in rng.choice(n_common, 60, replace=False):
            r.append(k), i.append(int(j)), x.append(float(np.clip(0.5 * q[j] + b + 0.1 * rng.standard_normal(), -1, 1)))
    return r, i, x, q


def test_lenient_and_harsh_raters_give_comparable_rewards() -> None:
    rng = np.random.default_rng(0)
    r, i, x, q = _calibrated_world(rng)
    n_common, lenient, harsh = len(q), 100, 101
    # both rate 40 of the common interactions (so their offsets are learned) and then 60 of their
    # own that nobody else sees, drawn from the same quality distribution
    own_q = rng.standard_normal(120)
    for who, offset, own in ((lenient, 0.45, range(60)), (harsh, -0.45, range(60, 120))):
        for j in range(40):
            r.append(who), i.append(j), x.append(float(np.clip(0.5 * q[j] + offset, -1, 1)))
        for j in own:
            r.append(who), i.append(n_common + j), x.append(float(np.clip(0.5 * own_q[j] + offset, -1, 1)))
    obs = _obs(r, i, x)
    fit = fit_raters(obs)
    reward = fit.reward()
    len_items, harsh_items = n_common + np.arange(60), n_common + np.arange(60, 120)
    naive = naive_mean(obs)
    assert naive[len_items].mean() - naive[harsh_items].mean() > 0.6  # raw ratings: far apart
    gap = reward[len_items].mean() - reward[harsh_items].mean()
    true_gap = 0.5 * (own_q[:60].mean() - own_q[60:].mean())
    assert abs(gap - true_gap) < 0.1, (gap, true_gap)
    assert fit.b[lenient] - fit.b[harsh] > 0.7


def test_offset_of_a_two_rating_rater_is_shrunk_more_than_a_200_rating_one() -> None:
    rng = np.random.default_rng(1)
    r, i, x, q = _calibrated_world(rng, n_common=250)
    few, many = 100, 101
    for who, items in ((few, [0, 1]), (many, range(200))):
        for j in items:
            r.append(who), i.append(j), x.append(float(np.clip(0.5 * q[j] + 0.5, -1, 1)))
    fit = fit_raters(_obs(r, i, x))
    shift_few, shift_many = fit.b[few] - fit.mu_b, fit.b[many] - fit.mu_b
    assert 0.35 < shift_many < 0.6  # trusted on their own data (true offset +0.5 minus clipping)
    assert 0 < shift_few < 0.75 * shift_many  # pulled towards the population
    assert fit.b_var[few] > 10 * fit.b_var[many]


def test_thumbs_and_stars_from_the_same_rater_in_one_model() -> None:
    sim = simulate(SimConfig(n_items=1500, n_raters=150, n_ratings=12_000, habits=(0.0, 0.0, 1.0), seed=2))
    obs = observations(to_raw(sim))
    assert obs.binary.any() and (~obs.binary).any()
    fit = fit_raters(obs)
    both = np.zeros(sim.n_raters, bool)
    both[np.intersect1d(obs.rater[obs.binary], obs.rater[~obs.binary])] = True
    assert both.mean() > 0.9
    k = both & (fit.n >= 30)
    assert np.corrcoef(fit.b[k], sim.truth.offset[k])[0, 1] > 0.8  # one offset explains both kinds
    rated = np.bincount(obs.item, minlength=obs.n_items) > 0
    assert spearmanr(fit.quality[rated], sim.truth.quality[rated])[0] > spearmanr(naive_mean(obs)[rated],
                                                                                  sim.truth.quality[rated])[0]


def test_single_rated_rewards_use_each_raters_offset() -> None:
    sim = simulate(SimConfig(n_items=6000, n_raters=300, single_rated=True, habits=(0.0, 1.0, 0.0), seed=3))
    obs = observations(to_raw(sim))
    fit = fit_raters(obs)
    truth = sim.truth.quality
    assert spearmanr(fit.reward(), truth)[0] > spearmanr(naive_mean(obs), truth)[0] + 0.05
    # with one rating each, confidence stays well below what several agreeing ratings give
    assert fit.confidence().max() < 0.9


def test_content_prior_moves_single_rated_quality() -> None:
    obs = _obs([0, 1, 2], [0, 1, 2], [0.5, 0.5, 0.5], n_items=4)
    flat = fit_raters(obs)
    informed = fit_raters(obs, prior_mean=np.asarray([1.0, 0.0, -1.0, 2.0]), prior_var=np.full(4, 0.2))
    assert informed.quality[0] > flat.quality[0] > informed.quality[2]
    assert informed.quality[3] > 1.5  # an unrated interaction gets the content model's prior
    assert flat.confidence()[3] == 0.0


def test_latest_rating_supersedes_earlier_one() -> None:
    T, S = KIND_CODE["thumbs"], KIND_CODE["stars"]
    raw = RawRatings(rater=np.asarray([0, 0, 1, 0]), item=np.asarray([0, 0, 0, 1]), kind=np.asarray([T, S, T, T]),
                     aspect=np.zeros(4, int), value=np.asarray([-1.0, 5.0, 1.0, 1.0]),
                     scale_min=np.asarray([-1.0, 1.0, -1.0, -1.0]), scale_max=np.asarray([1.0, 5.0, 1.0, 1.0]),
                     n_raters=2, n_items=2, order=np.asarray([0, 2, 1, 3]))
    obs = observations(raw)
    assert obs.n_superseded == 1
    mine = (obs.rater == 0) & (obs.item == 0)
    assert mine.sum() == 1 and obs.value[mine][0] == 1.0 and not obs.binary[mine][0]  # the later 5 stars


def test_aspects_fill_in_overall_with_weights() -> None:
    A = KIND_CODE["aspect"]
    raw = RawRatings(rater=np.asarray([0, 0, 1]), item=np.asarray([0, 0, 0]), kind=np.asarray([A, A, A]),
                     aspect=np.asarray([1, 2, 1]), value=np.asarray([5.0, 1.0, 3.0]),
                     scale_min=np.ones(3), scale_max=np.full(3, 5.0), n_raters=2, n_items=1,
                     aspects=("overall", "accuracy", "helpfulness"))
    obs = observations(raw, aspect_weights={"accuracy": 3.0, "helpfulness": 1.0})
    assert sorted(zip(obs.rater.tolist(), obs.value.tolist(), strict=True)) == [(0, 0.5), (1, 0.0)]  # (3*1 + 1*-1) / 4
    assert len(obs.aspect_value) == 3  # per-aspect rewards kept


def test_scale_and_reliability_of_a_three_rating_rater_stay_near_the_population() -> None:
    # As in the example store: interactions whose consensus is uncertain (two thumbs each), and two
    # star raters who rate steeply (2x the crowd's scale), one on 3 interactions, one on 200. Three
    # ratings against an uncertain consensus must not read as proof of an unusual scale; 200 do.
    rng = np.random.default_rng(4)
    n_items, n_crowd = 300, 30
    q = rng.standard_normal(n_items)
    r, i, x, binary = [], [], [], []
    for j in range(n_items):
        for k in rng.choice(n_crowd, 2, replace=False):
            r.append(int(k)), i.append(j), binary.append(True)
            x.append(1.0 if 0.5 * q[j] + 0.2 * rng.standard_normal() > 0 else -1.0)
    few, many = n_crowd, n_crowd + 1
    for who, items in ((few, [0, 1, 2]), (many, range(3, 203))):
        for j in items:
            r.append(who), i.append(j), binary.append(False)
            x.append(float(np.clip(1.0 * q[j] + 0.1 * rng.standard_normal(), -1, 1)))
    fit = fit_raters(_obs(r, i, x, binary))
    scale = fit.a / fit.mu_a
    assert scale[many] > 1.4  # trusted on their own data
    assert abs(scale[few] - 1) < 0.6 * abs(scale[many] - 1), (scale[few], scale[many])
    assert fit.a_var[few] > 10 * fit.a_var[many]
    reliability = fit.reliability()
    population = fit.mu_a**2 / (fit.mu_a**2 + fit.s2_0)
    assert abs(reliability[few] - population) < 0.1, (reliability[few], population)


def test_evidence_grows_with_ratings_and_three_ratings_are_never_flagged() -> None:
    sim, fit, flags, flagged = fit_and_flag(
        SimConfig(n_items=3000, n_raters=300, n_ratings=24_000, troll_frac=0.2, seed=5))
    assert not flagged[fit.n < 5].any()
    assert all(0.0 <= f.evidence["honest_prob"] < 0.5 for f in flags if "honest_prob" in f.evidence)
    troll = sim.truth.is_troll
    busy = troll & (fit.n >= 40)
    assert flagged[busy].mean() >= 0.85


def test_confidence_grows_with_real_information_one_thumbs_is_little() -> None:
    # Calibrated star raters and thumbs raters on common interactions; then interaction A gets one
    # thumbs, B two disagreeing thumbs, C one star, D five agreeing stars, E ten agreeing ratings.
    rng = np.random.default_rng(7)
    r, i, x, q = _calibrated_world(rng)
    binary = [False] * len(r)
    n_common = len(q)
    for k in range(15, 30):  # thumbs raters, 60 common interactions each
        for j in rng.choice(n_common, 60, replace=False):
            r.append(k), i.append(int(j)), binary.append(True)
            x.append(1.0 if 0.5 * q[j] + 0.1 * rng.standard_normal() > 0 else -1.0)
    A, B, C, D, E = range(n_common, n_common + 5)
    extra = [(15, A, 1.0, True), (16, B, 1.0, True), (17, B, -1.0, True), (0, C, 0.5, False)]
    extra += [(k, D, 0.5, False) for k in range(5)] + [(k, E, 0.5, False) for k in range(10)]
    for who, item, value, is_thumbs in extra:
        r.append(who), i.append(item), x.append(value), binary.append(is_thumbs)
    conf = fit_raters(_obs(r, i, x, binary)).confidence()
    assert conf[A] < 0.5, conf[A]
    assert conf[E] > 0.8, conf[E]
    assert conf[A] < conf[C] < conf[D] < conf[E], conf[[A, C, D, E]]
    # two precise raters who disagree do pin q near where their thresholds lie, but less than 5 stars
    assert conf[A] < conf[B] < conf[D], conf[[A, B, D]]
    assert conf[D] - conf[A] > 0.3, (conf[A], conf[D])
