"""Stage 3, signals: the raters of a recorded signals run at a glance (`ratingloop raters --summary`, `--top N`).

Reads a `StoredSignals` (its raters' estimates and flags); writes nothing. `summarise` counts raters and
ratings, describes how bias, scale and reliability spread over the raters (quantiles and a text
histogram), and lists the flagged raters with why; `top_raters` are the raters with the most ratings.

    s = summarise(load_signals(engine))
    s.as_dict()["bias"]["quantiles"]["50%"], s.flagged_by_kind, histogram_lines(s.bias)

Most raters of a product rate a few answers: their estimates are shrunk toward the population (bias 0,
scale 1), so a spike at the population's values is those raters, not a finding. `well_observed` counts the
raters with at least `WELL_OBSERVED` ratings, whose estimates are their own.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ratingloop.signals.report import RaterSignal
from ratingloop.signals.runs import StoredSignals

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
WELL_OBSERVED = 5  # ratings from which a rater's estimates are mostly their own (TrollConfig.min_ratings)
BAR = 30  # characters of the longest histogram bar


@dataclass(frozen=True)
class Distribution:
    name: str
    quantiles: dict[str, float]  # "0%" (min), "10%", ..., "100%" (max)
    edges: list[float]  # histogram bin edges, len(counts) + 1; values outside fall into the end bins
    counts: list[int]


@dataclass(frozen=True)
class RaterSummary:
    run_id: str
    raters: int
    ratings: int  # what the raters' `n` add up to: overall ratings and comparisons
    well_observed: int  # raters with at least WELL_OBSERVED ratings
    flagged_by_kind: dict[str, int]  # inverter, random, constant, topic_inverter -> raters (one may have several)
    bias: Distribution
    scale: Distribution
    reliability: Distribution
    n: Distribution  # ratings per rater
    flagged: list[RaterSignal]  # most ratings first

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"flagged": [asdict(r) for r in self.flagged], "well_observed_min": WELL_OBSERVED}


def summarise(run: StoredSignals) -> RaterSummary:
    """Counts, the spread of each estimate over the raters, and the flagged raters."""
    rs = run.raters
    flagged = sorted((r for r in rs if r.flagged), key=lambda r: (-r.n, r.rater_id))
    kinds = Counter(reason.split(":", 1)[0] for r in flagged for reason in dict.fromkeys(r.reasons))
    n_max = max((r.n for r in rs), default=1)
    return RaterSummary(
        run.run_id, len(rs), sum(r.n for r in rs), sum(r.n >= WELL_OBSERVED for r in rs), dict(kinds.most_common()),
        distribution("bias", [r.bias for r in rs], np.linspace(-1.0, 1.0, 11)),
        distribution("scale", [r.scale for r in rs], np.linspace(-1.0, 2.0, 7)),
        distribution("reliability", [r.reliability for r in rs], np.linspace(0.0, 1.0, 11)),
        distribution("ratings per rater", [r.n for r in rs], _count_edges(n_max)),
        flagged)


def top_raters(run: StoredSignals, n: int) -> list[RaterSignal]:
    """The `n` raters with the most ratings (ties by id), flagged or not: the raters whose estimates rest most
    on their own data, and whose ratings touch the most rewards."""
    return sorted(run.raters, key=lambda r: (-r.n, r.rater_id))[:n]


def distribution(name: str, values: list[float], edges: np.ndarray) -> Distribution:
    x = np.asarray(values, float)
    quantiles = {f"{q:.0%}": round(float(np.quantile(x, q)), 4) for q in QUANTILES} if len(x) else {}
    counts = np.histogram(np.clip(x, edges[0], edges[-1]), bins=edges)[0] if len(x) else np.zeros(len(edges) - 1)
    return Distribution(name, quantiles, [round(float(e), 4) for e in edges], [int(c) for c in counts])


def _count_edges(n_max: int) -> np.ndarray:
    """Bins of ratings per rater: 0 (weak signals only), 1, 2, 3-4, 5-9, 10-19, ... (doublings), past the most."""
    edges = [0.0, 1.0, 2.0, 3.0, 5.0, 10.0]
    while edges[-1] <= n_max:
        edges.append(edges[-1] * 2)
    return np.asarray(edges)


def histogram_lines(d: Distribution, integer: bool = False) -> list[str]:
    """The histogram as text, one line a bin: its range, a bar, the count."""
    top = max(d.counts, default=0)
    lines = []
    for lo, hi, c in zip(d.edges[:-1], d.edges[1:], d.counts, strict=True):
        span = (f"{lo:g}" if hi - lo == 1 else f"{lo:g}-{hi - 1:g}") if integer else f"{lo:g}..{hi:g}"
        bar = "#" * (round(BAR * c / top) if top else 0) or ("." if c else "")
        lines.append(f"{span:>12} {bar:<{BAR}} {c}")
    return lines
