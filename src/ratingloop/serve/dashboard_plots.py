"""Stage 2, serving: the dashboard's plots, as SVG text (serve/dashboard.py gathers the figures).

Figures are built with matplotlib's object API and the style, lock and SVG writer every page of plots
shares (`ratingloop.report`: `rendering`, `svg`, `mark_raters`). Hold `rendering()` while building:
matplotlib's settings are process-wide, and requests render on threads.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ratingloop.report import mark_raters, rendering, svg

if TYPE_CHECKING:
    from ratingloop.serve.dashboard import Cell, Histogram, VersionSummary
    from ratingloop.signals import RaterSignal

WRAP = 4  # panels per row
MAX_BARS = 25  # distinct values drawn as bars; more (a fine-grained scale) as a histogram
VERDICT_COLORS = {"promote": "tab:green", "reject": "tab:red"}
__all__ = ["histograms", "over_time", "raters", "rendering", "version_colors", "versions"]


def version_colors(versions: list[str]) -> dict[str, Any]:
    """One colour per version, the same in every plot of a response."""
    cmap = matplotlib.colormaps["tab10" if len(versions) <= 10 else "tab20"]
    return {v: cmap(k % cmap.N) for k, v in enumerate(versions)}


def over_time(panels: dict[str, list[Cell]], colors: dict[str, Any]) -> str:
    """Per panel (a kind, an aspect, or all ratings): mean rating per version over time, counts beneath."""
    names = list(panels)
    shown = [v for v in colors if any(c.version == v for cells in panels.values() for c in cells)]
    cols = min(WRAP, len(names))
    rows = -(-len(names) // cols)
    width = max(6.5, 3.4 * cols)
    # as many legend entries a row as fit (8 pt text is ~0.07 in a character, plus the line sample)
    legend_cols = max(1, min(len(shown), int(width // (0.6 + 0.07 * max(len(v) for v in shown)))))
    legend_rows = -(-len(shown) // legend_cols)
    height = 3.2 * rows + 0.45 + 0.25 * legend_rows
    # fixed margins rather than a layout engine: the labels are short numbers and dates, and laying out
    # a grid of date axes automatically costs twice what drawing it does
    fig = Figure(figsize=(width, height))
    outer = fig.add_gridspec(rows, cols, left=0.8 / width, right=1 - 0.15 / width, bottom=0.5 / height,
                             top=1 - (0.3 + 0.25 * legend_rows) / height, hspace=0.3, wspace=0.25)
    first = None
    for k, name in enumerate(names):
        inner = outer[k // cols, k % cols].subgridspec(2, 1, height_ratios=[3, 1.4], hspace=0.08)
        mean_ax = fig.add_subplot(inner[0], sharex=first)
        if first is None:  # every panel shares its dates
            first = mean_ax
            locator = AutoDateLocator()
            first.xaxis.set_major_locator(locator)
            first.xaxis.set_major_formatter(ConciseDateFormatter(locator))
        count_ax = fig.add_subplot(inner[1], sharex=first)
        for version in shown:
            cells = [c for c in panels[name] if c.version == version]
            scored = [c for c in cells if c.mean is not None]
            mean_ax.plot(_dates(scored), np.array([c.mean for c in scored], float), marker="o", ms=3, lw=1.2,
                         color=colors[version])
            count_ax.plot(_dates(cells), np.array([c.n for c in cells], float), marker="o", ms=2, lw=1,
                          color=colors[version])
        mean_ax.set_title(name)
        mean_ax.set_ylim(-1.08, 1.08)
        mean_ax.axhline(0, color="0.75", lw=0.6)
        mean_ax.tick_params(labelbottom=False)
        count_ax.set_ylim(bottom=0)
        count_ax.yaxis.set_major_locator(MaxNLocator(nbins=3, integer=True))
        count_ax.tick_params(labelbottom=k + cols >= len(names))  # dates under the lowest panel of a column
        if k % cols == 0:
            mean_ax.set_ylabel("mean rating, -1..1")
            count_ax.set_ylabel("ratings")
    fig.legend(handles=[Line2D([], [], color=colors[v], marker="o", label=v) for v in shown],
               loc="upper center", ncols=legend_cols)
    return svg(fig)


def histograms(values: list[Histogram]) -> str | None:
    """One panel per kind with values: ratings per raw value. None when no kind has any."""
    shown = [h for h in values if h.counts]
    if not shown:
        return None
    cols = min(WRAP, len(shown))
    rows = -(-len(shown) // cols)
    fig = Figure(figsize=(max(5.0, 3.2 * cols), 2.6 * rows), layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax, h in zip(axes, shown, strict=False):
        ax.set_title(f"{h.kind} ({h.n} ratings)")
        marks, n = [v for v, _ in h.counts], [k for _, k in h.counts]
        if len(marks) <= MAX_BARS or h.kind == "implicit":
            ax.bar_label(ax.bar(marks, n, color="tab:blue"), fontsize=7)
        else:
            ax.hist([float(v) for v in marks], weights=n, bins=20, color="tab:blue")
        ax.set_ylim(bottom=0)
    for ax in axes[len(shown):]:
        ax.set_visible(False)
    return svg(fig)


def raters(raters: list[RaterSignal]) -> str:
    """Reliability against ratings given, one point a rater; flagged ones as red crosses, named."""
    fig = Figure(figsize=(7.0, 4.0), layout="constrained")
    ax = fig.subplots()
    mark_raters(ax, raters, lambda r: r.n)
    counts = [r.n for r in raters if r.n > 0]
    if counts and max(counts) > 20 * min(counts):
        ax.set_xscale("log")
    else:
        ax.set_xlim(left=0)
    ax.set_xlabel("ratings given")
    fig.legend(loc="outside right upper")  # beside the axes: never over a flagged rater's name
    return svg(fig)


def versions(versions: list[VersionSummary], shares: dict[str, float]) -> str:
    """Who serves what share of traffic; beside it, each evaluated version's win rate with its CI."""
    evaluated = [v for v in versions if v.win_rate is not None][:MAX_BARS]
    height = 1.3 + 0.3 * max(len(shares), len(evaluated))
    fig = Figure(figsize=(11.0 if evaluated else 6.0, height), layout="constrained")
    axes = fig.subplots(1, 2 if evaluated else 1, squeeze=False)[0]
    names = list(shares)
    status = {v.id: v.status for v in versions}
    labels = [f"{n} ({status[n]})" if n in status else n for n in names]
    bars = axes[0].barh(labels, [shares[n] for n in names], color="tab:blue")
    axes[0].bar_label(bars, labels=[f"{shares[n]:.0%}" for n in names], fontsize=7, padding=2)
    axes[0].set_xlim(0, 1.1)
    axes[0].invert_yaxis()
    axes[0].set_title("share of traffic")
    if evaluated:
        ax = axes[1]
        for y, v in enumerate(evaluated):
            err = None
            if v.ci_low is not None and v.ci_high is not None and v.win_rate is not None:
                err = [[max(0.0, v.win_rate - v.ci_low)], [max(0.0, v.ci_high - v.win_rate)]]
            color = VERDICT_COLORS.get(v.verdict or "", "0.4")
            ax.errorbar([v.win_rate], [y], xerr=err, fmt="o", capsize=3, color=color)
        ax.set_yticks(range(len(evaluated)), [f"{v.id} ({v.verdict})" for v in evaluated])
        ax.axvline(0.5, color="0.6", lw=0.8, ls="--")
        ax.set_xlim(0, 1)
        ax.set_ylim(len(evaluated) - 0.5, -0.5)  # newest on top, as the bars
        ax.set_title("win rate against what served, with its CI")
    return svg(fig)


def _dates(cells: list[Cell]) -> np.ndarray:
    """The cells' buckets as matplotlib's day numbers; buckets are naive UTC, and shown as given."""
    return np.asarray(date2num([datetime.fromisoformat(c.bucket) for c in cells]), float)
