"""Stage 3, signals: every kind of rating as a reward in [-1, 1]. Raw values are never changed.

Reads raw (kind, value, scale, signal, text) — scalars or numpy arrays — and writes rewards:
thumbs are -1/+1; stars, scale and aspect ratings map linearly from their declared scale
(the lowest mark -> -1, the highest -> +1); implicit signals (copy, regenerate, ...) are weak
fixed rewards from `ImplicitRewards`; a comment's reward is its VADER compound sentiment, and a
correction is a weak negative (the rater wrote a better answer). The rater model decides how much
each weak signal counts; here they are only put on the same scale.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from ratingloop.store.records import KINDS

KIND_CODE = {k: i for i, k in enumerate(KINDS)}  # kind name -> small int, the store's order
SCALAR_KINDS = ("stars", "scale", "aspect")  # linear over their declared scale
RATING_KINDS = ("thumbs", *SCALAR_KINDS)  # what a rater gives on purpose: the rater model's main input
WEAK_KINDS = ("implicit", "comment", "correction")  # side signals: they only nudge quality


@dataclass(frozen=True)
class ImplicitRewards:
    """Weak rewards for implicit signals (and for a correction). Small on purpose: a copy is mild
    evidence of a good answer, a regenerate mild evidence of a bad one."""

    copy: float = 0.3
    share: float = 0.4
    regenerate: float = -0.3
    edit: float = -0.1
    abandon: float = -0.2
    correction: float = -0.5
    unknown: float = 0.0  # a signal configured in the store but not given a reward here

    def of(self, signal: str | None) -> float:
        table = asdict(self)
        return float(table.get(signal or "unknown", self.unknown))


def scale_reward(value: Any, scale_min: Any, scale_max: Any) -> np.ndarray:
    """Linear map of [scale_min, scale_max] onto [-1, 1]; values outside are clipped (the store refuses them)."""
    v, lo, hi = (np.asarray(x, dtype=float) for x in (value, scale_min, scale_max))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = 2.0 * (v - lo) / (hi - lo) - 1.0
    return np.clip(r, -1.0, 1.0)


def thumbs_reward(value: Any) -> np.ndarray:
    return np.where(np.asarray(value, dtype=float) > 0, 1.0, -1.0)


@lru_cache(maxsize=1)
def _analyzer() -> Any:
    # vaderSentiment ships its lexicon in the wheel: no download, ~50 ms to load once.
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def comment_reward(texts: Sequence[str | None]) -> np.ndarray:
    """VADER's compound score in [-1, 1] per comment (0 for an empty one)."""
    sia = _analyzer()
    return np.asarray([sia.polarity_scores(t)["compound"] if t and t.strip() else 0.0 for t in texts], float)


def rewards(
    kind: np.ndarray,
    value: np.ndarray,
    scale_min: np.ndarray,
    scale_max: np.ndarray,
    signal: Sequence[str | None] | None = None,
    text: Sequence[str | None] | None = None,
    implicit: ImplicitRewards = ImplicitRewards(),
) -> np.ndarray:
    """Rewards in [-1, 1] for arrays of ratings; `kind` holds KIND_CODE codes. NaN where a kind has
    no reward (a comment without text)."""
    kind = np.asarray(kind)
    out = np.full(len(kind), np.nan)
    is_thumbs = kind == KIND_CODE["thumbs"]
    out[is_thumbs] = thumbs_reward(np.asarray(value)[is_thumbs])
    scalar = np.isin(kind, [KIND_CODE[k] for k in SCALAR_KINDS])
    out[scalar] = scale_reward(np.asarray(value)[scalar], np.asarray(scale_min)[scalar], np.asarray(scale_max)[scalar])
    for i in np.flatnonzero(kind == KIND_CODE["implicit"]).tolist():
        out[i] = implicit.of(signal[i] if signal is not None else None)
    out[kind == KIND_CODE["correction"]] = implicit.correction
    is_comment = np.flatnonzero(kind == KIND_CODE["comment"]).tolist()
    if len(is_comment) and text is not None:
        out[is_comment] = comment_reward([text[i] for i in is_comment])
    return out


def reward(kind: str, value: float | None = None, scale: tuple[float, float] | None = None,
           signal: str | None = None, text: str | None = None, implicit: ImplicitRewards = ImplicitRewards()) -> float:
    """One rating's reward; the scalar form of `rewards` (stars default to the 1-5 scale)."""
    lo, hi = scale or ((-1.0, 1.0) if kind == "thumbs" else (1.0, 5.0))
    out = rewards(np.asarray([KIND_CODE[kind]]), np.asarray([np.nan if value is None else value], float),
                  np.asarray([lo]), np.asarray([hi]), [signal], [text], implicit)
    return float(out[0])
