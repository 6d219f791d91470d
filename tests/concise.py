"""Simulated users who prefer concise answers, rating real questions and answers (OASST, ../shared/data).

For each OASST question we log two answers taken from its first human reply: the opening sentence
(concise) and the reply up to LONG_WORDS words (long). A small crowd of simulated users, each with
their own leniency and noise, rates every answer with stars; all of them like the concise answer
better. Questions past `n_train` are held out: they are never imported, only asked of the model.

    lines, held_out = concise_store_lines(n_train=60)
    import_lines(engine, lines, Limits(), user_key=key)
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

OASST = Path(__file__).resolve().parents[2] / "shared" / "data" / "oasst_en_100_tree.jsonl"
LONG_WORDS = 90
MAX_PROMPT_WORDS = 60


def oasst_threads() -> list[tuple[str, list[dict[str, Any]]]]:
    """(question, its assistant replies) for each tree whose question is short; fails under CI if the file
    is missing."""
    if not OASST.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{OASST} is missing; CI needs ../shared/data")
        pytest.skip(f"{OASST} is missing")
    found = []
    for line in OASST.read_text().splitlines():
        prompt = json.loads(line)["prompt"]
        replies = [r for r in prompt["replies"] if r["role"] == "assistant" and not r["deleted"]]
        if replies and len(prompt["text"].split()) <= MAX_PROMPT_WORDS:
            found.append((prompt["text"].strip(), replies))
    return found


def oasst_questions() -> list[tuple[str, str]]:
    """(question, its best-ranked answer) for each tree whose question is short."""
    return [(question, min(replies, key=lambda r: r.get("rank") if r.get("rank") is not None else 99)["text"].strip())
            for question, replies in oasst_threads()]


def concise_and_long(answer: str) -> tuple[str, str] | None:
    words = answer.split()
    first = re.split(r"(?<=[.!?])\s+", answer)[0]
    concise = " ".join(first.split()[:25])
    long = " ".join(words[:LONG_WORDS])
    if len(long.split()) < 2 * len(concise.split()) + 10:
        return None  # the reply is short already: no clear pair
    return concise, long


def concise_store_lines(n_train: int = 60, n_raters: int = 12, per_answer: int = 3,
                        seed: int = 0) -> tuple[list[bytes], list[dict[str, Any]]]:
    """JSONL import lines for the first `n_train` usable questions, and the held-out rest as prompts
    (id, messages) with their unrated concise and long answers."""
    rng = np.random.default_rng(seed)
    leniency = rng.normal(0.0, 0.5, n_raters)
    noise = rng.uniform(0.2, 0.6, n_raters)
    pairs = [(q, p) for q, a in oasst_questions() if (p := concise_and_long(a)) is not None]
    lines, held_out = [], []
    for i, (question, (concise, long)) in enumerate(pairs):
        messages = [{"role": "user", "content": question}]
        if i >= n_train:  # the answers too, for judging reward models; generate reads id and messages
            held_out.append({"id": f"held-{i}", "messages": messages, "concise": concise, "long": long})
            continue
        for kind, text, liking in (("concise", concise, 1.5), ("long", long, -1.5)):
            raters = rng.choice(n_raters, size=per_answer, replace=False)
            stars = np.clip(np.rint(3 + liking + leniency[raters] + rng.normal(0, noise[raters])), 1, 5)
            lines.append(json.dumps({
                "id": f"q{i}-{kind}", "messages": messages, "response": text, "user_id": f"asker-{i}",
                "ratings": [{"rater_id": f"user-{r}", "kind": "stars", "value": int(s), "scale": [1, 5]}
                            for r, s in zip(raters, stars, strict=True)],
            }).encode())
    return lines, held_out
