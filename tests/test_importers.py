"""`ratingloop import --format F`: other tools' exports into the store, through the import path of raw JSONL.

The real samples are read where they are (../shared/data, see its README; never copied here): OASST trees,
Anthropic HH pairs, PandaLM's three-annotator pairs. The tools whose exports are private data have small
samples in tests/data/, each written to the tool's documented shape:

  openai-finetune.jsonl     OpenAI's chat fine-tuning format (platform docs, "supervised fine-tuning"): messages,
                            an assistant message's `weight` 0/1
  langfuse-export/          Langfuse's blob-storage export in its enriched-observations mode: observations_v2/
                            and scores/ files, fields as the "Blob Storage Export Field Reference" lists them
  langsmith-runs.jsonl      LangSmith runs and feedback as langsmith-sdk's schemas.Run / schemas.Feedback
                            serialise (one feedback embedded in its run, the others on their own lines)
  openwebui-feedback.json   Open WebUI's feedback export: FeedbackModel rows (backend/open_webui/models/
                            feedbacks.py) whose data and meta the chat page builds (ResponseMessage.svelte)
"""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from ratingloop.cli import app
from ratingloop.store import load_comparisons, open_engine
from ratingloop.store.importers import hh
from ratingloop.store.tables import Interaction, Rating

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HH = SHARED / "hh-rlhf_harmless-base_test.jsonl.gz"
PANDALM = SHARED / "pandalm_testset-v1.json"
OASST = SHARED / "oasst_en_100_tree.jsonl"
DATA = Path(__file__).parent / "data"
SAMPLES = {"openai": DATA / "openai-finetune.jsonl", "langfuse": DATA / "langfuse-export",
           "langsmith": DATA / "langsmith-runs.jsonl", "openwebui": DATA / "openwebui-feedback.json"}
# CI lays shared/ beside the clone, so there a missing sample fails the test instead of skipping it
needs_shared = pytest.mark.skipif(not SHARED.is_dir() and os.environ.get("CI") != "true",
                                  reason=f"the shared samples are not at {SHARED} (shared/data ships with the project)")
runner = CliRunner()


def cli(*args: str) -> Any:
    result = runner.invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def imported(path: Path | str, fmt: str, url: str, *extra: str, ok: bool = True) -> dict[str, Any]:
    result = cli("import", "--format", fmt, str(path), "--db", url, "--json", *extra)
    assert (result.exit_code == 0) == ok, result.output
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def ratings(url: str) -> list[Any]:
    with open_engine(url).connect() as conn:
        return list(conn.execute(select(Rating)).mappings())


def interactions(url: str) -> dict[str, Any]:
    with open_engine(url).connect() as conn:
        return {r["id"]: r for r in conn.execute(select(Interaction)).mappings()}




def round_trip(url: str, other: str, tmp_path: Path) -> None:
    """import -> export raw -> import elsewhere -> export raw changes nothing, and adds nothing back home."""
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    assert cli("export", "--format", "raw", "--out", str(first), "--db", url).exit_code == 0
    assert imported(first, "raw", other)["bad_lines"] == []
    assert cli("export", "--format", "raw", "--out", str(second), "--db", other).exit_code == 0
    assert first.read_bytes() == second.read_bytes()
    back = imported(first, "raw", url)
    assert (back["interactions_new"], back["ratings_new"]) == (0, 0)


def head(path: Path, n: int, tmp_path: Path) -> Path:
    """The first n lines of a (gzipped) JSON Lines sample, for the tests that need only a few records."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        lines = [next(f) for _ in range(n)]
    out = tmp_path / f"head-{path.name.removesuffix('.gz')}"
    out.write_text("".join(lines), encoding="utf-8")
    return out


# -- the real samples --------------------------------------------------------------------------------------------

@needs_shared
def test_hh_every_pair_is_two_answers_and_one_preference_for_the_chosen(sqlite_url: str) -> None:
    report = imported(HH, "hh", sqlite_url)
    assert (report["lines"], report["bad_lines"]) == (2312, [])
    assert (report["interactions_new"], report["ratings_new"]) == (4624, 2312)
    chosen = {}
    with gzip.open(HH, "rt") as f:
        for line in f:
            _, answer, _ = hh._split(**json.loads(line))  # type: ignore[misc]
            chosen[answer] = True
    stored = interactions(sqlite_url)
    prefs = load_comparisons(open_engine(sqlite_url))
    assert len(prefs) == 2312 and {p.kind for p in prefs} == {"preference"}
    # the human's choice is the winner, both answers share the prompt, and the prompt ends with a user turn
    for p in prefs:
        (win,), (lose,) = p.tiers
        assert stored[win]["response"] in chosen and stored[win]["messages"] == stored[lose]["messages"]
        assert stored[win]["messages"][-1]["role"] == "user"


@needs_shared
def test_hh_an_answer_holding_a_turn_marker_stays_whole() -> None:
    with gzip.open(HH, "rt") as f:
        rows = [json.loads(line) for line in f]
    # record 1255: the chosen answer itself runs on into "\n\nHuman: ...\n\nAssistant: ..."
    lines, errors = hh.convert(rows[1254])
    assert errors == [] and lines[0]["messages"] == lines[1]["messages"]
    assert "Assistant:" in lines[1]["response"] and lines[0]["messages"][-1]["content"] == "Isn't that drag kings?"


@needs_shared
def test_pandalm_three_annotators_per_pair_ties_kept_and_answers_merged(sqlite_url: str) -> None:
    report = imported(PANDALM, "pandalm", sqlite_url, ok=False)
    # six records have a JSON `true` where an answer belongs: refused, naming the field; nothing of theirs stored
    bad = {b["where"]: [e["field"] for e in b["errors"]] for b in report["bad_lines"]}
    assert len(bad) == 6 and set(map(tuple, bad.values())) <= {("response1",), ("response2",)}
    assert "record 158 (idx 157)" in bad
    assert (report["interactions_new"], report["interactions_existing"], report["ratings_new"]) == (798, 1188, 2979)
    rows = ratings(sqlite_url)
    assert Counter(r["rater_id"] for r in rows) == {f"pandalm:annotator{k}": 993 for k in (1, 2, 3)}
    data = json.loads(PANDALM.read_text())
    good = [d for d in data if isinstance(d["response1"], str) and isinstance(d["response2"], str)]
    labels = Counter(d[f"annotator{k}"] for d in good for k in (1, 2, 3))
    assert Counter(r["value"] for r in rows) == {1.0: labels[1], -1.0: labels[2], 0.0: labels[0]}


@needs_shared
def test_oasst_keeps_every_vote_as_its_own_rater_and_ranks_the_siblings(sqlite_url: str) -> None:
    report = imported(OASST, "oasst", sqlite_url)
    assert (report["lines"], report["bad_lines"], report["interactions_new"]) == (100, [], 687)
    rows = ratings(sqlite_url)
    thumbs = [r for r in rows if r["kind"] == "thumbs"]
    assert Counter(r["value"] for r in thumbs) == {1.0: 854, -1.0: 372}  # the README's totals: every vote kept
    assert len({r["rater_id"] for r in thumbs}) == len(thumbs)  # +1: 3 is three raters, never one
    ranks = [r for r in rows if r["kind"] == "rank"]
    assert len(ranks) == 212 and all(len(sum(r["ranking"], [])) >= 2 for r in ranks)
    stored = interactions(sqlite_url)
    assert all(m["role"] in ("user", "assistant") for i in stored.values() for m in i["messages"])
    assert all(stored[i]["messages"][0]["role"] == "user" for i in stored)


@needs_shared
def test_real_samples_round_trip(sqlite_url: str, tmp_path: Path) -> None:
    imported(head(OASST, 10, tmp_path), "oasst", sqlite_url)
    imported(head(HH, 50, tmp_path), "hh", sqlite_url)
    round_trip(sqlite_url, f"sqlite:///{tmp_path / 'other.db'}", tmp_path)


@needs_shared
def test_importing_a_sample_twice_adds_nothing(sqlite_url: str, tmp_path: Path) -> None:
    sample = head(OASST, 20, tmp_path)
    first = imported(sample, "oasst", sqlite_url)
    again = imported(sample, "oasst", sqlite_url)
    assert (again["interactions_new"], again["ratings_new"]) == (0, 0)
    assert again["ratings_existing"] == first["ratings_new"]


# -- the documented samples ---------------------------------------------------------------------------------------

def test_openai_weights_are_thumbs_and_every_assistant_turn_an_answer(db_url: str, other_url: str,
                                                                      tmp_path: Path) -> None:
    report = imported(SAMPLES["openai"], "openai", db_url, ok=False)
    assert [(b["line"], b["errors"][0]["field"]) for b in report["bad_lines"]] == [(4, "messages[1].weight")]
    assert (report["interactions_new"], report["ratings_new"]) == (4, 3)
    stored = {i["response"]: i for i in interactions(db_url).values()}
    assert set(stored) == {'Click "Forgot password" on the sign-in page.', "London.", "Sorry - it is Paris.", "Hi!"}
    assert [m["role"] for m in stored["Sorry - it is Paris."]["messages"]] == ["user", "assistant", "user"]
    assert "weight" not in stored["Sorry - it is Paris."]["messages"][1]
    by_answer = {r["interaction_id"]: r["value"] for r in ratings(db_url)}
    ids = {i["response"]: i["id"] for i in stored.values()}
    assert by_answer == {ids['Click "Forgot password" on the sign-in page.']: 1.0, ids["London."]: -1.0,
                         ids["Sorry - it is Paris."]: 1.0}
    round_trip(db_url, other_url, tmp_path)


def test_langfuse_generations_and_their_scores(db_url: str, other_url: str, tmp_path: Path) -> None:
    report = imported(SAMPLES["langfuse"], "langfuse", db_url, ok=False)
    bad = {b["where"]: b["errors"][0] for b in report["bad_lines"]}
    scores = "proj-demo/scores/2026-11-01T12-00-00.jsonl"
    assert set(bad) == {f"{scores} line 5", f"{scores} line 6"}
    assert bad[f"{scores} line 5"]["field"] == "trace_id" and "'tr-9'" in bad[f"{scores} line 5"]["reason"]
    assert bad[f"{scores} line 6"]["field"] == "value"
    assert any("'quality'" in n and "--map quality=" in n for n in report["notes"])
    stored = interactions(db_url)
    assert set(stored) == {"langfuse:obs-1", "langfuse:obs-2", "langfuse:obs-3"}  # the SPAN is a step, no answer
    obs1 = stored["langfuse:obs-1"]
    assert (obs1["user_id"], obs1["model"], obs1["conversation_id"]) == ("u-1", "gpt-4o-mini", "sess-1")
    assert (obs1["prompt_tokens"], obs1["completion_tokens"], obs1["latency_ms"]) == (24, 11, 1250.0)
    assert [m["role"] for m in obs1["messages"]] == ["system", "user"]
    got = {(r["interaction_id"], r["kind"], r["value"], r["rater_id"], r["source"]) for r in ratings(db_url)}
    assert got == {
        ("langfuse:obs-1", "thumbs", 1.0, "u-1", "end_user"),  # a trace-level score: the trace's generation
        ("langfuse:obs-1", "comment", None, "u-1", "end_user"),
        ("langfuse:obs-2", "thumbs", -1.0, "langfuse-eval:is_correct", "judge"),  # BOOLEAN 0, by the evaluator
        ("langfuse:obs-2", "comment", None, "langfuse-eval:is_correct", "judge"),
        ("langfuse:obs-3", "thumbs", -1.0, "u-3", "end_user"),  # CATEGORICAL "negative"
    }
    round_trip(db_url, other_url, tmp_path)


def test_langfuse_map_reads_a_score_the_defaults_skip(sqlite_url: str, tmp_path: Path) -> None:
    report = imported(SAMPLES["langfuse"], "langfuse", sqlite_url, "--map", "quality=stars:1-5", "--map",
                      "user-feedback=scale:0-10", ok=False)
    assert "notes" not in report and len(report["bad_lines"]) == 1  # 7 reads on 0-10 now; tr-9 is still absent
    got = {(r["interaction_id"], r["kind"], r["value"], r["scale_min"], r["scale_max"]) for r in ratings(sqlite_url)
           if r["kind"] != "comment"}
    assert ("langfuse:obs-2", "stars", 4.0, 1.0, 5.0) in got and ("langfuse:obs-3", "scale", 7.0, 0.0, 10.0) in got
    annotator = next(r for r in ratings(sqlite_url) if r["kind"] == "stars")
    assert annotator["source"] == "annotator" and annotator["rater_id"] == "anon:langfuse-annotation#sc-2"


def test_a_langfuse_score_of_an_answer_imported_before(sqlite_url: str, tmp_path: Path) -> None:
    imported(SAMPLES["langfuse"], "langfuse", sqlite_url, ok=False)
    later = tmp_path / "scores.jsonl"  # a later export window: only a score, of an observation stored already
    later.write_text(json.dumps({"id": "sc-9", "timestamp": "2026-11-02 09:00:00.000000", "trace_id": "tr-2",
                                 "observation_id": "obs-2", "name": "thumbs", "value": 1, "source": "API",
                                 "comment": None, "data_type": "NUMERIC", "string_value": None}) + "\n")
    report = imported(later, "langfuse", sqlite_url)
    assert (report["ratings_new"], report["bad_lines"]) == (1, [])
    assert any(r["interaction_id"] == "langfuse:obs-2" and r["rater_id"] == "u-2" for r in ratings(sqlite_url))


def test_langsmith_runs_with_their_feedback(db_url: str, other_url: str, tmp_path: Path) -> None:
    report = imported(SAMPLES["langsmith"], "langsmith", db_url, ok=False)
    assert [(b["line"], b["errors"][0]["field"]) for b in report["bad_lines"]] == [(7, "ratings[0].interaction_id")]
    assert any("'correctness'" in n for n in report["notes"])
    stored = interactions(db_url)
    assert set(stored) == {"langsmith:run-1", "langsmith:run-3"}  # run-2, a child without feedback, is a step
    run1 = stored["langsmith:run-1"]
    assert (run1["user_id"], run1["conversation_id"], run1["latency_ms"]) == ("u-1", "th-1", 2000.0)
    assert stored["langsmith:run-3"]["model"] == "gpt-4o"
    got = {(r["interaction_id"], r["kind"], r["aspect"], r["value"], r["text"], r["rater_id"], r["source"])
           for r in ratings(db_url)}
    assert got == {
        ("langsmith:run-1", "thumbs", "overall", 1.0, None, "u-1", "end_user"),
        ("langsmith:run-1", "comment", "overall", None, "helpful", "u-1", "end_user"),
        ("langsmith:run-1", "aspect", "helpfulness", 1.0, None, "langsmith-eval:helpfulness", "judge"),
        ("langsmith:run-3", "thumbs", "overall", -1.0, None, "anon:langsmith:run-3", "end_user"),
        ("langsmith:run-3", "comment", "overall", None, "It is 14 days.", "anon:langsmith:run-3", "end_user"),
        ("langsmith:run-3", "comment", "overall", None, "wrong window", "langsmith:ls-user-7", "annotator"),
        ("langsmith:run-3", "correction", "overall", None, "14 days from delivery.", "langsmith:ls-user-7",
         "annotator"),
    }
    round_trip(db_url, other_url, tmp_path)


def test_openwebui_feedback_with_a_sibling_is_a_comparison_too(db_url: str, other_url: str, tmp_path: Path) -> None:
    report = imported(SAMPLES["openwebui"], "openwebui", db_url, ok=False)
    assert [(b["where"], b["errors"][0]["field"]) for b in report["bad_lines"]] == [("record 3", "meta.message_id")]
    stored = interactions(db_url)
    assert set(stored) == {"openwebui:m-2", "openwebui:m-3", "openwebui:n-4"}
    assert [m["role"] for m in stored["openwebui:n-4"]["messages"]] == ["user", "assistant", "user"]
    assert (stored["openwebui:m-3"]["model"], stored["openwebui:m-3"]["conversation_id"]) == ("qwen2.5", "c-1")
    got = {(r["interaction_id"], r["kind"], r["value"], r["scale_max"], r["text"], r["rater_id"])
           for r in ratings(db_url)}
    assert got == {
        ("openwebui:m-2", "thumbs", 1.0, 1.0, None, "owu-1"),
        ("openwebui:m-2", "scale", 9.0, 10.0, None, "owu-1"),
        ("openwebui:m-2", "comment", None, None, "accurate information; spot on", "owu-1"),
        ("openwebui:m-2", "preference", 1.0, None, None, "owu-1"),  # the rated answer over its sibling
        ("openwebui:n-4", "thumbs", -1.0, 1.0, None, "owu-2"),
        ("openwebui:n-4", "comment", None, None, "inaccurate information", "owu-2"),
    }
    (pref,) = load_comparisons(open_engine(db_url))
    assert pref.tiers == (("openwebui:m-2",), ("openwebui:m-3",))
    round_trip(db_url, other_url, tmp_path)


# -- bad input ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("sample", "asked", "found"), [
    ("openai", "raw", "openai"), ("langsmith", "openai", "langsmith"), ("openwebui", "pandalm", "openwebui"),
    ("openai", "langfuse", "openai"), ("langfuse", "hh", None)])
def test_a_file_in_another_format_is_refused_naming_the_one_it_looks_like(sqlite_url: str, sample: str, asked: str,
                                                                          found: str | None) -> None:
    path = SAMPLES[sample]
    if path.is_dir():
        path = next(path.rglob("*.jsonl"))
    result = runner.invoke(app, ["import", "--format", asked, str(path), "--db", sqlite_url])
    assert result.exit_code == 1
    message = " ".join(str(result.exception).split())
    if found is None:  # an observations row, asked as hh: it looks like langfuse
        found = "langfuse"
    assert f"looks like {found}" in message and f"--format {found}" in message
    assert open_engine(sqlite_url) and not interactions(sqlite_url)


@needs_shared
@pytest.mark.parametrize(("path", "asked", "found"), [(HH, "oasst", "hh"), (PANDALM, "raw", "pandalm"),
                                                      (OASST, "openai", "oasst")])
def test_a_real_sample_in_the_wrong_format_is_named(sqlite_url: str, path: Path, asked: str, found: str) -> None:
    result = runner.invoke(app, ["import", "--format", asked, str(path), "--db", sqlite_url])
    assert result.exit_code == 1 and f"import it with --format {found}" in str(result.exception)


def test_a_bad_record_is_reported_with_its_field_and_stores_nothing(sqlite_url: str, tmp_path: Path) -> None:
    pair = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}
    f = tmp_path / "hh.jsonl"
    f.write_text("\n".join(json.dumps(x) for x in [
        pair,
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello"},                          # 2 rejected missing
        "not json",                                                             # 3
        {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: b"},  # 4 other dialogue
        {**pair, "rejected": pair["chosen"]},                                   # 5 one answer twice
        {"chosen": "\n\nHuman: x\x00\n\nAssistant: y", "rejected": "\n\nHuman: x\x00\n\nAssistant: z"},  # 6 a NUL
    ]).replace('"not json"', "not json") + "\n")
    result = cli("import", "--format", "hh", str(f), "--db", sqlite_url)
    assert result.exit_code == 1
    errors = " ".join(result.stderr.split())
    assert "line 2: rejected: Field required" in errors
    assert "line 3: line: not valid JSON" in errors
    assert "line 4: chosen: chosen and rejected do not share a dialogue" in errors
    assert "line 5: rejected: its final answer is the chosen one's" in errors
    assert "line 6: rejected.messages[0].content: contains a NUL character" in errors
    assert "6 records: 2 new interactions" in result.stdout and "1 new ratings" in result.stdout
    assert "5 bad records" in result.stdout


def test_a_bad_message_anywhere_in_a_tree_stores_none_of_it(sqlite_url: str, tmp_path: Path) -> None:
    good = {"message_id": "a1", "parent_id": "p", "text": "fine", "role": "assistant", "emojis": {"+1": 2}}
    bad = {"message_id": "a2", "parent_id": "p", "text": "bad", "role": "assistant",
           "labels": {"quality": {"value": 1.5, "count": 3}}}
    tree = {"message_tree_id": "p", "prompt": {"message_id": "p", "text": "Q?", "role": "prompter",
                                               "replies": [good, bad]}}
    f = tmp_path / "trees.jsonl"
    f.write_text(json.dumps(tree) + "\n" + json.dumps({**tree, "prompt": {**tree["prompt"], "replies": [good]},
                                                       "message_tree_id": "p2"}) + "\n")
    report = imported(f, "oasst", sqlite_url, ok=False)
    assert [(b["line"], b["errors"][0]["field"]) for b in report["bad_lines"]] == [(1, "message a2.labels.quality")]
    # line 2 holds the same good answer (oasst:a1): stored from it, with its two votes; nothing from line 1
    assert (report["interactions_new"], report["ratings_new"]) == (1, 2)


def test_map_specs_are_checked_before_anything_is_read(sqlite_url: str) -> None:
    for spec, reason in (("quality=stars:5-1", "LOW must be below HIGH"), ("quality=scale", "needs its range"),
                         ("quality=great", "KIND is one of"), ("quality", "write NAME=KIND"),
                         ("correctness=accuracy", "an aspect needs its range")):
        result = runner.invoke(app, ["import", "--format", "langfuse", str(SAMPLES["langfuse"]), "--map", spec,
                                     "--db", sqlite_url])
        assert result.exit_code == 1 and reason in str(result.exception), (spec, result.exception)
    result = runner.invoke(app, ["import", "--format", "openai", str(SAMPLES["openai"]), "--map", "a=thumbs",
                                 "--db", sqlite_url])
    assert result.exit_code == 1 and "has none" in str(result.exception)
