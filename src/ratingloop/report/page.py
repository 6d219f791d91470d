"""Looking at the data: `ratingloop report [--out DIR]` writes DIR/report.html, one page a person reads in a
browser, its plots inline (SVG: no other file, nothing fetched).

    path = write_report(engine, Path("ratingloop-report"), say=print)

Sections (each says what it shows, and why it is empty when it is): the ratings over time by kind; the newest
signals run's rewards; its raters, bias against reliability, the flagged ones with why; and what each dataset
build kept and dropped, filter by filter, with the reasons from its manifest.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Callable

from sqlalchemy import Engine

from ratingloop.report import figures
from ratingloop.report.data import MAX_BUILDS, BuildView, ReportData, gather
from ratingloop.report.plots import rendering
from ratingloop.signals import StoredSignals, summarise

e = html.escape
STYLE = ("body{font-family:system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem;color:#222}"
         "table{border-collapse:collapse;margin:1rem 0;font-size:.85rem}"
         "td,th{border:1px solid #ccc;padding:.3rem .5rem;text-align:left;vertical-align:top}"
         "svg{max-width:100%;height:auto;display:block}.note{color:#666}"
         ".flagged{color:#b03030}")


def write_report(engine: Engine, out_dir: Path, say: Callable[[str], None] = lambda _: None) -> Path:
    """Read the store, draw, and write `out_dir`/report.html; returns its path."""
    say("reading the store ...")
    data = gather(engine)
    say("drawing the plots ...")
    page = render(data)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path.resolve()


def render(data: ReportData) -> str:
    with rendering():
        sections = [_ratings(data), _rewards(data.run), _raters(data.run), _builds(data.builds, data.n_builds)]
    s = data.stats
    run = f"; newest signals run {e(data.run.run_id)}" if data.run else ""
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>ratingloop report</title>"
            f"<style>{STYLE}</style></head><body><h1>ratingloop report</h1>"
            f"<p>{s['interactions']} interactions ({s['rated_interactions']} rated), {s['ratings']} ratings from "
            f"{s['raters']} raters, {s['versions']} model versions{run}. Generated "
            f"{data.generated_at:%Y-%m-%d %H:%M} UTC.</p>" + "".join(sections) + "</body></html>")


def _section(sid: str, title: str, intro: str, body: str) -> str:
    return f"<section id='{sid}'><h2>{e(title)}</h2><p>{intro}</p>{body}</section>"


def _table(head: list[str], rows: list[list[str]]) -> str:
    """Cells are HTML already: escape text before."""
    return ("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{x}</td>" for x in row) + "</tr>" for row in rows) + "</table>")


def _ratings(data: ReportData) -> str:
    intro = ("Every rating stored, by when it arrived and its kind; a reward model's ratings (<code>ratingloop "
             "label</code>, source judge) are one series of their own.")
    if not data.ratings.counts:
        return _section("ratings", "Ratings over time", intro, "<p class='note'>No ratings yet: import some "
                        "(<code>ratingloop import FILE</code>) or send them to <code>POST /v1/feedback</code>.</p>")
    totals = [[e(name), str(sum(counts))] for name, counts in data.ratings.counts.items()]
    return _section("ratings", "Ratings over time", intro,
                    figures.ratings_plot(data.ratings) + _table(["kind", "ratings"], totals))


def _rewards(run: StoredSignals | None) -> str:
    if run is None:
        return _section("rewards", "Rewards", "No signals run yet: <code>ratingloop signals</code> fits the rater "
                        "model and records one reward per interaction.", "")
    prior = (f"the content prior was on (correlation with quality ~{run.content.get('quality_corr') or 0:.2f}), so "
             f"the {len(run.unrated)} unrated interactions have its reward" if run.content is not None
             else "the content prior was off: only rated interactions have a reward")
    when = f"{run.created_at:%Y-%m-%d %H:%M}"
    intro = (f"The debiased reward of each interaction in signals run {e(run.run_id)} ({when}, "
             f"{run.summary.get('n_ratings', 0)} ratings read, {run.summary.get('n_counted', 0)} counted); "
             f"{e(prior)}. <code>ratingloop show ID</code> says how one reward was reached.")
    if not run.interactions and not run.unrated:
        return _section("rewards", "Rewards", intro, "<p class='note'>The run has no rewards.</p>")
    return _section("rewards", "Rewards", intro, figures.rewards_plot(run))


def _raters(run: StoredSignals | None) -> str:
    if run is None or not run.raters:
        return _section("raters", "Raters", "No signals run yet, so no rater estimates.", "")
    s = summarise(run)
    kinds = ", ".join(f"{n} {e(kind)}" for kind, n in s.flagged_by_kind.items())
    intro = (f"{s.raters} raters ({s.well_observed} with 5+ ratings; the others' estimates are shrunk toward "
             f"everyone's), {len(s.flagged)} flagged{f' ({kinds})' if kinds else ''} and left out of every reward. "
             "Bias is how leniently a rater rates (reward units); reliability, the share of their ratings' variance "
             "that is the answers' quality.")
    spread = _table(["quantile over raters", *s.bias.quantiles],
                    [[e(d.name), *(f"{v:+.2f}" if d is s.bias else f"{v:g}" if d is s.n else f"{v:.2f}"
                                   for v in d.quantiles.values())]
                     for d in (s.n, s.bias, s.scale, s.reliability)])
    flagged = _table(["flagged rater", "ratings", "bias", "scale", "reliability", "why"],
                     [[f"<span class='flagged'>{e(r.rater_id)}</span>", str(r.n), f"{r.bias:+.2f}", f"{r.scale:.2f}",
                       f"{r.reliability:.2f}", e("; ".join(r.reasons))] for r in s.flagged]) if s.flagged else ""
    return _section("raters", "Raters", intro, figures.raters_plot(run.raters) + spread + flagged)


def _builds(builds: list[BuildView], total: int) -> str:
    intro = ("Each dataset build (<code>ratingloop build</code>, or a loop round's) from its manifest: the rows it "
             "kept, and what each filter removed and why.")
    if not builds:
        return _section("builds", "Builds", intro, "<p class='note'>No builds yet.</p>")
    more = f" The newest {MAX_BUILDS} of {total}." if total > len(builds) else ""
    rows = []
    for b in builds:
        removed = "<br>".join(f"{f['removed']} {e(f['why'])} <span class='note'>({e(f['filter'])})</span>"
                              for f in b.filters if f["removed"]) or "nothing"
        notes = "<br>".join(e(w) for w in b.warnings) + ("<br>purged: a deleted user's data was in it" if b.purged
                                                         else "")
        rows.append([e(b.snapshot_id), f"{b.created_at:%Y-%m-%d %H:%M}", e(b.format), e(b.signals_run_id or "-"),
                     f"{b.rows.get('train', 0)} / {b.rows.get('eval', 0)}",
                     str(b.inputs.get("rated_interactions", "")), removed, notes])
    table = _table(["snapshot", "built", "format", "signals run", "kept train / eval", "rated interactions",
                    "removed, and why", "warnings"], rows)
    return _section("builds", "Builds", intro + more, figures.builds_plot(builds) + table)
