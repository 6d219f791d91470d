"""Stage 1, the store: a Hugging Face dataset of every interaction with its reward (`export --format hf --out DIR`).

One row per interaction, saved with `datasets.Dataset.save_to_disk(DIR)` (read it back with
`datasets.load_from_disk(DIR)`): `interaction_id`, `messages` (role and text content, as TRL's
conversational formats take them), `response`, `model`, `user_id`, `conversation_id`, `created_at`
(ISO 8601, UTC), `tags` (JSON text), and from the signals run: `reward` in [-1, 1], `confidence` in
[0, 1], `n_ratings` (the ratings that counted; 0 for an answer nobody rated, whose reward is the content
prior's), `n_raters` (distinct raters among them) and `aspects` (one column per aspect the run scored).
Interactions the run does not cover (they arrived after it, or nobody rated them and the run had its
content prior off) have null run columns: run `ratingloop signals` again to include them. The dataset's
description names the run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from ratingloop.store import tables as t
from ratingloop.store.exporters import RunRewards, interactions
from ratingloop.store.jsonl import iso

CHUNK = 500  # ids per IN (...)


@dataclass
class HFReport:
    rows: int = 0
    not_in_run: int = 0  # interactions the run has no reward for: null run columns


def export_hf(engine: Engine, out: Path, rewards: RunRewards) -> HFReport:
    import datasets  # heavy (pyarrow, pandas): only when a dataset is written

    report = HFReport()
    aspects = sorted({a for r in rewards.rewards.values() for a in r.aspects})
    rows = []
    with engine.connect() as conn:
        raters = _raters(conn, rewards)
        columns = ["id", "created_at", "messages", "response", "model", "user_id", "conversation_id", "tags"]
        for row in interactions(conn, columns):
            r = rewards.rewards.get(row["id"])
            report.not_in_run += r is None
            rows.append({
                "interaction_id": row["id"], "messages": [_message(m) for m in row["messages"]],
                "response": row["response"], "model": row["model"], "user_id": row["user_id"],
                "conversation_id": row["conversation_id"], "created_at": iso(row["created_at"]),
                "tags": json.dumps(row["tags"] or {}, sort_keys=True, ensure_ascii=False),
                "reward": None if r is None else r.reward, "confidence": None if r is None else r.confidence,
                "n_ratings": None if r is None else r.n_ratings,
                "n_raters": None if r is None else len(raters.get(row["id"], ())),
            })
            if aspects:
                rows[-1]["aspects"] = {a: None if r is None else r.aspects.get(a) for a in aspects}
    text, number = datasets.Value("string"), datasets.Value("float64")
    features = datasets.Features({
        "interaction_id": text, "messages": datasets.List({"role": text, "content": text}), "response": text,
        "model": text, "user_id": text, "conversation_id": text, "created_at": text, "tags": text,
        "reward": number, "confidence": number, "n_ratings": datasets.Value("int64"),
        "n_raters": datasets.Value("int64"), **({"aspects": {a: number for a in aspects}} if aspects else {})})
    info = datasets.DatasetInfo(description=f"ratingloop export: interactions with the rewards of signals run "
                                            f"{rewards.run_id} ({iso(rewards.created_at)})", features=features)
    dataset = datasets.Dataset.from_list(rows, features=features, info=info)
    dataset.save_to_disk(str(out))
    report.rows = len(rows)
    return report


def _message(m: dict[str, Any]) -> dict[str, str]:
    """Role and content as text (a list of parts: their text; anything else: its JSON)."""
    content = m.get("content")
    if isinstance(content, list):
        parts = [str(p["text"]) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        content = "".join(parts) if len(parts) == len(content) else json.dumps(content, ensure_ascii=False)
    return {"role": str(m.get("role")), "content": "" if content is None else str(content)}


def _raters(conn: Any, rewards: RunRewards) -> dict[str, set[str]]:
    """interaction id -> the raters of its counted ratings."""
    ids = [rid for rids in rewards.counted.values() for rid in rids]
    out: dict[str, set[str]] = {}
    R = t.ratings.c
    for start in range(0, len(ids), CHUNK):
        query = select(R.interaction_id, R.rater_id).where(R.id.in_(ids[start:start + CHUNK]))
        for iid, rater in conn.execute(query):
            out.setdefault(iid, set()).add(rater)
    return out
