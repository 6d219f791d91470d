"""Personalisation, top to bottom: users' ratings -> their weights -> how many cohorts -> the cohorts.

    fit = fit_personal(user_ratings(engine, load_signals(engine)), PersonalConfig())
    fit.k, [c.description for c in fit.cohorts], fit.users[0].weights

Arrays in (`features.UserRatings`), rows out (`PersonalFit`); `runs.record_personal` stores them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ratingloop.errors import RatingloopError
from ratingloop.personal.cohorts import HeldOut, candidate_ks, choose_k, clusters, describe, held_out, placeable
from ratingloop.personal.config import PersonalConfig
from ratingloop.personal.features import UserRatings
from ratingloop.personal.weights import moments, population_weights, user_weights

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UserRow:
    user_id: str
    weights: dict[str, float]  # feature -> weight, in sds of the user's own ratings per unit of the feature
    mean_rating: float  # in [-1, 1]: their leniency, not their taste
    rating_sd: float  # the sd of their ratings; 0 when they are all one value
    n_ratings: int
    cohort: int | None  # None: not placed (too few ratings, or all one value)
    status: str  # placed | few (under min_user_ratings) | constant (every rating the same value)


@dataclass(frozen=True)
class CohortRow:
    cohort: int  # 0 is the largest
    n_users: int
    weights: dict[str, float]  # the mean of its users' weights
    description: str  # what sets it apart, in words


@dataclass(frozen=True)
class PersonalFit:
    features: tuple[str, ...]
    population: dict[str, float]  # everyone's ratings in one regression: what users shrink toward
    k: int  # cohorts chosen (0: nobody could be placed)
    heldout: list[HeldOut]  # per K tried
    users: list[UserRow]
    cohorts: list[CohortRow]
    notes: list[str] = field(default_factory=list)  # what a reader should know: why K could not exceed 1, ...


def fit_personal(data: UserRatings, cfg: PersonalConfig = PersonalConfig()) -> PersonalFit:  # noqa: B008 - frozen
    """Weights per user, and cohorts of them (see `weights.py` and `cohorts.py` for the model)."""
    cfg.check()
    if data.n_users == 0:
        raise RatingloopError(f"signals run {data.signals_run_id} counted no overall rating (thumbs, stars or scale) "
                              "by an end user: personal weights come from users' own ratings of their answers")
    m = moments(data.user, data.y, data.X, data.n_users)
    if not m.varying.any():
        raise RatingloopError(f"every end user's ratings in signals run {data.signals_run_id} are all one value: "
                              "nothing says which features of an answer move them; collect more ratings first")
    pop = population_weights(m)
    w = user_weights(m, cfg.shrinkage, pop)
    placed = placeable(m.n, m.varying, cfg)
    notes = _notes(int(placed.sum()), cfg)
    heldout = held_out(data, cfg, candidate_ks(int(placed.sum()), cfg)) if placed.any() else []
    k = choose_k(heldout, cfg.min_gain) if heldout else 0
    labels = np.full(data.n_users, -1, np.int64)
    if placed.any():
        labels[placed] = clusters(w[placed], k, cfg.min_cohort_users, cfg.seed)
    cohorts = _cohorts(w, labels, data.features, placed)
    status = np.where(placed, "placed", np.where(m.varying, "few", "constant"))
    users = [UserRow(uid, _named(data.features, w[u]), round(float(m.y_mean[u]), 4), round(float(m.y_sd[u]), 4),
                     int(m.n[u]), int(labels[u]) if labels[u] >= 0 else None, str(status[u]))
             for u, uid in enumerate(data.users)]
    log.info("personal: %d users (%d placed), %d ratings; K=%d of %s (held-out log-lik per rating %s)", data.n_users,
             int(placed.sum()), len(data.y), len(cohorts), [h.k for h in heldout],
             ", ".join(f"{h.per_rating:.3f}" for h in heldout))
    return PersonalFit(data.features, _named(data.features, pop), len(cohorts), heldout, users, cohorts, notes)


def _cohorts(w: np.ndarray, labels: np.ndarray, features: tuple[str, ...], placed: np.ndarray) -> list[CohortRow]:
    if not placed.any():
        return []
    k = int(labels.max()) + 1
    everyone, spread = w[placed].mean(axis=0), w[placed].std(axis=0)
    out = []
    for c in range(k):
        mean = w[labels == c].mean(axis=0)
        out.append(CohortRow(c, int((labels == c).sum()), _named(features, mean),
                             describe(mean, everyone, spread, features, k)))
    return out


def _notes(n_placed: int, cfg: PersonalConfig) -> list[str]:
    if n_placed == 0:
        return [f"no user has {cfg.min_user_ratings} or more ratings that vary: nobody is placed in a cohort "
                "(personal.min_user_ratings sets the bar)"]
    if cfg.max_cohorts > 1 and n_placed < 2 * cfg.min_cohort_users:
        return [f"too few users for more than one cohort: {n_placed} with {cfg.min_user_ratings}+ varying ratings, "
                f"and each cohort needs {cfg.min_cohort_users} (personal.min_cohort_users)"]
    return []


def _named(features: tuple[str, ...], values: np.ndarray) -> dict[str, float]:
    return {name: round(float(v), 4) for name, v in zip(features, values.tolist(), strict=True)}
