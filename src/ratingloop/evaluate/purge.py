"""Stage 6, evaluate: a deleted user's prompts out of the stored evaluation reports.

A report keeps, for each held-out prompt the judges voted on, the prompt's messages and both versions'
answers (`examples`), for a person to read what the numbers summarise. When a user is deleted, the
examples whose prompt is one of theirs go from the `evaluations` rows and from the loop's eval steps
(`loop_steps.detail` of rounds run before the loop stopped copying examples there); the figures stay,
being over many prompts, and `examples_removed` counts what went. Runs inside the deleting transaction
(store.delete_user).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select, update

from ratingloop.dataset import prompt_key
from ratingloop.evaluate.heldout import normalise
from ratingloop.store import Footprint
from ratingloop.store import tables as t


def purge_user(conn: Connection, footprint: Footprint) -> None:
    keys = {prompt_key(normalise(messages)) for messages in footprint.prompts}
    if not keys:
        return
    e, s = t.evaluations.c, t.loop_steps.c
    for row in conn.execute(select(e.id, e.report)).all():
        report = without_examples(row.report, keys)
        if report is not None:
            conn.execute(update(t.evaluations).where(e.id == row.id).values(report=report))
    for row in conn.execute(select(s.round_id, s.detail).where(s.name == "eval")).all():
        detail = without_examples(row.detail, keys)
        if detail is not None:
            conn.execute(update(t.loop_steps).where(s.round_id == row.round_id, s.name == "eval").values(detail=detail))


def without_examples(report: dict[str, Any] | None, keys: set[str]) -> dict[str, Any] | None:
    """The report without the examples whose prompt has one of `keys` (`dataset.prompt_key`); None when it
    has none of them."""
    examples = (report or {}).get("examples") or []
    kept = [x for x in examples if prompt_key(normalise(x.get("messages"))) not in keys]
    if report is None or len(kept) == len(examples):
        return None
    return {**report, "examples": kept,
            "examples_removed": int(report.get("examples_removed") or 0) + len(examples) - len(kept)}
