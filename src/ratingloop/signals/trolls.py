"""Stage 3, signals: troll detection — raters whose ratings run against everyone else's (or, where
nobody else rated their interactions, against a cross-fitted content prior: `signals.content`).

Reads a `RaterFit` (each rater's scale a, estimated against what the *other* raters say about the
same interactions) and writes `TrollFlag`s, each with a reason and its evidence.
`fit_excluding_trolls` fits, flags, and refits with flagged raters' weight set to zero, so their
ratings no longer move quality; the flags are returned for reporting, never dropped silently.
In the spirit of user-level troll detection (Ju et al. 2022), a flag judges the rater, not a rating.

The test is a Bayes-factor comparison of rater classes (`signals.evidence`): honest, inverter,
random (ratings unrelated to quality; a rater who floods one value is its special case, reported as
"constant"), and topic-targeted inverter. Class shares are estimated from all raters, so each rater
gets a posterior probability of being honest. Flags are chosen to control the Bayesian false
discovery rate: the most clearly non-honest raters are flagged while the expected share of honest
raters among the flagged stays below `fdr` (Mueller, Parmigiani & Rice 2006), and nobody is flagged
who is not more likely a troll than not. A constant flood that conflicts with the consensus is also
flagged directly (its evidence is in the offset, which the scale classes do not model). A rater with
a handful of ratings cannot carry enough evidence and is not flagged, only shrunk. Where a content
prior informs quality, a rater's scale is the slope of their ratings on E[q | everyone else and the
content] (`scales.covariate_scales`): single-rated answers are then checked too, and the reason says
how many of a rater's ratings only the content model could check.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np

from ratingloop.signals.evidence import CLASSES, ClassEvidence, class_evidence
from ratingloop.signals.observations import Observations
from ratingloop.signals.raters import ModelConfig, RaterFit, fit_raters
from ratingloop.signals.scales import Scales, covariate_scales, rater_scales

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrollConfig:
    min_ratings: int = 5  # below this a rater is never flagged (nor could the evidence be strong)
    fdr: float = 0.02  # expected share of honest raters among the flagged (Bayesian FDR); the class
    # model is approximate where raters have ~10 ratings, so the target sits below the 5% we accept
    max_honest_prob: float = 0.5  # and each flagged rater is more likely a troll than not
    constant_gap: float = 1.2  # a constant rating this far (reward units) from a typical rater's is a conflict
    constant_min_conflicts: int = 3
    constant_min_share: float = 0.1
    min_log_sd: float = 0.1  # honest raters' scales spread at least this much (log sd), as measured
    # ... and where a content prior checks them: each rater's slope on it is then about as loose as honest
    # raters differ, the measured spread deconvolves to nothing, and a narrow honest class calls every
    # flat honest rater (one who uses only 3-5 stars has half the typical scale) random. Measured on
    # single-rated simulations (3 seeds): 0.1 -> precision 0.77-0.91, 0.35 -> 0.83-1.0 at the same
    # recall, 0.5 -> recall of inverters with 8+ ratings falls to 0.62-0.90.
    content_min_log_sd: float = 0.35
    rounds: int = 2  # flag -> refit -> flag again against the cleaner consensus
    refit_iter: int = 6  # a refit starts from the previous fit and needs few iterations


@dataclass(frozen=True)
class TrollFlag:
    rater: int  # index into the fit's raters
    kind: str  # inverter | random | constant | topic_inverter
    reason: str
    evidence: dict[str, float] = field(default_factory=dict)


def find_trolls(obs: Observations, fit: RaterFit, cfg: TrollConfig = TrollConfig(),
                topic: np.ndarray | None = None, topic_names: tuple[str, ...] = (),
                informed: bool = False) -> list[TrollFlag]:
    """Flags for the raters the class test selects (see the module doc), plus conflicting constant floods.
    `informed`: a content prior informs q, and each rater's scale is their rating's slope on it."""
    sc, s2_0, unit = rater_scales(obs, fit, topic), fit.s2_0, fit.mu_a
    if informed:
        sc, s2_0, unit = covariate_scales(obs, fit, sc)
    ev = class_evidence(sc, unit, s2_0, fit.n, _groups(obs),
                        min_log_sd=cfg.content_min_log_sd if informed else cfg.min_log_sd)
    honest = np.where(fit.n >= cfg.min_ratings, ev.posterior[:, 0], 1.0)
    order = np.argsort(honest, kind="stable")
    running = np.cumsum(honest[order]) / np.arange(1, len(order) + 1)
    k = int(np.sum(running <= cfg.fdr)) if len(order) else 0  # running mean is what FDR bounds
    chosen = order[:k][honest[order[:k]] < cfg.max_honest_prob]
    by_content = _content_checked(obs, fit) if informed else np.zeros(obs.n_raters)
    flags: dict[int, TrollFlag] = {f.rater: f for f in _flags(chosen, fit, sc, ev, _single_value(obs), topic_names,
                                                                by_content, unit)}
    for flag in _constant(obs, fit, cfg, "the content model or other raters judge" if informed else "the others rate"):
        flags.setdefault(flag.rater, flag)
    return sorted(flags.values(), key=lambda f: f.rater)


def _groups(obs: Observations) -> np.ndarray:
    """Per rater, whose honest scales they are compared with: 0 with stars (or scales, aspects), 1 thumbs only,
    2 comparing without stars (a probit's scale is known only relative to the noise it assumes)."""
    stars = np.bincount(obs.rater, ~obs.binary, obs.n_raters) > 0
    compares = np.bincount(obs.comparisons.rater, minlength=obs.n_raters) > 0
    out: np.ndarray = np.where(stars, 0, np.where(compares, 2, 1))
    return out


def _single_value(obs: Observations) -> np.ndarray:
    """Per rater: every rating they gave has one value (a rater who only compares has none)."""
    lo = np.full(obs.n_raters, np.inf)
    hi = np.full(obs.n_raters, -np.inf)
    np.minimum.at(lo, obs.rater, obs.value)
    np.maximum.at(hi, obs.rater, obs.value)
    out: np.ndarray = (hi - lo < 1e-9) & np.isfinite(lo)
    return out


def _content_checked(obs: Observations, fit: RaterFit) -> np.ndarray:
    """Per rater: ratings of interactions nobody else rated, which only the content prior can check."""
    pv = fit.prior_var[obs.item]
    alone = (pv < 1.0) & (fit.v_cav >= pv * (1.0 - 1e-6))
    out: np.ndarray = np.bincount(obs.rater, alone, obs.n_raters)
    return out


def _flags(chosen: np.ndarray, fit: RaterFit, sc: Scales, ev: ClassEvidence, same: np.ndarray,
           topic_names: tuple[str, ...], by_content: np.ndarray, unit: float) -> list[TrollFlag]:
    """One flag per chosen rater; the numbers are gathered as arrays first (tens of thousands at 1M ratings)."""
    post, ll = ev.posterior[chosen], ev.loglik[chosen]
    c = 1 + np.argmax(post[:, 1:], axis=1)
    log10_bf = (ll[np.arange(len(chosen)), c] - ll[:, 0]) / np.log(10.0)
    scale, scale_sd = sc.a[chosen] / unit, np.sqrt(sc.a_var[chosen]) / unit  # in typical raters' scales
    has_topic = sc.topic_best is not None and sc.topic_best_log_bf is not None and sc.topic_best_n is not None
    t_best = sc.topic_best[chosen].tolist() if has_topic and sc.topic_best is not None else [0] * len(chosen)
    t_bf = (sc.topic_best_log_bf[chosen] / np.log(10.0)).tolist() if has_topic and sc.topic_best_log_bf is not None \
        else [0.0] * len(chosen)
    t_n = sc.topic_best_n[chosen].tolist() if has_topic and sc.topic_best_n is not None else [0.0] * len(chosen)
    out = []
    for k, (r, ck, honest, bf, a, sd, n, is_same, nc) in enumerate(zip(
            chosen.tolist(), c.tolist(), post[:, 0].tolist(), log10_bf.tolist(), scale.tolist(), scale_sd.tolist(),
            fit.n[chosen].tolist(), same[chosen].tolist(), by_content[chosen].tolist(), strict=True)):
        kind = "constant" if CLASSES[ck] == "random" and is_same else CLASSES[ck]
        evidence = {"n": float(n), "scale": a, "scale_sd": sd, "honest_prob": honest, "log10_bayes_factor": bf,
                    "content_checked": float(nc)}
        odds = f"P(honest) {honest:.3f}, Bayes factor {kind} : honest 10^{bf:.1f}"
        if nc:  # judged (also) against what the answers' text says: the user, over all their answers
            odds += f"; {int(nc)} of the ratings checked against the content model's prediction only"
        against = "the content model's prediction" if nc >= n / 2 else "the consensus"
        n = int(n)
        if kind == "topic_inverter" and has_topic:
            t = int(t_best[k])
            name = topic_names[t] if t < len(topic_names) else str(t)
            evidence.update(topic_n=float(t_n[k]), topic_log10_bayes_factor=float(t_bf[k]))
            reason = (f"rates against the consensus on topic {name!r}: {int(t_n[k])} ratings there favour an inverted "
                      f"scale 10^{t_bf[k]:.1f} : 1, scale {a:+.2f} overall ({n} ratings); {odds}")
        elif kind == "inverter":
            reason = f"rates against {against}: scale {a:+.2f} ± {sd:.2f} over {n} ratings; " + odds
        else:
            what = "one value for every interaction" if kind == "constant" else "ratings unrelated to quality"
            reason = f"{what}: scale {a:+.2f} ± {sd:.2f} (typical 1) over {n} ratings; {odds}"
        out.append(TrollFlag(r, kind, reason, evidence))
    return out


def _constant(obs: Observations, fit: RaterFit, cfg: TrollConfig, who: str) -> list[TrollFlag]:
    R, r = obs.n_raters, obs.rater
    lo = np.full(R, np.inf)
    np.minimum.at(lo, r, obs.value)
    n = np.bincount(r, minlength=R).astype(float)  # ratings; a flood of one value is in them, not in comparisons
    same = _single_value(obs) & (n >= cfg.min_ratings)
    c = lo[r]
    typical = fit.mu_a * fit.m_cav + fit.mu_b  # what a calibrated rater would give, from the others
    gap = cfg.constant_gap * np.maximum(np.abs(c), 0.5)  # a middle value conflicts at half the distance
    conflicts = np.bincount(r, same[r] & (np.abs(typical - c) > gap), R)
    share = conflicts / np.maximum(n, 1)
    hit = same & (conflicts >= cfg.constant_min_conflicts) & (share >= cfg.constant_min_share)
    return [TrollFlag(int(k), "constant", (
        f"gave {lo[k]:+.2f} to all {int(n[k])} interactions, {int(conflicts[k])} of which {who} "
        f"clearly otherwise"), {"n": float(n[k]), "value": float(lo[k]), "conflicts": float(conflicts[k])})
        for k in np.flatnonzero(hit)]


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
    informed = prior_var is not None and bool(np.any(np.asarray(prior_var) < 1.0))
    flags: dict[int, TrollFlag] = {}
    for _ in range(trolls.rounds):
        new = [f for f in find_trolls(obs, fit, trolls, topic, topic_names, informed) if f.rater not in flags]
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
