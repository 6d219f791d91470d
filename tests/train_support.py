"""Shared by the training tests: the example store and a tiny base model whose tokenizer knows its texts.

A pytest plugin (tests/conftest.py lists it), so its fixtures serve every test module: `tiny_base` (one
per module) and `engine` (the example store, fresh per test). A module that defines its own `engine`
(a store of other data) overrides it there.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from ratingloop.store import open_engine
from ratingloop.store.jsonl import import_lines
from ratingloop.store.records import Limits
from tiny import tiny_causal_lm, tiny_tokenizer

KEY = b"test-user-key"  # the server's secret, which tombstones are keyed with (store.writes.user_hash)

EXAMPLE = Path(__file__).parent.parent / "examples" / "support-chat.jsonl"


def save_tiny_base(path: Path) -> Path:
    """A tiny random Llama and a tokenizer trained on the example's texts, saved as a base model folder."""
    lines = [json.loads(x) for x in EXAMPLE.read_text().splitlines() if x.strip()]
    texts = [m["content"] for x in lines for m in x["messages"]] + [x["response"] for x in lines]
    texts += [r["value"] for x in lines for r in x["ratings"] if isinstance(r.get("value"), str)]
    tok = tiny_tokenizer(texts)
    tiny_causal_lm(tok).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def store(tmp_path: Path, lines: list[bytes]) -> Engine:
    """A fresh SQLite store with `lines` imported, every one of them good."""
    engine = open_engine(f"sqlite:///{tmp_path / 'store.db'}")
    report = import_lines(engine, lines, Limits(), user_key=KEY)
    assert not report.bad
    return engine


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_base(tmp_path_factory.mktemp("tiny-base"))


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return store(tmp_path, EXAMPLE.read_bytes().splitlines())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# four support questions, each with an answer users liked and one they did not
PAIRS = [
    ("Where is my refund?", "Your refund was sent today; it reaches your card within five days.",
     "Refunds are not my job. Ask someone else."),
    ("How do I reset my password?", "Open Settings, choose Security, then Reset password and follow the email.",
     "Just guess it. Try harder."),
    ("My package has not arrived.", "Sorry about that; I have opened a trace with the carrier and will email you.",
     "Packages get lost. Nothing to do."),
    ("Can I change my delivery address?", "Yes: open the order, choose Edit address and save before it ships.",
     "No. Whatever you typed is final."),
]


def pairs_folder(path: Path, column: str, good: float, bad: float) -> Path:
    """A dataset folder (train split only) of PAIRS: every good answer carries `good`, every bad one `bad`."""
    from datasets import Dataset

    rows = [{"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": a}],
             column: value} for q, yes, no in PAIRS for a, value in ((yes, good), (no, bad))]
    Dataset.from_list(rows).save_to_disk(str(path / "train"))
    return path


def rows_of(folder: Path) -> list[dict[str, Any]]:
    from datasets import load_from_disk

    return list(load_from_disk(str(folder / "train")))
