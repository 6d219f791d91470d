"""Stage 3, signals: each rater's scale a from their own ratings alone, overall and per topic — the
statistics that the troll tests (`signals.evidence`) compare rater classes on.

Reads `Observations` and a `RaterFit` (per rating: E[q | the other raters] = m_cav and its variance
v_cav; per rater: offset b and noise s2). Writes `Scales`. The rater model's own a is a posterior
mode under a prior that pulls every rater towards the typical scale, and for thumbs it regresses an
imputed y* whose imputation already assumed that a: both would count as evidence of honesty. Here
a is refitted by Fisher scoring on the real likelihood (probit for thumbs, Gaussian for stars),
rating given the others' q ~ N(m_cav, v_cav), i.e. y ~ a m_cav + b + noise of variance s2 + a^2 v_cav,
with only a vague N(0, (10 mu_a)^2) prior on a to keep separable thumbs finite.

Per topic the offset stays the rater's, a is fitted per (rater, topic), and the stars noise is
re-estimated under per-topic scales: a topic inverter's overall noise contains the inverted topic
(a single scale misfits it badly), which would hide the very inversion being tested.

Comparisons (`signals.comparisons`) join the overall scale with their ordered-probit likelihood, the
difference q_first - q_second ~ N(m_cav, v_cav) as the others see it, and no offset: a rater who only
compares is judged on them. The topic test reads ratings only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import erfcx, log_ndtr, logsumexp

from ratingloop.signals.comparisons import Comparisons, information, truncated
from ratingloop.signals.observations import Observations
from ratingloop.signals.raters import RaterFit, _probit_information

_SQRT_2_OVER_PI = np.sqrt(2.0 / np.pi)
_INV_SQRT2 = 1.0 / np.sqrt(2.0)
LAPSE = 0.05  # share of slips in the topic test's likelihood (uniform over [-1, 1]: density 1/2)


@dataclass(frozen=True)
class Scales:
    a: np.ndarray  # (R,) scale from the rater's ratings alone
    a_var: np.ndarray  # (R,) its variance (huge where the others say nothing about the items rated)
    rss: np.ndarray  # (R,) stars residual sum of squares around a m_cav + b (what q's uncertainty explains removed)
    dof: np.ndarray  # (R,) its degrees of freedom (stars ratings the others pin down, less 2 fitted)
    topic_log_bf: np.ndarray | None  # (R,) log BF(inverts one topic : honest), averaged over topics
    topic_best: np.ndarray | None  # (R,) the topic with the largest such Bayes factor
    topic_best_log_bf: np.ndarray | None  # (R,) its log Bayes factor
    topic_best_n: np.ndarray | None  # (R,) the rater's ratings on it


def rater_scales(obs: Observations, fit: RaterFit, topic: np.ndarray | None = None, iters: int = 3) -> Scales:
    R = obs.n_raters
    r = obs.rater.astype(np.int64)
    a0, a_prec = fit.mu_a, 1.0 / (10.0 * fit.mu_a) ** 2
    a, b, h00, h01, h11, g, w = _score(r, R, obs, fit, fit.a.copy(), fit.b.copy(), iters, a_prec,
                                       1.0 / fit.tau_b**2, fit.mu_b, a0)
    det = np.maximum(h00 * h11 - h01 * h01, 1e-300)
    gauss = ~obs.binary
    known = np.clip(1.0 - fit.v_cav / np.maximum(fit.prior_var[obs.item], 1e-12), 0.0, 1.0) * gauss
    ar = a[r]
    y = obs.value - b[r]
    resid = known * ((y - ar * fit.m_cav) ** 2 - ar * ar * fit.v_cav)
    rss = np.maximum(np.bincount(r, resid, R), 0.0)
    dof = np.maximum(np.bincount(r, known, R) - 2.0, 0.0)
    if topic is None or len(topic) == 0 or int(topic.max()) < 1:
        return Scales(a, h11 / det, rss, dof, None, None, None, None)

    T = int(topic.max()) + 1
    t = topic[obs.item].astype(np.int64)
    on = t >= 0
    key = r * T + np.where(on, t, 0)
    K = R * T
    m, vc = fit.m_cav, fit.v_cav
    # The rater's scale without topic t: one Newton step from the overall estimate, taking out that
    # topic's score and information (a leave-one-topic-out influence step), then shrunk towards the
    # typical scale as the rater model's prior does; kept >= 0.1 mu_a (an honest scale is positive).
    g_t = np.bincount(key, on * g * m, K).reshape(R, T)
    h_t = np.bincount(key, on * w * m * m, K).reshape(R, T)
    h_rest = np.maximum(h00[:, None] - h_t, a_prec)
    a_rest = a[:, None] - g_t / h_rest
    prior = 1.0 / (0.75 * a0) ** 2
    mag = np.maximum((a_rest * h_rest + a0 * prior) / (h_rest + prior), 0.1 * a0).ravel()
    # stars noise under a separate least-squares scale per topic (a topic inverter's overall noise
    # holds the inverted topic's misfit, which would hide the inversion)
    wk = known / (fit.s2[r] + ar * ar * vc)
    slope = np.bincount(key, wk * m * y, K) / np.maximum(np.bincount(key, wk * m * m, K), 1e-12)
    sk = slope[key]
    split = np.bincount(r, known * ((y - sk * m) ** 2 - sk * sk * vc), R)
    # one slope per topic fitted: that many fewer degrees of freedom (else 2 ratings fit exactly)
    n_slopes = np.bincount(r, (np.bincount(key, known, K) > 0)[key] * known / np.maximum(
        np.bincount(key, known, K)[key], 1e-12), R)
    s2 = np.maximum((4.0 * fit.s2_0 + split) / (4.0 + np.maximum(np.bincount(r, known, R) - n_slopes, 0.0)), 2e-3)
    s2 = np.minimum(s2, fit.s2)
    # log-likelihood ratio of the rater's ratings on each topic under scale -A vs +A, the offset
    # profiled per topic under each (with the rater's offset as its prior): a rater whose thumbs and
    # stars sit at different offsets would otherwise look inverted on any topic with a few thumbs
    A = mag[key]
    sd = np.sqrt(s2[r] + A * A * vc)
    b_prec = 1.0 / fit.tau_b**2
    lr = _topic_loglik(-A, key, T, b, on, sd, obs, m, b_prec) - _topic_loglik(A, key, T, b, on, sd, obs, m, b_prec)
    log_bf = np.where(np.bincount(key, on, K) > 0, lr, 0.0).reshape(R, T)
    best = np.argmax(log_bf, axis=1)
    rows = np.arange(R)
    n_t = np.bincount(key, on, K).reshape(R, T)
    return Scales(a, h11 / det, rss, dof, logsumexp(log_bf, axis=1) - np.log(T), best, log_bf[rows, best],
                  n_t[rows, best].astype(float))


def covariate_scales(obs: Observations, fit: RaterFit, base: Scales, nu: float = 4.0, min_n: int = 5
                     ) -> tuple[Scales, float, float]:
    """Each rater's slope of rating on E[q | everyone else] (m_cav, which on an interaction nobody else
    rated is the content prior alone), by least squares with the rater's own residual spread (shrunk
    to the pooled one with `nu` pseudo-ratings): the test used when a content prior informs q.

    Why not `rater_scales`' a there: a rating given the prior is a q + b + noise with q ~ N(m0, v0); a
    consistent thumbs rater's probit slope then approaches 1 / sqrt(v0) as a grows, the likelihood of a
    flattens out and its t-approximation loses the (strong) evidence on the slope's sign. The slope of
    the rating itself has no such ceiling. Weights are the population's 1 / (s2_0 + mu_a^2 v_cav) (no
    rater's own a enters them). The noise evidence is the spread of each rater's stars around their own
    line (what a random rater's uniform stars give away). Returned with the population's typical
    spread (the median over raters with a few stars), which the honest class is measured against, and
    its typical slope (the median |slope| over raters with `min_n`+ ratings: an inverter's is as large
    as an honest rater's), the unit that "scale 1" means in a flag. Topic statistics are from `base`.
    """
    R, r = obs.n_raters, obs.rater
    w = 1.0 / (fit.s2_0 + fit.mu_a**2 * fit.v_cav)
    slope, sxx, rss = _line(r, R, w, fit.m_cav, obs.value)
    dof = np.maximum(np.bincount(r, minlength=R) - 2.0, 0.0)
    pooled = float(rss[dof > 0].sum() / dof[dof > 0].sum()) if (dof > 0).any() else 1.0
    a_var = np.where(sxx > 1e-12, (nu * pooled + rss) / (nu + dof) / np.maximum(sxx, 1e-12), 1e6)
    stars = ~obs.binary
    _, _, stars_rss = _line(r, R, w * stars, fit.m_cav, obs.value, weighted_rss=False)
    stars_dof = np.maximum(np.bincount(r, stars, R) - 2.0, 0.0)
    few = stars_dof >= 3
    typical = float(np.median(stars_rss[few] / stars_dof[few])) if few.sum() >= 5 else fit.s2_0
    slope = np.where(sxx > 1e-12, slope, 0.0)
    known = np.bincount(r, minlength=R) >= min_n
    unit = float(np.median(np.abs(slope[known]))) if known.sum() >= 5 else fit.mu_a
    # a rater who only compares has no line: their scale is the comparisons' (base), in these units
    only = (np.bincount(r, minlength=R) == 0) & (np.bincount(obs.comparisons.rater, minlength=R) > 0)
    slope = np.where(only, base.a * unit / fit.mu_a, slope)
    a_var = np.where(only, base.a_var * (unit / fit.mu_a) ** 2, a_var)
    return (Scales(slope, a_var, stars_rss, stars_dof, base.topic_log_bf, base.topic_best, base.topic_best_log_bf,
                   base.topic_best_n), max(typical, 1e-3), max(unit, 1e-3))


def _line(r: np.ndarray, R: int, w: np.ndarray, x: np.ndarray, y: np.ndarray, weighted_rss: bool = True
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per rater, the weighted least-squares line y ~ x: slope, weighted sum of squares of x about its
    mean, and residual sum of squares (weighted, or plain over the ratings with weight > 0)."""
    sw = np.maximum(np.bincount(r, w, R), 1e-12)
    dx = x - (np.bincount(r, w * x, R) / sw)[r]
    dy = y - (np.bincount(r, w * y, R) / sw)[r]
    sxx = np.bincount(r, w * dx * dx, R)
    slope = np.bincount(r, w * dx * dy, R) / np.maximum(sxx, 1e-12)
    e2 = (dy - slope[r] * dx) ** 2
    return slope, sxx, np.bincount(r, w * e2 if weighted_rss else (w > 0) * e2, R)


def _score(key: np.ndarray, K: int, obs: Observations, fit: RaterFit, a: np.ndarray, b: np.ndarray, iters: int,
           a_prec: float, b_prec: float, b_mean: float, a0: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fisher scoring for (a, b) per key, a ~ N(0, 1/a_prec), b ~ N(b_mean, 1/b_prec).

    Returns a, b, the information matrix (H00, H01, H11) and, per rating, the score d log p / d eta
    and the information weight at the final (a, b).
    """
    m, v, y, tb = fit.m_cav, fit.v_cav, obs.value, np.flatnonzero(obs.binary)  # probit terms on thumbs only
    sign = np.where(y > 0, 1.0, -1.0)
    s2r = fit.s2[obs.rater]
    pc = obs.comparisons if K == obs.n_raters else None  # per rater only: comparisons have no topic here
    for _ in range(iters + 1):
        ak = a[key]
        var = s2r + ak * ak * v
        sd = np.sqrt(var)
        eta = ak * m + b[key]
        t = sign * eta / sd
        # d log Phi(t) / d eta = sign phi(t) / (Phi(t) sd), stable in both tails via erfcx
        g, w = (y - eta) / var, 1.0 / var
        g[tb] = sign[tb] * _SQRT_2_OVER_PI / (erfcx(-t[tb] * _INV_SQRT2) * sd[tb])
        w[tb] *= _probit_information(eta[tb] / sd[tb])
        h00 = np.bincount(key, w * m * m, K) + a_prec
        h01 = np.bincount(key, w * m, K)
        h11 = np.bincount(key, w, K) + b_prec
        c00, c0 = _comparison_terms(pc, fit, a) if pc is not None and len(pc) else (0.0, 0.0)
        h00 = h00 + c00
        if _ == iters:
            break
        g0 = np.bincount(key, g * m, K) + c0 - a_prec * a
        g1 = np.bincount(key, g, K) - b_prec * (b - b_mean)
        det = h00 * h11 - h01 * h01
        a = a + np.clip((h11 * g0 - h01 * g1) / det, -2 * a0, 2 * a0)
        b = b + np.clip((h00 * g1 - h01 * g0) / det, -1.0, 1.0)
    return a, b, h00, h01, h11, g, w


def _comparison_terms(pc: Comparisons, fit: RaterFit, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per rater: the information and score about a of their comparisons (ordered probit, no offset)."""
    R = len(a)
    ac, dm = a[pc.rater], fit.cmp_m_cav
    sd = np.sqrt(2.0 * fit.s2[pc.rater] + ac * ac * fit.cmp_v_cav)
    eta, delta = ac * dm, fit.tie_delta[pc.rater]
    mean, _, _ = truncated(eta, sd, delta, pc.tie)
    info = pc.weight * information(eta, sd, delta) / (sd * sd)
    return np.bincount(pc.rater, info * dm * dm, R), np.bincount(pc.rater, pc.weight * mean / sd * dm, R)


def _topic_loglik(a: np.ndarray, key: np.ndarray, T: int, b_r: np.ndarray, on: np.ndarray, sd: np.ndarray,
                  obs: Observations, m: np.ndarray, b_prec: float, iters: int = 1) -> np.ndarray:
    """Per (rater, topic): max over b of the log-likelihood of its ratings at scale `a` (per rating)
    plus a N(b_rater, 1/b_prec) log-prior on b — a profile likelihood, by Newton steps on b."""
    K = len(b_r) * T
    tb = np.flatnonzero(obs.binary)
    sign = np.where(obs.value > 0, 1.0, -1.0)
    b0 = np.repeat(b_r, T)
    bk = b0.copy()
    for step in range(iters + 1):
        eta = a * m + bk[key]
        t = sign * eta / sd
        if step == iters:
            break
        g, w = (obs.value - eta) / sd**2, 1.0 / sd**2
        g[tb] = sign[tb] * _SQRT_2_OVER_PI / (erfcx(-t[tb] * _INV_SQRT2) * sd[tb])
        w[tb] *= _probit_information(eta[tb] / sd[tb])
        bk = bk + np.clip((np.bincount(key, on * g, K) - b_prec * (bk - b0)) / (np.bincount(key, on * w, K) + b_prec),
                          -1.0, 1.0)
    # with a lapse rate: a share LAPSE of ratings are slips (a thumb or a star at random), so that one
    # rating the model calls impossible (a thumb against a near-noiseless rater's prediction) moves
    # the ratio by at most ~log(1/LAPSE), not by 10^20
    ll = np.logaddexp(np.log1p(-LAPSE) - 0.5 * ((obs.value - eta) / sd) ** 2 - np.log(sd * np.sqrt(2 * np.pi)),
                      np.log(LAPSE / 2))
    ll[tb] = np.logaddexp(np.log1p(-LAPSE) + log_ndtr(t[tb]), np.log(LAPSE / 2))
    out: np.ndarray = np.bincount(key, on * ll, K) - 0.5 * b_prec * (bk - b0) ** 2
    return out
