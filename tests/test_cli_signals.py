"""`ratingloop signals` (records a run) and `ratingloop raters` (shows one) on the example file, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from ratingloop.cli import app

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "support-chat.jsonl"


def test_signals_and_raters_on_the_example_store(sqlite_url: str, tmp_path: Path) -> None:
    assert runner.invoke(app, ["import", str(EXAMPLES), "--db", sqlite_url]).exit_code == 0
    out = tmp_path / "signals.jsonl"
    result = runner.invoke(app, ["signals", "--out", str(out), "--db", sqlite_url])
    assert result.exit_code == 0, result.output
    run_id = result.stdout.split()[2].rstrip(":")
    assert result.stdout.startswith(f"signals run {run_id}: 48 rated + 0 unrated interactions")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 48  # every example interaction is rated
    for row in rows:
        assert set(row) == {"interaction_id", "reward", "confidence", "n_ratings", "aspects"}
        assert -1 <= row["reward"] <= 1 and 0 <= row["confidence"] <= 1 and row["n_ratings"] >= 1
    # the example pairs a good and a poor answer to each question (odd ids good, even ids poor)
    by_id = {r["interaction_id"]: r["reward"] for r in rows}
    good = [by_id[f"chat-{n:03d}"] for n in range(1, 49, 2)]
    poor = [by_id[f"chat-{n:03d}"] for n in range(2, 49, 2)]
    assert sum(g > p for g, p in zip(good, poor, strict=True)) >= 22

    result = runner.invoke(app, ["raters", "--json", "--db", sqlite_url])
    assert result.exit_code == 0, result.output
    raters = json.loads(result.stdout)
    assert {r["rater_id"] for r in raters} >= {"ann-maria", "ann-kofi"}
    assert all({"rater_id", "n", "bias", "scale", "reliability", "flagged", "reasons"} <= set(r) for r in raters)
    assert sum(r["n"] for r in raters) > 0

    # a second run without --out: recorded, and `raters` shows the newest unless asked for another
    again = runner.invoke(app, ["signals", "--db", sqlite_url])
    assert again.exit_code == 0 and "->" not in again.stdout
    second = again.stdout.split()[2].rstrip(":")
    assert second != run_id
    shown = runner.invoke(app, ["raters", "--db", sqlite_url])
    assert shown.exit_code == 0 and f"signals run {second}" in shown.stderr and "ann-maria" in shown.stdout
    older = runner.invoke(app, ["raters", "--run", run_id, "--json", "--db", sqlite_url])
    assert json.loads(older.stdout) == raters
    missing = runner.invoke(app, ["raters", "--run", "nope", "--db", sqlite_url])
    assert missing.exit_code != 0 and "'nope' is not in this store" in str(missing.exception)


def test_signals_on_an_empty_store_says_so_and_fails(sqlite_url: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["signals", "--out", str(tmp_path / "s.jsonl"), "--db", sqlite_url])
    assert result.exit_code != 0
    assert "no ratings" in str(result.exception) + result.output
    result = runner.invoke(app, ["raters", "--db", sqlite_url])
    assert result.exit_code != 0 and "run `ratingloop signals` first" in str(result.exception)


def test_signals_reads_its_settings_from_a_file_and_set(sqlite_url: str, tmp_path: Path) -> None:
    assert runner.invoke(app, ["import", str(EXAMPLES), "--db", sqlite_url]).exit_code == 0
    config = tmp_path / "ratingloop.toml"
    config.write_text("[signals]\nmin_ratings = 1000\n")
    result = runner.invoke(app, ["signals", "--config", str(config), "--db", sqlite_url])
    assert result.exit_code != 0 and "needs at least 1000" in str(result.exception)
    result = runner.invoke(app, ["signals", "--config", str(config), "--set", "signals.min_ratings=3",
                                 "--db", sqlite_url])
    assert result.exit_code == 0, result.output
    unknown = runner.invoke(app, ["signals", "--set", "signals.zz=1", "--db", sqlite_url])
    assert unknown.exit_code != 0 and "signals.zz: unknown key" in str(unknown.exception)
