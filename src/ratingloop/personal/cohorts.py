"""Personalisation: cohorts of users with alike weights, and how many there are.

Users are clustered by their weights (k-means, seeded); a cluster with fewer than `min_cohort_users` users is
merged into the nearest one, smallest first, so no cohort (when there is more than one) is one person's taste.
The number of cohorts K (1..max_cohorts) is chosen by held-out likelihood of the users' own ratings: each
user's ratings are split into `folds` parts; for each part, weights and cohorts are fitted on the rest, each
cohort's weights are fitted on its members' rest (`weights.pooled_weights`), and the held-out part is scored
under the user's cohort's weights (`weights.loglik`). K = 1 unless more cohorts gain at least `min_gain` nats
per held-out rating over fewer: a population with one taste gets one cohort.

Only users with at least `min_user_ratings` ratings that vary are clustered ("placed"); the rest get the
population's cohort-free weights and no cohort.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ratingloop.personal.config import PersonalConfig
from ratingloop.personal.features import UserRatings
from ratingloop.personal.weights import (
    loglik,
    moments,
    pooled_weights,
    population_weights,
    residual_var,
    user_weights,
)


@dataclass(frozen=True)
class HeldOut:
    """How well K cohorts predict ratings they were not fitted on."""

    k: int  # cohorts asked of k-means
    cohorts: float  # cohorts left after merging small ones, averaged over the folds
    loglik: float  # summed over every held-out rating
    per_rating: float  # loglik / n_ratings: what K is chosen by
    n_ratings: int

    def as_dict(self) -> dict[str, float]:
        return {"k": self.k, "cohorts": round(self.cohorts, 3), "loglik": round(self.loglik, 4),
                "per_rating": round(self.per_rating, 5), "n_ratings": self.n_ratings}


def clusters(weights: np.ndarray, k: int, min_size: int, seed: int) -> np.ndarray:
    """Labels 0..m-1 (m <= k; the largest cohort is 0) for users with these weights: k-means, then clusters
    under `min_size` merged into the nearest."""
    if k <= 1 or len(weights) < 2:
        return np.zeros(len(weights), np.int64)
    from sklearn.cluster import KMeans  # ~1 s to import: only when there is something to cluster
    from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

    k = min(k, len(np.unique(weights, axis=0)))
    # one thread: users x a few features is tiny, and OpenMP's threads only contend (30 fits of 2,400 users took
    # 11 s on 2 busy cores, 0.15 s on one thread)
    with threadpool_limits(1):
        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(weights).astype(np.int64)
    return merge_small(weights, labels, min_size)


def merge_small(weights: np.ndarray, labels: np.ndarray, min_size: int) -> np.ndarray:
    """Merge the smallest cluster under `min_size` into the one whose centre is nearest, until none is left
    (or one cluster is); then number them by size, largest first (ties: by their first member)."""
    labels = labels.copy()
    while True:
        ids, counts = np.unique(labels, return_counts=True)
        if len(ids) <= 1 or counts.min() >= min_size:
            break
        small = ids[np.argmin(counts)]
        centres = {i: weights[labels == i].mean(axis=0) for i in ids.tolist()}
        others = [i for i in ids.tolist() if i != small]
        nearest = min(others, key=lambda i: float(np.sum((centres[i] - centres[int(small)]) ** 2)))
        labels[labels == small] = nearest
    ids, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = sorted(range(len(ids)), key=lambda j: (-counts[j], first[j]))
    renumber = {int(ids[j]): rank for rank, j in enumerate(order)}
    return np.asarray([renumber[int(v)] for v in labels], np.int64)


def placeable(n: np.ndarray, varying: np.ndarray, cfg: PersonalConfig) -> np.ndarray:
    """Users with enough ratings, and ratings that vary: the ones clustered."""
    out: np.ndarray = (n >= cfg.min_user_ratings) & varying
    return out


def candidate_ks(n_placed: int, cfg: PersonalConfig) -> list[int]:
    """1, and every K up to max_cohorts that leaves each cohort min_cohort_users users."""
    return list(range(1, max(1, min(cfg.max_cohorts, n_placed // cfg.min_cohort_users)) + 1))


def held_out(data: UserRatings, cfg: PersonalConfig, ks: list[int]) -> list[HeldOut]:
    """Cross-validated log-likelihood of the placed users' ratings under K cohorts, for each K in `ks`."""
    rng = np.random.default_rng(cfg.seed)
    fold = _folds(data.user, data.n_users, cfg.folds, rng)
    full = moments(data.user, data.y, data.X, data.n_users)
    placed = placeable(full.n, full.varying, cfg)
    total = {k: 0.0 for k in ks}
    found = {k: 0.0 for k in ks}
    n_scored = 0
    for f in range(cfg.folds):
        train, test = fold != f, (fold == f) & placed[data.user]
        m = moments(data.user[train], data.y[train], data.X[train], data.n_users)
        test &= m.varying[data.user]  # a user whose other ratings are all one value has no scale to score on
        if not test.any():
            continue
        pop = population_weights(m)
        w = user_weights(m, cfg.shrinkage, pop)
        members = placed & m.varying
        if not members.any():
            continue
        n_scored += int(test.sum())
        for k in ks:
            labels = np.zeros(data.n_users, np.int64)
            labels[members] = clusters(w[members], k, cfg.min_cohort_users, cfg.seed)
            cohort_w = np.stack([pooled_weights(m, members & (labels == c), cfg.shrinkage, pop)
                                 for c in range(int(labels[members].max()) + 1)])
            var = residual_var(m, cohort_w[labels], members)
            total[k] += float(loglik(data.user[test], data.y[test], data.X[test], m, cohort_w[labels], var).sum())
            found[k] += (int(labels[members].max()) + 1) / cfg.folds
    return [HeldOut(k, found[k], total[k], total[k] / max(n_scored, 1), n_scored) for k in ks]


def choose_k(scores: list[HeldOut], min_gain: float) -> int:
    """The fewest cohorts whose held-out likelihood per rating is within `min_gain` of the best."""
    best = max(s.per_rating for s in scores)
    return min(s.k for s in scores if s.per_rating >= best - min_gain)


def _folds(user: np.ndarray, n_users: int, folds: int, rng: np.random.Generator) -> np.ndarray:
    """Each row's fold: a user's rows in random order, dealt round-robin (every fold gets its share of each
    user) from a random first fold, so that users with few ratings do not all leave the same folds empty."""
    order = np.lexsort((rng.random(len(user)), user))
    starts = np.cumsum(np.bincount(user, minlength=n_users)) - np.bincount(user, minlength=n_users)
    rank = np.empty(len(user), np.int64)
    rank[order] = np.arange(len(user)) - starts[user[order]]
    out: np.ndarray = (rank + rng.integers(folds, size=n_users)[user]) % folds
    return out


def describe(mean: np.ndarray, everyone: np.ndarray, spread: np.ndarray, features: tuple[str, ...], k: int) -> str:
    """What sets a cohort apart, in words: the features whose weight differs most from everyone's (relative to how
    much users differ on it); with one cohort, what drives everyone's ratings."""
    if k == 1:
        drivers = np.argsort(-np.abs(mean))[:2].tolist()
        return "everyone: " + "; ".join(f"ratings {'rise' if mean[j] > 0 else 'fall'} with {_name(features[j])} "
                                        f"({mean[j]:+.2f})" for j in drivers)
    gap = (mean - everyone) / np.maximum(spread, 1e-3)
    apart = [j for j in np.argsort(-np.abs(gap)).tolist() if abs(gap[j]) >= 0.5][:2] or [int(np.argmax(np.abs(gap)))]
    return "; ".join(f"{_phrase(features[j], mean[j] > everyone[j])} ({features[j]} {mean[j]:+.2f} vs "
                     f"{everyone[j]:+.2f} for everyone)" for j in apart)


def _name(feature: str) -> str:
    return "longer answers" if feature == "length" else feature


def _phrase(feature: str, higher: bool) -> str:
    if feature == "length":
        return f"rates {'longer' if higher else 'shorter'} answers higher than most"
    return f"weighs {feature} {'more' if higher else 'less'} than most"
