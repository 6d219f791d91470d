"""Simulation: the hidden truth behind simulated ratings — interactions of known quality and raters
with known offset, scale use, noise, habits, and troll behaviour.

Reads nothing; `make_population(cfg, rng)` returns a `Truth` of plain numpy arrays that
`simulate.ratings` turns into ratings. Every rater perceives an interaction through
``p = a * quality + b + noise`` in reward units ([-1, 1] is the whole star scale); a rater who uses
only part of the scale compresses and shifts that, and we record the *effective* offset and scale
(what a rating model should recover) so tests can compare estimates with the truth directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

HABITS = ("thumbs", "stars", "mixed")  # which kinds a rater uses
TROLL_KINDS = ("none", "inverter", "random", "constant", "topic_inverter")


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. Defaults give a modest multi-rated set with no trolls."""

    n_items: int = 2_000
    n_raters: int = 200
    n_ratings: int = 10_000  # multi-rated only; single-rated gives one rating per item
    single_rated: bool = False  # each interaction rated once, by the person who asked
    n_topics: int = 5
    scale_mean: float = 0.5  # typical a: how far quality moves a rating, in reward units per sd
    scale_spread: float = 0.25  # log-sd of a across raters
    offset_sd: float = 0.3  # lenient (+) / harsh (-) raters, in reward units
    noise_range: tuple[float, float] = (0.05, 0.4)  # per-rater noise sd, uniform in this range
    partial_scale_frac: float = 0.3  # share of raters who use only 3-5 stars
    habits: tuple[float, float, float] = (0.4, 0.3, 0.3)  # thumbs-only, stars-only, mixed
    troll_frac: float = 0.0
    troll_mix: dict[str, float] = field(
        default_factory=lambda: {"inverter": 0.25, "random": 0.25, "constant": 0.25, "topic_inverter": 0.25}
    )
    activity_sigma: float = 0.8  # log-sd of how many ratings each rater gives
    flood_factor: float = 3.0  # constant-flood trolls rate this many times more than others
    seed: int = 0


@dataclass(frozen=True)
class Truth:
    """What a rating model should recover. Rater arrays are indexed by rater, item arrays by item."""

    quality: np.ndarray  # float64 (n_items,), ~ N(0, 1)
    topic: np.ndarray  # int16 (n_items,)
    offset: np.ndarray  # float64 (n_raters,): effective b of their stars, in reward units
    scale: np.ndarray  # float64 (n_raters,): effective a in reward units per quality sd (>0)
    noise: np.ndarray  # float64 (n_raters,): effective noise sd in reward units
    partial: np.ndarray  # bool (n_raters,): uses only 3-5 stars
    habit: np.ndarray  # int8 (n_raters,): index into HABITS
    troll: np.ndarray  # int8 (n_raters,): index into TROLL_KINDS (0 = honest)
    target_topic: np.ndarray  # int16 (n_raters,): topic a topic_inverter attacks, else -1
    constant_value: np.ndarray  # float64 (n_raters,): +1 or -1, the side a constant troll floods
    activity: np.ndarray  # float64 (n_raters,): relative rating rate

    @property
    def is_troll(self) -> np.ndarray:
        return self.troll > 0

    def troll_kind_names(self) -> np.ndarray:
        return np.asarray(TROLL_KINDS)[self.troll]


def make_population(cfg: SimConfig, rng: np.random.Generator) -> Truth:
    """Draw interactions and raters. Troll labels are assigned to a random `troll_frac` of raters."""
    n_r = cfg.n_raters
    quality = rng.standard_normal(cfg.n_items)
    topic = rng.integers(0, cfg.n_topics, cfg.n_items).astype(np.int16)

    a = cfg.scale_mean * np.exp(cfg.scale_spread * rng.standard_normal(n_r) - cfg.scale_spread**2 / 2)
    b = cfg.offset_sd * rng.standard_normal(n_r)
    noise = rng.uniform(*cfg.noise_range, n_r)
    partial = rng.random(n_r) < cfg.partial_scale_frac
    # A rater using only 3-5 maps p to 4 + 1*p stars instead of 3 + 2*p: in reward units
    # ((stars - 3) / 2) that halves a, b and the noise and adds +0.5 — lenient and compressed.
    shrink = np.where(partial, 0.5, 1.0)
    habit = rng.choice(len(HABITS), n_r, p=np.asarray(cfg.habits) / sum(cfg.habits)).astype(np.int8)

    troll = np.zeros(n_r, np.int8)
    n_trolls = int(round(cfg.troll_frac * n_r))
    if n_trolls:
        who = rng.choice(n_r, n_trolls, replace=False)
        names = list(cfg.troll_mix)
        share = np.asarray([cfg.troll_mix[k] for k in names], float)
        kinds = rng.choice(len(names), n_trolls, p=share / share.sum())
        troll[who] = np.asarray([TROLL_KINDS.index(k) for k in names], np.int8)[kinds]
    target = np.where(troll == TROLL_KINDS.index("topic_inverter"),
                      rng.integers(0, cfg.n_topics, n_r), -1).astype(np.int16)
    constant_value = np.where(rng.random(n_r) < 0.5, 1.0, -1.0)

    activity = np.exp(cfg.activity_sigma * rng.standard_normal(n_r))
    activity[troll == TROLL_KINDS.index("constant")] *= cfg.flood_factor
    return Truth(
        quality=quality, topic=topic, offset=shrink * b + 0.5 * partial, scale=shrink * a, noise=shrink * noise,
        partial=partial, habit=habit, troll=troll, target_topic=target, constant_value=constant_value,
        activity=activity,
    )
