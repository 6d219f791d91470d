"""Build stage, outputs: the files, the manifest, the DatasetSnapshot row, the split, dedupe, PII."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from build_store import line, store_with
from ratingloop.dataset import BuildConfig, build_dataset
from ratingloop.dataset.scrub import scrub
from ratingloop.dataset.split import prompt_bucket
from ratingloop.errors import RatingloopError
from ratingloop.store.tables import DatasetSnapshot


def many_prompts(n: int) -> list[dict[str, Any]]:
    """n prompts, each with a good and a bad answer, the good one logged twice."""
    out = []
    for k in range(n):
        q = f"Question number {k}?"
        out += [line(f"g{k}", q, f"Good answer {k}.", 5), line(f"g{k}-dup", q, f"Good answer {k}.", 5),
                line(f"b{k}", q, f"Bad answer {k}.", 1)]
    return out


@pytest.fixture
def engine(sqlite_url: str) -> Any:
    return store_with(sqlite_url, many_prompts(30))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_files_manifest_and_snapshot_row(engine: Any, tmp_path: Path) -> None:
    from datasets import load_from_disk

    out = tmp_path / "kto"
    result = build_dataset(engine, "kto", out, BuildConfig())
    for split, n in (("train", result.n_train), ("eval", result.n_eval)):
        ds = load_from_disk(str(out / split))
        assert ds.to_list() == read_jsonl(out / f"{split}.jsonl") and len(ds) == n
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == result.manifest
    assert manifest["format"] == "kto" and manifest["columns"] == ["prompt", "completion", "label", "interaction_ids"]
    assert manifest["rows"] == {"train": result.n_train, "eval": result.n_eval}
    assert manifest["config"]["z"] == 1.0 and manifest["ratingloop_version"]
    assert {f["filter"] for f in manifest["filters"]} >= {"duplicate_answers", "uncertain_label", "duplicate_rows"}
    # every rating behind a row: 5 stars on each of 90 interactions
    assert len(manifest["rating_ids"]) == 90 * 5
    with engine.connect() as conn:
        row = conn.execute(select(DatasetSnapshot.__table__)).one()
    assert (row.id, row.format, row.content_hash, row.n_rows) == (
        result.snapshot_id, "kto", result.content_hash, result.n_train + result.n_eval)
    assert row.manifest["rating_ids"] == manifest["rating_ids"] and Path(row.path) == out.resolve()


def test_rebuild_is_deterministic(engine: Any, tmp_path: Path) -> None:
    a = build_dataset(engine, "dpo", tmp_path / "a", BuildConfig())
    b = build_dataset(engine, "dpo", tmp_path / "b", BuildConfig())
    assert a.content_hash == b.content_hash and a.snapshot_id != b.snapshot_id
    assert (tmp_path / "a" / "train.jsonl").read_bytes() == (tmp_path / "b" / "train.jsonl").read_bytes()
    c = build_dataset(engine, "dpo", tmp_path / "a", BuildConfig(split_salt="other"))  # same folder: replaced
    assert c.content_hash != a.content_hash
    assert len(read_jsonl(tmp_path / "a" / "train.jsonl")) == c.n_train


def test_split_is_prompt_disjoint(engine: Any, tmp_path: Path) -> None:
    result = build_dataset(engine, "reward", tmp_path / "r", BuildConfig(eval_fraction=0.3))
    prompts = {s: {json.dumps(r["prompt"]) for r in read_jsonl(tmp_path / "r" / f"{s}.jsonl")}
               for s in ("train", "eval")}
    assert prompts["train"] and prompts["eval"] and not prompts["train"] & prompts["eval"]
    assert result.manifest["prompts"] == {"train": len(prompts["train"]), "eval": len(prompts["eval"])}
    assert 3 <= len(prompts["eval"]) <= 16  # about 30% of 30 prompts
    assert 0.0 <= prompt_bucket("abc", "s") < 1.0 and prompt_bucket("abc", "s") == prompt_bucket("abc", "s")


def test_a_minimum_of_held_out_prompts_for_the_gate(engine: Any, tmp_path: Path) -> None:
    """The loop asks for 24 held-out prompts; never more than a third of them, the rest still trains."""
    few = build_dataset(engine, "reward", tmp_path / "few", BuildConfig(eval_fraction=0.1))
    some = build_dataset(engine, "reward", tmp_path / "some", BuildConfig(eval_fraction=0.1, min_eval_prompts=8))
    capped = build_dataset(engine, "reward", tmp_path / "capped", BuildConfig(eval_fraction=0.1, min_eval_prompts=24))
    n_prompts = few.manifest["prompts"]["train"] + few.manifest["prompts"]["eval"]
    assert few.manifest["prompts"]["eval"] < 8 == some.manifest["prompts"]["eval"]
    assert capped.manifest["prompts"]["eval"] == n_prompts // 3
    with pytest.raises(RatingloopError, match="min_eval_prompts=-1"):
        build_dataset(engine, "sft", tmp_path / "bad", BuildConfig(min_eval_prompts=-1))


def test_dedupe_merges_answers_and_can_be_turned_off(engine: Any, tmp_path: Path) -> None:
    on = build_dataset(engine, "sft", tmp_path / "on", BuildConfig())
    off = build_dataset(engine, "sft", tmp_path / "off", BuildConfig(dedupe=False))
    assert on.n_train + on.n_eval == 30 and off.n_train + off.n_eval == 60
    rows = read_jsonl(tmp_path / "on" / "train.jsonl") + read_jsonl(tmp_path / "on" / "eval.jsonl")
    assert len({json.dumps(r, sort_keys=True) for r in rows}) == len(rows)


@pytest.mark.parametrize("text, clean", [
    ("write to jo.doe+x@mail.example.co.uk today", "write to [EMAIL] today"),
    ("call +1 (415) 555-0132 or 020 7946 0958", "call [PHONE] or [PHONE]"),
    ("my number is 4155550132.", "my number is [PHONE]."),
    ("in 5-10 days, on 2026-11-01, order 12345, $1,299.00", "in 5-10 days, on 2026-11-01, order 12345, $1,299.00"),
    ("version 1.2.3, ip 192.168.1.10", "version 1.2.3, ip 192.168.1.10"),
])
def test_scrub(text: str, clean: str) -> None:
    assert scrub(text) == clean


def test_pii_scrubbing_in_a_build(sqlite_url: str, tmp_path: Path) -> None:
    lines = [line("a", "I am ann@example.com, call me on +44 20 7946 0958", "Done, ann@example.com.", 5),
             line("b", "Plain question?", "Plain answer.", 5)]
    engine = store_with(sqlite_url, lines)
    result = build_dataset(engine, "sft", tmp_path / "s", BuildConfig(scrub_pii=True, eval_fraction=0))
    text = (tmp_path / "s" / "train.jsonl").read_text()
    assert "ann@example.com" not in text and "7946" not in text and "[EMAIL], call me on [PHONE]" in text
    assert result.manifest["pii_scrubbed"] == 2  # one prompt, one answer
    build_dataset(engine, "sft", tmp_path / "raw", BuildConfig(eval_fraction=0))
    assert "ann@example.com" in (tmp_path / "raw" / "train.jsonl").read_text()
