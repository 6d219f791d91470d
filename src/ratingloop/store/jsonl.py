"""Stage 1, the store: bulk import and raw export in DESIGN.md's JSONL (one interaction per line,
with its ratings). Export writes what import reads, so export -> import -> export is byte-identical.

Import judges each line on its own: a bad line is reported with its number and stores nothing; the
good lines around it are stored. Lines go through the same write path as the HTTP API, a chunk of
lines per transaction; a chunk the database refuses is written again line by line, so a line only the
database objects to is reported like any other bad line. Ratings without an idempotency key get one
derived from their content, and interactions without an id get one derived from theirs, so importing
a file twice adds nothing.

Who rated: a rating without a `rater_id` is the interaction's asker's (its `user_id`, else `anon:<id>`).
So identical ratings on one line without rater_id or key are one rating (one rater, one derived key):
the report names each line where that happened and how many collapsed. `votes_are_distinct=True` says
such ratings are votes of different people: each becomes the vote of its own anonymous rater,
`anon:<interaction id>#<its position on the line>`, the same on every import of the file.

Comparisons (a preference, a rank) name other interactions, which must be stored already or sit on an
earlier line; export writes each comparison on the line of the last answer it names, with its own
`interaction_id` when that is another line's, so export -> import never refers forward.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable, Iterator

import orjson
from pydantic import ValidationError
from sqlalchemy import Connection, Engine, select

from ratingloop.errors import FieldError, StoreError
from ratingloop.store import tables as t
from ratingloop.store.db import driver_message, unavailable
from ratingloop.store.records import (
    COMPARATIVE_KINDS,
    PREFERENCE_VALUES,
    CleanInteraction,
    CleanRating,
    InteractionIn,
    Limits,
    RatingIn,
    clean_interaction,
    clean_rating,
    pydantic_errors,
)
from ratingloop.store.writes import WriteUnit, anonymous_rater, write_each

log = logging.getLogger(__name__)

CHUNK_LINES = 1000


@dataclass
class ImportReport:
    lines: int = 0
    interactions_new: int = 0
    interactions_existing: int = 0
    ratings_new: int = 0
    ratings_existing: int = 0
    skipped_deleted: int = 0  # lines of users who were deleted: never brought back, not an error
    bad: list[tuple[int, list[FieldError]]] = field(default_factory=list)
    # (line, collapsed, of) for stored lines where `collapsed` of their `of` ratings repeated another one
    # exactly without rater_id or key, and were stored once
    collapsed: list[tuple[int, int, int]] = field(default_factory=list)
    # where a record that is not a line of the file sits ("scores/1.jsonl line 3", "record 12"), by its number
    places: dict[int, str] = field(default_factory=dict)

    def place(self, number: int) -> str:
        return self.places.get(number, f"line {number}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "lines": self.lines, "interactions_new": self.interactions_new,
            "interactions_existing": self.interactions_existing, "ratings_new": self.ratings_new,
            "ratings_existing": self.ratings_existing, "skipped_deleted": self.skipped_deleted,
            "bad_lines": [{"line": n, **self._where(n), "errors": [{"field": e.field, "reason": e.reason}
                                                                  for e in errs]} for n, errs in self.bad],
            "collapsed": [{"line": n, **self._where(n), "ratings": k, "of": of} for n, k, of in self.collapsed],
        }

    def _where(self, number: int) -> dict[str, str]:
        return {"where": self.places[number]} if number in self.places else {}


@dataclass
class ImportRecord:
    """One record of a file: the import lines it becomes, stored together or not at all (an importer of another
    tool's format turns one of its records - an OASST tree, an HH pair - into several lines)."""

    number: int  # its line in the file, or its position among the file's records (then `where` names it)
    lines: list[Any] = field(default_factory=list)  # decoded import lines; a comparison names earlier ones only
    ratings: list[Any] = field(default_factory=list)  # ratings (with interaction_id) of answers stored already
    errors: list[FieldError] = field(default_factory=list)  # found before conversion: the record stores nothing
    labels: list[str] | None = None  # what to call each line in messages ("chosen"); None: a line of this format
    where: str | None = None  # how to name the record when it is not `line <number>` of the file
    size: int = 1  # the progress it stands for (a JSONL line: its bytes)


@dataclass
class _Unit:
    number: int
    unit: WriteUnit
    collapsed: int  # ratings that repeat another of the record's without rater_id or key


def import_lines(engine: Engine, lines: Iterable[bytes], limits: Limits,
                 progress: Callable[[int], None] | None = None, *, user_key: bytes,
                 votes_are_distinct: bool = False) -> ImportReport:
    """Import JSONL lines (bytes, without or with their newline); `progress(n_bytes)` after each chunk.
    `user_key`: the server's secret, which tombstones are keyed with (store.writes.user_hash).
    `votes_are_distinct`: each rating without a rater_id is its own anonymous rater's (the module's notes)."""
    return import_records(engine, (_decode(number, line) for number, line in enumerate(lines, start=1)), limits,
                          progress, user_key=user_key, votes_are_distinct=votes_are_distinct)


def import_records(engine: Engine, records: Iterable[ImportRecord], limits: Limits,
                   progress: Callable[[int], None] | None = None, *, user_key: bytes,
                   votes_are_distinct: bool = False) -> ImportReport:
    """`import_lines` for records of several lines each (importers/): every record is judged whole and a bad one
    stores nothing; `progress(n)` after each chunk with the records' summed `size`."""
    report = ImportReport()
    chunk: list[_Unit] = []
    chunk_lines = chunk_size = 0
    for record in records:
        report.lines = max(report.lines, record.number)
        if record.where is not None:
            report.places[record.number] = record.where
        chunk_size += record.size
        unit, collapsed, errors = _parse_record(record, limits, votes_are_distinct)
        if errors:
            report.bad.append((record.number, errors))
        elif unit is not None:
            chunk.append(_Unit(record.number, unit, collapsed))
            chunk_lines += len(unit.interactions) + len(unit.ratings)
        if len(chunk) >= CHUNK_LINES or chunk_lines >= CHUNK_LINES:
            _write_chunk(engine, chunk, report, user_key)
            chunk, chunk_lines = [], 0
            if progress:
                progress(chunk_size)
            chunk_size = 0
    _write_chunk(engine, chunk, report, user_key)
    if progress:
        progress(chunk_size)
    report.bad.sort(key=lambda item: item[0])
    return report


def _decode(number: int, line: bytes) -> ImportRecord:
    if not line.strip():
        return ImportRecord(number, size=len(line))
    try:
        return ImportRecord(number, [orjson.loads(line)], size=len(line))
    except orjson.JSONDecodeError as e:
        return ImportRecord(number, errors=[FieldError("line", f"not valid JSON: {e}")], size=len(line))


def _parse_record(record: ImportRecord, limits: Limits, votes_are_distinct: bool
                  ) -> tuple[WriteUnit | None, int, list[FieldError]]:
    """The record as one write unit, with how many of its ratings collapse onto another, or what is wrong."""
    if record.errors:
        return None, 0, record.errors
    if not record.lines and not record.ratings:
        return None, 0, []  # a blank line
    unit, collapsed, errors = WriteUnit(), 0, []
    for k, data in enumerate(record.lines):
        label = record.labels[k] if record.labels else None
        parsed, errs = _parse_line(data, limits, votes_are_distinct)
        if parsed is None:
            errors += [e.within(label) for e in errs] if label else errs
            continue
        inter, n = parsed
        if label:  # errors the write path finds name the line's label too
            for r in inter.ratings:
                r.path = f"{label}.{r.path}"
        unit.interactions.append(inter)
        collapsed += n
    for k, data in enumerate(record.ratings):
        rating, errs = _parse_rating(data, f"ratings[{k}]", limits)
        errors += errs
        if rating is not None:
            unit.ratings.append(rating)
    collapsed += _key(unit.ratings, votes_are_distinct, None)
    return (None, 0, errors) if errors else (unit, collapsed, [])


def _parse_line(data: Any, limits: Limits, votes_are_distinct: bool
                ) -> tuple[tuple[CleanInteraction, int] | None, list[FieldError]]:
    """The line's interaction with its ratings keyed, and how many of them collapse onto another."""
    if not isinstance(data, dict):
        return None, [FieldError("line", f"expected a JSON object, got {type(data).__name__}")]
    try:
        raw = InteractionIn.model_validate(data)
    except ValidationError as e:
        return None, pydantic_errors(e)
    inter, errors = clean_interaction(raw, limits, lambda content_hash: "i-" + content_hash[:26])
    if inter is None:
        return None, errors
    return (inter, _key(inter.ratings, votes_are_distinct, inter.id)), []


def _parse_rating(data: Any, path: str, limits: Limits) -> tuple[CleanRating | None, list[FieldError]]:
    """A rating of an answer stored before (it names its interaction_id)."""
    if not isinstance(data, dict):
        return None, [FieldError(path, f"expected a JSON object, got {type(data).__name__}")]
    try:
        raw = RatingIn.model_validate(data)
    except ValidationError as e:
        return None, pydantic_errors(e, path)
    if raw.interaction_id is None:
        return None, [FieldError(f"{path}.interaction_id", "required for a rating outside an interaction's line")]
    return clean_rating(raw, limits, path)


def _key(ratings: list[CleanRating], votes_are_distinct: bool, owner: str | None) -> int:
    """Give each rating without an idempotency key one derived from its content (and, with `votes_are_distinct`,
    each rating without a rater its own anonymous rater); return how many of them collapse onto another."""
    unkeyed: list[str] = []  # derived keys of the ratings that say neither who rated nor their key
    for k, r in enumerate(ratings):
        if votes_are_distinct and r.rater_id is None:
            r.rater_id = anonymous_rater(owner or r.interaction_id, k)
        if r.idempotency_key is None:
            basis: list[Any] = [r.interaction_id, r.rater_id, r.source, r.kind, r.aspect, r.value, r.scale_min,
                                r.scale_max, r.signal, r.text, r.created_at.isoformat() if r.created_at else None]
            if r.kind in COMPARATIVE_KINDS:  # appended: the other kinds' keys stay what earlier imports derived
                basis += [r.other_interaction_id, r.strength, r.ranking]
            r.idempotency_key = "import:" + hashlib.sha256(orjson.dumps(basis)).hexdigest()[:40]
            if r.rater_id is None:
                unkeyed.append(r.idempotency_key)
    return len(unkeyed) - len(set(unkeyed))


def _write_chunk(engine: Engine, chunk: list[_Unit], report: ImportReport, user_key: bytes) -> None:
    if not chunk:
        return
    results = write_each(engine, [item.unit for item in chunk], user_key=user_key)
    for item, result in zip(chunk, results, strict=True):
        number = item.number
        if isinstance(result, Exception):
            if unavailable(result):
                raise StoreError(f"the database stopped answering at {report.place(number)}: "
                                 f"{driver_message(result)}. Lines before it are stored; importing the file "
                                 "again adds only what is missing")
            report.bad.append((number, [FieldError("line", f"the database refused it ({type(result).__name__}: "
                                                           f"{driver_message(result)})")]))
            continue
        if result.errors:
            if all(e.status == 410 for e in result.errors):
                report.skipped_deleted += 1
            else:
                report.bad.append((number, result.errors))
            continue
        if item.collapsed:
            rated = sum(len(i.ratings) for i in item.unit.interactions) + len(item.unit.ratings)
            report.collapsed.append((number, item.collapsed, rated))
        for _, status in result.interactions:
            if status == 201:
                report.interactions_new += 1
            else:
                report.interactions_existing += 1
        for _, status in result.ratings:
            if status == 201:
                report.ratings_new += 1
            else:
                report.ratings_existing += 1


# -- export -----------------------------------------------------------------------------------------

def export_lines(engine: Engine, page: int = 1000) -> Iterator[bytes]:
    """Every interaction with its ratings, oldest first, one JSON line each (with the newline). A comparison
    goes on the line of the last answer it names (the module's notes), after that line's other ratings."""
    I, R = t.interactions, t.ratings
    after: tuple[Any, str] | None = None
    waiting = _Comparisons()
    with engine.connect() as conn:
        while True:
            query = select(I).order_by(I.c.created_at, I.c.id).limit(page)
            if after is not None:
                later = (I.c.created_at > after[0]) | ((I.c.created_at == after[0]) & (I.c.id > after[1]))
                query = query.where(later)
            rows = conn.execute(query).mappings().all()
            if not rows:
                if waiting.unwritten:  # an answer they name was stored, with an earlier time, during the export
                    log.warning("export: %d comparisons left out: an answer they name arrived during the export; "
                                "export again to include them", len(waiting.unwritten))
                return
            by_interaction: dict[str, list[dict[str, Any]]] = {}
            ids = [row["id"] for row in rows]
            query_r = (select(R).where(R.c.interaction_id.in_(ids), R.c.kind.notin_(COMPARATIVE_KINDS))
                       .order_by(R.c.created_at, R.c.id))
            for r in conn.execute(query_r).mappings():
                by_interaction.setdefault(r["interaction_id"], []).append(export_rating(r))
            for home, r in waiting.completed_by(conn, ids):
                by_interaction.setdefault(home, []).append(
                    export_rating(r) if r["interaction_id"] == home else {"interaction_id": r["interaction_id"],
                                                                          **export_rating(r)})
            for row in rows:
                yield orjson.dumps(export_interaction(row, by_interaction.get(row["id"], []))) + b"\n"
            after = (rows[-1]["created_at"], rows[-1]["id"])


class _Comparisons:
    """The comparisons export has met but not yet written: each waits for the last answer it names. One
    comparison is first met on the page of the first of its answers, so none of them was written before."""

    def __init__(self) -> None:
        self.unwritten: dict[str, set[str]] = {}  # comparison (rating id) -> its answers not yet written
        self.naming: dict[str, list[str]] = {}  # interaction id -> the waiting comparisons that name it

    def completed_by(self, conn: Connection, ids: list[str]) -> list[tuple[str, Any]]:
        """(line, rating row) of the comparisons whose last answer is among `ids` (a page, in export order);
        rows by time of rating."""
        C, R = t.compared_interactions.c, t.ratings.c
        met = {rid for chunk in _chunks(ids) for rid in conn.execute(
            select(C.rating_id).where(C.interaction_id.in_(chunk))).scalars()} - set(self.unwritten)
        for chunk in _chunks(sorted(met)):
            for rid, iid in conn.execute(select(C.rating_id, C.interaction_id).where(C.rating_id.in_(chunk))):
                self.unwritten.setdefault(rid, set()).add(iid)
                self.naming.setdefault(iid, []).append(rid)
        home: dict[str, str] = {}
        for iid in ids:
            for rid in self.naming.pop(iid, []):
                self.unwritten[rid].discard(iid)
                if not self.unwritten[rid]:
                    del self.unwritten[rid]
                    home[rid] = iid
        rows = [r for chunk in _chunks(sorted(home)) for r in conn.execute(
            select(t.ratings).where(R.id.in_(chunk))).mappings()]
        rows.sort(key=lambda r: (r["created_at"], r["id"]))
        return [(home[r["id"]], r) for r in rows]


def _chunks(values: list[str], size: int = 500) -> Iterator[list[str]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def number(value: float | None) -> float | int | None:
    """4.0 -> 4: ratings read as people wrote them."""
    return int(value) if value is not None and float(value).is_integer() else value


def _sorted_keys(value: Any) -> Any:
    """JSON with its object keys sorted: PostgreSQL's JSONB reorders keys and SQLite keeps them as sent,
    so only a canonical order makes an export byte-identical whichever database it came from."""
    return orjson.loads(orjson.dumps(value, option=orjson.OPT_SORT_KEYS))


def export_interaction(row: Any, ratings: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"id": row["id"], "messages": _sorted_keys(row["messages"]),
                           "response": row["response"]}
    for key in ("user_id", "model", "conversation_id"):
        if row[key] is not None:
            out[key] = row[key]
    out["created_at"] = iso(row["created_at"])
    if row["tags"]:
        out["tags"] = _sorted_keys(row["tags"])
    for key in ("latency_ms", "prompt_tokens", "completion_tokens"):
        if row[key] is not None:
            out[key] = row[key]
    out["ratings"] = ratings
    return out


PREFERENCE_NAMES = {v: k for k, v in PREFERENCE_VALUES.items()}  # +1 -> "a", -1 -> "b", 0 -> "tie"


def export_rating(r: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"id": r["id"], "rater_id": r["rater_id"], "source": r["source"], "kind": r["kind"],
                           "aspect": r["aspect"]}
    if r["kind"] == "preference":
        out["other_interaction_id"] = r["other_interaction_id"]
        out["value"] = PREFERENCE_NAMES[float(r["value"])]
        if r["strength"] is not None:
            out["strength"] = number(r["strength"])
    elif r["kind"] == "rank":
        out["ranking"] = r["ranking"]
    elif r["value"] is not None:
        out["value"] = number(r["value"])
    if r["scale_min"] is not None and r["kind"] != "thumbs":
        out["scale"] = [number(r["scale_min"]), number(r["scale_max"])]
    for key in ("signal", "text"):
        if r[key] is not None:
            out[key] = r[key]
    out["created_at"] = iso(r["created_at"])
    out["idempotency_key"] = r["idempotency_key"]
    return out
