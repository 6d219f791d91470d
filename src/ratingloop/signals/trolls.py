"""Stage 3, signals: troll detection — raters whose ratings run against everyone else's.

Reads a `RaterFit` (each rater's scale a and offset b, estimated against what the *other* raters
say about the same interactions) and writes `TrollFlag`s, each with a reason and its evidence.
`fit_excluding_trolls` fits, flags, and refits with flagged raters' weight set to zero, so their
ratings no longer move quality; the flags are returned for reporting, never dropped silently.
In the spirit of user-level troll detection (Ju et al. 2022), a flag judges the rater, not a rating:
- inverter: a is confidently negative (they rate good answers down and bad ones up);
- random: a is confidently near zero relative to their spread (their ratings carry no quality);
- constant: one value over many interactions, including ones the others clearly rate the other way;
- topic_inverter: a is confidently negative on one topic (tag) though not overall.
Every test needs `min_ratings` ratings and a margin of `z` posterior sds: a rater with 3 ratings
is never called a troll, only shrunk.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np

from ratingloop.signals.observations import Observations
from ratingloop.signals.raters import ModelConfig, RaterFit, fit_raters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrollConfig:
    min_ratings: int = 8
    z: float = 2.0  # posterior sds of margin for the rater-level tests
    random_max_corr: float = 0.6  # "random": even optimistically, rating~quality correlation below this
    # (honest simulated raters sit at 0.85 and above; a random one near 0, plus its uncertainty)
    constant_gap: float = 1.2  # a constant rating this far (reward units) from a typical rater's is a conflict
    constant_min_conflicts: int = 3
    constant_min_share: float = 0.1
    topic_min_ratings: int = 6
    topic_z: float = 2.0  # one-sided; honest raters track quality on every topic, so their slopes sit far above 0
    rounds: int = 2  # flag -> refit -> flag again against the cleaner consensus
    refit_iter: int = 6  # a refit starts from the previous fit and needs few iterations


@dataclass(frozen=True)
class TrollFlag:
    rater: int  # index into the fit's raters
    kind: str  # inverter | random | constant | topic_inverter
    reason: str
    evidence: dict[str, float] = field(default_factory=dict)


def find_trolls(obs: Observations, fit: RaterFit, cfg: TrollConfig = TrollConfig(),
                topic: np.ndarray | None = None, topic_names: tuple[str, ...] = ()) -> list[TrollFlag]:
    """Flags for every rater that fails a test (at most one flag per rater, the first that applies)."""
    a, sd = fit.a, np.sqrt(fit.a_var)
    enough = fit.n >= cfg.min_ratings
    flags: dict[int, TrollFlag] = {}
    for r in np.flatnonzero(enough & (a + cfg.z * sd < 0)):
        flags[int(r)] = TrollFlag(int(r), "inverter", (
            f"rates against the consensus: scale {a[r]:+.2f} ± {sd[r]:.2f} over {int(fit.n[r])} ratings "
            f"(typical rater {fit.mu_a:+.2f})"), {"n": float(fit.n[r]), "scale": float(a[r]), "scale_sd": float(sd[r]),
                                                  "typical_scale": fit.mu_a})
    upper_corr = (a + cfg.z * sd) / np.sqrt(a * a + fit.s2)
    for r in np.flatnonzero(enough & (upper_corr < cfg.random_max_corr)):
        flags.setdefault(int(r), TrollFlag(int(r), "random", (
            f"ratings unrelated to quality: scale {a[r]:+.2f} ± {sd[r]:.2f}, noise sd {np.sqrt(fit.s2[r]):.2f} "
            f"over {int(fit.n[r])} ratings"), {"n": float(fit.n[r]), "scale": float(a[r]), "scale_sd": float(sd[r]),
                                               "noise_sd": float(np.sqrt(fit.s2[r])),
                                               "max_correlation": float(upper_corr[r])}))
    for flag in _constant(obs, fit, cfg) + _topic_inverters(obs, fit, cfg, topic, topic_names):
        flags.setdefault(flag.rater, flag)
    return sorted(flags.values(), key=lambda f: f.rater)


def _constant(obs: Observations, fit: RaterFit, cfg: TrollConfig) -> list[TrollFlag]:
    R, r = obs.n_raters, obs.rater
    lo = np.full(R, np.inf)
    hi = np.full(R, -np.inf)
    np.minimum.at(lo, r, obs.value)
    np.maximum.at(hi, r, obs.value)
    same = (hi - lo < 1e-9) & (fit.n >= cfg.min_ratings)
    c = lo[r]
    typical = fit.mu_a * fit.m_cav + fit.mu_b  # what a calibrated rater would give, from the others
    gap = cfg.constant_gap * np.maximum(np.abs(c), 0.5)  # a middle value conflicts at half the distance
    conflicts = np.bincount(r, same[r] & (np.abs(typical - c) > gap), R)
    share = conflicts / np.maximum(fit.n, 1)
    hit = same & (conflicts >= cfg.constant_min_conflicts) & (share >= cfg.constant_min_share)
    return [TrollFlag(int(k), "constant", (
        f"gave {lo[k]:+.2f} to all {int(fit.n[k])} interactions, {int(conflicts[k])} of which the others rate "
        f"clearly otherwise"), {"n": float(fit.n[k]), "value": float(lo[k]), "conflicts": float(conflicts[k])})
        for k in np.flatnonzero(hit)]


def _topic_inverters(obs: Observations, fit: RaterFit, cfg: TrollConfig, topic: np.ndarray | None,
                     names: tuple[str, ...]) -> list[TrollFlag]:
    """Per (rater, topic): the slope of the rater's y* on the others' quality, with a N(0, tau^2) prior."""
    if topic is None or len(obs.rater) == 0:
        return []
    T = int(topic.max()) + 1 if len(topic) else 1
    t_obs = topic[obs.item]
    valid = t_obs >= 0
    key = obs.rater.astype(np.int64) * T + np.where(valid, t_obs, 0)
    K = obs.n_raters * T
    s2 = fit.s2[obs.rater]
    wgt = valid * fit.info / s2
    resid = fit.z - fit.b[obs.rater]
    tau2 = (fit.mu_a * 2.0) ** 2  # a wide, neutral prior: only the data may push a slope below zero
    prec = np.bincount(key, wgt * fit.m_cav**2, K) + 1.0 / tau2
    slope = np.bincount(key, wgt * fit.m_cav * resid, K) / prec
    sd = 1.0 / np.sqrt(prec)
    n = np.bincount(key, valid, K)
    hit = (n >= cfg.topic_min_ratings) & (slope + cfg.topic_z * sd < 0)
    out = []
    for k in np.flatnonzero(hit):
        r, t = divmod(int(k), T)
        name = names[t] if t < len(names) else str(t)
        out.append(TrollFlag(r, "topic_inverter", (
            f"rates against the consensus on topic {name!r}: scale {slope[k]:+.2f} ± {sd[k]:.2f} over {int(n[k])} "
            f"ratings there, {fit.a[r]:+.2f} overall"), {"n": float(fit.n[r]), "topic_n": float(n[k]),
                                                         "topic_scale": float(slope[k]), "topic_scale_sd": float(sd[k]),
                                                         "scale": float(fit.a[r])}))
    return out


def fit_excluding_trolls(
    obs: Observations,
    model: ModelConfig | None = None,
    trolls: TrollConfig | None = None,
    topic: np.ndarray | None = None,
    topic_names: tuple[str, ...] = (),
    prior_mean: np.ndarray | None = None,
    prior_var: np.ndarray | None = None,
) -> tuple[RaterFit, list[TrollFlag]]:
    """Fit, flag trolls, refit without them (weight 0); repeat up to `trolls.rounds` times."""
    model, trolls = model or ModelConfig(), trolls or TrollConfig()
    fit = fit_raters(obs, model, prior_mean=prior_mean, prior_var=prior_var)
    flags: dict[int, TrollFlag] = {}
    for _ in range(trolls.rounds):
        new = [f for f in find_trolls(obs, fit, trolls, topic, topic_names) if f.rater not in flags]
        if not new:
            break
        flags.update({f.rater: f for f in new})
        weight = np.ones(obs.n_raters)
        weight[list(flags)] = 0.0
        refit = replace(model, max_iter=trolls.refit_iter)
        fit = fit_raters(obs, refit, weight=weight, prior_mean=prior_mean, prior_var=prior_var, init=fit)
    kinds = np.unique([f.kind for f in flags.values()], return_counts=True)
    log.info("trolls: %d of %d raters flagged (%s)", len(flags), obs.n_raters,
             ", ".join(f"{k} {c}" for k, c in zip(*kinds, strict=True)) or "none")
    return fit, sorted(flags.values(), key=lambda f: f.rater)
