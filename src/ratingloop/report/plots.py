"""Looking at the data: the matplotlib helpers every page of plots shares (`ratingloop report`, the serve
dashboard, the demo's report), so their figures read alike and are written one way.

Figures are built with matplotlib's object API (`Figure`, never pyplot): nothing is registered in a
global figure list, so nothing outlives a request and no GUI backend is ever chosen. Text stays text in
the SVG (small, searchable) and is never read as mathtext: a "$" in a rater id is just a "$". Hold
`rendering()` while building: matplotlib's settings are process-wide, and the server renders on threads.

    with rendering():
        fig = Figure(figsize=(6, 3), layout="constrained")
        ...
        text = svg(fig)                  # an <svg> element to inline in HTML

matplotlib is imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import io
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from ratingloop.signals import RaterSignal

STYLE: dict[Any, Any] = {"svg.fonttype": "none", "text.parse_math": False, "font.size": 9, "axes.titlesize": 10,
                         "axes.spines.top": False, "axes.spines.right": False, "legend.frameon": False,
                         "legend.fontsize": 8}
MAX_NAMED = 20  # flagged raters named on a plot (the tables list all)
_LOCK = threading.Lock()


@contextmanager
def rendering() -> Iterator[None]:
    """matplotlib's settings for our figures, held by one thread at a time."""
    import matplotlib

    with _LOCK, matplotlib.rc_context(STYLE):
        yield


def svg(fig: Any, *, tight: bool = False) -> str:
    """The figure as an <svg> element for inline use (no XML prolog), without a creation date (the same
    figure gives the same text). `tight`: crop to what is drawn, for figures laid out without a layout engine."""
    out = io.StringIO()
    fig.savefig(out, format="svg", metadata={"Date": None}, **({"bbox_inches": "tight"} if tight else {}))
    text = out.getvalue()
    return text[text.index("<svg"):]


def mark_raters(ax: Axes, raters: Sequence[RaterSignal], x: Callable[[RaterSignal], float]) -> None:
    """One point a rater at (x(rater), reliability): the others as blue dots, flagged ones as red crosses
    with their ids (the first MAX_NAMED), reliability on [0, 1]."""
    ok = [r for r in raters if not r.flagged]
    bad = [r for r in raters if r.flagged]
    ax.scatter([x(r) for r in ok], [r.reliability for r in ok], s=16, alpha=0.7, color="tab:blue", label="rater")
    if bad:
        ax.scatter([x(r) for r in bad], [r.reliability for r in bad], s=40, marker="x", color="tab:red",
                   label="flagged")
    for r in bad[:MAX_NAMED]:
        ax.annotate(r.rater_id[:24], (x(r), r.reliability), xytext=(4, 4), textcoords="offset points", fontsize=7,
                    color="tab:red")
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("reliability")
