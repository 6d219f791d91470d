"""Build stage, comparisons and provenance: the DPO builder turns the comparisons every honest rater agreed on
into pairs (even of answers rated only through comparisons), and every built row names the interactions it
came from. Table tests: comparisons in -> pairs made, and the reason for each one not made."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine

from build_store import CASES, line, store_with
from ratingloop.dataset import FORMATS, BuildConfig, build_dataset
from ratingloop.errors import RatingloopError
from ratingloop.signals import record_signals
from ratingloop.store import Limits, open_engine
from ratingloop.store.jsonl import import_lines

KEY = b"test-user-key"
HONEST = ["h1", "h2", "h3"]


def rows_of(out: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for split in ("train", "eval") for x in (out / f"{split}.jsonl").read_text().splitlines()]


def removed(result: Any) -> dict[str, int]:
    return {f["filter"]: f["removed"] for f in result.manifest["filters"]}


def pref(rater: str, other: str, value: str) -> dict[str, Any]:
    return {"rater_id": rater, "kind": "preference", "other_interaction_id": other, "value": value}


def answer(iid: str, prompt: str, ratings: list[dict[str, Any]] | None = None) -> bytes:
    return orjson.dumps({"id": iid, "messages": [{"role": "user", "content": prompt}], "response": f"answer {iid}",
                         "ratings": ratings or []})


def compared(url: str) -> Engine:
    """Answers rated only through comparisons. Prompts w0..w19: three honest raters and an inverter compare
    answers a and b (the inverter rates against them; with 20 comparisons they are flagged). Then:
    `all-agree`: the three prefer a; `split`: two prefer a, one b; `tied`: all three tie; `troll-only`: only the
    inverter compared; `ranked`: h1 ranks four answers in three tiers."""
    lines = []
    for p in range(20):
        lines += [answer(f"w{p}-a", f"w{p}"), answer(f"w{p}-b", f"w{p}", [
            pref(r, f"w{p}-a", "b" if (p % 2 == 0) != (r == "inverter") else "a") for r in [*HONEST, "inverter"]])]
    votes = {"all-agree": ["b", "b", "b"], "split": ["b", "b", "a"], "tied": ["tie"] * 3}  # on b's line: "b" = a won
    for name, vs in votes.items():
        lines += [answer(f"{name}-a", name), answer(f"{name}-b", name, [
            pref(r, f"{name}-a", v) for r, v in zip(HONEST, vs, strict=True)] + [pref("inverter", f"{name}-a", "a")])]
    lines += [answer("troll-only-a", "troll-only"),
              answer("troll-only-b", "troll-only", [pref("inverter", "troll-only-a", "a")])]
    lines += [answer(f"ranked-{k}", "ranked") for k in range(3)]
    lines += [answer("ranked-3", "ranked", [{"rater_id": "h1", "kind": "rank",
                                            "ranking": [["ranked-2"], ["ranked-0", "ranked-3"], ["ranked-1"]]}])]
    engine = open_engine(url)
    report = import_lines(engine, lines, Limits(), user_key=KEY)
    assert not report.bad, report.bad
    record_signals(engine)
    return engine


def test_unanimous_comparisons_are_pairs_ties_and_splits_are_not(db_url: str, tmp_path: Path) -> None:
    engine = compared(db_url)
    result = build_dataset(engine, "dpo", tmp_path / "dpo", BuildConfig(eval_fraction=0.0))
    assert result.manifest["inputs"]["flagged_raters"] == ["inverter"]
    pairs = {(r["chosen_interaction_ids"][0], r["rejected_interaction_ids"][0]) for r in rows_of(tmp_path / "dpo")}
    expected = {(f"w{p}-a", f"w{p}-b") if p % 2 == 0 else (f"w{p}-b", f"w{p}-a") for p in range(20)}
    # the rank: 2 beats 0, 3 and 1; 0 and 3 tie and beat 1
    expected |= {("all-agree-a", "all-agree-b"), ("ranked-2", "ranked-0"), ("ranked-2", "ranked-3"),
                 ("ranked-2", "ranked-1"), ("ranked-0", "ranked-1"), ("ranked-3", "ranked-1")}
    assert pairs == expected
    cut = removed(result)
    assert (cut["comparison_split"], cut["comparison_tied"]) == (1, 2)  # split; tied, and ranked-0 ~ ranked-3
    assert cut["no_unflagged_ratings"] == 2  # troll-only a and b: compared by the flagged rater alone
    section = result.manifest["comparisons"]
    assert section["rule"].startswith("a pair of answers that raters compared is a DPO pair when every comparison")
    assert section["pairs"] == len(expected) and section["dropped"]["split"] == 1 and section["dropped"]["tied"] == 2
    assert section["comparisons"] == 20 * 3 + 3 * 3 + 1  # the counted ones: the inverter's are not
    assert len(section["became_pairs"]) == 20 * 3 + 3 + 1  # every honest vote on a pair made, and the rank
    assert set(section["became_pairs"]) <= set(result.manifest["rating_ids"])


def test_a_unanimous_comparison_the_rewards_contradict_makes_no_pair(sqlite_url: str, tmp_path: Path) -> None:
    """Five raters give x 5 stars and y 1 star; one other rater prefers y. The rewards clearly order them
    the other way: neither order is trusted."""
    lines = [line("x", "Can I get a refund?", "Yes, within 30 days from the receipt page.", 5),
             line("y", "Can I get a refund?", "No.", 1, extra=[pref("odd", "x", "a")])]
    engine = store_with(sqlite_url, lines)
    with pytest.raises(RatingloopError, match="0 pairs"):
        build_dataset(engine, "dpo", tmp_path / "dpo", BuildConfig())
    lines[1]["ratings"][-1] = pref("odd", "x", "b")  # the same rater now agrees with the stars: one pair, not two
    engine = store_with(f"sqlite:///{tmp_path / 'agree.db'}", lines)
    result = build_dataset(engine, "dpo", tmp_path / "dpo2", BuildConfig())
    assert [(r["chosen_interaction_ids"], r["rejected_interaction_ids"]) for r in rows_of(tmp_path / "dpo2")] == [
        (["x"], ["y"])]
    assert result.manifest["comparisons"]["pairs"] == 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_row_names_the_interactions_it_came_from(sqlite_url: str, tmp_path: Path, fmt: str) -> None:
    engine = store_with(sqlite_url, CASES)
    build_dataset(engine, fmt, tmp_path / fmt, BuildConfig())
    rows = rows_of(tmp_path / fmt)
    response = {x["id"]: x["response"] for x in CASES}
    corrected = {"Use 'Forgot password' on the sign-in page; the link is valid for one hour.": ["bad-1"]}
    sides = ("chosen", "rejected") if fmt == "dpo" else ("completion",)
    for row in rows:
        for side in sides:
            ids = row[f"{side}_interaction_ids" if fmt == "dpo" else "interaction_ids"]
            text = row[side][0]["content"]
            # a correction names the answer it corrects; a merged answer every copy of it
            assert ids == corrected.get(text) or (ids and all(response[i] == text for i in ids)), (side, row)
    if fmt == "sft":
        ids = {tuple(r["interaction_ids"]) for r in rows}
        assert ("good-1", "good-1-again") in ids and ("bad-1",) in ids  # duplicates merged; the correction


def test_identical_rows_merge_their_interaction_ids(sqlite_url: str, tmp_path: Path) -> None:
    """Two raters correct two answers of one prompt with the same text: one sft row, naming both answers."""
    fix = "Use 'Forgot password' on the sign-in page."
    lines = [line("p-1", "How do I reset my password?", "Contact support.", 1, correction=fix),
             line("p-2", "How do I reset my password?", "Call us.", 1, correction=fix)]
    build_dataset(store_with(sqlite_url, lines), "sft", tmp_path / "sft", BuildConfig())
    rows = [r for r in rows_of(tmp_path / "sft") if r["completion"][0]["content"] == fix]
    assert len(rows) == 1 and sorted(rows[0]["interaction_ids"]) == ["p-1", "p-2"]
