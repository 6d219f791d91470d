"""Looking at the data (`ratingloop report`): one HTML page a person reads, with plots, from what the store
and its recorded runs hold - ratings over time by kind, the newest signals run's rewards and raters, and what
each dataset build kept and dropped, and why. Reads only; never fits, never builds.

data.py     gather(engine) -> ReportData: every number on the page, read once
figures.py  the page's plots, each an inline <svg>
page.py     write_report(engine, out_dir) -> out_dir/report.html: the sections around the plots
plots.py    the matplotlib helpers every page of plots shares (this report, the serve dashboard, the demo's
            report): the style and lock (`rendering`), inline SVG (`svg`), raters as points (`mark_raters`)

matplotlib is imported only when a plot is drawn: importing this package is cheap.
"""

from ratingloop.report.data import ReportData, gather
from ratingloop.report.page import render, write_report
from ratingloop.report.plots import mark_raters, rendering, svg

__all__ = ["ReportData", "gather", "mark_raters", "render", "rendering", "svg", "write_report"]
