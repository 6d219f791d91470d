"""Stage 3, signals: read ratings (and interaction topics) from the store into flat arrays.

Reads `ratings` and `interactions.tags` through SQLAlchemy Core, given an Engine; writes
`LoadedRatings`: the `RawRatings` the model fits plus the string ids behind each index. Ratings are
read in arrival order (created_at, then id) so that a later rating supersedes an earlier one.
Comparisons (preference, rank) come through `store.load_comparisons` as tiers; the ones that count
(the store's rule: the latest per rater, aspect and set of answers) go into `RawRatings.comparisons`,
and an answer rated only through comparisons is an item like any other.
Nothing is written to the store here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from sqlalchemy import Engine, select

from ratingloop.signals.comparisons import RawComparisons
from ratingloop.signals.normalise import KIND_CODE
from ratingloop.signals.observations import RawRatings
from ratingloop.store import Comparison, load_comparisons
from ratingloop.store import tables as t
from ratingloop.store.records import COMPARATIVE_KINDS


@dataclass(frozen=True)
class LoadedRatings:
    raw: RawRatings
    interaction_ids: list[str]  # item index -> interaction id
    rater_ids: list[str]  # rater index -> rater id
    topic: np.ndarray  # int (n_items,): index into topic_names, -1 where the interaction has no topic
    topic_names: tuple[str, ...]
    rating_ids: list[str] = field(default_factory=list)  # row index -> rating id (empty: arrays not from a store)
    last_rating_at: datetime | None = None  # the newest rating read (created_at)
    comparison_ids: list[str] = field(default_factory=list)  # raw.comparisons index -> rating id
    n_comparisons_read: int = 0  # comparisons read, superseded ones included

    @property
    def n_read(self) -> int:
        """Every rating read: ratings and comparisons, superseded ones included (a run's `n_ratings`)."""
        return len(self.raw.kind) + self.n_comparisons_read


def load_ratings(engine: Engine, topic_tag: str = "topic", raters: frozenset[str] | None = None) -> LoadedRatings:
    """Every stored rating, oldest first, and the comparisons that count (only `raters`' when given: a cohort's).
    A rating without a rater id counts as its own rater."""
    r = t.ratings.c
    query = select(r.id, r.interaction_id, r.rater_id, r.kind, r.aspect, r.value, r.scale_min, r.scale_max,
                   r.signal, r.text, r.created_at).where(r.kind.notin_(COMPARATIVE_KINDS))
    query = query.order_by(r.created_at, r.id)
    every = [c for c in load_comparisons(engine, latest=False) if raters is None or c.rater_id in raters]
    compared = _latest(every)
    with engine.connect() as conn:
        rows = [row for row in conn.execute(query) if raters is None or row.rater_id in raters]
        named = {x for c in compared for tier in c.tiers for x in tier}
        item_ids = sorted({row.interaction_id for row in rows} | named)
        tags = _tags(conn, item_ids) if item_ids else {}
    item_index = {iid: k for k, iid in enumerate(item_ids)}
    rated_by = [row.rater_id if row.rater_id is not None else f"?{row.id}" for row in rows]
    cmp_raters = [c.rater_id if c.rater_id is not None else f"?{c.rating_id}" for c in compared]
    rater_ids = sorted(set(rated_by) | set(cmp_raters))
    rater_index = {rid: k for k, rid in enumerate(rater_ids)}
    aspect_names = ("overall", *sorted(({row.aspect for row in rows} | {c.aspect for c in compared}) - {"overall"}))
    aspect_index = {a: k for k, a in enumerate(aspect_names)}

    def col(values: list[float | None]) -> np.ndarray:
        return np.asarray([np.nan if v is None else v for v in values], float)

    raw = RawRatings(
        rater=np.asarray([rater_index[x] for x in rated_by], np.int64),
        item=np.asarray([item_index[row.interaction_id] for row in rows], np.int64),
        kind=np.asarray([KIND_CODE[row.kind] for row in rows], np.int64),
        aspect=np.asarray([aspect_index[row.aspect] for row in rows], np.int64),
        value=col([row.value for row in rows]),
        scale_min=col([row.scale_min for row in rows]), scale_max=col([row.scale_max for row in rows]),
        n_raters=len(rater_ids), n_items=len(item_ids), aspects=aspect_names,
        signal=[row.signal for row in rows], text=[row.text for row in rows],
        comparisons=RawComparisons.from_tiers(
            [rater_index[x] for x in cmp_raters],
            [[[item_index[x] for x in tier] for tier in c.tiers] for c in compared],
            [aspect_index[c.aspect] for c in compared], [c.strength for c in compared],
            [item_index[c.interaction_id] for c in compared]) if compared else None,
    )
    topics = [str(tags.get(iid, {}).get(topic_tag)) if tags.get(iid, {}).get(topic_tag) is not None else None
              for iid in item_ids]
    topic_names = tuple(sorted({x for x in topics if x is not None}))
    topic_index = {name: k for k, name in enumerate(topic_names)}
    topic = np.asarray([topic_index[x] if x is not None else -1 for x in topics], np.int64)
    newest = max(([rows[-1].created_at] if rows else []) + [c.created_at for c in every[-1:]], default=None)
    return LoadedRatings(raw=raw, interaction_ids=item_ids, rater_ids=rater_ids, topic=topic, topic_names=topic_names,
                         rating_ids=[row.id for row in rows], last_rating_at=newest,
                         comparison_ids=[c.rating_id for c in compared], n_comparisons_read=len(every))


def _latest(comparisons: list[Comparison]) -> list[Comparison]:
    """The comparisons that count, in arrival order: the last per (rater, aspect, set of answers) - the rule of
    `store.load_comparisons(latest=True)`, applied here to the one read that also counts every comparison."""
    last: dict[tuple[str, str, frozenset[str]], int] = {}
    for k, c in enumerate(comparisons):
        last[(c.rater_id, c.aspect, frozenset(x for tier in c.tiers for x in tier))] = k
    return [comparisons[k] for k in sorted(last.values())]


def _tags(conn: object, item_ids: list[str], chunk: int = 500) -> dict[str, dict]:
    """Tags of the rated interactions, fetched in chunks (SQLite caps bound parameters)."""
    i = t.interactions.c
    out: dict[str, dict] = {}
    for k in range(0, len(item_ids), chunk):
        part = item_ids[k:k + chunk]
        for row in conn.execute(select(i.id, i.tags).where(i.id.in_(part))):  # type: ignore[attr-defined]
            out[row.id] = row.tags or {}
    return out
