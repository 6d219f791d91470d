"""Stage 3, signals: per-rater evidence for troll tests — Bayes factors between rater classes.

Reads `Scales` (`signals.scales`: each rater's scale a from their own ratings alone, measured
against E[q | the *other* raters], its variance, the residual spread of their stars, and per topic
the log-likelihood ratio of their ratings under an inverted vs their own scale). Writes
`ClassEvidence`: per rater the log marginal likelihood under each class, and the posterior class
probabilities under class shares estimated from all raters (empirical Bayes, a mixture fitted by EM).

Classes, as models of a rater's scale a (how their rating moves with quality) and stars noise s2:
- honest:         a ~ LogNormal(c, s^2) (a > 0; c, s estimated robustly), s2 ~ scaled-inv-chi2(4, s2_0)
- inverter:       -a ~ the same log-normal, s2 as honest (rates good answers down, bad ones up)
- random:         a = 0, s2 ~ scaled-inv-chi2(4, 0.5) or (4, ~0), evenly (unrelated to quality: coin
                  flips, dice, floods of one value; 0.5 is the variance of a uniform draw over 1-5
                  stars in reward units)
- topic_inverter: honest, except on one topic t (uniform over topics) where a_t = -a
The likelihood of a is Student-t (centre a_hat, scale^2 a_var, n - 2 dof); class marginals integrate it against
each class's density on a grid of a. The residual sum of squares S (k degrees of freedom) is
independent of the slope estimate; under s2 ~ scaled-inv-chi2(nu, s0) its density is
p(S) ∝ (nu s0)^(nu/2) / (S + nu s0)^((k + nu)/2) (factors free of s0 cancel between classes).
A rater whose ratings the others cannot check (single-rated interactions, or 2-3 ratings) has a
huge a variance and few degrees of freedom: every class explains them alike, the posterior stays at
the prior, and nobody is flagged on no evidence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ratingloop.signals.scales import Scales

CLASSES = ("honest", "inverter", "random", "topic_inverter")
RANDOM_STARS_VAR = 0.5  # variance of a uniform draw over 5 levels spanning [-1, 1]
FLOOD_VAR = 2e-3 + 0.5**2 / 12  # a flood of one value: no spread beyond the rater model's noise floor for 1-5
# stars (ModelConfig.s2_floor plus the rounding variance step^2 / 12, step 0.5 in reward units)
_NU = 4.0  # pseudo-ratings behind each class's noise level, as in the rater model
_GRID = np.exp(np.linspace(np.log(0.02), np.log(5.0), 32))  # |a| / mu_a: where the log-normal lives


@dataclass(frozen=True)
class ClassEvidence:
    loglik: np.ndarray  # (n_raters, 4) log marginal likelihood of each rater's ratings per class
    posterior: np.ndarray  # (n_raters, 4) class probabilities under the fitted class shares
    share: np.ndarray  # (4,) class shares in the population (the mixture's prior)
    log_sd: float  # honest raters' spread of log scale


def _log_rss(rss: np.ndarray, dof: np.ndarray, s0: float, nu: float = _NU) -> np.ndarray:
    """log p(S | s2 ~ scaled-inv-chi2(nu, s0)) up to terms shared by every class."""
    return 0.5 * nu * np.log(nu * s0) - 0.5 * (dof + nu) * np.log(rss + nu * s0)


def class_evidence(sc: Scales, mu_a: float, s2_0: float, n: np.ndarray, group: np.ndarray, iters: int = 30,
                   prior_counts: tuple[float, ...] = (10.0, 1.0, 1.0, 1.0), min_log_sd: float = 0.1) -> ClassEvidence:
    """Class log-likelihoods per rater, then the class shares by EM.

    `min_log_sd`: the honest raters' spread of log scale is never taken narrower than this (where
    each scale is measured as loosely as they differ, the measured spread says little).

    `prior_counts` is a Dirichlet prior on the shares (10 : 1 : 1 : 1: most raters are honest until
    the data say otherwise); with hundreds of raters the data dominate it.
    """
    x, v = sc.a / mu_a, np.maximum(sc.a_var, 1e-12) / mu_a**2  # in units of the typical scale
    # Likelihood of each rater's a at each grid point: Student-t with n - 2 degrees of freedom, not
    # normal — a's standard error comes from the rater's own few ratings (the t-statistic of a
    # regression slope); a normal tail would turn 6 ratings into 10^2 : 1 evidence.
    df = np.maximum(n - 2.0, 1.0)[:, None]

    def log_t(d: np.ndarray) -> np.ndarray:
        out: np.ndarray = -0.5 * (df + 1.0) * np.log1p(d * d / (df * v[:, None]))
        return out

    log_lik_pos, log_lik_neg = log_t(x[:, None] - _GRID[None, :]), log_t(x[:, None] + _GRID[None, :])
    log_lik_0 = log_t(x[:, None])[:, 0]
    top = np.maximum(np.maximum(log_lik_pos.max(1), log_lik_neg.max(1)), log_lik_0)
    lik_pos, lik_neg = np.exp(log_lik_pos - top[:, None]), np.exp(log_lik_neg - top[:, None])
    base = top  # the shared factors, restored after integration (the t's constant cancels between classes)
    # a random rater either draws stars at random (spread 0.5) or floods one value (spread ~0):
    # an even mixture of the two noise levels
    noise_random = (np.logaddexp(_log_rss(sc.rss, sc.dof, RANDOM_STARS_VAR), _log_rss(sc.rss, sc.dof, FLOOD_VAR))
                    - np.log(2.0) - _log_rss(sc.rss, sc.dof, s2_0))
    log_w = np.log(np.gradient(np.log(_GRID)))  # integration weights in log a
    # A thumbs-only rater's a is known only relative to the population noise their probit assumes, so
    # their honest scales spread differently from star raters': one log-normal per `group` (raters with
    # stars; with thumbs only; comparing, without stars: `trolls.find_trolls` says which).
    m_pos, m_neg = np.zeros(len(x)), np.zeros(len(x))
    log_sd = 0.0
    for g in [*(k for k in np.unique(group).tolist() if k != 0), 0]:  # the stars' spread reported (last)
        grp = group == g
        centre, log_sd = _honest_log_normal(x[grp], v[grp], *_honest_log_normal(x, v, min_sd=min_log_sd),
                                            min_sd=min_log_sd)
        dens = -0.5 * ((np.log(_GRID) - centre) / log_sd) ** 2 + log_w
        p = np.exp(dens - dens.max())
        p /= p.sum()  # the honest class's mass on each grid point of |a|
        m_pos[grp], m_neg[grp] = lik_pos[grp] @ p, lik_neg[grp] @ p
    share = np.asarray(prior_counts) / sum(prior_counts)
    ll = np.zeros((len(x), 4))
    ll[:, 0] = base + np.log(np.maximum(m_pos, 1e-300))
    ll[:, 1] = base + np.log(np.maximum(m_neg, 1e-300))
    ll[:, 2] = base + log_lik_0 - top + noise_random
    ll[:, 3] = ll[:, 0] + sc.topic_log_bf if sc.topic_log_bf is not None else -np.inf
    # EM for the class shares. The likelihoods are exponentiated once (each row scaled by its max); an
    # E-step is then a product and a row normalisation, and EM stops once the shares settle.
    lik = np.exp(ll - ll.max(axis=1, keepdims=True))
    for _ in range(iters):
        post = lik * share
        post /= post.sum(axis=1, keepdims=True)
        new = (post.sum(0) + np.asarray(prior_counts) - 1.0) / (len(x) + sum(prior_counts) - 4.0)
        done = float(np.max(np.abs(new - share))) < 1e-6
        share = new
        if done:
            break
    return ClassEvidence(ll, _softmax(ll + np.log(np.maximum(share, 1e-300))), share, log_sd)


def _honest_log_normal(x: np.ndarray, v: np.ndarray, centre0: float = 0.0, sd0: float = 0.5, min_sd: float = 0.1
                       ) -> tuple[float, float]:
    """Centre and spread of log a over raters whose scale is clearly positive, robustly (median,
    MAD), so inverters and random raters, which are not in that set or sit in its tails, do not widen
    it; the measurement variance (delta method, v / a^2) is taken out of the spread. Letting EM
    estimate the spread instead feeds back: a wider honest class explains random raters (a ~ 0),
    which widens it further. `centre0`, `sd0`: the answer when fewer than 5 raters qualify."""
    sel = x > 2.5 * np.sqrt(v)  # clearly positive; a relative-error cut would keep only the steepest
    if sel.sum() < 5:
        return centre0, sd0
    la = np.log(x[sel])
    centre = float(np.median(la))
    mad = 1.4826 * float(np.median(np.abs(la - centre)))
    return centre, float(np.sqrt(max(mad**2 - float(np.median(v[sel] / x[sel] ** 2)), min_sd**2)))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))  # -inf columns (no topics) give 0
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out
