"""`ratingloop export --format openai [--weighted]` and `--format hf`: the store out to training tools, with the
rewards of a signals run (read, never refitted)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import select
from typer.testing import CliRunner

from build_store import RATERS, line, prompt, store_with
from ratingloop.cli import app
from ratingloop.signals import load_signals
from ratingloop.store import open_engine
from ratingloop.store.exporters import RunRewards
from ratingloop.store.exporters.openai import OpenAIReport, export_openai
from ratingloop.store.tables import Interaction, Rating

runner = CliRunner()

# a two-turn chat (the first answer is the second's context), and two single answers
TURN_1 = line("turn-1", "What is the capital of France?", "London.", 1)
TURN_2 = {**line("turn-2", "x", "Sorry - it is Paris.", 5), "messages": [
    *prompt("What is the capital of France?"), {"role": "assistant", "content": "London."},
    {"role": "user", "content": "Are you sure?"}]}
LINES = [TURN_1, TURN_2, line("good", "Do you ship to Canada?", "Yes, in 5-8 business days.", 5),
         line("bad", "Can two people share one login?", "Sure, share the password.", 1)]


def cli(*args: str) -> Any:
    result = runner.invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


class R:
    def __init__(self, reward: float, n: int = 5) -> None:
        self.reward, self.confidence, self.n_ratings, self.aspects = reward, 0.9, n, {"overall": reward}


def test_openai_rows_are_conversations_and_every_answer_appears_once(sqlite_url: str, tmp_path: Path) -> None:
    store_with(sqlite_url, LINES, signals=False)
    out = tmp_path / "ft.jsonl"
    result = cli("export", "--format", "openai", "--out", str(out), "--db", sqlite_url)
    assert result.exit_code == 0, result.output
    got = rows(out)
    assert len(got) == 3 and "1 answers as earlier turns" in result.stderr  # turn-1 lives inside turn-2's row
    chat = next(r["messages"] for r in got if len(r["messages"]) > 3)
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "user", "assistant"]
    assert chat[-1] == {"role": "assistant", "content": "Sorry - it is Paris."}
    assert not any("weight" in m for r in got for m in r["messages"])  # unweighted: OpenAI trains every turn


def test_weights_are_a_bar_on_the_reward_of_rated_answers(sqlite_url: str) -> None:
    engine = store_with(sqlite_url, LINES, signals=False)
    when = datetime(2026, 11, 2, tzinfo=timezone.utc)
    run = RunRewards("run-1", when, {"turn-1": R(-0.6), "turn-2": R(0.7), "good": R(0.4, n=0), "bad": R(-0.8)})
    report = OpenAIReport()
    got = [json.loads(x) for x in export_openai(engine, run, 0.0, report)]
    # turn-1 is context with its own weight (0), turn-2 is trained (1); "good" is unrated (the content prior's
    # reward only): weight 0, and "bad" weight 0 - rows without a weight-1 message are left out
    assert [[m.get("weight") for m in r["messages"] if m["role"] == "assistant"] for r in got] == [[0, 1]]
    assert (report.rows, report.left_out, report.turns, report.weighted_turns) == (1, 2, 1, 1)
    looser = [json.loads(x) for x in export_openai(engine, run, -0.7)]
    assert [[m.get("weight") for m in r["messages"] if m["role"] == "assistant"] for r in looser] == [[1, 1]]


def test_weighted_export_reads_the_newest_signals_run_and_imports_back_as_thumbs(sqlite_url: str,
                                                                                 tmp_path: Path) -> None:
    engine = store_with(sqlite_url, LINES)
    out = tmp_path / "ft.jsonl"
    result = cli("export", "--format", "openai", "--weighted", "--out", str(out), "--db", sqlite_url)
    assert result.exit_code == 0, result.output
    stored = {s.interaction_id: s.reward for s in load_signals(engine).interactions}
    wanted = {iid for iid, reward in stored.items() if reward > 0}
    assert wanted == {"turn-2", "good"}  # the raters' verdicts, debiased
    by_answer = {m["content"]: m["weight"] for r in rows(out) for m in r["messages"] if m["role"] == "assistant"}
    assert by_answer == {"London.": 0, "Sorry - it is Paris.": 1, "Yes, in 5-8 business days.": 1}
    again = f"sqlite:///{tmp_path / 'again.db'}"
    assert cli("import", "--format", "openai", str(out), "--db", again).exit_code == 0
    with open_engine(again).connect() as conn:
        thumbs = dict(conn.execute(select(Interaction.response, Rating.value).join(
            Rating, Rating.interaction_id == Interaction.id)).all())
    assert thumbs == {"London.": -1.0, "Sorry - it is Paris.": 1.0, "Yes, in 5-8 business days.": 1.0}


def test_hf_dataset_carries_the_runs_rewards_confidence_and_raters(sqlite_url: str, tmp_path: Path) -> None:
    import datasets

    engine = store_with(sqlite_url, LINES)
    late = tmp_path / "late.jsonl"  # arrives after the run: no reward yet
    late.write_text(json.dumps({"id": "late", "messages": prompt("Hi"), "response": "Hello!"}) + "\n")
    assert cli("import", str(late), "--db", sqlite_url).exit_code == 0
    out = tmp_path / "hf"
    result = cli("export", "--format", "hf", "--out", str(out), "--db", sqlite_url)
    assert result.exit_code == 0, result.output
    ds = datasets.load_from_disk(str(out))
    run = load_signals(engine)
    assert run.run_id in ds.info.description and "1 the run has no reward for" in " ".join(result.stderr.split())
    by_id = {r["interaction_id"]: r for r in ds}
    assert set(by_id) == {"turn-1", "turn-2", "good", "bad", "late"}
    for s in run.interactions:
        row = by_id[s.interaction_id]
        assert (row["reward"], row["confidence"], row["n_ratings"]) == (s.reward, s.confidence, s.n_ratings)
        assert row["n_raters"] == len(RATERS) and row["aspects"]["overall"] == s.aspects["overall"]
    assert by_id["late"]["reward"] is None and by_id["late"]["n_raters"] is None
    assert by_id["turn-2"]["messages"][2] == {"role": "assistant", "content": "London."}


def test_export_options_are_checked(sqlite_url: str) -> None:
    store_with(sqlite_url, LINES, signals=False)
    for args, reason in ((["--format", "sft"], "one of raw, openai, hf"),
                         (["--format", "raw", "--weighted"], "--weighted is for --format openai"),
                         (["--format", "hf"], "give it with --out DIR"),
                         (["--format", "openai", "--weighted"], "no signals run in this store")):
        result = runner.invoke(app, ["export", *args, "--db", sqlite_url])
        assert result.exit_code == 1 and reason in str(result.exception), (args, result.exception)
