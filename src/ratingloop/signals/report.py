"""Stage 3, signals: ratings -> one debiased reward per interaction, and a report per rater.

Reads the store (`load_ratings`) or arrays, runs normalise -> observations -> rater model with troll
exclusion, and returns typed rows: `InteractionSignal` (what `ratingloop signals --out FILE` writes)
and `RaterSignal` (what `ratingloop raters --json` prints). Writes nothing; the caller decides.

    result = compute_signals(engine)                  # SignalsConfig() defaults
    rows = [dataclasses.asdict(s) for s in result.interactions]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
from sqlalchemy import Engine

from ratingloop.errors import RatingloopError
from ratingloop.signals.load import LoadedRatings, load_ratings
from ratingloop.signals.normalise import ImplicitRewards
from ratingloop.signals.observations import DEFAULT_ASPECT_WEIGHTS, Observations, observations
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


@dataclass(frozen=True)
class InteractionSignal:
    interaction_id: str
    reward: float  # in [-1, 1]: what a typical, calibrated rater would give
    confidence: float  # in [0, 1]: 1 - posterior sd / prior sd of quality
    n_ratings: int  # ratings that counted (latest per rater and aspect, flagged raters left out)
    aspects: dict[str, float]  # per-aspect rewards in [-1, 1], "overall" included


@dataclass(frozen=True)
class RaterSignal:
    rater_id: str
    n: int  # overall ratings (thumbs, stars, scale, or aspects combined)
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


def compute_signals(engine: Engine, cfg: SignalsConfig = SignalsConfig(),
                    prior: ContentPrior | None = None) -> SignalsResult:
    """Rewards and rater estimates from everything in the store. Raises RatingloopError if too few."""
    loaded = load_ratings(engine, cfg.topic_tag)
    if len(loaded.raw.kind) == 0:
        raise RatingloopError("the store has no ratings: import some with `ratingloop import FILE` "
                              "or send them to POST /v1/feedback, then run `ratingloop signals` again")
    return signals_from_loaded(loaded, cfg, prior)


def signals_from_loaded(loaded: LoadedRatings, cfg: SignalsConfig = SignalsConfig(),
                        prior: ContentPrior | None = None) -> SignalsResult:
    obs = observations(loaded.raw, cfg.aspect_weights, cfg.implicit)
    if len(obs.rater) < cfg.min_ratings:
        raise RatingloopError(
            f"only {len(obs.rater)} overall rating(s) (thumbs, stars, scale or aspects) after keeping the latest "
            f"per rater; the rater model needs at least {cfg.min_ratings}: collect more ratings first")
    mean, var = prior.quality_prior(loaded.interaction_ids) if prior is not None else (None, None)
    fit, flags = fit_excluding_trolls(obs, cfg.model, cfg.trolls, loaded.topic, loaded.topic_names, mean, var)
    result = SignalsResult(interaction_rows(obs, fit, loaded.interaction_ids), rater_rows(fit, flags, loaded.rater_ids),
                           flags, fit)
    log.info("signals: %d ratings -> %d interactions, %d raters (%d flagged, %d superseded ratings ignored)",
             len(loaded.raw.kind), len(result.interactions), obs.n_raters, len(flags), obs.n_superseded)
    return result


def interaction_rows(obs: Observations, fit: RaterFit, interaction_ids: list[str]) -> list[InteractionSignal]:
    reward, confidence = fit.reward(), fit.confidence()
    ok = fit.weight > 0
    n = (np.bincount(obs.item, ok[obs.rater], obs.n_items) + np.bincount(obs.weak_item, ok[obs.weak_rater], obs.n_items)
         + np.bincount(obs.aspect_item, ok[obs.aspect_rater], obs.n_items)).astype(int)
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
    return [RaterSignal(rid, int(fit.n[k]), round(float(fit.b[k] - fit.mu_b), 4), round(float(fit.a[k] / fit.mu_a), 4),
                        round(float(reliability[k]), 4), k in reasons, reasons.get(k, []))
            for k, rid in enumerate(rater_ids)]
