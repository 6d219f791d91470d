"""Stage 6, evaluate: the statistics of a pairwise comparison - win rate, its paired bootstrap CI, and
the length-controlled win rate. Pure numpy/scipy/scikit-learn; no models, no store.

An outcome is the candidate's score on one prompt against the other version: 1 win, 0 loss, 1/2 a
tie (several judges or several rated answers on one prompt average into a fraction). Prompts are the
unit of resampling: both versions answered the same prompts, so resampling prompts keeps each pair
together (a paired bootstrap).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class WinRate:
    n: int
    win_rate: float
    ci_low: float
    ci_high: float

    def as_dict(self) -> dict[str, float | int]:
        return {"n": self.n, "win_rate": self.win_rate, "ci_low": self.ci_low, "ci_high": self.ci_high}


def outcome(delta: float, tie: float = 0.0) -> float:
    """1 if the candidate's score beats the other's by more than `tie`, 0 if it trails by more, else 1/2."""
    if delta > tie:
        return 1.0
    if delta < -tie:
        return 0.0
    return 0.5


def win_rate(outcomes: Sequence[float], *, n_resamples: int = 2000, confidence: float = 0.95,
             seed: int = 0) -> WinRate:
    """The mean outcome and its percentile bootstrap CI over prompts (seeded: the same data, the same CI).

    Percentile rather than BCa: BCa is undefined when every outcome is equal (all wins), a case the
    gate meets; there the interval is that value itself.
    """
    from scipy.stats import bootstrap

    y = np.asarray(outcomes, dtype=np.float64)
    if not len(y):
        return WinRate(0, math.nan, math.nan, math.nan)
    mean = float(y.mean())
    if len(y) == 1 or np.ptp(y) == 0:
        return WinRate(len(y), mean, mean, mean)
    res = bootstrap((y,), np.mean, n_resamples=n_resamples, confidence_level=confidence, method="percentile",
                    vectorized=True, rng=np.random.default_rng(seed))
    return WinRate(len(y), mean, float(res.confidence_interval.low), float(res.confidence_interval.high))


def lc_win_rate(outcomes: Sequence[float], len_candidate: Sequence[float], len_other: Sequence[float]) -> float:
    """AlpacaEval's length-controlled win rate: fit P(win) = sigmoid(b0 + b1 * tanh(d / sd(d))), d the length
    difference (candidate - other), by maximum likelihood, and report sigmoid(b0), the win rate at d = 0.

    Fractional outcomes (ties, averaged judges) enter as two weighted rows, a win with weight y and a
    loss with weight 1 - y, which is the same likelihood. With no spread in d the fit is the intercept
    alone and LC equals the plain win rate. Complete separation (every longer answer wins) has no
    finite maximum; a faint L2 penalty (C=1e4) keeps the fit finite there and changes nothing elsewhere.
    """
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(outcomes, dtype=np.float64)
    d = np.asarray(len_candidate, dtype=np.float64) - np.asarray(len_other, dtype=np.float64)
    if not len(y):
        return math.nan
    if len(y) != len(d):
        raise ValueError(f"lc_win_rate: {len(y)} outcomes but {len(d)} length differences")
    if y.min() == y.max():
        return float(y[0])  # all wins, all losses or all ties: nothing for length to explain
    sd = float(d.std())
    x = np.tanh(d / sd) if sd > 0 else np.zeros_like(d)
    features = np.concatenate([x, x])[:, None]
    labels = np.concatenate([np.ones_like(y), np.zeros_like(y)])
    weights = np.concatenate([y, 1.0 - y])
    keep = weights > 0
    model = LogisticRegression(C=1e4, tol=1e-10, max_iter=10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on near-separable data
        model.fit(features[keep], labels[keep], sample_weight=weights[keep])
    return float(1.0 / (1.0 + math.exp(-float(model.intercept_[0]))))
