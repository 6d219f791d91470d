"""Stage 1, the store: the one write path, shared by the HTTP API and bulk import.

A `WriteUnit` is what must land together or not at all: one API request (an interaction, a rating,
a batch of ratings) or one import line (an interaction with its ratings). `write_units` applies many
units in one transaction - the API's group commit and import's chunks both rely on this - yet judges
each unit on its own: a bad unit stores nothing and does not stop the others.

Idempotency: every rating has an idempotency key (the client's, one derived from an import line's
content, or ``auto:<id>``). The same key with the same body is a replay (200, the original rating);
the same key with a different body is a conflict (409). An interaction id works the same way.

Comparisons (a preference, a rank) name several answers: each must exist (404), answer the same prompt
as the rating's own (422: the same messages), and, sent with a feedback token, have been served to the
token's own user (403). Every answer one names gets a `compared_interactions` row.

Tombstones: a deleted user's earlier data is refused (410). Tombstones name users by `user_hash`, an
HMAC keyed by the server's secret (`Settings.feedback_secret()`), so every writer passes that key as
`user_key`; tombstones from before migration 0004 hold the plain SHA-256 and are checked as well.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator, Sequence

from sqlalchemy import Connection, Engine, Table, bindparam, func, insert, select
from sqlalchemy.exc import IntegrityError
from ulid import ULID

from ratingloop.errors import FieldError
from ratingloop.store import tables as t
from ratingloop.store.db import unavailable, write_transaction
from ratingloop.store.records import COMPARATIVE_KINDS, CleanInteraction, CleanRating, canonical_hash

log = logging.getLogger(__name__)

CHUNK = 500  # ids per IN (...) query; well under SQLite's and PostgreSQL's parameter limits


@dataclass
class WriteUnit:
    """What lands together or not at all. `vouched` is False for a feedback token: its ratings are
    the interaction's asker's own, whatever rater_id says, and their source is end_user."""

    interactions: list[CleanInteraction] = field(default_factory=list)
    ratings: list[CleanRating] = field(default_factory=list)
    vouched: bool = True
    live: bool = False  # sent through the API just now: a record without created_at is new, not history
    max_per_rater: int | None = None  # the most ratings its rater may have on one interaction, ever (a token's cap)


@dataclass
class UnitResult:
    errors: list[FieldError] = field(default_factory=list)
    interactions: list[tuple[str, int]] = field(default_factory=list)  # (id, 201 new | 200 existing)
    ratings: list[tuple[dict[str, Any], int]] = field(default_factory=list)  # (row, 201 | 200 replay)

    @property
    def ok(self) -> bool:
        return not self.errors


def user_hash(user_id: str, key: bytes) -> str:
    """How a tombstone names a user: HMAC-SHA256 keyed by the server's secret, so that a guessable id
    (an email, a sequence number) cannot be read back from the table by hashing candidates. The message
    carries its purpose, so it never equals a feedback token's MAC made with the same secret."""
    return hmac.new(key, b"ratingloop-deleted-user:" + user_id.encode(), hashlib.sha256).hexdigest()


def legacy_user_hash(user_id: str) -> str:
    """How tombstones named users before migration 0004 (unsalted SHA-256): still honoured on lookup."""
    return hashlib.sha256(user_id.encode()).hexdigest()


def new_id() -> str:
    return str(ULID())


def anonymous_rater(interaction_id: str, position: int | None = None) -> str:
    """Who rated when nobody is named: `anon:<interaction id>`, the asker of an interaction logged without a
    user_id; with a `position`, `anon:<interaction id>#<position>`, the vote at that place on its import line
    (`import --votes-are-distinct`). Where that would not fit the column (200), the id's hash stands in for it."""
    suffix = "" if position is None else f"#{position}"
    name = f"anon:{interaction_id}{suffix}"
    return name if len(name) <= 200 else f"anon:{hashlib.sha256(interaction_id.encode()).hexdigest()[:40]}{suffix}"


def write_units(engine: Engine, units: Sequence[WriteUnit], *, user_key: bytes) -> list[UnitResult]:
    """Apply `units` in one transaction; `user_key` is the key tombstones are made with (`user_hash`).
    Another process may insert the same key between our read and our write; the unique index then
    refuses the insert and we judge the units again."""
    for attempt in range(5):
        try:
            with write_transaction(engine) as conn:
                return apply_units(conn, units, user_key=user_key)
        except IntegrityError:
            if attempt == 4:
                raise
            log.debug("write race on attempt %d; re-judging %d units", attempt + 1, len(units))
    raise AssertionError("unreachable")


def write_each(engine: Engine, units: Sequence[WriteUnit], *, user_key: bytes) -> list[UnitResult | Exception]:
    """`write_units`, where a group the database refuses costs only the units it refuses: the group is written
    again unit by unit, and a unit that still fails holds its exception in its place. A database that cannot
    be used (`db.unavailable`) fails every unit of the group with its exception, without the retries."""
    try:
        return list(write_units(engine, units, user_key=user_key))
    except Exception as e:
        if unavailable(e) or len(units) == 1:
            return [e] * len(units)
    results: list[UnitResult | Exception] = []
    for unit in units:
        try:
            results += write_units(engine, [unit], user_key=user_key)
        except Exception as e:
            results.append(e)
    return results


def apply_units(conn: Connection, units: Sequence[WriteUnit], *, user_key: bytes) -> list[UnitResult]:
    """Judge every unit against the database and the units before it, then insert the good ones."""
    now = datetime.now(timezone.utc)
    view = _Snapshot.load(conn, units, user_key)
    results = []
    for unit in units:
        result, staged = _judge(unit, view, now)
        results.append(result)
        if result.ok:
            view.commit(staged)
    view.flush(conn, now)
    return results


@dataclass
class _Staged:
    interactions: dict[str, dict[str, Any]] = field(default_factory=dict)
    ratings: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # by (interaction, key)
    rating_ids: set[str] = field(default_factory=set)
    per_rater: dict[tuple[str, str], int] = field(default_factory=dict)  # (interaction, rater) -> ratings staged


@dataclass
class _Snapshot:
    """What the database holds for the ids and keys these units mention, plus what they add."""

    interactions: dict[str, dict[str, Any]]  # id -> {content_hash, user_id}, and messages for compared ones
    ratings_by_key: dict[tuple[str, str], dict[str, Any]]  # (interaction id, idempotency key) -> row
    rating_ids: set[str]
    tombstones: dict[str, datetime]  # user id -> when they were deleted (only the people these units name)
    per_rater: dict[tuple[str, str], int]  # (interaction, rater) -> ratings stored, for capped units only
    new_interactions: list[dict[str, Any]] = field(default_factory=list)
    new_ratings: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, conn: Connection, units: Sequence[WriteUnit], user_key: bytes) -> _Snapshot:
        iids = {i.id for u in units for i in u.interactions} | {r.interaction_id for u in units for r in u.ratings}
        compared = {x for u in units for r in _ratings(u) if r.kind in COMPARATIVE_KINDS for x in r.compared}
        iids |= compared
        keys = {r.idempotency_key for u in units for r in _ratings(u) if r.idempotency_key}
        rids = {r.id for u in units for r in _ratings(u) if r.id}
        people = {i.user_id for u in units for i in u.interactions if i.user_id}
        people |= {r.rater_id for u in units for r in _ratings(u) if r.rater_id}
        interactions = {
            row.id: {"content_hash": row.content_hash, "user_id": row.user_id}
            for row in _run_in(conn, _SELECT_INTERACTIONS, iids)
        }
        for row in _run_in(conn, _SELECT_MESSAGES, compared):  # a comparison's answers share one prompt
            interactions[row.id]["messages"] = row.messages
        people |= {i["user_id"] for i in interactions.values() if i["user_id"]}  # askers rate by default
        by_key = {(row.interaction_id, row.idempotency_key): row._asdict()
                  for row in _run_in(conn, _SELECT_RATINGS_BY_KEY, keys)}
        taken = {row.id for row in _run_in(conn, _SELECT_RATING_IDS, rids)}
        capped = {r.interaction_id for u in units if u.max_per_rater for r in u.ratings}
        per_rater = {(row.interaction_id, row.rater_id): row.n for row in _run_in(conn, _COUNT_PER_RATER, capped)}
        return cls(interactions, by_key, taken, find_tombstones(conn, people, user_key), per_rater)

    def deleted(self, user_id: str | None, created_at: datetime | None) -> datetime | None:
        """When `user_id` was deleted, if this record predates that deletion (so must stay gone)."""
        if not user_id or not self.tombstones:
            return None
        when = self.tombstones.get(user_id)
        if when is not None and (created_at is None or created_at <= when):
            return when
        return None

    def commit(self, staged: _Staged) -> None:
        for iid, row in staged.interactions.items():
            self.interactions[iid] = {"content_hash": row["content_hash"], "user_id": row["user_id"],
                                      "messages": row["messages"]}
            self.new_interactions.append(row)
        for key, row in staged.ratings.items():
            self.ratings_by_key[key] = row
            self.rating_ids.add(row["id"])
            self.new_ratings.append(row)
            pair = (row["interaction_id"], row["rater_id"])
            self.per_rater[pair] = self.per_rater.get(pair, 0) + 1

    def flush(self, conn: Connection, now: datetime) -> None:
        if self.new_interactions:
            conn.execute(_INSERT_INTERACTIONS, self.new_interactions)
        if self.new_ratings:
            raters = {r["rater_id"] for r in self.new_ratings}
            _insert_missing(conn, t.raters, [{"id": r, "first_seen_at": now} for r in sorted(raters)])
            conn.execute(_INSERT_RATINGS, self.new_ratings)
            links = [{"rating_id": r["id"], "interaction_id": iid} for r in self.new_ratings
                     if r["kind"] in COMPARATIVE_KINDS for iid in compared_ids(r)]
            if links:
                conn.execute(_INSERT_COMPARED, links)


def find_tombstones(conn: Connection, people: Iterable[str], user_key: bytes) -> dict[str, datetime]:
    """When each of `people` was deleted, for those who were: by the keyed hash, or the legacy one."""
    by_hash: dict[str, str] = {}
    for person in people:
        by_hash[user_hash(person, user_key)] = by_hash[legacy_user_hash(person)] = person
    found: dict[str, datetime] = {}
    for row in _run_in(conn, _SELECT_TOMBSTONES, by_hash):
        person = by_hash[row.user_hash]
        found[person] = max(row.deleted_at, found.get(person, row.deleted_at))
    return found


def compared_ids(row: Any) -> list[str]:
    """Every interaction a stored comparison names, its own first (a rating row or mapping)."""
    if row["ranking"] is not None:
        return [row["interaction_id"], *[x for tier in row["ranking"] for x in tier if x != row["interaction_id"]]]
    return [row["interaction_id"], row["other_interaction_id"]]


def _ratings(unit: WriteUnit) -> Iterator[CleanRating]:
    yield from unit.ratings
    for i in unit.interactions:
        yield from i.ratings


def _judge(unit: WriteUnit, view: _Snapshot, now: datetime) -> tuple[UnitResult, _Staged]:
    result, staged = UnitResult(), _Staged()
    for inter in unit.interactions:
        status = _judge_interaction(inter, unit.live, view, staged, now, result.errors)
        if status:
            result.interactions.append((inter.id, status))
    if result.errors:  # the ratings of an interaction that cannot be stored are moot
        return result, staged
    for rating in _ratings(unit):
        outcome = _judge_rating(rating, unit, view, staged, now, result.errors)
        if outcome:
            result.ratings.append(outcome)
    return result, staged


def _judge_interaction(inter: CleanInteraction, live: bool, view: _Snapshot, staged: _Staged, now: datetime,
                       errors: list[FieldError]) -> int | None:
    known = staged.interactions.get(inter.id) or view.interactions.get(inter.id)
    if known is not None:
        if known["content_hash"] != inter.content_hash:
            errors.append(FieldError("id", f"interaction {inter.id!r} already exists with different content; "
                                           "send a new id", 409))
            return None
        return 200
    when = view.deleted(inter.user_id, inter.created_at or (now if live else None))
    if when is not None:
        errors.append(FieldError("user_id", f"user {inter.user_id!r} was deleted at {when.isoformat()}; "
                                            "their earlier data is not accepted again", 410))
        return None
    staged.interactions[inter.id] = {
        "id": inter.id, "created_at": inter.created_at or now, "model": inter.model, "user_id": inter.user_id,
        "conversation_id": inter.conversation_id, "messages": inter.messages, "response": inter.response,
        "tags": inter.tags, "latency_ms": inter.latency_ms, "prompt_tokens": inter.prompt_tokens,
        "completion_tokens": inter.completion_tokens, "content_hash": inter.content_hash,
    }
    return 201


def _judge_rating(r: CleanRating, unit: WriteUnit, view: _Snapshot, staged: _Staged, now: datetime,
                  errors: list[FieldError]) -> tuple[dict[str, Any], int] | None:
    def bad(name: str, reason: str, status: int) -> None:
        errors.append(FieldError(f"{r.path}.{name}" if r.path else name, reason, status))

    vouched, live = unit.vouched, unit.live
    inter = staged.interactions.get(r.interaction_id) or view.interactions.get(r.interaction_id)
    if inter is None and not vouched:  # a token is issued only for a logged interaction: this one was deleted
        bad("interaction_id", f"interaction {r.interaction_id!r} was deleted with its user's data", 410)
        return None
    if inter is None:
        bad("interaction_id", f"no interaction {r.interaction_id!r}; log it first (POST /v1/interactions)", 404)
        return None
    asker = inter["user_id"] or anonymous_rater(r.interaction_id)
    refused = list(_judge_compared(r, inter, vouched, view, staged))
    for name, reason, status in refused:
        bad(name, reason, status)
    if refused:
        return None
    if not vouched and r.rater_id not in (None, asker):
        bad("rater_id", "a feedback token rates as the interaction's own user; "
                        "only the admin key may name another rater", 403)
        return None
    rater = r.rater_id or asker
    when = view.deleted(rater, r.created_at or (now if live else None))
    if when is not None:
        bad("rater_id", f"rater {rater!r} was deleted at {when.isoformat()}; "
                        "their earlier ratings are not accepted again", 410)
        return None
    source = "end_user" if not vouched else (r.source or "end_user")
    body = [r.interaction_id, rater, source, r.kind, r.aspect, r.value, r.scale_min, r.scale_max, r.signal, r.text]
    if r.kind in COMPARATIVE_KINDS:  # appended, so the hashes of the other kinds' stored rows stay valid
        body += [r.other_interaction_id, r.strength, r.ranking]
    body_hash = canonical_hash(body)
    rid = r.id or new_id()
    key = (r.interaction_id, r.idempotency_key or f"auto:{rid}")
    seen = staged.ratings.get(key) or view.ratings_by_key.get(key)
    if seen is not None:
        if seen["body_hash"] != body_hash:
            bad("idempotency_key", f"key {key[1]!r} was already used for a different rating of this interaction",
                409)
            return None
        return seen, 200
    pair = (r.interaction_id, rater)
    if unit.max_per_rater is not None:
        stored = view.per_rater.get(pair, 0) + staged.per_rater.get(pair, 0)
        if stored >= unit.max_per_rater:
            bad("interaction_id", f"{stored} ratings of this interaction by its user already; the limit is "
                                  f"{unit.max_per_rater} (RATINGLOOP_MAX_RATINGS_PER_RATER_INTERACTION)", 429)
            return None
    if r.id is not None and (r.id in view.rating_ids or r.id in staged.rating_ids):
        bad("id", f"rating id {r.id!r} already exists with another idempotency key", 409)
        return None
    row = {
        "id": rid, "interaction_id": r.interaction_id, "rater_id": rater,
        "source": source, "kind": r.kind, "aspect": r.aspect,
        "value": r.value, "scale_min": r.scale_min, "scale_max": r.scale_max, "signal": r.signal,
        "text": r.text, "created_at": r.created_at or now, "idempotency_key": key[1], "body_hash": body_hash,
        "other_interaction_id": r.other_interaction_id, "strength": r.strength, "ranking": r.ranking,
    }
    staged.ratings[key] = row
    staged.rating_ids.add(rid)
    staged.per_rater[pair] = staged.per_rater.get(pair, 0) + 1
    return row, 201


def _judge_compared(r: CleanRating, inter: dict[str, Any], vouched: bool, view: _Snapshot,
                    staged: _Staged) -> Iterator[tuple[str, str, int]]:
    """(field, reason, status) for each answer a comparison names that it may not: unknown, another prompt's,
    or, for a feedback token, not served to the token's own user."""
    if r.kind not in COMPARATIVE_KINDS:
        return
    prompt = canonical_hash(inter["messages"])
    for name, iid in r.compared_fields():
        other = staged.interactions.get(iid) or view.interactions.get(iid)
        if other is None:
            yield name, f"no interaction {iid!r}; log it first (POST /v1/interactions), or in a file put the " \
                        "comparison on the line of the answer that comes last", 404
        elif canonical_hash(other["messages"]) != prompt:
            yield name, f"{iid!r} answers another prompt than {r.interaction_id!r}; compare answers to one prompt", 422
        elif not vouched and (inter["user_id"] is None or other["user_id"] != inter["user_id"]):
            yield name, f"{iid!r} was not served to this token's user; a feedback token compares only answers " \
                        "served to its own user", 403


# The write path's statements, built once at import and reused: a reused statement object keeps
# SQLAlchemy from rebuilding it and recomputing its cache key on every group commit (measured: most
# of the CPU of a one-rating transaction went there). `IN` lists are expanding bind parameters.
_VALUES: Any = bindparam("values", expanding=True)
_SELECT_INTERACTIONS = select(t.interactions.c.id, t.interactions.c.content_hash, t.interactions.c.user_id).where(
    t.interactions.c.id.in_(_VALUES))
_SELECT_MESSAGES = select(t.interactions.c.id, t.interactions.c.messages).where(t.interactions.c.id.in_(_VALUES))
_SELECT_RATINGS_BY_KEY = select(t.ratings).where(t.ratings.c.idempotency_key.in_(_VALUES))
_COUNT_PER_RATER = select(t.ratings.c.interaction_id, t.ratings.c.rater_id, func.count().label("n")).where(
    t.ratings.c.interaction_id.in_(_VALUES)).group_by(t.ratings.c.interaction_id, t.ratings.c.rater_id)
_SELECT_RATING_IDS = select(t.ratings.c.id).where(t.ratings.c.id.in_(_VALUES))
_SELECT_TOMBSTONES = select(t.deleted_users.c.user_hash, t.deleted_users.c.deleted_at).where(
    t.deleted_users.c.user_hash.in_(_VALUES))
_INSERT_INTERACTIONS = insert(t.interactions)
_INSERT_RATINGS = insert(t.ratings)
_INSERT_COMPARED = insert(t.compared_interactions)
_INSERT_MISSING: dict[tuple[str, str], Any] = {}  # (dialect, table) -> INSERT ... ON CONFLICT DO NOTHING


def _run_in(conn: Connection, query: Any, values: Iterable[Any]) -> Iterator[Any]:
    """The rows of a `_SELECT_*` statement for `values`, CHUNK at a time (no query for no values)."""
    values = list(values)
    for start in range(0, len(values), CHUNK):
        yield from conn.execute(query, {"values": values[start:start + CHUNK]})


def _insert_missing(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING, in the dialect's own words."""
    if not rows:
        return
    key = (conn.dialect.name, table.name)
    statement = _INSERT_MISSING.get(key)
    if statement is None:
        from sqlalchemy.dialects import postgresql, sqlite

        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        statement = _INSERT_MISSING[key] = dialect.insert(table).on_conflict_do_nothing()
    conn.execute(statement, rows)


def count_rows(conn: Connection, table: Table) -> int:
    return conn.execute(select(func.count()).select_from(table)).scalar_one()
