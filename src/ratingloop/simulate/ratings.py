"""Simulation: ratings drawn from a known population (`simulate.population`), as flat numpy arrays.

`simulate(cfg)` returns `SimRatings`: per rating the rater index, item index, kind code (index into
`ratingloop.store.records.KINDS`: 0 thumbs, 1 stars), raw value and declared scale, plus the
`Truth`. Two settings: multi-rated (raters pick items at random, busier raters rate more) and
single-rated sparse (each interaction is rated once, by its asker). Deterministic for a seed and
vectorised: 1,000,000 ratings take about a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ratingloop.signals import RawRatings
from ratingloop.simulate.population import TROLL_KINDS, SimConfig, Truth, make_population

THUMBS, STARS = 0, 1  # kind codes, the positions of "thumbs" and "stars" in store.records.KINDS


@dataclass(frozen=True)
class SimRatings:
    rater: np.ndarray  # int32 (n,)
    item: np.ndarray  # int32 (n,)
    kind: np.ndarray  # int8 (n,): THUMBS or STARS
    value: np.ndarray  # float64 (n,): thumbs -1/+1, stars 1..5 as a rater would send them
    scale_min: np.ndarray  # float64 (n,)
    scale_max: np.ndarray  # float64 (n,)
    truth: Truth
    config: SimConfig

    @property
    def n_raters(self) -> int:
        return len(self.truth.offset)

    @property
    def n_items(self) -> int:
        return len(self.truth.quality)

    def __len__(self) -> int:
        return len(self.rater)


def simulate(cfg: SimConfig) -> SimRatings:
    """Draw a population and its ratings; the same `cfg` (seed included) gives the same arrays."""
    rng = np.random.default_rng(cfg.seed)
    truth = make_population(cfg, rng)
    rater, item = _single_rated(cfg, truth, rng) if cfg.single_rated else _multi_rated(cfg, truth, rng)
    n = len(rater)

    habit = truth.habit[rater]
    kind = np.where(habit == 0, THUMBS, np.where(habit == 1, STARS, rng.integers(0, 2, n))).astype(np.int8)
    thumbs = kind == THUMBS

    a, b, s = truth.scale[rater], truth.offset[rater], truth.noise[rater]
    signal = a * truth.quality[item]
    troll = truth.troll[rater]
    inverted = (troll == TROLL_KINDS.index("inverter")) | (
        (troll == TROLL_KINDS.index("topic_inverter")) & (truth.topic[item] == truth.target_topic[rater])
    )
    perceived = np.where(inverted, -signal, signal) + b + s * rng.standard_normal(n)

    low = np.where(truth.partial[rater], 3.0, 1.0)  # the lowest star this rater ever gives
    stars = np.clip(np.rint(3.0 + 2.0 * perceived), low, 5.0)
    # Using only 3-5 stars is a habit of the star widget, not of the thumbs: a thumbs is the sign of
    # the uncompressed perception (truth.offset/scale describe the stars).
    part = truth.partial[rater]
    thumb = np.where(np.where(part, 2.0 * perceived - 1.0, perceived) > 0, 1.0, -1.0)
    value = np.where(thumbs, thumb, stars)

    is_random = troll == TROLL_KINDS.index("random")
    random_value = np.where(thumbs, rng.choice([-1.0, 1.0], n), rng.integers(1, 6, n).astype(float))
    value = np.where(is_random, random_value, value)
    is_constant = troll == TROLL_KINDS.index("constant")
    side = truth.constant_value[rater]
    value = np.where(is_constant, np.where(thumbs, side, 3.0 + 2.0 * side), value)

    return SimRatings(
        rater=rater.astype(np.int32), item=item.astype(np.int32), kind=kind, value=value,
        scale_min=np.where(thumbs, -1.0, 1.0), scale_max=np.where(thumbs, 1.0, 5.0), truth=truth, config=cfg,
    )


def _multi_rated(cfg: SimConfig, truth: Truth, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Raters chosen in proportion to their activity, items uniformly; one rating per (rater, item)."""
    want = cfg.n_ratings
    rater = np.zeros(0, np.int64)
    item = np.zeros(0, np.int64)
    p = truth.activity / truth.activity.sum()
    for _ in range(20):  # a few pairs repeat; draw extra and keep each pair's first occurrence
        draw = int((want - len(rater)) * 1.2) + 16
        rater = np.concatenate([rater, rng.choice(cfg.n_raters, draw, p=p)])
        item = np.concatenate([item, rng.integers(0, cfg.n_items, draw)])
        _, first = np.unique(rater * cfg.n_items + item, return_index=True)
        first = np.sort(first)
        rater, item = rater[first], item[first]
        if len(rater) >= want:
            break
    return rater[:want], item[:want]


def _single_rated(cfg: SimConfig, truth: Truth, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Every interaction rated once, by whoever asked it (askers in proportion to activity)."""
    asker = rng.choice(cfg.n_raters, cfg.n_items, p=truth.activity / truth.activity.sum())
    return asker, np.arange(cfg.n_items)


def to_raw(sim: SimRatings) -> RawRatings:
    """The simulated ratings as the signals stage's input (every rating on aspect "overall")."""
    n = len(sim)
    return RawRatings(rater=sim.rater, item=sim.item, kind=sim.kind.astype(np.int64), aspect=np.zeros(n, np.int64),
                      value=sim.value, scale_min=sim.scale_min, scale_max=sim.scale_max,
                      n_raters=sim.n_raters, n_items=sim.n_items)
