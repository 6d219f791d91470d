"""Stage 1, the store: what every importer of another tool's export shares.

An importer is a module with `records(path, context)`, which turns the file's records into
`ImportRecord`s (ratingloop's own import lines, stored together or not at all), and `looks_like(record)`,
which says whether one decoded record is of its format (how a file in the wrong format is recognised).
Importers convert; they never write: every line goes through store/jsonl.py's `import_records`, so each
validation, idempotency and "a bad record stores nothing" rule of `ratingloop import` holds for them too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import orjson

from ratingloop.store.importers.scores import Notes, Reading, ScoreReader
from ratingloop.store.jsonl import ImportRecord
from ratingloop.store.records import Limits


@dataclass
class Context:
    """What an importer is told: the store's limits (aspects), the --map readings, and where to note
    what it leaves out on purpose."""

    limits: Limits
    maps: dict[str, Reading]
    notes: Notes

    def scores(self, tool: str) -> ScoreReader:
        return ScoreReader(self.maps, self.limits.aspects, self.notes, tool)


@dataclass(frozen=True)
class Format:
    name: str
    records: Callable[[str, Context], Iterator[ImportRecord]]
    looks_like: Callable[[Any], bool]
    shape: str  # one line: what its records look like, for "this file looks like ..." messages


def anon(*parts: str) -> str:
    """An anonymous rater's id, `anon:<parts joined by '#'>` (the store's column holds 200 characters: a hash
    stands in for parts too long for it, as store.writes.anonymous_rater does)."""
    name = "anon:" + "#".join(parts)
    return name if len(name) <= 200 else "anon:" + hashlib.sha256(name.encode()).hexdigest()[:40]


def content_id(prefix: str, *parts: Any) -> str:
    """An interaction id derived from content, for formats whose answers carry none: the same answer to the
    same prompt gets the same id in every record and on every import."""
    digest = hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"{prefix}-{digest[:32]}"
