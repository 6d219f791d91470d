"""`ratingloop show INTERACTION` and `ratingloop raters --summary / --top N` on a store whose answers are clear:
every rating of an interaction with what the signals run made of it (counted, superseded, a flagged rater's,
after the run, a comparison stored under the other answer), the reward as the run recorded it, and the raters
at a glance. Real stores on SQLite and PostgreSQL, imported as users do."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import orjson
from sqlalchemy import Engine
from typer.testing import CliRunner

from ratingloop.cli import app
from ratingloop.signals import (
    SignalsConfig,
    explain,
    histogram_lines,
    load_signals,
    record_signals,
    summarise,
    top_raters,
)
from ratingloop.signals.normalise import ImplicitRewards
from ratingloop.store import Limits, open_engine
from ratingloop.store.jsonl import import_lines

KEY = b"test-user-key"
HONEST = ["h1", "h2", "h3", "h4"]
runner = CliRunner()


def stars(rater: str, value: int, when: str = "2026-11-01T10:00:00Z", rid: str | None = None) -> dict[str, Any]:
    return {"rater_id": rater, "kind": "stars", "value": value, "scale": [1, 5], "created_at": when,
            **({"id": rid} if rid else {})}


def line(iid: str, prompt: str, good: bool, ratings: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"id": iid, "messages": [{"role": "user", "content": prompt}],
                         "response": f"{'a good' if good else 'a poor'} answer to {prompt}", "user_id": "asker",
                         "created_at": "2026-11-01T09:00:00Z", "ratings": ratings})


def store(url: str) -> Engine:
    """Twelve prompts with a good and a poor answer each: four honest raters give 5 or 1 stars (h4 one star
    milder), `troll` the opposite (flagged as an inverter). On q0's good answer `h1` first gave 2 stars and
    changed them to 5 later (superseded); `h2` compared it with the poor one, on the poor one's line."""
    lines = []
    for p in range(12):
        for good in (True, False):
            iid = f"q{p}-{'good' if good else 'poor'}"
            ratings = [stars(r, (5 if good else 1) - (r == "h4") * (1 if good else -1), rid=f"{iid}-{r}")
                       for r in HONEST] + [stars("troll", 1 if good else 5, rid=f"{iid}-troll")]
            if iid == "q0-good":
                ratings.insert(0, stars("h1", 2, "2026-11-01T08:00:00Z", rid="q0-good-h1-early"))
            if iid == "q0-poor":
                ratings.append({"id": "q0-cmp", "rater_id": "h2", "kind": "preference",
                                "other_interaction_id": "q0-good", "value": "b", "created_at": "2026-11-01T10:05:00Z"})
            lines.append(line(iid, f"question {p}", good, ratings))
    engine = open_engine(url)
    report = import_lines(engine, lines, Limits(), user_key=KEY)
    assert not report.bad, report.bad
    return engine


def test_show_lists_every_rating_with_what_the_run_made_of_it(db_url: str) -> None:
    engine = store(db_url)
    run = record_signals(engine)
    # a rating arriving after the run: stored, not in the run
    late = line("q0-good", "question 0", True, [stars("h3", 4, "2026-11-02T10:00:00Z", rid="q0-good-late")])
    assert import_lines(engine, [late], Limits(), user_key=KEY).ratings_new == 1

    x = explain(engine, "q0-good")
    status = {r.rating["id"]: r.status for r in x.ratings}
    assert status == {"q0-good-h1-early": "superseded", **{f"q0-good-{r}": "counted" for r in HONEST},
                      "q0-good-troll": "rater flagged", "q0-cmp": "counted", "q0-good-late": "after the run"}
    assert [r.rating["id"] for r in x.ratings][:1] == ["q0-good-h1-early"]  # oldest first
    by_id = {r.rating["id"]: r for r in x.ratings}
    assert by_id["q0-good-h1-early"].superseded and not by_id["q0-good-h1"].superseded
    # h3's late rating replaces their counted one in the store; the run, older, still counted it
    assert by_id["q0-good-h3"].superseded and by_id["q0-good-h3"].status == "counted"
    cmp = by_id["q0-cmp"]
    assert cmp.rating["interaction_id"] == "q0-poor" and cmp.says == "preferred over q0-poor" and cmp.reward is None
    assert (by_id["q0-good-h1"].says, by_id["q0-good-h1"].reward) == ("5 stars (1-5)", 1.0)
    assert (by_id["q0-good-h4"].says, by_id["q0-good-h4"].reward) == ("4 stars (1-5)", 0.5)

    # the reward and the raters' estimates are the run's, as recorded
    stored = load_signals(engine)
    assert stored.run_id == run.run_id == x.run["run_id"]  # type: ignore[index]
    mine = next(s for s in stored.interactions if s.interaction_id == "q0-good")
    assert x.signal == mine and mine.reward > 0.5
    raters = {r.rater_id: r for r in stored.raters}
    assert all(r.rater == raters[r.rating["rater_id"]] for r in x.ratings)
    assert raters["troll"].flagged and by_id["q0-good-troll"].rater.flagged  # type: ignore[union-attr]
    assert x.content_prior is None
    notes = " | ".join(x.notes)
    assert f"reward {mine.reward:+.2f}" in notes and "from the 5 rating(s) of it the run counted" in notes
    assert "left out: troll's rating(s), a flagged rater (inverter" in notes
    assert "2 superseded rating(s)" in notes and "1 rating(s) arrived after the run" in notes
    assert "1 counted comparison(s)" in notes and "content prior off" in notes

    # the poor answer: the same comparison, from its side
    poor = explain(engine, "q0-poor")
    assert next(r.says for r in poor.ratings if r.rating["id"] == "q0-cmp") == "lost to q0-good"


def test_show_prints_the_conversation_and_json_and_refuses_an_unknown_id(sqlite_url: str) -> None:
    engine = store(sqlite_url)
    run = record_signals(engine)
    result = runner.invoke(app, ["show", "q3-poor", "--db", sqlite_url])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "interaction q3-poor" in text and "user: question 3" in text
    assert "answer: a poor answer to question 3" in text
    assert "\n5 rating(s)" in text  # four honest raters and the troll
    assert text.count("\n  counted ") == 4 and "\n  rater flagged " in text and "troll: 5 stars (1-5) = +1.00" in text
    reward = next(s.reward for s in run.interactions if s.interaction_id == "q3-poor")
    assert f"reward {reward:+.3f}" in text

    data = json.loads(runner.invoke(app, ["show", "q3-poor", "--json", "--db", sqlite_url]).stdout)
    assert data["interaction"]["id"] == "q3-poor" and data["interaction"]["messages"][0]["content"] == "question 3"
    assert data["signals"]["run_id"] == run.run_id and data["signals"]["reward"] == reward
    assert {r["rater_id"]: r["status"] for r in data["ratings"]} == {**dict.fromkeys(HONEST, "counted"),
                                                                     "troll": "rater flagged"}
    assert all(r["rater"]["rater_id"] == r["rater_id"] for r in data["ratings"])

    # an unknown id: said so, exit 1 (through the real entry point, which turns errors into messages)
    proc = subprocess.run([sys.executable, "-m", "ratingloop.cli", "show", "nope", "--db", sqlite_url],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "interaction 'nope' is not in this store" in proc.stderr


def test_show_without_a_signals_run_shows_the_ratings_and_says_how_to_get_a_reward(sqlite_url: str) -> None:
    store(sqlite_url)
    data = json.loads(runner.invoke(app, ["show", "q1-good", "--json", "--db", sqlite_url]).stdout)
    assert data["signals"] is None and {r["status"] for r in data["ratings"]} == {"no run"}
    assert len(data["ratings"]) == 5 and "`ratingloop signals`" in data["notes"][0]


def test_raters_summary_counts_spreads_and_names_the_flagged(db_url: str) -> None:
    engine = store(db_url)
    run = record_signals(engine)
    s = summarise(run)
    assert s.raters == 5 and s.ratings == sum(r.n for r in run.raters) == 5 * 24 + 1 and s.well_observed == 5
    assert [r.rater_id for r in s.flagged] == ["troll"] and s.flagged_by_kind == {"inverter": 1}
    biases = sorted(r.bias for r in run.raters)
    assert (s.bias.quantiles["0%"], s.bias.quantiles["100%"]) == (round(biases[0], 4), round(biases[-1], 4))
    for d in (s.bias, s.scale, s.reliability, s.n):
        assert sum(d.counts) == 5 and len(d.edges) == len(d.counts) + 1
    troll = next(r for r in run.raters if r.rater_id == "troll")
    assert troll.scale < 0 and s.scale.counts[0] + s.scale.counts[1] >= 1  # the inverter's scale is below 0
    lines = histogram_lines(s.reliability)
    assert len(lines) == 10 and sum(int(x.split()[-1]) for x in lines) == 5

    top = top_raters(run, 2)
    assert [r.n for r in top] == sorted((r.n for r in run.raters), reverse=True)[:2]
    assert top == sorted(run.raters, key=lambda r: (-r.n, r.rater_id))[:2]


def test_raters_summary_and_top_through_the_cli(sqlite_url: str) -> None:
    engine = store(sqlite_url)
    run = record_signals(engine)
    result = runner.invoke(app, ["raters", "--summary", "--db", sqlite_url])
    assert result.exit_code == 0, result.output
    assert "5 raters (5 with 5+ ratings)" in result.stdout and "1 flagged (1 inverter)" in result.stdout
    assert "bias (lenient > 0 > harsh), raters per bin:" in result.stdout and "troll (" in result.stdout
    assert "│" not in result.stdout  # no per-rater table without --top

    data = json.loads(runner.invoke(app, ["raters", "--summary", "--top", "3", "--json", "--db", sqlite_url]).stdout)
    assert data["run_id"] == run.run_id and data["raters"] == 5 and data["flagged"][0]["rater_id"] == "troll"
    assert [r["rater_id"] for r in data["top"]] == [r.rater_id for r in top_raters(run, 3)]
    top = json.loads(runner.invoke(app, ["raters", "--top", "2", "--json", "--db", sqlite_url]).stdout)
    assert [r["rater_id"] for r in top] == [r.rater_id for r in top_raters(run, 2)]
    table = runner.invoke(app, ["raters", "--top", "1", "--db", sqlite_url]).stdout
    assert "the 1 raters with the most ratings" in table and top[0]["rater_id"] in table


def test_show_values_an_implicit_signal_as_the_run_did(sqlite_url: str) -> None:
    engine = store(sqlite_url)
    copy = line("q1-good", "question 1", True, [{"rater_id": "asker", "kind": "implicit", "signal": "copy",
                                                 "id": "q1-copy", "created_at": "2026-11-01T10:00:00Z"}])
    assert import_lines(engine, [copy], Limits(), user_key=KEY).ratings_new == 1
    record_signals(engine, SignalsConfig(implicit=ImplicitRewards(copy=0.9)))
    shown = next(r for r in explain(engine, "q1-good").ratings if r.rating["id"] == "q1-copy")
    assert (shown.says, shown.reward, shown.status) == ("implicit: copy", 0.9, "counted")
