"""The admin dashboard (serve/dashboard.py): its figures from a store of known ratings, a signals run and
versions, on SQLite and PostgreSQL; the HTTP endpoint (admin only, SVG plots); an empty store; and the page
in a real headless Chromium (slow)."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, update

from browser import CHROMIUM, playwright
from ratingloop.config import Settings
from ratingloop.models.registry import finish_run, record_evaluation, start_run
from ratingloop.serve import dashboard_plots as plots
from ratingloop.serve.app import create_app
from ratingloop.serve.dashboard import (
    ALL,
    NOT_LOGGED,
    rater_summary,
    rating_values,
    ratings_over_time,
    version_summary,
)
from ratingloop.signals import load_signals, record_signals
from ratingloop.store import Limits, open_engine
from ratingloop.store import tables as t
from ratingloop.store.jsonl import import_lines
from servers import ADMIN_KEY, running_server_at

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
KEY = b"test-user-key"
DAYS = ("2026-11-01", "2026-11-03")  # two days apart: bucketed by day


def _versions(engine: Engine) -> tuple[str, str]:
    """An active version (evaluated: promote) and a candidate on a 10% canary (evaluated: reject)."""
    active = finish_run(engine, start_run(engine, method="kto", config={}, base_model="tiny"), adapter_path="/a",
                        metrics={})
    canary = finish_run(engine, start_run(engine, method="dpo", config={}, base_model="tiny"), adapter_path="/b",
                        metrics={})
    record_evaluation(engine, active, None, "promote", {"win_rate": 0.7, "ci_low": 0.6, "ci_high": 0.8})
    record_evaluation(engine, canary, active, "reject", {"win_rate": 0.45, "ci_low": 0.3, "ci_high": 0.6})
    # what promote and a traffic split leave behind (promote also wants the model's files on disk)
    with engine.begin() as conn:
        v = t.model_versions
        conn.execute(update(v).where(v.c.id == active).values(status="active", traffic_share=1.0))
        conn.execute(update(v).where(v.c.id == canary).values(traffic_share=0.1))
    return active, canary


def _ratings(engine: Engine, models: tuple[str, ...]) -> list[dict[str, Any]]:
    """40 answers over two days, each by one of `models`, rated by 8 honest raters (thumbs or stars) and an
    inverter; a few aspect ratings, comments, copies and judge ratings on the side. Returns every rating,
    with its interaction's model and day, for the expected figures."""
    rng = np.random.default_rng(0)
    lines, rows = [], []
    for k in range(40):
        model, day, quality = models[k % len(models)], DAYS[k // 20], rng.standard_normal()
        ratings = []
        for r in range(8):
            y = 0.5 * quality + 0.1 * rng.standard_normal()
            if r % 2:
                ratings.append({"rater_id": f"u{r}", "kind": "thumbs", "value": 1 if y > 0 else -1})
            else:
                ratings.append({"rater_id": f"u{r}", "kind": "stars", "value": int(np.clip(np.rint(3 + 2 * y), 1, 5))})
        ratings.append({"rater_id": "troll", "kind": "stars", "value": int(np.clip(np.rint(3 - quality), 1, 5))})
        if k % 10 == 0:
            ratings += [{"rater_id": "u2", "kind": "aspect", "aspect": "accuracy", "value": 4},
                        {"rater_id": "u3", "kind": "comment", "text": "thanks"},
                        {"rater_id": "u5", "kind": "implicit", "signal": "copy"},
                        {"rater_id": "rm", "source": "judge", "kind": "stars", "value": 1}]
        for n, rating in enumerate(ratings):
            rating["created_at"] = f"{day}T10:{n:02d}:00Z"
            rows.append({**rating, "model": model, "day": day})
        lines.append(orjson.dumps({"id": f"c-{k:02d}", "model": model, "created_at": f"{day}T09:00:00Z",
                                   "messages": [{"role": "user", "content": f"q{k}"}], "response": f"a{k}",
                                   "ratings": ratings}))
    report = import_lines(engine, lines, Limits(), user_key=KEY)
    assert not report.bad, report.bad
    return rows


def _reward(r: dict[str, Any]) -> float:
    """By hand, as signals/normalise.py maps them: thumbs ±1, stars 1..5 -> -1..1."""
    return float(r["value"]) if r["kind"] == "thumbs" else (r["value"] - 3) / 2


@pytest.fixture
def store(db_url: str) -> Iterator[tuple[Engine, list[dict[str, Any]], tuple[str, str]]]:
    engine = open_engine(db_url)
    active, canary = _versions(engine)
    rows = _ratings(engine, ("base", active, canary))
    record_signals(engine)
    yield engine, rows, (active, canary)


def test_figures_match_the_ratings_the_signals_run_and_the_registry(
        store: tuple[Engine, list[dict[str, Any]], tuple[str, str]]) -> None:
    engine, rows, (active, canary) = store
    human = [r for r in rows if r.get("source") != "judge"]

    # ratings per version and day: counts and mean of thumbs and stars (the pool of deliberate ratings)
    over_time = ratings_over_time(engine)
    assert over_time.unit == "day" and over_time.versions == sorted(["base", active, canary])
    expected: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in human:
        if r["kind"] in ("thumbs", "stars", "aspect"):
            expected[(r["model"], r["day"])].append(_reward(r) if r["kind"] != "aspect" else (4 - 3) / 2)
    pooled = {(c.version, c.bucket): c for c in over_time.pooled(None)[ALL]}
    assert set(pooled) == set(expected)
    for key, rewards in expected.items():
        assert pooled[key].n == len(rewards)
        assert pooled[key].mean == pytest.approx(np.mean(rewards))
    by_kind = over_time.pooled("kind")
    assert list(by_kind) == ["thumbs", "stars", "aspect", "comment", "implicit"]  # the store's order; no judge
    assert sum(c.n for c in by_kind["stars"]) == sum(r["kind"] == "stars" for r in human) == 40 * 5
    assert [c.mean for c in by_kind["implicit"]] == [pytest.approx(0.3)] * 4  # a copy's weak reward, per day
    assert all(c.mean is not None and c.mean > 0 for c in by_kind["comment"])  # "thanks": positive sentiment
    assert list(over_time.pooled("aspect")) == ["overall", "accuracy"]

    # the values given, per kind; the judge's 1-star ratings are not among them
    values = {h.kind: h for h in rating_values(engine)}
    assert values["thumbs"].counts == [("-1", sum(r.get("value") == -1 for r in human if r["kind"] == "thumbs")),
                                       ("1", sum(r.get("value") == 1 for r in human if r["kind"] == "thumbs"))]
    stars = Counter(str(r["value"]) for r in human if r["kind"] == "stars")
    assert values["stars"].counts == [(str(s), stars.get(str(s), 0)) for s in range(1, 6)]
    assert values["aspect"].counts == [("1", 0), ("2", 0), ("3", 0), ("4", 4), ("5", 0)]
    assert values["implicit"].counts == [("copy", 4)] and (values["comment"].n, values["comment"].counts) == (4, [])

    # raters: the newest signals run, as stored (nothing refit)
    run = load_signals(engine)
    raters = rater_summary(engine)
    assert raters is not None and raters.run_id == run.run_id
    assert [r.rater_id for r in raters.flagged] == ["troll"] == sorted(run.flagged)
    assert raters.flagged[0].reasons == next(r for r in run.raters if r.rater_id == "troll").reasons
    assert {r.rater_id: r.reliability for r in raters.raters} == {r.rater_id: r.reliability for r in run.raters}

    # versions: newest first, with their evaluations
    versions = {v.id: v for v in version_summary(engine)}
    assert (versions[active].status, versions[active].verdict, versions[active].win_rate) == ("active", "promote", 0.7)
    assert (versions[canary].ci_low, versions[canary].ci_high, versions[canary].traffic_share) == (0.3, 0.6, 0.1)


def test_the_endpoint_wants_the_admin_key_and_answers_plots(settings: Settings, db_url: str) -> None:
    engine = open_engine(db_url)
    active, canary = _versions(engine)
    _ratings(engine, (active, canary))
    record_signals(engine)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/dashboard").status_code == 401
        assert client.get("/v1/dashboard", headers={"Authorization": "Bearer nope"}).status_code == 401
        page = client.get("/dashboard")  # the page holds no data: served to anyone
        assert page.status_code == 200 and "dashboard/dashboard.js" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert client.get("/dashboard/dashboard.js").headers["content-type"].startswith("text/javascript")
        assert client.get("/dashboard/app.py").status_code == 404
        r = client.get("/v1/dashboard", headers=ADMIN)
    assert r.status_code == 200, r.text
    body = r.json()
    # the same figures as the functions give
    assert body["ratings"]["versions"] == sorted([active, canary])
    assert [c["n"] for c in body["ratings"]["all"]] == [c.n for c in ratings_over_time(engine).pooled(None)[ALL]]
    assert [f["rater_id"] for f in body["raters"]["flagged"]] == ["troll"]
    assert body["versions"]["serving"] == {active: pytest.approx(0.9), canary: 0.1}
    # plots: SVG naming the versions that answered (the ratings) and the registry's (the versions)
    svgs = [*body["ratings"]["plots"].values(), body["values"]["plot"], body["raters"]["plot"],
            body["versions"]["plot"]]
    assert all(svg.startswith("<svg") and svg.rstrip().endswith("</svg>") for svg in svgs)
    for svg in (body["ratings"]["plots"]["all"], body["versions"]["plot"]):
        assert active in svg and canary in svg
    assert "troll" in body["raters"]["plot"]


def test_an_empty_store_says_so_in_every_section(settings: Settings) -> None:
    """Also: a server without an admin key, on this machine ("open admin"), lets the page in without one."""
    open_admin = create_app(settings.model_copy(update={"admin_key": None}), open_admin=True)
    with TestClient(open_admin, base_url="http://localhost") as client:
        r = client.get("/v1/dashboard")
    assert r.status_code == 200, r.text
    body = r.json()
    for section in ("ratings", "values", "raters", "versions"):
        assert body[section]["note"] and "plot" not in body[section] and "plots" not in body[section]
    assert "no ratings yet" in body["ratings"]["note"] and "ratingloop signals" in body["raters"]["note"]

    # a comment alone: plotted by kind; no pool of thumbs and stars, no values to count, so no empty plots
    line = {"id": "i1", "messages": [{"role": "user", "content": "q"}], "response": "a",
            "ratings": [{"rater_id": "r1", "kind": "comment", "text": "useless"}]}
    assert not import_lines(open_engine(settings.url), [orjson.dumps(line)], Limits(), user_key=KEY).bad
    with TestClient(open_admin, base_url="http://localhost") as client:
        body = client.get("/v1/dashboard").json()
    assert list(body["ratings"]["plots"]) == ["kind"] and body["ratings"]["all"] == []
    assert body["values"] == {"kinds": [{"kind": "comment", "n": 1, "counts": []}], "plot": None}


def test_hours_for_a_short_span_and_odd_names_stay_text(db_url: str) -> None:
    """Ratings within a day are bucketed by hour; a model never logged, "$" and markup in names are just text."""
    engine = open_engine(db_url)
    lines = [orjson.dumps({"id": f"i{k}", "model": model, "messages": [{"role": "user", "content": "q"}],
                           "response": "a", "ratings": [
                               {"rater_id": "r1", "kind": "thumbs", "value": 1,
                                "created_at": f"2026-11-01T{h:02d}:30:00Z"},
                               {"rater_id": "r2", "kind": "scale", "value": 7, "scale": [1, 7],
                                "created_at": f"2026-11-01T{h:02d}:45:00Z"}]})
             for k, (h, model) in enumerate(((9, None), (9, "a&b <$i$>"), (13, "a&b <$i$>")))]
    assert not import_lines(engine, lines, Limits(), user_key=KEY).bad
    over_time = ratings_over_time(engine)
    assert over_time.unit == "hour"
    assert {(c.version, c.bucket, c.n, c.mean) for c in over_time.pooled(None)[ALL]} == {
        (NOT_LOGGED, "2026-11-01T09:00", 2, 1.0), ("a&b <$i$>", "2026-11-01T09:00", 2, 1.0),
        ("a&b <$i$>", "2026-11-01T13:00", 2, 1.0)}
    assert {h.kind: h.counts for h in rating_values(engine)}["scale"] == [*((str(v), 0) for v in range(1, 7)), ("7", 3)]
    with plots.rendering():
        svg = plots.over_time(over_time.pooled(None), plots.version_colors(over_time.versions))
    assert ">a&amp;b &lt;$i$&gt;</text>" in svg and NOT_LOGGED in svg  # escaped, not read as mathtext


# -- the page in a real browser --------------------------------------------------------------------------------



@pytest.mark.slow
def test_the_page_asks_for_the_key_and_shows_every_plot(sqlite_url: str, tmp_path: Path) -> None:
    sync_playwright = playwright()
    from playwright.sync_api import expect

    engine = open_engine(sqlite_url)
    active, canary = _versions(engine)
    _ratings(engine, ("base", active))
    record_signals(engine)
    with running_server_at(sqlite_url, tmp_path) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(base + "/dashboard")
            expect(page.locator("#login")).to_be_visible()  # the server has a key: the page asks for it
            page.fill("#key", "wrong")
            page.click("#login button[type=submit]")
            expect(page.locator("#login-error")).to_contain_text("not the admin key")
            page.fill("#key", ADMIN_KEY)
            page.click("#login button[type=submit]")
            for section in ("ratings", "values", "raters", "versions"):
                expect(page.locator(f"#{section} figure svg").first).to_be_visible(timeout=30_000)
            expect(page.locator("#login")).to_be_hidden()
            expect(page.locator("#raters tr.flagged td").first).to_have_text("troll")
            expect(page.locator("#versions table")).to_contain_text(canary)
            page.reload()  # the key is kept for the tab: no second prompt
            expect(page.locator("#versions figure svg")).to_be_visible(timeout=30_000)
            assert errors == []
        finally:
            browser.close()
