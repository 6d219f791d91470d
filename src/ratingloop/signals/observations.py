"""Stage 3, signals: raw rating rows -> the flat observation arrays the rater model fits.

Reads `RawRatings` (one entry per stored rating: rater and item indices, kind, aspect, raw value and
scale, implicit signal, comment text, arrival order) and writes `Observations`:
- main: one overall judgement per (rater, interaction): a thumbs (binary, probit in the model) or a
  star/scale/aspect reward (Gaussian). Where a rater gave aspects but no overall rating, the
  aspects are combined with `aspect_weights` into one overall reward.
- weak: implicit signals, comment sentiment and corrections; they nudge quality, never rater params.
- aspect: per-aspect rewards, kept so each interaction also gets a reward per aspect.
- comparisons: preferences and ranks as pairs (`signals.comparisons`): observations of the difference in
  quality of two answers, fitted with the main channel.
Only the latest rating counts per (rater, interaction, aspect, channel): a later rating supersedes
an earlier one, as DESIGN.md's store section says; history stays in the store. `latest` is the one
definition of that rule: the ratings it keeps (flagged raters' left out) are what a signals run
records as counted and what every later stage (dataset manifests included) uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from ratingloop.signals.comparisons import Comparisons, RawComparisons, as_pairs
from ratingloop.signals.normalise import KIND_CODE, RATING_KINDS, ImplicitRewards, rewards

DEFAULT_ASPECT_WEIGHTS = {"relevance": 1.0, "accuracy": 1.0, "helpfulness": 1.0}


@dataclass(frozen=True)
class RawRatings:
    """Stored ratings as arrays. `aspects[0]` must be "overall"; `order` sorts by arrival."""

    rater: np.ndarray  # int (n,)
    item: np.ndarray  # int (n,)
    kind: np.ndarray  # int (n,): KIND_CODE
    aspect: np.ndarray  # int (n,): index into `aspects`
    value: np.ndarray  # float (n,), NaN where none
    scale_min: np.ndarray  # float (n,)
    scale_max: np.ndarray  # float (n,)
    n_raters: int
    n_items: int
    aspects: tuple[str, ...] = ("overall",)
    signal: Sequence[str | None] | None = None
    text: Sequence[str | None] | None = None
    order: np.ndarray | None = None  # arrival rank; default: row order
    comparisons: RawComparisons | None = None  # preferences and ranks that count (latest already), same indices


@dataclass(frozen=True)
class Observations:
    rater: np.ndarray  # int32 (m,): main channel
    item: np.ndarray  # int32 (m,)
    value: np.ndarray  # float64 (m,): reward in [-1, 1]
    binary: np.ndarray  # bool (m,): thumbs (only the sign is observed)
    n_raters: int
    n_items: int
    weak_rater: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    weak_item: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    weak_value: np.ndarray = field(default_factory=lambda: np.zeros(0))
    aspect_rater: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    aspect_item: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    aspect_code: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    aspect_value: np.ndarray = field(default_factory=lambda: np.zeros(0))
    aspects: tuple[str, ...] = ("overall",)
    n_superseded: int = 0
    # (m,) main channel: rounding variance of each Gaussian rating in reward units, step^2 / 12 for a
    # discrete scale (1-5 stars: step 0.5 -> 0.0208), 0 for thumbs and continuous values; None = all 0
    quant_var: np.ndarray | None = None
    comparisons: Comparisons = field(default_factory=Comparisons)  # one row per implied pair (signals.comparisons)


def observations(
    raw: RawRatings,
    aspect_weights: Mapping[str, float] = DEFAULT_ASPECT_WEIGHTS,
    implicit: ImplicitRewards | None = None,
) -> Observations:
    """Supersede, normalise and split raw ratings into the model's channels (see the module doc)."""
    implicit = implicit or ImplicitRewards()
    keep = latest(raw)
    kind, aspect = np.asarray(raw.kind)[keep], np.asarray(raw.aspect)[keep]
    rater, item = np.asarray(raw.rater, np.int64)[keep], np.asarray(raw.item, np.int64)[keep]
    signal = [raw.signal[i] for i in keep] if raw.signal is not None else None
    text = [raw.text[i] for i in keep] if raw.text is not None else None
    raw_value = np.asarray(raw.value, float)[keep]
    lo, hi = np.asarray(raw.scale_min, float)[keep], np.asarray(raw.scale_max, float)[keep]
    value = rewards(kind, raw_value, lo, hi, signal, text, implicit)
    qv = quantisation_var(raw_value, lo, hi)

    is_rating = np.isin(kind, [KIND_CODE[k] for k in RATING_KINDS]) & np.isfinite(value)
    overall = is_rating & (aspect == 0)
    per_aspect = is_rating & (aspect != 0)
    weak = ~is_rating & np.isfinite(value)

    # Aspects stand in for overall only where the same rater gave no overall rating of that item.
    pair = rater * raw.n_items + item
    fill = per_aspect & ~np.isin(pair, pair[overall]) if per_aspect.any() else per_aspect
    weights = np.asarray([0.0] + [float(aspect_weights.get(a, 1.0)) for a in raw.aspects[1:]])
    pairs, inverse = np.unique(pair[fill], return_inverse=True)
    w = weights[aspect[fill]]
    den = np.bincount(inverse, w, len(pairs))
    combined = np.bincount(inverse, w * value[fill], len(pairs)) / np.where(den > 0, den, 1.0)
    # a weighted mean of independently rounded aspects: rounding variance sum(w^2 qv) / (sum w)^2
    combined_qv = np.bincount(inverse, w * w * qv[fill], len(pairs)) / np.where(den > 0, den, 1.0) ** 2
    ok = den > 0  # only aspects with weight 0 -> no overall judgement from this pair

    return Observations(
        rater=np.concatenate([rater[overall], pairs[ok] // raw.n_items]).astype(np.int32),
        item=np.concatenate([item[overall], pairs[ok] % raw.n_items]).astype(np.int32),
        value=np.concatenate([value[overall], combined[ok]]),
        binary=np.concatenate([kind[overall] == KIND_CODE["thumbs"], np.zeros(int(ok.sum()), bool)]),
        n_raters=raw.n_raters, n_items=raw.n_items,
        weak_rater=rater[weak].astype(np.int32), weak_item=item[weak].astype(np.int32), weak_value=value[weak],
        aspect_rater=rater[per_aspect].astype(np.int32), aspect_item=item[per_aspect].astype(np.int32),
        aspect_code=aspect[per_aspect].astype(np.int16), aspect_value=value[per_aspect],
        aspects=raw.aspects, n_superseded=len(raw.kind) - len(keep),
        quant_var=np.concatenate([np.where(kind[overall] == KIND_CODE["thumbs"], 0.0, qv[overall]),
                                  combined_qv[ok]]),
        comparisons=as_pairs(raw.comparisons, raw.aspects, aspect_weights),
    )


def quantisation_var(value: np.ndarray, scale_min: np.ndarray, scale_max: np.ndarray) -> np.ndarray:
    """Rounding variance in reward units of a rating on a discrete scale: step^2 / 12 (Sheppard), the
    step being one mark, 2 / (max - min) in reward units, where the value and both ends are whole
    numbers; 0 for a continuous value (or none)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        span = scale_max - scale_min
        whole = (value == np.round(value)) & (scale_min == np.round(scale_min)) & (scale_max == np.round(scale_max))
        step = np.where(whole & (span >= 1.0), 2.0 / np.where(span > 0, span, 1.0), 0.0)
    out: np.ndarray = np.nan_to_num(step * step / 12.0)
    return out


def latest(raw: RawRatings) -> np.ndarray:
    """Indices of the ratings that count: the last per (rater, item, aspect, channel), in row order.

    Channels: every deliberate rating kind is one channel (a stars rating replaces an earlier
    thumbs on the same aspect); corrections are one, each implicit signal one. Comments are never
    superseded: each is its own remark.
    """
    n = len(raw.kind)
    if n == 0:
        return np.zeros(0, np.int64)
    kind = np.asarray(raw.kind, np.int64)
    channel = np.where(np.isin(kind, [KIND_CODE[k] for k in RATING_KINDS]), 0, 1 + kind)
    if raw.signal is not None:
        implicit = np.flatnonzero(kind == KIND_CODE["implicit"])
        if len(implicit):
            names = np.asarray([str(raw.signal[k]) for k in implicit.tolist()], dtype=str)
            _, codes = np.unique(names, return_inverse=True)
            channel[implicit] = 100 + codes
    # one int64 key per (rater, item, aspect, channel); a stable sort by key after sorting by arrival
    # leaves each group's latest rating last
    n_channels = int(channel.max()) + 1
    key = np.asarray(raw.rater, np.int64) * raw.n_items + np.asarray(raw.item, np.int64)
    key = (key * len(raw.aspects) + np.asarray(raw.aspect, np.int64)) * n_channels + channel
    by_arrival = np.arange(n) if raw.order is None else np.argsort(np.asarray(raw.order), kind="stable")
    idx = by_arrival[np.argsort(key[by_arrival], kind="stable")]
    ks = key[idx]
    last = np.append(ks[1:] != ks[:-1], True)
    # comments are not superseded: every comment is its own remark
    is_comment = kind[idx] == KIND_CODE["comment"]
    return np.sort(idx[last | is_comment])
