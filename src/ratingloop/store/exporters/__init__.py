"""Stage 1, the store: exporters to the formats training tools read (`ratingloop export --format F`).

    raw     ratingloop's own JSONL, which import reads back (store/jsonl.py)
    openai  OpenAI's chat fine-tuning JSONL; --weighted: a weight per answer from a signals run's rewards
    hf      a Hugging Face `datasets` dataset on disk, with each interaction's reward, confidence and raters

The store does not reach into the signals stage: whoever exports (cli.py) reads the signals run and hands
its rewards over as `RunRewards`, whose rows need only the attributes of `Reward`
(signals' InteractionSignal has them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterator, Mapping, Protocol

from sqlalchemy import Connection, select

from ratingloop.store import tables as t

FORMATS = ("raw", "openai", "hf")


class Reward(Protocol):
    """One interaction's reward as a signals run recorded it."""

    @property
    def reward(self) -> float: ...  # in [-1, 1]

    @property
    def confidence(self) -> float: ...  # in [0, 1]

    @property
    def n_ratings(self) -> int: ...  # ratings that counted; 0: unrated (the content prior's reward only)

    @property
    def aspects(self) -> dict[str, float]: ...


@dataclass(frozen=True)
class RunRewards:
    """What an exporter reads of one signals run."""

    run_id: str
    created_at: datetime
    rewards: Mapping[str, Reward]  # interaction id -> its reward (rated and unrated ones of the run)
    counted: Mapping[str, list[str]] = field(default_factory=dict)  # interaction id -> ids of ratings that counted


def interactions(conn: Connection, columns: list[str], page: int = 1000) -> Iterator[Any]:
    """Every interaction (the named columns), oldest first, a page at a time."""
    I = t.interactions  # noqa: E741 - the table, as store/jsonl.py names it
    after: tuple[Any, str] | None = None
    while True:
        query = select(*(I.c[c] for c in columns)).order_by(I.c.created_at, I.c.id).limit(page)
        if after is not None:
            query = query.where((I.c.created_at > after[0]) | ((I.c.created_at == after[0]) & (I.c.id > after[1])))
        rows = conn.execute(query).mappings().all()
        if not rows:
            return
        yield from rows
        after = (rows[-1]["created_at"], rows[-1]["id"])
