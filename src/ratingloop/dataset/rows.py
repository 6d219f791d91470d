"""Stage 4, dataset (`ratingloop build`): the typed rows between the build steps, and the log of what was dropped.

`Answer` is one distinct (prompt, response) with its reward and the reward's sd; `Correction` is a
rater's better answer to one of them. A format turns these into `Row`s: the exact columns written,
plus the prompt key (for the split) and the rating ids behind the row (for the manifest). Every step
that removes something records it in a `FilterLog`, so a build can say which filter emptied it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

Message = dict[str, str]  # {"role": ..., "content": ...}
# where a row came from, beside what it trains on: never part of a row's identity (split.dedupe_rows merges them)
ID_COLUMNS = ("interaction_ids", "chosen_interaction_ids", "rejected_interaction_ids")


def prompt_key(prompt: list[Message]) -> str:
    """The identity of a prompt: the whole conversation before the answer, system message included."""
    return hashlib.sha256(orjson.dumps(prompt, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True)
class Answer:
    prompt: list[Message]
    prompt_key: str
    completion: str
    reward: float  # in [-1, 1], from signals (precision-weighted mean when duplicates were merged)
    sd: float  # the reward's standard deviation, reward units
    confidence: float  # in [0, 1]
    interaction_ids: tuple[str, ...]
    rating_ids: tuple[str, ...]
    judged: bool = False  # rated only by a reward model (`ratingloop label`), no human


@dataclass(frozen=True)
class Correction:
    text: str  # the rater's better answer
    rating_id: str
    corrected: Answer  # the answer it replaces (the rejected side of a DPO pair)


@dataclass(frozen=True)
class Row:
    data: dict[str, Any]  # exactly the columns written, in TRL's conversational shape
    prompt_key: str
    rating_ids: tuple[str, ...]


@dataclass
class FilterLog:
    """Ordered: filter name -> rows it removed, and a sentence saying why (for the manifest and errors)."""

    removed: dict[str, int] = field(default_factory=dict)
    why: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, n: int, why: str) -> None:
        self.removed[name] = self.removed.get(name, 0) + n
        self.why[name] = why

    def as_list(self) -> list[dict[str, Any]]:
        return [{"filter": k, "removed": n, "why": self.why[k]} for k, n in self.removed.items()]

    def explain(self) -> str:
        """The filters that removed anything, biggest first: '37 prompts have one answer only (...)'."""
        hits = sorted(((n, k) for k, n in self.removed.items() if n), reverse=True)
        return "; ".join(f"{n} {self.why[k]}" for n, k in hits) or "no filter removed anything"
