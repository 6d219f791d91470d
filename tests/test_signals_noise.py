"""Per-rater stars noise in the rater model (signals/raters.py): the population noise level is
estimated, not collapsed to the floor, and a single star rating is not near-certain evidence."""

from __future__ import annotations

import numpy as np

from ratingloop.signals.observations import Observations, observations
from ratingloop.signals.raters import fit_raters
from ratingloop.simulate import SimConfig, simulate
from ratingloop.simulate.ratings import to_raw

STARS_QV = 0.5**2 / 12  # rounding variance of 1-5 stars in reward units


def _sim(seed: int, noise: tuple[float, float]) -> tuple[Observations, np.ndarray, np.ndarray]:
    sim = simulate(SimConfig(n_items=3000, n_raters=300, n_ratings=20_000, habits=(0.0, 1.0, 0.0),
                             partial_scale_frac=0.0, noise_range=noise, seed=seed))
    true_s2 = sim.truth.noise**2 + STARS_QV  # what a rater's stars scatter by: noise plus rounding
    return observations(to_raw(sim)), true_s2, sim.truth.scale


def test_population_noise_within_30pct_of_truth() -> None:
    for seed, noise in ((0, (0.05, 0.4)), (1, (0.3, 0.4)), (2, (0.1, 0.2))):
        obs, true_s2, _ = _sim(seed, noise)
        fit = fit_raters(obs)
        truth = 1.0 / float(np.mean(1.0 / true_s2))  # the inverse-gamma scale: 1 / E[1 / s2]
        assert abs(fit.s2_0 / truth - 1.0) <= 0.3, (noise, fit.s2_0, truth)
        busy = fit.n >= 40
        assert np.median(fit.s2[busy] / true_s2[busy]) > 0.7, noise  # no collapse to the floor
        assert fit.s2.min() >= STARS_QV  # a star rater is never more precise than rounding allows


def test_single_star_is_weak_evidence_five_stars_stronger() -> None:
    obs, _, _ = _sim(3, (0.2, 0.4))
    fit = fit_raters(obs)
    # typical raters: many ratings, scale and offset near the population's
    order = np.argsort(np.abs(fit.a - fit.mu_a) + np.abs(fit.b - fit.mu_b) - 0.01 * fit.n)
    typical = order[:5]
    new1, new5 = obs.n_items, obs.n_items + 1
    rater = np.concatenate([obs.rater, typical[:1], typical]).astype(np.int32)
    item = np.concatenate([obs.item, [new1], np.full(5, new5)]).astype(np.int32)
    value = np.concatenate([obs.value, [0.5], np.full(5, 0.5)])
    qv = np.concatenate([obs.quant_var if obs.quant_var is not None else np.zeros(len(obs.value)),
                         np.full(6, STARS_QV)])
    more = Observations(rater=rater, item=item, value=value, binary=np.zeros(len(value), bool),
                        n_raters=obs.n_raters, n_items=obs.n_items + 2, quant_var=qv)
    conf = fit_raters(more).confidence()
    assert conf[new1] < 0.6, conf[new1]
    assert conf[new5] > conf[new1] + 0.15, (conf[new1], conf[new5])
