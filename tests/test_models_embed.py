"""models.embed: the packaged sentence encoder and its on-disk cache."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ratingloop.models.embed import DIM, EmbeddingCache, default_cache, embed_pairs, embed_texts, encoder


class Counting:
    """The real encoder, counting the texts it is asked to encode."""

    def __init__(self) -> None:
        self.enc, self.seen = encoder(), 0

    def encode(self, texts: list[str], **kwargs: Any) -> Any:
        self.seen += len(texts)
        return self.enc.encode(texts, **kwargs)


def test_the_cache_encodes_each_text_once_and_returns_the_same_vectors(tmp_path: Path) -> None:
    enc = Counting()
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    first = ["How do I reset my password?", "Open Settings, then Security.", "héllo ☃"]
    plain = embed_texts(enc.enc, first + ["Thanks!"])
    assert embed_texts(enc, first, cache=cache).shape == (3, DIM) and enc.seen == 3
    again = embed_texts(enc, first + ["Thanks!", first[0]], cache=cache)
    assert enc.seen == 4  # only the new text reached the encoder
    np.testing.assert_allclose(again[:4], plain, atol=1e-5)
    np.testing.assert_array_equal(again[4], again[0])
    assert len(cache) == 4
    # another process (a new connection) reads what this one wrote
    assert set(EmbeddingCache(tmp_path / "cache.sqlite").get(first)) == set(first)


def test_pairs_through_the_cache_equal_pairs_without(tmp_path: Path) -> None:
    prompts = [[{"role": "user", "content": "What is 2+2?"}], "Name a colour."]
    answers = ["4", "Blue."]
    cache = EmbeddingCache(tmp_path / "c.sqlite")
    np.testing.assert_allclose(embed_pairs(encoder(), prompts, answers, cache=cache),
                               embed_pairs(encoder(), prompts, answers), atol=1e-5)


def test_an_unreadable_cache_is_moved_aside_and_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "cache.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    cache = EmbeddingCache(path)
    assert (tmp_path / "cache.sqlite.corrupt").exists() and "unreadable" in caplog.text
    embed_texts(encoder(), ["a", "b"], cache=cache)
    assert len(cache) == 2


def test_a_row_of_the_wrong_shape_is_recomputed(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    with sqlite3.connect(tmp_path / "cache.sqlite") as db:
        db.execute("INSERT INTO vectors VALUES (?, ?)", (EmbeddingCache.key("x"), np.zeros(7, np.float32).tobytes()))
    enc = Counting()
    assert np.isclose(np.linalg.norm(embed_texts(enc, ["x"], cache=cache)[0]), 1.0) and enc.seen == 1


def test_the_default_cache_lives_in_the_data_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RATINGLOOP_DATA_DIR", str(tmp_path / "data"))
    path = default_cache().path
    assert path.parent == tmp_path / "data" / "cache" and path.name.startswith("embeddings-all-MiniLM-L6-v2-")
