"""`ratingloop report`: the page's numbers come from the store (ratings per bucket and kind, the newest run's
rewards and raters, each build's manifest), and the page a person opens in real Chromium has every plot."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

from browser import LAUNCH, playwright
from ratingloop.cli import app
from ratingloop.dataset import BuildConfig, build_dataset
from ratingloop.report import gather, write_report
from ratingloop.report.data import JUDGE, ratings_over_time
from ratingloop.signals import record_signals
from ratingloop.store import Limits, open_engine
from ratingloop.store.jsonl import import_lines

KEY = b"test-user-key"
runner = CliRunner()
HONEST = ["h1", "h2", "h3", "h4"]
TROLL = "troll<script>"  # a rater id is text, never markup


def rating(rater: str, kind: str, value: Any, day: int, hour: int = 10, **extra: Any) -> dict[str, Any]:
    return {"rater_id": rater, "kind": kind, "value": value, "created_at": f"2026-11-{day:02d}T{hour:02d}:00:00Z",
            **({"scale": [1, 5]} if kind == "stars" else {}), **extra}


def store(url: str) -> Engine:
    """Ten prompts with a good and a poor answer: four honest raters' stars on Nov 1, an inverting troll's on
    Nov 3, one user's thumbs on Nov 2 and a reward model's (judge) scale on Nov 3."""
    lines = []
    for p in range(10):
        for good in (True, False):
            ratings = [rating(r, "stars", 5 if good else 1, 1) for r in HONEST]
            ratings += [rating(TROLL, "stars", 1 if good else 5, 3), rating("asker", "thumbs", 1 if good else -1, 2)]
            ratings.append(rating("rm", "scale", 0.9 if good else 0.1, 3, source="judge", scale=[0, 1]))
            lines.append(orjson.dumps({"id": f"q{p}-{'good' if good else 'poor'}", "response": f"answer {p} {good}",
                                       "messages": [{"role": "user", "content": f"question {p}"}],
                                       "created_at": "2026-11-01T09:00:00Z", "ratings": ratings}))
    engine = open_engine(url)
    report = import_lines(engine, lines, Limits(), user_key=KEY)
    assert not report.bad, report.bad
    return engine


def test_ratings_over_time_count_each_kind_per_bucket(db_url: str) -> None:
    engine = store(db_url)
    r = ratings_over_time(engine)
    assert r.unit == "day" and r.starts == [datetime(2026, 11, d, tzinfo=timezone.utc) for d in (1, 2, 3)]
    # the asker's thumbs count as thumbs; the judge's scale ratings are their own series, not "scale"
    assert r.counts == {"thumbs": [0, 20, 0], "stars": [80, 0, 20], JUDGE: [0, 0, 20]}


def test_a_short_span_is_drawn_by_the_hour_and_a_long_one_by_the_week(sqlite_url: str) -> None:
    engine = open_engine(sqlite_url)
    when = ["2026-11-01T10:05:00Z", "2026-11-01T10:55:00Z", "2026-11-01T13:00:00Z"]
    lines = [orjson.dumps({"id": f"i{k}", "messages": [{"role": "user", "content": "q"}], "response": f"a{k}",
                           "ratings": [{"rater_id": "u", "kind": "thumbs", "value": 1, "created_at": w}]})
             for k, w in enumerate(when)]
    import_lines(engine, lines, Limits(), user_key=KEY)
    r = ratings_over_time(engine)
    assert r.unit == "hour" and r.counts == {"thumbs": [2, 0, 0, 1]} and r.starts[0].hour == 10
    import_lines(engine, [orjson.dumps({"id": "late", "messages": [{"role": "user", "content": "q"}],
                                        "response": "b", "ratings": [{"rater_id": "u", "kind": "thumbs", "value": -1,
                                                                      "created_at": "2027-05-01T00:00:00Z"}]})],
                 Limits(), user_key=KEY)
    r = ratings_over_time(engine)
    assert r.unit == "week" and sum(r.counts["thumbs"]) == 4 and r.counts["thumbs"][0] == 3
    assert all(s.weekday() == 0 for s in r.starts)  # weeks start on Mondays
    assert r.starts[0] == datetime(2026, 10, 26, tzinfo=timezone.utc)  # the Monday before Nov 1, 2026 (a Sunday)


def built(url: str, tmp_path: Path) -> tuple[Engine, Any, list[Any]]:
    engine = store(url)
    run = record_signals(engine)
    builds = [build_dataset(engine, fmt, tmp_path / fmt, BuildConfig(), run) for fmt in ("kto", "dpo")]
    return engine, run, builds


def test_the_page_shows_the_store_the_run_and_each_build_with_why(db_url: str, tmp_path: Path) -> None:
    engine, run, builds = built(db_url, tmp_path)
    assert run.flagged == {TROLL}
    data = gather(engine)
    assert data.run is not None and data.run.run_id == run.run_id
    assert [b.snapshot_id for b in data.builds] == [b.snapshot_id for b in reversed(builds)]  # newest first
    assert data.builds[1].filters == builds[0].manifest["filters"] and data.n_builds == 2

    path = write_report(engine, tmp_path / "report")
    html = path.read_text()
    assert path == (tmp_path / "report" / "report.html").resolve()
    assert html.count("<svg") == 4 and "<script>" not in html and "troll&lt;script&gt;" in html
    assert "20 interactions (20 rated), 140 ratings from 7 raters" in html
    for b in builds:
        assert b.snapshot_id in html
        for f in b.manifest["filters"]:
            if f["removed"]:
                assert f"{f['removed']} {f['why']}" in html.replace("&#x27;", "'")
    assert "1 flagged (1 inverter)" in html and run.run_id in html


def test_an_empty_store_gets_a_page_that_says_what_is_missing(sqlite_url: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", "--out", str(tmp_path / "r"), "--db", sqlite_url])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "r" / "report.html").read_text()
    assert f"report -> {(tmp_path / 'r' / 'report.html').resolve()}" in result.stdout
    assert "<svg" not in html and "No ratings yet" in html and "No signals run yet" in html and "No builds yet" in html


@pytest.mark.slow
def test_the_report_opens_in_a_browser_with_every_plot(sqlite_url: str, tmp_path: Path) -> None:
    sync_playwright = playwright()
    engine, run, builds = built(sqlite_url, tmp_path)
    result = runner.invoke(app, ["report", "--out", str(tmp_path / "r"), "--db", sqlite_url])
    assert result.exit_code == 0, result.output
    with sync_playwright() as p:
        browser = p.chromium.launch(**LAUNCH)
        try:
            page = browser.new_page()
            page.goto((tmp_path / "r" / "report.html").resolve().as_uri())
            assert page.locator("svg").count() == 4
            for section in ("ratings", "rewards", "raters", "builds"):
                box = page.locator(f"#{section} svg").bounding_box()
                assert box is not None and box["width"] > 300 and box["height"] > 100, section
            assert page.locator("#builds tr").count() == len(builds) + 1
            assert TROLL in page.locator("#raters").inner_text()  # named, as text
            assert run.run_id in page.locator("#rewards").inner_text()
        finally:
            browser.close()
