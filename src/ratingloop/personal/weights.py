"""Personalisation: per-user preference weights, a hierarchical ridge regression shrunk toward the population.

A user's rating of an answer is modelled as their own mean plus a weighted mix of the answer's shared
features (`features.py`), in units of their own rating spread:

    (y - mean_u) / sd_u  =  (x - xbar_u) . w_u  +  noise

Standardising each user's ratings puts a thumbs user (+-1) and a stars user (mostly within +-0.5) with the
same taste on the same weights; a user's leniency (their mean) is not a preference and is kept apart. The
weights minimise ||z_u - Xc_u w_u||^2 + shrinkage * ||w_u - w_pop||^2, where w_pop is the same regression on
every user at once: a user with few ratings gets about w_pop, one with many their own. A user whose ratings
are all one value (or who rated once) tells nothing about what drives them: they get w_pop, and spread 0.

Everything here is arrays in, arrays out: `moments` sums each user's rows once; the per-user fit, the pooled
fit of a group of users (a cohort) and the Gaussian log-likelihood of held-out ratings all work from them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS = 1e-6  # a ridge too small to matter, so that a user with fewer ratings than features still solves


@dataclass(frozen=True)
class Moments:
    """Per user: how many ratings, their mean and sd, the mean features, and the sums a regression needs."""

    n: np.ndarray  # int (u,)
    y_mean: np.ndarray  # (u,)
    y_sd: np.ndarray  # (u,): 0 when all their ratings are one value
    x_mean: np.ndarray  # (u, f)
    gram: np.ndarray  # (u, f, f): sum of (x - xbar)(x - xbar)^T over their rows
    cross: np.ndarray  # (u, f): sum of (x - xbar) z, z their standardised rating (0 when sd is 0)

    @property
    def varying(self) -> np.ndarray:
        """Users whose ratings differ: the only ones that say anything about what drives a rating."""
        return self.y_sd > 1e-9


def moments(user: np.ndarray, y: np.ndarray, X: np.ndarray, n_users: int) -> Moments:
    n = np.bincount(user, minlength=n_users)
    safe = np.maximum(n, 1)
    y_mean = np.bincount(user, y, n_users) / safe
    y_sd = np.sqrt(np.maximum(np.bincount(user, (y - y_mean[user]) ** 2, n_users) / safe, 0.0))
    x_mean = np.zeros((n_users, X.shape[1]))
    np.add.at(x_mean, user, X)
    x_mean /= safe[:, None]
    xc, z = centred(user, y, X, y_mean, y_sd, x_mean)
    gram = np.zeros((n_users, X.shape[1], X.shape[1]))
    np.add.at(gram, user, xc[:, :, None] * xc[:, None, :])
    cross = np.zeros((n_users, X.shape[1]))
    np.add.at(cross, user, xc * z[:, None])
    return Moments(n, y_mean, y_sd, x_mean, gram, cross)


def centred(user: np.ndarray, y: np.ndarray, X: np.ndarray, y_mean: np.ndarray, y_sd: np.ndarray,
            x_mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows as the model sees them, with a user's means and sd (possibly from other rows: held-out ones)."""
    sd = y_sd[user]
    z = np.where(sd > 1e-9, (y - y_mean[user]) / np.where(sd > 1e-9, sd, 1.0), 0.0)
    return X - x_mean[user], z


def population_weights(m: Moments) -> np.ndarray:
    """Everyone's ratings in one regression (each user's own mean and sd taken out): the weights users shrink to."""
    keep = m.varying
    gram, cross = m.gram[keep].sum(axis=0), m.cross[keep].sum(axis=0)
    return _solve(gram + EPS * np.eye(len(cross)), cross)


def user_weights(m: Moments, shrinkage: float, population: np.ndarray) -> np.ndarray:
    """(u, f): each user's weights, shrunk toward `population`; exactly `population` for a user whose ratings
    do not vary."""
    f = len(population)
    lhs = m.gram + (shrinkage + EPS) * np.eye(f)[None]
    rhs = m.cross + shrinkage * population[None]
    w = np.linalg.solve(lhs, rhs[..., None])[..., 0]
    w[~m.varying] = population
    return w


def pooled_weights(m: Moments, members: np.ndarray, shrinkage: float, population: np.ndarray) -> np.ndarray:
    """One set of weights for a group of users (a cohort), fitted on all their rows at once."""
    keep = members & m.varying
    f = len(population)
    return _solve(m.gram[keep].sum(axis=0) + (shrinkage + EPS) * np.eye(f),
                  m.cross[keep].sum(axis=0) + shrinkage * population)


def residual_var(m: Moments, w: np.ndarray, users: np.ndarray) -> float:
    """Mean squared residual of the standardised ratings of `users` when user u's weights are w[u]: the noise
    variance of the model, from the sums alone (sum (z - Xc w)^2 = n - 2 w.cross + w' gram w, as sum z^2 = n)."""
    keep = users & m.varying
    sse = (m.n[keep] - 2 * np.einsum("uf,uf->u", w[keep], m.cross[keep])
           + np.einsum("uf,ufg,ug->u", w[keep], m.gram[keep], w[keep]))
    return max(float(sse.sum() / max(m.n[keep].sum(), 1)), 1e-3)


def loglik(user: np.ndarray, y: np.ndarray, X: np.ndarray, train: Moments, w: np.ndarray, var: float) -> np.ndarray:
    """Per row: the Gaussian log-density of a rating (in reward units, hence the - log sd) under user u's weights
    w[u], their mean and sd from `train` and noise variance `var`."""
    xc, z = centred(user, y, X, train.y_mean, train.y_sd, train.x_mean)
    mu = np.einsum("nf,nf->n", xc, w[user])
    out: np.ndarray = -0.5 * np.log(2 * np.pi * var) - (z - mu) ** 2 / (2 * var) - np.log(train.y_sd[user])
    return out


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.linalg.solve(a, b)
    return out
