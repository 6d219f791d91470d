"""Simulation (src/ratingloop/simulate): deterministic, the settings it promises, trolls that behave."""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

from ratingloop.simulate import STARS, THUMBS, TROLL_KINDS, SimConfig, simulate


def test_same_seed_same_arrays_and_other_seed_differs() -> None:
    a, b = simulate(SimConfig(seed=3)), simulate(SimConfig(seed=3))
    c = simulate(SimConfig(seed=4))
    assert np.array_equal(a.rater, b.rater) and np.array_equal(a.value, b.value)
    assert not np.array_equal(a.value, c.value)


def test_multi_rated_shape_values_and_scales() -> None:
    sim = simulate(SimConfig(n_items=500, n_raters=50, n_ratings=3000))
    assert len(sim) == 3000
    pairs = sim.rater.astype(np.int64) * sim.n_items + sim.item
    assert len(np.unique(pairs)) == len(sim)  # one rating per (rater, item)
    thumbs, stars = sim.kind == THUMBS, sim.kind == STARS
    assert set(np.unique(sim.value[thumbs])) <= {-1.0, 1.0}
    assert set(np.unique(sim.value[stars])) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert (sim.scale_min[stars] == 1).all() and (sim.scale_max[stars] == 5).all()
    # habits: a thumbs-only rater never gives stars
    thumbs_only = sim.truth.habit[sim.rater] == 0
    assert (sim.kind[thumbs_only] == THUMBS).all()


def test_single_rated_each_interaction_once() -> None:
    sim = simulate(SimConfig(n_items=800, n_raters=60, single_rated=True))
    assert len(sim) == 800
    assert np.array_equal(np.sort(sim.item), np.arange(800))


def test_troll_share_and_behaviour() -> None:
    cfg = SimConfig(n_items=2000, n_raters=400, n_ratings=40_000, troll_frac=0.2, habits=(0.0, 1.0, 0.0))
    sim = simulate(cfg)
    t = sim.truth
    assert t.is_troll.sum() == 80
    q = t.quality[sim.item]
    kind = t.troll[sim.rater]

    def corr(mask: np.ndarray) -> float:
        return float(spearmanr(sim.value[mask], q[mask])[0])

    assert corr(kind == 0) > 0.5  # honest raters track quality
    assert corr(kind == TROLL_KINDS.index("inverter")) < -0.5
    assert abs(corr(kind == TROLL_KINDS.index("random"))) < 0.1
    constant = kind == TROLL_KINDS.index("constant")
    per_rater = [np.unique(sim.value[constant & (sim.rater == r)]) for r in np.unique(sim.rater[constant])]
    assert all(len(v) == 1 for v in per_rater)
    topical = kind == TROLL_KINDS.index("topic_inverter")
    on_target = topical & (t.topic[sim.item] == t.target_topic[sim.rater])
    assert corr(on_target) < -0.5 and corr(topical & ~on_target) > 0.5


def test_lenient_raters_rate_higher() -> None:
    sim = simulate(SimConfig(n_items=1000, n_raters=100, n_ratings=20_000, habits=(0.0, 1.0, 0.0)))
    mean = np.bincount(sim.rater, sim.value, sim.n_raters) / np.bincount(sim.rater, minlength=sim.n_raters)
    assert np.corrcoef(mean, sim.truth.offset)[0, 1] > 0.8
