"""Shared by the training tests: the example store and a tiny base model whose tokenizer knows its texts.

Plain helpers, so each test module's fixtures stay two lines and in sight:

    @pytest.fixture(scope="module")
    def tiny_base(tmp_path_factory): return save_tiny_base(tmp_path_factory.mktemp("tiny-base"))
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sqlalchemy import Engine

from ratingloop.store import open_engine
from ratingloop.store.jsonl import import_lines
from ratingloop.store.records import Limits
from tiny import tiny_causal_lm, tiny_tokenizer

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
    report = import_lines(engine, lines, Limits())
    assert not report.bad
    return engine


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
