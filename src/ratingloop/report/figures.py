"""Looking at the data: the plots of `ratingloop report`, each an inline <svg> element (report/plots.py).

    with rendering():
        ratings_plot(data.ratings), rewards_plot(run), raters_plot(run.raters), builds_plot(data.builds)

Call them inside `rendering()` (the shared style and lock); each returns SVG text.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import numpy as np

from ratingloop.report.plots import mark_raters, svg

if TYPE_CHECKING:
    from ratingloop.report.data import BuildView, RatingsOverTime
    from ratingloop.signals import RaterSignal, StoredSignals

KEPT = "kept (train + eval)"
STEP = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(days=7), "month": timedelta(days=30)}


def ratings_plot(r: RatingsOverTime) -> str:
    """Ratings per time bucket, stacked by kind."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 3.4), layout="constrained")
    ax = fig.subplots()
    x = np.asarray(date2num(r.starts), float)  # matplotlib's dates: days
    width = 0.85 * STEP[r.unit] / timedelta(days=1)
    bottom = np.zeros(len(r.starts))
    for name, counts in r.counts.items():
        ax.bar(x, counts, width=width, bottom=bottom, align="edge", label=name)
        bottom += np.asarray(counts)
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.set_ylabel(f"ratings per {r.unit}")
    ax.set_title(f"Ratings over time by kind (UTC, per {r.unit})")
    fig.legend(loc="outside right upper")
    return svg(fig)


def rewards_plot(run: StoredSignals) -> str:
    """The run's rewards: rated interactions, and unrated ones (the content prior's) stacked on them."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 3.2), layout="constrained")
    ax = fig.subplots()
    bins = np.linspace(-1.0, 1.0, 41).tolist()
    parts = [([s.reward for s in run.interactions], f"rated ({len(run.interactions)})", "tab:blue")]
    if run.unrated:
        parts.append(([s.reward for s in run.unrated], f"unrated: the content prior's ({len(run.unrated)})",
                      "tab:gray"))
    ax.hist([p[0] for p in parts], bins=bins, stacked=True, label=[p[1] for p in parts], color=[p[2] for p in parts])
    ax.axvline(0, color="0.6", lw=0.8, ls="--")
    ax.set_xlim(-1.02, 1.02)
    ax.set_xlabel("reward (-1 worst, 0 the typical answer, +1 best)")
    ax.set_ylabel("interactions")
    ax.set_title(f"Rewards of signals run {run.run_id}")
    fig.legend(loc="outside right upper")
    return svg(fig)


def raters_plot(raters: list[RaterSignal]) -> str:
    """Bias against reliability, one point a rater; flagged raters as red crosses, named."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 4.0), layout="constrained")
    ax = fig.subplots()
    mark_raters(ax, raters, lambda r: r.bias)
    ax.axvline(0, color="0.75", lw=0.6)
    low = min([-1.0, *(r.bias for r in raters)])
    high = max([1.0, *(r.bias for r in raters)])
    ax.set_xlim(low - 0.05, high + 0.05)
    ax.set_xlabel("bias (harsh < 0 < lenient), reward units")
    ax.set_title("Raters: bias against reliability")
    fig.legend(loc="outside right upper")
    return svg(fig)


def builds_plot(builds: list[BuildView]) -> str:
    """Per build (newest on top): what it kept, and what each filter removed, stacked."""
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(f["filter"] for b in builds for f in b.filters if f["removed"]))
    fig = Figure(figsize=(9.0, 1.2 + 0.32 * len(builds)), layout="constrained")
    ax = fig.subplots()
    labels = [f"{b.created_at:%Y-%m-%d %H:%M} {b.format} ...{b.snapshot_id[-6:]}" for b in builds]
    y = np.arange(len(builds))
    left = np.asarray([b.rows.get("train", 0) + b.rows.get("eval", 0) for b in builds], float)
    ax.barh(y, left, color="tab:green", label=KEPT)
    cmap = _colors(len(names))
    for k, name in enumerate(names):
        removed = np.asarray([sum(f["removed"] for f in b.filters if f["filter"] == name) for b in builds], float)
        ax.barh(y, removed, left=left, color=cmap[k], label=f"removed: {name}")
        left += removed
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("rows kept, and answers, pairs or rows each filter removed (the table says which)")
    ax.set_title("What each build kept and dropped")
    fig.legend(loc="outside right upper")
    return svg(fig)


def _colors(n: int) -> list[tuple[float, ...]]:
    import matplotlib

    cmap = matplotlib.colormaps["tab20b"]
    return [tuple(cmap(k % cmap.N)) for k in range(n)]
