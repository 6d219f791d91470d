"""Stage 3, signals: a cross-fitted content prior — what the text of an answer says about its quality,
learned from the ratings of *other* raters.

Most production interactions are rated once, by the asker, so one rating cannot tell the answer's
quality from the rater's offset, and an inverter who rates only their own answers looks like anyone
else. A reward model of the content closes that: it predicts each answer's quality from its
(prompt, answer) embedding (`ratingloop.models.embed`, frozen all-MiniLM-L6-v2) with sklearn's
`BayesianRidge`, which also gives a predictive sd. The rater model then takes it as the prior of q
(`signals.prior`); each rater's scale is regressed on it (an inverter's runs negative, a random
rater's flat) and their offset is what the content does not explain.

Cross-fitting keeps that honest. Raters are split into K folds (by a hash of their id, so a rater
stays in one fold as the store grows); the interactions rated only by fold k are judged by a model
fitted only on the other folds' ratings, and mapped to q's scale with that model's own numbers. No
rater's own ratings ever inform the prior that judges them (a troll cannot confirm himself), and
no interaction's own ratings inform its prior. An interaction rated by raters of several folds has
no such model: it keeps the flat prior (its several ratings separate quality from offsets anyway).
Unrated interactions get the prior of a model fitted on every rating: a reward without feedback.

Mapping to the rater model's scale. Targets are normalised ratings (`signals.normalise`), so a model
predicts p ~ E[y | text] in reward units. BayesianRidge estimates, out of sample, what share of a
rating's variance p explains: Var(p) / (Var(p) + its own uncertainty + its noise 1/alpha). A rating
is itself only partly quality: rater offsets and noise are the rest, and that share is the
inter-rater correlation (`rating_reliability`; estimated from interactions rated twice where there
are enough, else assumed: with one rating each, quality the text does not show and rater noise
cannot be told apart). Their ratio is corr(p, q)^2 = r^2, so m0 = r z(p) and v0 = 1 - r^2 (more
where the model is less sure than usual): q stays population-standardised (Var(m0) + E[v0] = 1),
and a useless model (p flat) leaves q ~ N(0, 1), the flat prior. A too high assumed reliability
errs on the safe side, towards the flat prior.

    data = content_data(engine, loaded, ContentConfig())        # embeds every stored interaction
    prior = cross_fitted_prior(data, observations(loaded.raw), ContentConfig())
    fit = fit_raters(obs, prior_mean=prior.mean[:obs.n_items], prior_var=prior.var[:obs.n_items])
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from sqlalchemy import Engine, select

from ratingloop.errors import ConfigError, RatingloopError
from ratingloop.signals.load import LoadedRatings
from ratingloop.signals.observations import Observations
from ratingloop.store import tables as t

log = logging.getLogger(__name__)
MODES = ("auto", "on", "off")
UNRATED = -2  # CrossFittedPrior.judged_by of an unrated interaction (judged by the model of every rating)
MAX_R2 = 0.95  # no content model is taken to know quality exactly
MIN_VAR = 0.05  # nor any single answer's

Embedder = Callable[[Sequence[Any], Sequence[str]], np.ndarray]  # (prompts as messages, answers) -> features


@dataclass(frozen=True)
class ContentConfig:
    mode: str = "auto"  # auto: on for mostly single-rated stores with enough ratings; on; off
    folds: int = 5  # raters split this many ways; each fold's items judged by a model of the others
    min_ratings: int = 150  # auto: fewer overall ratings than this and the prior stays off. Measured on OASST answers
    # rated once by simulated askers (bench/content_small.py, results in bench/results.md, issue 12): with 164-179
    # ratings it ranked answers better than the flat prior for 3 of 3 hidden preferences with 20% inverters (labels
    # 0.77-0.83 -> 0.87-0.92 right) and cost at most 0.06 without trolls; with 87-89 it was mixed (up to 0.12 worse)
    min_raters: int = 10  # auto: and at least this many raters (each fold needs others to learn from)
    min_single_share: float = 0.5  # auto: on when at least this share of rated interactions has one rater
    auto_max_interactions: int = 50_000  # auto: off above this many rated interactions unless asked for: the first
    # run embeds every stored interaction (~50 a second measured on 2 shared CPU cores, so 50k ~ 17 min); later
    # runs read them from the embedding cache (models.embed) and encode only new ones
    rating_reliability: float = 0.5  # inter-rater correlation (= squared corr of a rating with quality) where
    # the store cannot tell (too few interactions rated twice); the simulator's is 0.41-0.47
    min_reliability_pairs: int = 200  # interactions rated by 2+ (training) raters needed to estimate it instead
    dims: int = 128  # embeddings projected on their top principal components (no ratings used: fold-safe)
    length_weight: float = 1.0  # the answer's standardised log word count, appended to the projected embedding
    # on this multiple of the leading component's sd (0 leaves it out). A sentence embedding barely sees length,
    # which raters often reward or punish; BayesianRidge learns its sign and weight from the ratings like any
    # other feature's, so where length does not matter it costs nothing. Measured on bench/loop.py's
    # single-rated worlds (6 seeds, bench/results.md, issue 9): Spearman of rewards with a length-driven hidden
    # score 0.13-0.52 -> 0.43-0.80, inverting askers flagged 3 -> 16 of 46; with a length-blind one unchanged
    # (0.28-0.48 either way). Joined before the projection instead, it displaced embedding components (-0.1)
    max_fit_rows: int = 50_000  # ratings per model beyond this are subsampled (BayesianRidge is O(n d^2))
    refit_without_flagged: bool = True  # after flagging, refit the content model without the flagged raters
    seed: int = 0  # for that subsample

    def validate(self) -> None:
        problems = []
        if self.mode not in MODES:
            problems.append(f"mode={self.mode!r} must be one of {', '.join(MODES)}")
        if self.folds < 2:
            problems.append(f"folds={self.folds} must be >= 2 (a fold's items are judged by the other folds)")
        if not 0.0 < self.rating_reliability <= 1.0:
            problems.append(f"rating_reliability={self.rating_reliability} must lie in (0, 1]")
        if not 0.0 <= self.min_single_share <= 1.0:
            problems.append(f"min_single_share={self.min_single_share} must lie in [0, 1]")
        if problems:
            raise ConfigError("content prior: " + "; ".join(problems))


@dataclass(frozen=True)
class ContentData:
    """Features of every stored interaction: the rated ones first, in `LoadedRatings` item order."""

    interaction_ids: list[str]
    features: np.ndarray  # (n_interactions, d)
    n_rated: int
    rater_fold: np.ndarray  # (n_raters,) int: the fold of each rater


@dataclass(frozen=True)
class CrossFittedPrior:
    """A `ContentPrior`: per interaction the prior mean and variance of q, population-standardised."""

    interaction_ids: list[str]
    mean: np.ndarray
    var: np.ndarray
    judged_by: np.ndarray  # per interaction: k = the model without fold k; -1 several folds (flat); UNRATED
    summary: dict[str, float] = field(default_factory=dict)  # the models' numbers and a held-out check

    def quality_prior(self, interaction_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        index = {iid: k for k, iid in enumerate(self.interaction_ids)}
        at = np.asarray([index.get(iid, -1) for iid in interaction_ids], np.int64)
        known = at >= 0
        return (np.where(known, self.mean[at], 0.0), np.where(known, self.var[at], 1.0))


def rater_folds(rater_ids: Sequence[str], folds: int) -> np.ndarray:
    """Fold of each rater from a hash of their id: stable across runs and as raters join."""
    return np.asarray([int.from_bytes(hashlib.sha256(r.encode()).digest()[:8], "big") % folds for r in rater_ids],
                      np.int64)


def decide(loaded: LoadedRatings, cfg: ContentConfig) -> tuple[bool, str]:
    """Whether `auto` (or `on`/`off`) uses the content prior on this store, and why."""
    cfg.validate()
    if cfg.mode != "auto":
        return cfg.mode == "on", f"content_prior={cfg.mode}"
    raw = loaded.raw
    pairs = np.unique(np.asarray(raw.rater, np.int64) * max(raw.n_items, 1) + np.asarray(raw.item, np.int64))
    per_item = np.bincount(pairs % max(raw.n_items, 1), minlength=raw.n_items)
    rated = per_item > 0
    single = float((per_item[rated] == 1).mean()) if rated.any() else 0.0
    if len(raw.kind) < cfg.min_ratings or raw.n_raters < cfg.min_raters:
        return False, (f"{len(raw.kind)} ratings from {raw.n_raters} raters: a content model needs at least "
                       f"{cfg.min_ratings} from {cfg.min_raters}")
    if single < cfg.min_single_share:
        return False, f"{single:.0%} of interactions rated once: the raters check each other"
    if raw.n_items > cfg.auto_max_interactions:
        return False, (f"{single:.0%} of interactions rated once, but embedding {raw.n_items:,} of them on a "
                       "run that has not cached them is slow (~50 a second on 2 CPU cores): set content.mode=on "
                       "to use it anyway")
    return True, f"{single:.0%} of interactions rated once"


def default_embedder(batch_size: int = 64) -> Embedder:
    """The frozen sentence encoder of `ratingloop.models.embed` (loaded on first use), through the data
    directory's embedding cache: a store is embedded once, later runs encode only new interactions."""
    from ratingloop.models.embed import default_cache, embed_pairs, encoder

    def embed(prompts: Sequence[Any], answers: Sequence[str]) -> np.ndarray:
        return embed_pairs(encoder(), prompts, answers, batch_size, cache=default_cache())

    return embed


def content_data(engine: Engine, loaded: LoadedRatings, cfg: ContentConfig, embed: Embedder | None = None
                 ) -> ContentData:
    """Embed every stored interaction (rated ones in `loaded` order, then the unrated)."""
    rated = list(loaded.interaction_ids)
    texts = _texts(engine)
    missing = [iid for iid in rated if iid not in texts]
    if missing:
        raise RatingloopError(f"content prior: {len(missing)} rated interaction(s) are not in the store "
                              f"(e.g. {missing[0]!r}); turn the content prior off (signals content.mode or build "
                              "content_prior = 'off')")
    seen = set(rated)
    ids = rated + sorted(iid for iid in texts if iid not in seen)
    log.info("content prior: embedding %d interactions (%d rated)", len(ids), len(rated))
    answers = [texts[i][1] for i in ids]
    features = (embed or default_embedder())([texts[i][0] for i in ids], answers)
    return ContentData(ids, with_length(project(features, cfg.dims), answers, cfg.length_weight), len(rated),
                       rater_folds(loaded.rater_ids, cfg.folds))


def with_length(projected: np.ndarray, answers: Sequence[str], weight: float) -> np.ndarray:
    """The projected features and, where `weight` > 0, the answers' length feature as one more column, on
    `weight` times the leading component's sd: one more feature on the embedding's own scale, leaving its
    components as they were."""
    if not weight or len(answers) == 0:
        return projected
    lead = float(projected[:, 0].std()) if projected.shape[1] else 1.0
    return np.hstack([projected, weight * (lead or 1.0) * length_feature(answers)[:, None]])


def length_feature(answers: Sequence[str]) -> np.ndarray:
    """Each answer's log word count, standardised over the store (zeros where all are one length). Uses no
    ratings, so it is fold-safe like the projection."""
    x = np.log1p(np.asarray([len(a.split()) for a in answers], np.float64))
    sd = x.std()
    return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)


def project(features: np.ndarray, dims: int) -> np.ndarray:
    """Centred features on their top `dims` principal components. A 768-1152-dimensional embedding makes
    every BayesianRidge fit ~50x slower for no better prediction (measured on simulated answers: 128
    components predict quality as well as all 1152). Uses no ratings, so it is safe across folds."""
    x = np.asarray(features, np.float64)
    x = x - x.mean(axis=0)
    if x.shape[1] <= dims:
        return x
    with _one_blas_thread():
        _, vectors = np.linalg.eigh(x.T @ x)  # ascending eigenvalues: the last `dims` columns lead
        out: np.ndarray = x @ vectors[:, ::-1][:, :dims]
    return out


def _one_blas_thread() -> Any:
    """These matrices are small (d <= ~1k): BLAS threads gain little, and on a busy machine OpenBLAS's
    spinning threads made a 1000 x 128 SVD take 2.5 s instead of 0.02 s (measured on 2 shared cores)."""
    from threadpoolctl import threadpool_limits  # ships with scikit-learn

    return threadpool_limits(limits=1, user_api="blas")


def _texts(engine: Engine) -> dict[str, tuple[list[dict[str, Any]], str]]:
    i = t.interactions.c
    with engine.connect() as conn:
        return {row.id: (row.messages or [], row.response or "")
                for row in conn.execute(select(i.id, i.messages, i.response))}


def cross_fitted_prior(data: ContentData, obs: Observations, cfg: ContentConfig,
                       rater_weight: np.ndarray | None = None) -> CrossFittedPrior:
    """Fit K + 1 content models (one per fold left out, one on every rating for the unrated) and map
    each one's predictions to q's scale with that model's own numbers (module doc). Raters with
    weight 0 (flagged) train no model."""
    N, R = data.n_rated, obs.n_raters
    wr = np.ones(R) if rater_weight is None else np.asarray(rater_weight, float)
    fold = data.rater_fold[obs.rater]
    lo, hi = np.full(N, cfg.folds), np.full(N, -1)
    np.minimum.at(lo, obs.item, fold)
    np.maximum.at(hi, obs.item, fold)
    judged = np.where(lo == hi, lo, -1)  # rated by one fold's raters only, or by several (-1: flat)
    judged = np.concatenate([judged, np.full(len(data.interaction_ids) - N, UNRATED)])
    mean, var, pred = np.zeros(len(judged)), np.ones(len(judged)), np.full(len(judged), np.nan)
    fits: list[dict[str, float]] = []
    with _one_blas_thread():
        for k in [*range(cfg.folds), UNRATED]:
            target = judged == k
            if not target.any():
                continue
            train = (wr[obs.rater] > 0) & (fold != k)  # UNRATED (-2) is no fold: every rater trains it
            model = _fit(data.features[obs.item[train]], obs.value[train], cfg.max_fit_rows,
                         np.random.default_rng([cfg.seed, k + 2]))
            if model is None:  # nobody else to learn from: these items keep the flat prior
                judged[target] = -1
                continue
            # the scale comes from the items the model judges; for the unrated model, from every item
            scope = target if k >= 0 else np.ones(len(judged), bool)
            rel = _reliability(obs, train, cfg)
            mean[target], var[target], pred[target], numbers = _to_quality(model, data.features, target, scope, rel)
            fits.append(numbers)
    return CrossFittedPrior(data.interaction_ids, mean, var, judged, _summary(fits, judged, pred, obs, wr))


def _fit(x: np.ndarray, y: np.ndarray, max_rows: int, rng: np.random.Generator) -> Any:
    from sklearn.linear_model import BayesianRidge  # sklearn only when a content prior is fitted

    if len(y) < 10:
        return None
    if len(y) > max_rows:
        keep = rng.choice(len(y), max_rows, replace=False)
        x, y = x[keep], y[keep]
    return BayesianRidge().fit(x, y)


def _to_quality(model: Any, features: np.ndarray, target: np.ndarray, scope: np.ndarray, rel: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """One model's predictions (reward units) -> prior mean and variance of q (module doc), from that
    model's numbers alone: the spread of its predictions over `scope`, its noise and its uncertainty."""
    p, sd = model.predict(features[scope], return_std=True)
    noise = 1.0 / float(model.alpha_)
    epi = np.maximum(sd**2 - noise, 0.0)  # the model's own uncertainty about E[y | text]
    var_p, centre, epi_mean = float(np.var(p)), float(np.mean(p)), float(np.mean(epi))
    explained = var_p / max(var_p + epi_mean + noise, 1e-12)  # corr(rating, prediction)^2, out of sample
    r2 = min(explained / rel, MAX_R2)
    s = float(np.sqrt(r2 / var_p)) if var_p > 0 else 0.0  # q units per reward unit: E[q | p] = r z(p)
    if not np.array_equal(scope, target):
        p, sd = model.predict(features[target], return_std=True)
        epi = np.maximum(sd**2 - noise, 0.0)
    # items the model is less sure of than its average (far from what it was fitted on) get more variance
    v0 = np.clip(1.0 - r2 + s * s * (epi - epi_mean), MIN_VAR, 1.0)
    return s * (p - centre), v0, p, {"explained": explained, "reliability": rel, "quality_corr": float(np.sqrt(r2))}


def _reliability(obs: Observations, train: np.ndarray, cfg: ContentConfig) -> float:
    """Inter-rater correlation, corr(one rating, another rater's rating of the same interaction) =
    squared corr of a rating with quality, from the training ratings where enough interactions have
    two of them; else `cfg.rating_reliability`."""
    i, y = obs.item[train], obs.value[train]
    order = np.argsort(i, kind="stable")
    i, y = i[order], y[order]
    same = np.flatnonzero(i[1:] == i[:-1])  # consecutive ratings of one interaction: a pair of raters
    same = same[np.r_[True, same[1:] != same[:-1] + 1]] if len(same) else same  # disjoint pairs only
    if len(same) < cfg.min_reliability_pairs:
        return cfg.rating_reliability
    return float(np.clip(np.corrcoef(y[same], y[same + 1])[0, 1], 0.1, 1.0))


def _summary(fits: list[dict[str, float]], judged: np.ndarray, pred: np.ndarray, obs: Observations,
             wr: np.ndarray) -> dict[str, float]:
    """What the report and the log say: the models' average numbers and, as a check no number above
    uses, the within-rater corr of held-out ratings with their (cross-fitted) predictions."""
    out = {key: float(np.mean([f[key] for f in fits])) for key in ("explained", "reliability", "quality_corr")} \
        if fits else {}
    held = (judged[obs.item] >= 0) & (wr[obs.rater] > 0)
    out.update(models=float(len(fits)), flat_items=float((judged == -1).sum()), held_out_ratings=float(held.sum()),
               held_out_corr=_within_rater_corr(obs.rater[held], obs.value[held], pred[obs.item[held]], obs.n_raters))
    log.info("content prior: %d models, corr with quality ~%.2f (held-out within-rater corr with ratings %.2f over "
             "%d ratings); %d interactions keep the flat prior", len(fits), out.get("quality_corr", 0.0),
             out["held_out_corr"], int(held.sum()), int(out["flat_items"]))
    return out


def _within_rater_corr(r: np.ndarray, y: np.ndarray, p: np.ndarray, n_raters: int) -> float:
    """corr(rating, prediction) within raters (each rater's offset removed), over raters with 2+ ratings."""
    many = np.bincount(r, minlength=n_raters)[r] >= 2
    if not many.any():
        return 0.0

    def demean(x: np.ndarray) -> np.ndarray:
        out: np.ndarray = x - (np.bincount(r, x, n_raters) / np.maximum(np.bincount(r, minlength=n_raters), 1))[r]
        return out[many]

    ey, ep = demean(y), demean(p)
    den = float(np.sqrt(np.sum(ey * ey) * np.sum(ep * ep)))
    return float(np.sum(ey * ep)) / den if den > 0 else 0.0
