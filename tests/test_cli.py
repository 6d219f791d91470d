"""The `ratingloop` command: import, export, stats, db upgrade, users delete; on both databases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from ratingloop.cli import app
from ratingloop.store import open_engine
from ratingloop.store.db import current_revision, head_revision
from ratingloop.store.tables import Interaction, Rating

runner = CliRunner()

LINES: list[dict[str, Any]] = [
    {"id": "c-1", "messages": [{"role": "user", "content": "When is my refund due?"}], "response": "On the 3rd.",
     "user_id": "u1", "model": "base", "created_at": "2026-11-01T10:00:00Z", "tags": {"area": "billing"},
     "ratings": [{"rater_id": "u1", "kind": "thumbs", "value": 1},
                 {"rater_id": "u7", "kind": "stars", "value": 4, "scale": [1, 5]},
                 {"rater_id": "u7", "kind": "aspect", "aspect": "accuracy", "value": 2, "scale": [1, 5]},
                 {"rater_id": "u1", "kind": "comment", "text": "wrong refund date"}]},
    {"id": "c-2", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi ✓"}],
     "response": "Hello — how can I help?", "user_id": "u2", "created_at": "2026-11-01T11:00:00Z",
     "conversation_id": "conv-9", "latency_ms": 812.5, "prompt_tokens": 12, "completion_tokens": 7,
     "product": "chat",  # unknown field: kept in tags
     "ratings": [{"rater_id": "u2", "kind": "scale", "value": 5.5, "scale": [1, 7],
                  "created_at": "2026-11-01T11:05:00Z"},
                 {"rater_id": "u1", "kind": "implicit", "signal": "copy"},
                 {"rater_id": "u2", "kind": "correction", "text": "Hi! What do you need?"}]},
    {"messages": [{"role": "user", "content": "no id, no time"}], "response": "ok", "user_id": "u3",
     "ratings": [{"kind": "thumbs", "value": "down"}]},
]


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)) + "\n"
                            for line in lines), encoding="utf-8")
    return path


def cli(*args: str) -> Any:
    result = runner.invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def stats(url: str) -> dict[str, Any]:
    result = cli("stats", "--json", "--db", url)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def count(url: str, table: Any, where: Any = None) -> int:
    query = select(func.count()).select_from(table.__table__)
    with open_engine(url).connect() as conn:
        return conn.execute(query if where is None else query.where(where)).scalar_one()




# -- import ---------------------------------------------------------------------------------------------------

def test_import_stores_good_lines_and_reports_every_bad_one(db_url: str, tmp_path: Path) -> None:
    bad_rating = {**LINES[0], "id": "c-bad", "ratings": [{"rater_id": "u1", "kind": "thumbs", "value": 1},
                                                         {"rater_id": "u1", "kind": "stars", "value": 9}]}
    bad_kind = {**LINES[0], "id": "c-bad2", "ratings": [{"kind": "aspect", "value": 3}]}
    f = write_jsonl(tmp_path / "in.jsonl", [
        LINES[0],                      # 1 good
        '{"id": "c-broken", ',         # 2 not JSON
        bad_rating,                    # 3 ratings[1].value
        "",                            # 4 blank: skipped, not an error
        LINES[1],                      # 5 good
        "[1, 2]",                      # 6 not an object
        {"id": "c-x", "response": "no messages"},  # 7 missing field
        bad_kind,                      # 8 ratings[0].aspect
        LINES[2],                      # 9 good
    ])
    result = cli("import", str(f), "--db", db_url)
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("line ")]
    assert [e.split(":")[0] for e in errors] == ["line 2", "line 3", "line 6", "line 7", "line 8"]
    assert "line 3: ratings[1].value: 9 is outside the scale [1, 5]" in result.stderr
    assert "line 7: messages: Field required" in result.stderr
    assert "line 8: ratings[0].aspect" in result.stderr
    assert "9 lines: 3 new interactions" in result.stdout and "8 new ratings" in result.stdout
    assert "5 bad lines" in result.stdout
    s = stats(db_url)
    assert (s["interactions"], s["ratings"]) == (3, 8)
    with open_engine(db_url).connect() as conn:
        ids = set(conn.execute(select(Interaction.id)).scalars())
    assert {"c-1", "c-2"} <= ids and not ids & {"c-bad", "c-bad2", "c-broken", "c-x"}
    assert count(db_url, Rating, Rating.interaction_id == "c-bad") == 0  # its good thumbs did not land either


def test_import_json_report(db_url: str, tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "in.jsonl", [LINES[0], "{oops", LINES[1]])
    result = cli("import", str(f), "--db", db_url, "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["lines"] == 3 and report["interactions_new"] == 2 and report["ratings_new"] == 7
    assert [b["line"] for b in report["bad_lines"]] == [2]
    assert report["bad_lines"][0]["errors"][0]["field"] == "line"


def test_all_good_import_exits_0_and_importing_twice_adds_nothing(db_url: str, tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "in.jsonl", LINES)
    first = cli("import", str(f), "--db", db_url, "--json")
    assert first.exit_code == 0, first.output
    r1 = json.loads(first.stdout)
    assert (r1["interactions_new"], r1["ratings_new"], r1["bad_lines"]) == (3, 8, [])
    before = stats(db_url)
    second = cli("import", str(f), "--db", db_url, "--json")
    assert second.exit_code == 0, second.output
    r2 = json.loads(second.stdout)
    assert (r2["interactions_new"], r2["ratings_new"]) == (0, 0)
    assert (r2["interactions_existing"], r2["ratings_existing"]) == (3, 8)
    after = stats(db_url)
    assert (after["interactions"], after["ratings"], after["raters"]) == (
        before["interactions"], before["ratings"], before["raters"]) == (3, 8, 4)


def test_unknown_fields_end_up_in_tags(db_url: str, tmp_path: Path) -> None:
    cli("import", str(write_jsonl(tmp_path / "in.jsonl", LINES)), "--db", db_url)
    with open_engine(db_url).connect() as conn:
        tags = conn.execute(select(Interaction.tags).where(Interaction.id == "c-2")).scalar_one()
    assert tags == {"product": "chat"}


VOTES: list[dict[str, Any]] = [
    {"id": "v-1", "messages": [{"role": "user", "content": "Is A better?"}], "response": "Yes.", "user_id": "asker",
     "created_at": "2026-11-01T10:00:00Z",
     "ratings": [{"kind": "thumbs", "value": 1}, {"kind": "thumbs", "value": 1}, {"kind": "thumbs", "value": -1},
                 {"kind": "thumbs", "value": 1}, {"rater_id": "r1", "kind": "thumbs", "value": 1},
                 {"kind": "thumbs", "value": -1, "idempotency_key": "own-key"}]},
    {"id": "v-2", "messages": [{"role": "user", "content": "And B?"}], "response": "No.",
     "created_at": "2026-11-01T10:01:00Z", "ratings": [{"kind": "stars", "value": 4}]},
]


def rater_counts(url: str) -> dict[str, int]:
    with open_engine(url).connect() as conn:
        return dict(conn.execute(select(Rating.rater_id, func.count()).group_by(Rating.rater_id)).all())


def test_identical_votes_without_rater_or_key_are_reported_where_they_collapse(db_url: str, tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "votes.jsonl", VOTES)
    result = cli("import", str(f), "--db", db_url)
    assert result.exit_code == 0, result.output  # a warning, not a bad line
    assert result.stderr.count("warning") == 1
    assert ("line 1: warning: 2 of its 6 ratings repeat another rating on the line exactly (no rater_id, no "
            "idempotency_key) and were stored once") in " ".join(result.stderr.split())
    assert "--votes-are-distinct" in result.stderr
    # three identical thumbs up were one rating of the asker; the thumbs down, r1's and the keyed one stayed apart
    assert rater_counts(db_url) == {"asker": 3, "r1": 1, "anon:v-2": 1}
    report = json.loads(cli("import", str(f), "--db", fresh_db(tmp_path, "again"), "--json").stdout)
    assert report["collapsed"] == [{"line": 1, "ratings": 2, "of": 6}]
    assert (report["ratings_new"], report["ratings_existing"]) == (5, 2)


def fresh_db(tmp_path: Path, name: str) -> str:
    return f"sqlite:///{tmp_path / (name + '.db')}"


def test_votes_are_distinct_gives_each_unattributed_vote_its_own_anonymous_rater(db_url: str, tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "votes.jsonl", VOTES)
    result = cli("import", str(f), "--db", db_url, "--votes-are-distinct", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["ratings_new"], report["ratings_existing"], report["collapsed"]) == (7, 0, [])
    assert rater_counts(db_url) == {"anon:v-1#0": 1, "anon:v-1#1": 1, "anon:v-1#2": 1, "anon:v-1#3": 1, "r1": 1,
                                    "anon:v-1#5": 1, "anon:v-2#0": 1}
    assert stats(db_url)["raters"] == 7
    # deterministic: the same file again adds nothing, and its export round-trips
    again = json.loads(cli("import", str(f), "--db", db_url, "--votes-are-distinct", "--json").stdout)
    assert (again["ratings_new"], again["ratings_existing"]) == (0, 7)
    exported = tmp_path / "out.jsonl"
    assert cli("export", "--out", str(exported), "--db", db_url).exit_code == 0
    back = json.loads(cli("import", str(exported), "--db", fresh_db(tmp_path, "back"), "--json").stdout)
    assert (back["ratings_new"], back["collapsed"]) == (7, [])
    assert rater_counts(fresh_db(tmp_path, "back")) == rater_counts(db_url)


def test_an_anonymous_rater_id_fits_the_column_whatever_the_interactions_id(db_url: str, tmp_path: Path) -> None:
    line = {**VOTES[1], "id": "x" * 200, "ratings": [{"kind": "thumbs", "value": 1}, {"kind": "thumbs", "value": 1}]}
    f = write_jsonl(tmp_path / "long.jsonl", [line])
    assert cli("import", str(f), "--db", db_url).exit_code == 0
    assert cli("import", str(f), "--db", db_url, "--votes-are-distinct").exit_code == 0
    raters = rater_counts(db_url)
    assert len(raters) == 3 and all(len(r) <= 200 and r.startswith("anon:") for r in raters)


def test_import_missing_file_is_an_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "ratingloop.cli", "import", str(tmp_path / "nope.jsonl"),
                           "--db", f"sqlite:///{tmp_path / 's.db'}"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "no such file" in proc.stderr


# -- export -------------------------------------------------------------------------------------------------------

def test_export_import_export_is_byte_identical(db_url: str, other_url: str, tmp_path: Path) -> None:
    assert cli("import", str(write_jsonl(tmp_path / "in.jsonl", LINES)), "--db", db_url).exit_code == 0
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    assert cli("export", "--format", "raw", "--out", str(first), "--db", db_url).exit_code == 0
    imported = cli("import", str(first), "--db", other_url, "--json")
    assert imported.exit_code == 0, imported.output
    assert json.loads(imported.stdout)["ratings_new"] == 8
    assert cli("export", "--format", "raw", "--out", str(second), "--db", other_url).exit_code == 0
    assert first.read_bytes() == second.read_bytes()
    exported = [json.loads(line) for line in first.read_text().splitlines()]
    assert len(exported) == 3 and sum(len(x["ratings"]) for x in exported) == 8
    # the export carries what was imported
    c1 = next(x for x in exported if x["id"] == "c-1")
    assert c1["tags"] == {"area": "billing"} and c1["created_at"] == "2026-11-01T10:00:00Z"
    assert {(r["rater_id"], r["kind"], r.get("value")) for r in c1["ratings"]} == {
        ("u1", "thumbs", 1), ("u7", "stars", 4), ("u7", "aspect", 2), ("u1", "comment", None)}
    c2 = next(x for x in exported if x["id"] == "c-2")
    assert c2["latency_ms"] == 812.5 and c2["conversation_id"] == "conv-9"
    assert next(r for r in c2["ratings"] if r["kind"] == "scale")["value"] == 5.5
    # and importing the export back into the source adds nothing
    back = json.loads(cli("import", str(first), "--db", db_url, "--json").stdout)
    assert (back["interactions_new"], back["ratings_new"]) == (0, 0)


def test_export_to_stdout(sqlite_url: str, tmp_path: Path) -> None:
    cli("import", str(write_jsonl(tmp_path / "in.jsonl", LINES[:2])), "--db", sqlite_url)
    result = cli("export", "--db", sqlite_url)
    assert result.exit_code == 0
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == ["c-1", "c-2"]


def test_export_unknown_format_is_refused(sqlite_url: str) -> None:
    result = runner.invoke(app, ["export", "--format", "sft", "--db", sqlite_url])
    assert result.exit_code == 1 and "one of raw, openai, hf" in str(result.exception)


# -- stats, db upgrade -------------------------------------------------------------------------------------------

def test_stats_json_has_designs_fields(db_url: str, tmp_path: Path) -> None:
    empty = stats(db_url)
    assert {k: empty[k] for k in ("interactions", "ratings", "raters", "ratings_by_kind", "versions")} == {
        "interactions": 0, "ratings": 0, "raters": 0, "ratings_by_kind": {}, "versions": 0}
    cli("import", str(write_jsonl(tmp_path / "in.jsonl", LINES)), "--db", db_url)
    s = stats(db_url)
    assert s["interactions"] == 3
    assert s["ratings"] == 8 and isinstance(s["ratings"], int)
    assert s["raters"] == 4  # u1, u2, u3 (the asker of line 3), u7
    assert s["ratings_by_kind"] == {"aspect": 1, "comment": 1, "correction": 1, "implicit": 1, "scale": 1,
                                    "stars": 1, "thumbs": 2}
    assert s["versions"] == 0
    table = cli("stats", "--db", db_url)
    assert table.exit_code == 0 and "interactions" in table.stdout and "ratings: thumbs" in table.stdout


def test_db_upgrade(db_url: str) -> None:
    result = cli("db", "upgrade", "--db", db_url)
    assert result.exit_code == 0
    head = head_revision()
    assert head and f"database at revision {head}" in result.stdout
    from ratingloop.store.db import new_engine

    engine = new_engine(db_url)
    try:
        assert current_revision(engine) == head
    finally:
        engine.dispose()
    assert cli("db", "upgrade", "--db", db_url).exit_code == 0  # a second run is a no-op


# -- users delete --------------------------------------------------------------------------------------------------

def test_users_delete_needs_yes_and_keeps_them_out(db_url: str, tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "in.jsonl", LINES)
    assert cli("import", str(f), "--db", db_url).exit_code == 0
    before = stats(db_url)

    dry = cli("users", "delete", "u1", "--db", db_url)
    assert dry.exit_code != 0
    assert "would delete user 'u1': 1 interactions" in dry.stderr and "Re-run with --yes" in dry.stderr
    assert stats(db_url) == before

    done = cli("users", "delete", "u1", "--yes", "--db", db_url)
    assert done.exit_code == 0, done.output
    # c-1 with its 4 ratings, plus u1's implicit copy on c-2
    assert "deleted user 'u1': 1 interactions, 5 ratings" in done.stdout
    after = stats(db_url)
    assert (after["interactions"], after["ratings"], after["deleted_users"]) == (2, 3, 1)
    assert count(db_url, Rating, Rating.rater_id == "u1") == 0

    again = cli("import", str(f), "--db", db_url, "--json")
    report = json.loads(again.stdout)
    assert again.exit_code == 0  # a deleted user's lines are skipped, not bad
    assert report["skipped_deleted"] == 2  # line 1 (u1's interaction) and line 2 (u1's rating in it)
    assert report["bad_lines"] == [] and report["interactions_new"] == 0 and report["ratings_new"] == 0
    assert stats(db_url)["interactions"] == 2 and stats(db_url)["ratings"] == 3
    assert count(db_url, Interaction, Interaction.user_id == "u1") == 0
    assert count(db_url, Rating, Rating.rater_id == "u1") == 0
    text_report = cli("import", str(f), "--db", db_url)
    assert "2 lines of deleted users skipped" in text_report.stdout


# -- the command itself ------------------------------------------------------------------------------------------------

def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "import", "export", "stats", "db", "users"):
        assert command in result.stdout
    proc = subprocess.run([sys.executable, "-m", "ratingloop.cli", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "import" in proc.stdout and "stats" in proc.stdout
    for sub in (["import", "--help"], ["users", "delete", "--help"], ["stats", "--help"]):
        r = runner.invoke(app, sub)
        assert r.exit_code == 0 and "--db" in r.stdout


def test_importing_the_cli_does_not_import_torch() -> None:
    code = ("import sys, ratingloop.cli; "
            "heavy = sorted(m for m in ('torch', 'transformers', 'trl', 'peft') if m in sys.modules); "
            "print(','.join(heavy)); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ})
    assert proc.returncode == 0, f"importing ratingloop.cli pulled in: {proc.stdout.strip()} {proc.stderr}"


@pytest.mark.postgres
def test_export_is_byte_identical_across_databases(sqlite_url: str, pg_url: str, tmp_path: Path) -> None:
    """SQLite keeps JSON keys as sent, PostgreSQL's JSONB reorders them: the export must not care."""
    lines = [{**LINES[0], "tags": {"product": "chat", "area": "billing", "nested": {"z": 1, "a": [{"y": 2, "b": 3}]}},
              "messages": [{"content": "Hi", "role": "user", "name": "x"}]}, LINES[1]]
    assert cli("import", str(write_jsonl(tmp_path / "in.jsonl", lines)), "--db", sqlite_url).exit_code == 0
    from_sqlite, from_pg, back = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    cli("export", "--out", str(from_sqlite), "--db", sqlite_url)
    assert cli("import", str(from_sqlite), "--db", pg_url).exit_code == 0
    cli("export", "--out", str(from_pg), "--db", pg_url)
    assert from_sqlite.read_bytes() == from_pg.read_bytes()
    fresh = f"sqlite:///{tmp_path / 'again.db'}"
    assert cli("import", str(from_pg), "--db", fresh).exit_code == 0
    cli("export", "--out", str(back), "--db", fresh)
    assert back.read_bytes() == from_pg.read_bytes()
    assert json.loads(from_pg.read_text().splitlines()[0])["tags"]["nested"] == {"z": 1, "a": [{"y": 2, "b": 3}]}
