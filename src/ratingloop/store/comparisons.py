"""Stage 1, the store: the comparisons that count, read as tiers - for the stages that model them.

    for c in load_comparisons(engine):      # the latest per (rater, answers compared, aspect), oldest first
        c.tiers                             # (("a",), ("b", "c")): a beat b and c, which tied

A preference and a rank are the same observation here: an ordering of answers to one prompt in tiers,
best first (a preference "a" is ((a,), (b,)), "b" is ((b,), (a,)), "tie" is ((a, b),)). The store keeps
every comparison (ratings are append-only); like every rating (signals' `latest`), only the latest per
rater, aspect and set of answers counts: a later comparison by the same rater of the same answers, a
preference or a rank, supersedes the earlier one. A comparison of other answers (a subset, a superset)
is another observation and supersedes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from ratingloop.store import tables as t
from ratingloop.store.records import COMPARATIVE_KINDS

Tiers = tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Comparison:
    rating_id: str
    interaction_id: str  # the answer it is stored under (a preference's a)
    rater_id: str
    source: str
    kind: str  # preference | rank
    aspect: str
    tiers: Tiers  # best first; ids in one tier tied
    strength: float | None  # a preference's, in (0, 1]; None when not said (and for a rank)
    created_at: datetime


def tiers(row: Any) -> Tiers:
    """A stored comparison (a ratings row) as tiers of interaction ids, best first."""
    if row["kind"] == "rank":
        return tuple(tuple(tier) for tier in row["ranking"])
    a, b = row["interaction_id"], row["other_interaction_id"]
    value = float(row["value"])
    return ((a, b),) if value == 0 else ((a,), (b,)) if value > 0 else ((b,), (a,))


def load_comparisons(engine: Engine, *, latest: bool = True, naming: str | None = None) -> list[Comparison]:
    """Every comparison in arrival order (created_at, then id); with `latest`, only those that count; with
    `naming`, only those that name that interaction (the latest of which are the ones that count of all:
    a comparison supersedes only one of the same answers, so one naming it too)."""
    r = t.ratings.c
    query = select(t.ratings).where(r.kind.in_(COMPARATIVE_KINDS)).order_by(r.created_at, r.id)
    if naming is not None:
        ci = t.compared_interactions.c
        query = query.where(r.id.in_(select(ci.rating_id).where(ci.interaction_id == naming)))
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    out = [Comparison(row["id"], row["interaction_id"], row["rater_id"], row["source"], row["kind"], row["aspect"],
                      tiers(row), row["strength"], row["created_at"]) for row in rows]
    if not latest:
        return out
    last: dict[tuple[str, str, frozenset[str]], int] = {}
    for k, c in enumerate(out):
        last[(c.rater_id, c.aspect, frozenset(x for tier in c.tiers for x in tier))] = k
    return [out[k] for k in sorted(last.values())]
