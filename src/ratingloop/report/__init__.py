"""Looking at the data: what the pages of plots share (the serve dashboard, the demo's report).

plots.py   the matplotlib helpers every page of plots shares: the style and lock (`rendering`), inline SVG
           (`svg`), raters as points (`mark_raters`)

matplotlib is imported only when a plot is drawn: importing this package is cheap.
"""

from ratingloop.report.plots import mark_raters, rendering, svg

__all__ = ["mark_raters", "rendering", "svg"]
