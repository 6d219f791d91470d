"""Stage 3, signals: ratings -> one debiased reward per interaction, and a report per rater.

Reads the store (`load_ratings`) or arrays, runs normalise -> observations -> rater model with troll
exclusion (ratings and comparisons in one fit), and returns typed rows: `InteractionSignal` (what
`ratingloop signals --out FILE` writes) and `RaterSignal` (what `ratingloop raters --json` prints),
plus the ids of the ratings that counted.
Writes nothing: `signals.runs.record_signals` fits through here once and stores the run for every
later stage, which reads it back with `load_signals` instead of fitting again.

Where most interactions are rated once (`signals.content.decide`; `SignalsConfig.content.mode`
"auto", the default), the prior on quality comes from a cross-fitted content model of the stored
texts (`signals.content`): fit, flag, refit the content model without the flagged raters, fit and
flag again. Unrated interactions then get a reward too (`SignalsResult.unrated`).

    result = compute_signals(engine)                  # SignalsConfig() defaults
    rows = [dataclasses.asdict(s) for s in result.interactions]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Mapping

import numpy as np
from sqlalchemy import Engine

from ratingloop.errors import RatingloopError
from ratingloop.signals.content import (
    ContentConfig,
    ContentData,
    CrossFittedPrior,
    Embedder,
    content_data,
    cross_fitted_prior,
    decide,
)
from ratingloop.signals.load import LoadedRatings, load_ratings
from ratingloop.signals.normalise import ImplicitRewards
from ratingloop.signals.observations import DEFAULT_ASPECT_WEIGHTS, Observations, latest, observations
from ratingloop.signals.prior import ContentPrior
from ratingloop.signals.raters import ModelConfig, RaterFit
from ratingloop.signals.trolls import TrollConfig, TrollFlag, fit_excluding_trolls

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SignalsConfig:
    aspect_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_ASPECT_WEIGHTS))
    implicit: ImplicitRewards = ImplicitRewards()
    model: ModelConfig = ModelConfig()
    trolls: TrollConfig = TrollConfig()
    topic_tag: str = "topic"  # interaction tag that names its topic, for topic-targeted trolls
    min_ratings: int = 3  # fewer overall ratings than this: nothing to fit, an error
    content: ContentConfig = ContentConfig()  # the content prior: auto (mostly single-rated stores) | on | off


@dataclass(frozen=True)
class InteractionSignal:
    interaction_id: str
    reward: float  # in [-1, 1]: what a typical, calibrated rater would give
    confidence: float  # in [0, 1]: 1 - posterior sd / population sd of quality (ratings and content prior)
    n_ratings: int  # ratings that counted (latest per rater and aspect, flagged raters left out), each comparison
    # naming the interaction included; 0 if unrated
    aspects: dict[str, float]  # per-aspect rewards in [-1, 1], "overall" included


@dataclass(frozen=True)
class RaterSignal:
    rater_id: str
    n: int  # overall ratings (thumbs, stars, scale, or aspects combined) and comparisons (a rank of k answers: k - 1)
    bias: float  # offset vs the typical rater, reward units: > 0 lenient, < 0 harsh
    scale: float  # how strongly quality moves their ratings vs the typical rater: 1 typical, < 0 inverted
    reliability: float  # in [0, 1]: share of their rating variance that is quality
    flagged: bool
    reasons: list[str]


@dataclass(frozen=True)
class SignalsResult:
    interactions: list[InteractionSignal]
    raters: list[RaterSignal]
    flags: list[TrollFlag]
    fit: RaterFit
    unrated: list[InteractionSignal] = field(default_factory=list)  # stored but unrated: the content prior only
    content: dict[str, float] | None = None  # the content prior's summary (None: it was off), see signals.content
    # interaction id -> ids of the ratings that counted (`counted_ratings`); empty when the ratings carry no ids
    counted: dict[str, list[str]] = field(default_factory=dict)
    n_ratings: int = 0  # ratings read, comparisons included
    n_superseded: int = 0  # of those, replaced by a later rating of the same rater, interaction and aspect (or a
    # later comparison of the same answers)
    last_rating_at: datetime | None = None  # the newest rating read


def compute_signals(engine: Engine, cfg: SignalsConfig = SignalsConfig(), prior: ContentPrior | None = None,
                    embed: Embedder | None = None, raters: frozenset[str] | None = None) -> SignalsResult:
    """Rewards and rater estimates from everything in the store (`raters`' ratings only, when given). Raises
    RatingloopError if too few.

    Without an explicit `prior`, `cfg.content` decides whether a cross-fitted content prior is fitted
    (embedding every stored interaction with `embed`, default the packaged sentence encoder)."""
    loaded = load_ratings(engine, cfg.topic_tag, raters)
    if loaded.n_read == 0:
        raise RatingloopError("the store has no ratings: import some with `ratingloop import FILE` "
                              "or send them to POST /v1/feedback, then run `ratingloop signals` again")
    content = None
    if prior is None:
        use, why = decide(loaded, cfg.content)
        log.info("content prior %s: %s", "on" if use else "off", why)
        content = content_data(engine, loaded, cfg.content, embed) if use else None
    return signals_from_loaded(loaded, cfg, prior, content)


def signals_from_loaded(loaded: LoadedRatings, cfg: SignalsConfig = SignalsConfig(),
                        prior: ContentPrior | None = None, content: ContentData | None = None) -> SignalsResult:
    """As compute_signals, on ratings already loaded; `content` (features of the stored texts) turns
    the cross-fitted content prior on, `prior` supplies any other (neither: the flat prior)."""
    obs = observations(loaded.raw, cfg.aspect_weights, cfg.implicit)
    n_compared = len(np.unique(obs.comparisons.origin))
    if len(obs.rater) + n_compared < cfg.min_ratings:
        raise RatingloopError(
            f"only {len(obs.rater) + n_compared} overall rating(s) (thumbs, stars, scale or aspects) and comparisons "
            f"after keeping the latest per rater; the rater model needs at least {cfg.min_ratings}: collect more "
            "ratings first")
    cross: CrossFittedPrior | None = None
    if content is not None:
        cross, fit, flags = _fit_with_content(obs, loaded, cfg, content)
    else:
        mean, var = prior.quality_prior(loaded.interaction_ids) if prior is not None else (None, None)
        fit, flags = fit_excluding_trolls(obs, cfg.model, cfg.trolls, loaded.topic, loaded.topic_names, mean, var)
    result = SignalsResult(interaction_rows(obs, fit, loaded.interaction_ids), rater_rows(fit, flags, loaded.rater_ids),
                           flags, fit, unrated_rows(cross, fit, len(loaded.interaction_ids)),
                           dict(cross.summary) if cross is not None else None,
                           counted_ratings(loaded, {f.rater for f in flags}, obs), loaded.n_read,
                           obs.n_superseded + loaded.n_comparisons_read - len(loaded.comparison_ids),
                           loaded.last_rating_at)
    log.info("signals: %d ratings (%d comparisons) -> %d interactions (+%d unrated), %d raters (%d flagged, %d "
             "superseded ratings ignored)", loaded.n_read, loaded.n_comparisons_read, len(result.interactions),
             len(result.unrated), obs.n_raters, len(flags), result.n_superseded)
    return result


def _fit_with_content(obs: Observations, loaded: LoadedRatings, cfg: SignalsConfig, content: ContentData
                      ) -> tuple[CrossFittedPrior, RaterFit, list[TrollFlag]]:
    """Content prior -> fit and flag -> content prior refitted without the flagged raters (whose inverted
    ratings had blurred it: 20% inverters cut its correlation with quality by ~40%) -> fit and flag."""
    n = obs.n_items
    cross = cross_fitted_prior(content, obs, cfg.content)
    fit, flags = fit_excluding_trolls(obs, cfg.model, cfg.trolls, loaded.topic, loaded.topic_names,
                                      cross.mean[:n], cross.var[:n])
    if flags and cfg.content.refit_without_flagged:
        weight = np.ones(obs.n_raters)
        weight[[f.rater for f in flags]] = 0.0
        cross = cross_fitted_prior(content, obs, cfg.content, weight)
        fit, flags = fit_excluding_trolls(obs, cfg.model, cfg.trolls, loaded.topic, loaded.topic_names,
                                          cross.mean[:n], cross.var[:n])
    return cross, fit, flags


def counted_ratings(loaded: LoadedRatings, flagged: set[int], obs: Observations | None = None
                    ) -> dict[str, list[str]]:
    """Per interaction, the ids of the ratings that count: the latest per (rater, interaction, aspect,
    channel) (`observations.latest`, the rule the rater model fitted on), flagged raters left out. The one
    definition every later stage uses (a dataset's manifest lists exactly these behind its rows). A
    comparison that the model fitted (`obs.comparisons`) is listed under the interaction it is stored under."""
    out: dict[str, list[str]] = {}
    rater, item = loaded.raw.rater, loaded.raw.item
    for k in latest(loaded.raw).tolist() if loaded.rating_ids else []:
        if int(rater[k]) not in flagged:
            out.setdefault(loaded.interaction_ids[int(item[k])], []).append(loaded.rating_ids[k])
    raw = loaded.raw.comparisons
    if obs is not None and raw is not None and loaded.comparison_ids:
        for k in np.unique(obs.comparisons.origin).tolist():
            if int(raw.rater[k]) not in flagged:
                out.setdefault(loaded.interaction_ids[int(raw.item[k])], []).append(loaded.comparison_ids[k])
    return out


def unrated_rows(cross: CrossFittedPrior | None, fit: RaterFit, n_rated: int) -> list[InteractionSignal]:
    """Stored interactions nobody rated: the content prior's reward, mu_a m0 + mu_b, and its confidence."""
    if cross is None:
        return []
    m, v = cross.mean[n_rated:], cross.var[n_rated:]
    reward = np.clip(fit.mu_a * m + fit.mu_b, -1.0, 1.0)
    conf = np.clip(1.0 - np.sqrt(v), 0.0, 1.0)
    return [InteractionSignal(iid, round(float(r), 4), round(float(c), 4), 0, {"overall": round(float(r), 4)})
            for iid, r, c in zip(cross.interaction_ids[n_rated:], reward.tolist(), conf.tolist(), strict=True)]


def interaction_rows(obs: Observations, fit: RaterFit, interaction_ids: list[str]) -> list[InteractionSignal]:
    reward, confidence = fit.reward(), fit.confidence()
    ok = fit.weight > 0
    pc = obs.comparisons
    n = (np.bincount(obs.item, ok[obs.rater], obs.n_items) + np.bincount(obs.weak_item, ok[obs.weak_rater], obs.n_items)
         + np.bincount(obs.aspect_item, ok[obs.aspect_rater], obs.n_items)
         + np.bincount(pc.member_item, ok[pc.member_rater], obs.n_items)).astype(int)
    per_aspect = aspect_rewards(obs, fit)
    rows = []
    for k, iid in enumerate(interaction_ids):
        aspects = {"overall": round(float(reward[k]), 4)}
        aspects.update({name: round(float(v[k]), 4) for name, v in per_aspect.items() if not np.isnan(v[k])})
        rows.append(InteractionSignal(iid, round(float(reward[k]), 4), round(float(confidence[k]), 4), int(n[k]),
                                      aspects))
    return rows


def aspect_rewards(obs: Observations, fit: RaterFit) -> dict[str, np.ndarray]:
    """Per aspect: the mean of unflagged raters' aspect rewards, each corrected by that rater's offset
    (relative to the typical rater) from the overall model. NaN where nobody rated that aspect."""
    out: dict[str, np.ndarray] = {}
    keep = fit.weight[obs.aspect_rater] > 0
    corrected = np.clip(obs.aspect_value - (fit.b - fit.mu_b)[obs.aspect_rater], -1.0, 1.0)
    for code, name in enumerate(obs.aspects):
        sel = keep & (obs.aspect_code == code)
        if code == 0 or not sel.any():
            continue
        cnt = np.bincount(obs.aspect_item[sel], minlength=obs.n_items)
        tot = np.bincount(obs.aspect_item[sel], corrected[sel], obs.n_items)
        out[name] = np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)
    return out


def rater_rows(fit: RaterFit, flags: list[TrollFlag], rater_ids: list[str]) -> list[RaterSignal]:
    reasons: dict[int, list[str]] = {}
    for f in flags:
        reasons.setdefault(f.rater, []).append(f"{f.kind}: {f.reason}")
    reliability = fit.reliability()
    return [RaterSignal(rid, int(round(fit.n[k])), round(float(fit.b[k] - fit.mu_b), 4),
                        round(float(fit.a[k] / fit.mu_a), 4),
                        round(float(reliability[k]), 4), k in reasons, reasons.get(k, []))
            for k, rid in enumerate(rater_ids)]
