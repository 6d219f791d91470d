"""Stage 1, the store: what an interaction and a rating look like on the way in, and their validation.

One shape for the HTTP API and the import file (DESIGN.md's JSONL). Pydantic checks types; the
per-kind rules (thumbs are ±1, stars lie inside their scale, aspects come from the configured set)
are checked here by hand so every problem is reported with the field it belongs to.

Comparisons (`preference`, `rank`) are ratings of several answers at once. A preference rates its
`interaction_id` (answer a) against `other_interaction_id` (answer b): value "a", "b" or "tie", stored
as +1 / -1 / 0 from a's side, with an optional `strength` in (0, 1]. A rank orders answers best first as
tiers of tied ids, `[["id1"], ["id2", "id3"]]`; it is stored under one of them (its `interaction_id`:
the import line's, else the one sent, else the first of its best tier). What the database must say
(the answers exist, share one prompt, and were served to a token's own user) is judged in writes.py.
"""

from __future__ import annotations

import hashlib
import math
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Annotated, Any, Callable, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from ratingloop.errors import FieldError

KINDS = ("thumbs", "stars", "scale", "aspect", "comment", "correction", "implicit", "preference", "rank")
COMPARATIVE_KINDS = ("preference", "rank")  # ratings of several answers to one prompt at once
SOURCES = ("end_user", "annotator", "simulated", "judge")
Kind = Literal["thumbs", "stars", "scale", "aspect", "comment", "correction", "implicit", "preference", "rank"]
Source = Literal["end_user", "annotator", "simulated", "judge"]

# "Accepted" must mean "storable and exportable on both databases": every bound below is something
# SQLite, PostgreSQL or the export's JSON cannot hold (NUL in text, integers past 64 bits, years past
# 9999 after moving to UTC), set well beyond any real rating, latency or timestamp.
MAX_NUMBER = 1e12  # |value|, scale bounds, latency_ms
MAX_TOKENS = 2**31 - 1  # token counts: a 32-bit column
MAX_JSON_INT = 2**63 - 1  # integers inside tags and messages
MAX_JSON_DEPTH = 32
EARLIEST = datetime(1900, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(3000, 1, 1, tzinfo=timezone.utc)
MAX_RANKED = 100  # answers in one rank
PREFERENCE_VALUES = {"a": 1.0, "b": -1.0, "tie": 0.0}  # stored from the first answer's side, as thumbs are


def text_problem(value: str, *, is_id: bool = False) -> str | None:
    """Why `value` cannot be stored as text everywhere (None when it can)."""
    if "\x00" in value:
        return "contains a NUL character (\\u0000), which PostgreSQL cannot store"
    if any("\ud800" <= c <= "\udfff" for c in value):
        return "contains a lone surrogate (\\ud800-\\udfff), which is not text"
    if is_id and any(unicodedata.category(c) == "Cc" for c in value):
        return "contains a control character; ids are printable text"
    return None


def _safe_text(value: Any) -> Any:
    problem = text_problem(value) if isinstance(value, str) else None
    if problem:
        raise ValueError(problem)
    return value


def _safe_id(value: Any) -> Any:
    problem = text_problem(value, is_id=True) if isinstance(value, str) else None
    if problem:
        raise ValueError(problem)
    return value


def _in_range(value: datetime) -> datetime:
    """The timestamp in UTC, if it lies between 1900 and 3000 there."""
    try:
        stamped = utc(value)
    except OverflowError:
        stamped = None
    if stamped is None or not EARLIEST <= stamped < LATEST:
        raise ValueError("must lie between 1900-01-01 and 3000-01-01 (UTC)")
    return stamped


def json_problems(value: Any, path: str, depth: int = 0) -> list[FieldError]:
    """What in a free-form JSON value (tags, message parts) no database or JSON reader can hold."""
    if isinstance(value, str):
        problem = text_problem(value)
        return [FieldError(path, problem)] if problem else []
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int):
        return [] if abs(value) <= MAX_JSON_INT else [FieldError(path, f"integer {_short(value)} exceeds 64 bits")]
    if isinstance(value, float):  # PostgreSQL's JSONB gives 1e20 back as an integer, past 64 bits
        ok = math.isfinite(value) and abs(value) <= MAX_JSON_INT
        return [] if ok else [FieldError(path, f"{value} is not a finite number within ±2^63")]
    if depth >= MAX_JSON_DEPTH:
        return [FieldError(path, f"nested deeper than {MAX_JSON_DEPTH} levels")]
    if isinstance(value, dict):
        out = []
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            problem = text_problem(key) if isinstance(key, str) else "keys must be strings"
            out += [FieldError(path or "body", f"key {_short(key)}: {problem}")] if problem else []
            out += json_problems(item, sub, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [e for i, item in enumerate(value) for e in json_problems(item, f"{path}[{i}]", depth + 1)]
    return [FieldError(path, f"{type(value).__name__} is not JSON")]


def integral(value: Any) -> Any:
    """Whole floats as integers (5.0 -> 5), as PostgreSQL's JSONB gives them back: stored that way on both
    databases, a value hashes and exports the same whichever database holds it."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [integral(v) for v in value]
    return value


def _safe_ranking(value: Any) -> Any:
    for tier in value or []:
        for iid in tier:
            problem = text_problem(iid, is_id=True)
            if problem:
                raise ValueError(f"{iid!r} {problem}")
    return value


Timestamp = Annotated[datetime, AfterValidator(_in_range)]
Id = Field(default=None, min_length=1, max_length=200)
RankedId = Annotated[str, Field(min_length=1, max_length=200)]

_THUMBS_WORDS = {"up": 1.0, "down": -1.0, "+1": 1.0, "-1": -1.0, "1": 1.0, "true": 1.0, "false": -1.0}


def _thumbs(v: object) -> float | None:
    """A thumbs value as +1.0/-1.0: 1/-1, true/false, "up"/"down"; None if it is none of those."""
    if isinstance(v, bool):
        return 1.0 if v else -1.0
    if isinstance(v, (int, float)):
        return float(v) if v in (1, -1) else None
    if isinstance(v, str):
        return _THUMBS_WORDS.get(v.strip().lower())
    return None


class RatingIn(BaseModel):
    """A rating as sent: to `POST /v1/feedback` (with `interaction_id`) or inside an import line."""

    model_config = ConfigDict(extra="forbid")  # NaN and infinities: refused by _check_value, by name

    interaction_id: str | None = Id
    rater_id: str | None = Id
    source: Source | None = None
    kind: Kind
    aspect: str | None = Field(default=None, min_length=1, max_length=64)
    value: bool | int | float | str | None = None
    scale: tuple[float, float] | None = None
    signal: str | None = Field(default=None, min_length=1, max_length=64)
    text: str | None = None
    created_at: Timestamp | None = None
    idempotency_key: str | None = Id
    id: str | None = Field(default=None, min_length=1, max_length=64)
    feedback_token: str | None = Field(default=None, exclude=True, max_length=1000)
    other_interaction_id: str | None = Field(
        default=None, min_length=1, max_length=200,
        description="kind preference: answer b, to the same prompt as interaction_id's answer a")
    strength: float | None = Field(
        default=None, description="kind preference, value a or b: how clearly the answer won, in (0, 1]")
    ranking: list[Annotated[list[RankedId], Field(max_length=MAX_RANKED)]] | None = Field(
        default=None, max_length=MAX_RANKED,
        description=f"kind rank: answers to one prompt, best first, as tiers of tied interaction ids: "
                    f'[["id1"], ["id2", "id3"]] (at least 2 ids, at most {MAX_RANKED}, none twice)')

    _ids = field_validator("interaction_id", "rater_id", "aspect", "signal", "idempotency_key", "id",
                           "other_interaction_id")(_safe_id)
    _texts = field_validator("value", "text", "feedback_token")(_safe_text)
    _ranking = field_validator("ranking")(_safe_ranking)


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None


class InteractionIn(BaseModel):
    """An interaction as logged or imported. Unknown top-level fields are kept in `tags`."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    id: str | None = Id
    messages: list[Message] = Field(min_length=1)
    response: str
    user_id: str | None = Id
    model: str | None = Id
    conversation_id: str | None = Id
    created_at: Timestamp | None = None
    tags: dict[str, Any] = Field(default_factory=dict)
    latency_ms: float | None = Field(default=None, ge=0, le=MAX_NUMBER)
    prompt_tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS)
    completion_tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS)
    ratings: list[RatingIn] = Field(default_factory=list)

    _ids = field_validator("id", "user_id", "model", "conversation_id")(_safe_id)
    _texts = field_validator("response")(_safe_text)


@dataclass(frozen=True)
class Limits:
    """The configurable part of validation (from Settings)."""

    aspects: tuple[str, ...] = ("overall", "relevance", "accuracy", "helpfulness")
    implicit_signals: tuple[str, ...] = ("copy", "regenerate", "edit", "share", "abandon")
    max_text_chars: int = 10_000


@dataclass
class CleanRating:
    """A rating that passed validation; `rater_id` may still be None (attributed at write time)."""

    interaction_id: str
    rater_id: str | None
    source: str | None
    kind: str
    aspect: str
    value: float | None
    scale_min: float | None
    scale_max: float | None
    signal: str | None
    text: str | None
    created_at: datetime | None
    idempotency_key: str | None
    id: str | None
    path: str = ""  # where this rating sat in its request, for error messages ("items[3]")
    other_interaction_id: str | None = None  # preference: answer b
    strength: float | None = None  # preference: in (0, 1], None when not said
    ranking: list[list[str]] | None = None  # rank: tiers of ids, best first

    @property
    def compared(self) -> tuple[str, ...]:
        """Every interaction this rating names, its own first (one for every kind but a comparison)."""
        if self.ranking is not None:
            return (self.interaction_id, *[i for tier in self.ranking for i in tier if i != self.interaction_id])
        if self.other_interaction_id is not None:
            return (self.interaction_id, self.other_interaction_id)
        return (self.interaction_id,)

    def compared_fields(self) -> list[tuple[str, str]]:
        """(field, interaction id) of every other interaction a comparison names, for error messages."""
        if self.ranking is not None:
            return [(f"ranking[{i}][{j}]", iid) for i, tier in enumerate(self.ranking) for j, iid in enumerate(tier)
                    if iid != self.interaction_id]
        if self.other_interaction_id is not None:
            return [("other_interaction_id", self.other_interaction_id)]
        return []


@dataclass
class CleanInteraction:
    id: str
    created_at: datetime | None
    model: str | None
    user_id: str | None
    conversation_id: str | None
    messages: list[dict[str, Any]]
    response: str
    tags: dict[str, Any]
    latency_ms: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    content_hash: str
    ratings: list[CleanRating] = field(default_factory=list)


def canonical_hash(obj: Any) -> str:
    return hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).hexdigest()


def utc(dt: datetime | None) -> datetime | None:
    """Timestamps are stored in UTC; a timestamp without a zone is taken to be UTC already."""
    if dt is None:
        return None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def pydantic_errors(err: ValidationError | Any, prefix: str = "") -> list[FieldError]:
    """Pydantic's errors as FieldErrors with paths like ``ratings[0].value``."""
    out = []
    for e in err.errors(include_url=False):
        loc = [p for p in e["loc"] if p != "body"]
        # a union type reports one error per member (value.bool, value.int, ...): name the field only
        if e["type"] not in ("missing", "extra_forbidden") and len(loc) > 1 and loc[-1] in (
            "bool", "int", "float", "str", "list[dict[str,any]]"
        ):
            loc = loc[:-1]
        path = prefix
        for part in loc:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        reason = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
        if e["type"] == "json_invalid":
            out.append(FieldError(path or "body", "not valid JSON: " + e["msg"].removeprefix("Invalid JSON: ")))
            continue
        if e["type"] not in ("missing", "extra_forbidden") and "input" in e:
            reason += f" (got {_short(e['input'])})"
        out.append(FieldError(path or "body", reason))
    # collapse the per-member duplicates of a union into one error per field
    seen: dict[str, FieldError] = {}
    for fe in out:
        seen.setdefault(fe.field, fe)
    return list(seen.values())


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def clean_rating(r: RatingIn, limits: Limits, path: str = "", interaction_id: str | None = None) -> tuple[
    CleanRating | None, list[FieldError]
]:
    """Check one rating's per-kind rules; return it normalised, or the list of what is wrong."""
    errors: list[FieldError] = []

    def bad(name: str, reason: str) -> None:
        errors.append(FieldError(f"{path}.{name}" if path else name, reason))

    iid = r.interaction_id or interaction_id
    if iid is None and r.kind == "rank" and r.ranking and r.ranking[0]:
        iid = r.ranking[0][0]  # a rank sent alone is the rating of its best answer
    if iid is None:
        bad("interaction_id", "required")
    aspect = r.aspect or "overall"
    if r.kind == "aspect" and r.aspect in (None, "overall"):
        bad("aspect", f"required for kind 'aspect': one of {', '.join(limits.aspects[1:])}")
    elif aspect not in limits.aspects:
        bad("aspect", f"unknown aspect {aspect!r}; configured aspects: {', '.join(limits.aspects)}")
    value, scale = _check_comparison(r, iid, bad) if r.kind in COMPARATIVE_KINDS else _check_value(r, bad)
    _check_comparison_fields(r, bad)
    if r.kind == "implicit" and r.signal not in limits.implicit_signals:
        what = "required" if r.signal is None else f"unknown signal {r.signal!r}"
        bad("signal", f"{what} for kind 'implicit'; one of {', '.join(limits.implicit_signals)}")
    elif r.kind != "implicit" and r.signal is not None:
        bad("signal", f"only implicit ratings carry a signal, not kind {r.kind!r}")
    if r.kind in ("comment", "correction") and not (r.text and r.text.strip()):
        bad("text", f"required for kind {r.kind!r}" + (": the better answer" if r.kind == "correction" else ""))
    if r.text is not None and len(r.text) > limits.max_text_chars:
        bad("text", f"{len(r.text)} characters; the limit is {limits.max_text_chars}")
    if errors:
        return None, errors
    assert iid is not None
    return CleanRating(
        interaction_id=iid, rater_id=r.rater_id, source=r.source, kind=r.kind, aspect=aspect, value=value,
        scale_min=scale[0] if scale else None, scale_max=scale[1] if scale else None, signal=r.signal,
        text=r.text, created_at=utc(r.created_at), idempotency_key=r.idempotency_key, id=r.id, path=path,
        other_interaction_id=r.other_interaction_id, strength=None if r.strength is None else float(r.strength),
        ranking=[list(tier) for tier in r.ranking] if r.ranking is not None else None,
    ), []


def _check_comparison_fields(r: RatingIn, bad: Any) -> None:
    """The comparison fields belong to their kind only."""
    if r.kind != "preference":
        for name in ("other_interaction_id", "strength"):
            if getattr(r, name) is not None:
                bad(name, f"only kind 'preference' has {name}, not kind {r.kind!r}")
    if r.kind != "rank" and r.ranking is not None:
        bad("ranking", f"only kind 'rank' has a ranking, not kind {r.kind!r}")


def _check_comparison(r: RatingIn, iid: str | None, bad: Any) -> tuple[float | None, None]:
    """A preference's value (+1 a, -1 b, 0 tie) or a rank's tiers; reports problems through `bad`."""
    if r.scale is not None:
        bad("scale", f"a {r.kind} has no scale")
    if r.kind == "rank":
        if r.value is not None:
            bad("value", "a rank has no value: its ranking says it, best first")
        _check_ranking(r.ranking, iid, bad)
        return None, None
    if r.other_interaction_id is None:
        bad("other_interaction_id", "required for kind 'preference': the answer compared with interaction_id's")
    elif r.other_interaction_id == iid:
        bad("other_interaction_id", f"{iid!r} is interaction_id itself; compare two answers")
    value = PREFERENCE_VALUES.get(r.value) if isinstance(r.value, str) else None
    if value is None:
        bad("value", f"a preference is 'a', 'b' or 'tie' (a: interaction_id's answer is better), got {_short(r.value)}")
    s = r.strength
    if s is not None and not (math.isfinite(s) and 0 < s <= 1):
        bad("strength", f"{_short(s)} is not in (0, 1]")
    elif s is not None and value == 0.0:
        bad("strength", "a tie has no strength; leave it out")
    return value, None


def _check_ranking(ranking: list[list[str]] | None, iid: str | None, bad: Any) -> None:
    if ranking is None:
        bad("ranking", 'required for kind \'rank\': tiers of interaction ids, best first, e.g. [["id1"], ["id2"]]')
        return
    seen: set[str] = set()
    problems = 0
    for i, tier in enumerate(ranking):
        if not tier:
            bad(f"ranking[{i}]", "an empty tier; leave it out")
            problems += 1
        for j, x in enumerate(tier):
            if x in seen:
                bad(f"ranking[{i}][{j}]", f"lists {x!r} twice; an answer has one place (tied answers share a tier)")
                problems += 1
            seen.add(x)
    if problems:
        return
    if len(seen) < 2:
        bad("ranking", f"ranks {len(seen)} answer; a rank needs at least 2")
    elif len(seen) > MAX_RANKED:
        bad("ranking", f"ranks {len(seen)} answers; the limit is {MAX_RANKED}")
    elif iid is not None and iid not in seen:
        bad("ranking", f"does not list {iid!r}, the interaction it rates")


def _check_value(r: RatingIn, bad: Any) -> tuple[float | None, tuple[float, float] | None]:
    """The rating's value as a float and its scale, per kind; reports problems through `bad`."""
    v = r.value
    if r.kind in ("comment", "correction"):
        if v is not None:
            bad("value", f"kind {r.kind!r} carries text, not a value")
        return None, None
    if r.kind == "thumbs":
        if r.scale is not None and tuple(r.scale) != (-1, 1):
            bad("scale", "thumbs have no scale: send value 1/-1, true/false or 'up'/'down'")
        thumb = _thumbs(v)
        if thumb is None:
            bad("value", f"thumbs must be 1 or -1 (also true/false, 'up'/'down'), got {v!r}")
        return thumb, (-1.0, 1.0)
    if r.kind == "implicit" and v is None:
        return None, None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        bad("value", f"kind {r.kind!r} needs a finite number, got {_short(v)}")
        return None, None
    if abs(v) > MAX_NUMBER or not math.isfinite(v):
        bad("value", f"{_short(v)} is not a finite number within ±{MAX_NUMBER:g}")
        return None, None
    if r.kind == "implicit":
        return float(v), None
    scale = r.scale or ((1.0, 5.0) if r.kind in ("stars", "aspect") else None)
    if scale is None:
        bad("scale", "required for kind 'scale': [min, max], e.g. [1, 7]")
        return None, None
    lo, hi = scale
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        bad("scale", f"must be [min, max] with min < max, got {list(scale)}")
        return None, None
    if max(abs(lo), abs(hi)) > MAX_NUMBER:
        bad("scale", f"bounds beyond the limit of ±{MAX_NUMBER:g}: {list(scale)}")
        return None, None
    if not lo <= v <= hi:
        bad("value", f"{v} is outside the scale [{lo:g}, {hi:g}]")
        return None, None
    return float(v), (float(lo), float(hi))


def clean_interaction(
    raw: InteractionIn, limits: Limits, new_id: Callable[[str], str]
) -> tuple[CleanInteraction | None, list[FieldError]]:
    """An interaction (and the ratings in it) checked and normalised, or what is wrong with it.

    `new_id(content_hash)` names an interaction sent without an id: a fresh ULID for the API, a
    content-derived id for imports, so that importing the same file twice adds nothing.
    """
    tags = {**(raw.model_extra or {}), **raw.tags}
    messages = [m.model_dump(exclude_unset=True) for m in raw.messages]
    errors = json_problems(messages, "messages") + json_problems(raw.tags, "tags")
    errors += json_problems(raw.model_extra or {}, "")
    if errors:
        return None, errors
    tags, messages = integral(tags), integral(messages)
    content = {
        "messages": messages, "response": raw.response, "user_id": raw.user_id, "model": raw.model,
        "conversation_id": raw.conversation_id, "tags": tags, "latency_ms": raw.latency_ms,
        "prompt_tokens": raw.prompt_tokens, "completion_tokens": raw.completion_tokens,
    }
    content_hash = canonical_hash(content)
    iid = raw.id or new_id(content_hash)
    inter = CleanInteraction(id=iid, created_at=utc(raw.created_at), content_hash=content_hash,
                             **content)  # type: ignore[arg-type]
    for i, r in enumerate(raw.ratings):
        comparison = r.kind in COMPARATIVE_KINDS  # may sit on the line of any answer it compares
        if not comparison and r.interaction_id is not None and raw.id is not None and r.interaction_id != raw.id:
            errors.append(FieldError(f"ratings[{i}].interaction_id",
                                     f"{r.interaction_id!r} is not this line's id {raw.id!r}; leave it out"))
            continue
        rating, errs = clean_rating(r, limits, f"ratings[{i}]", interaction_id=iid)
        errors += errs
        if rating is not None and iid not in rating.compared:
            errors.append(FieldError(f"ratings[{i}].interaction_id",
                                     f"a comparison on this line must compare its interaction {iid!r}; it compares "
                                     + ", ".join(repr(x) for x in rating.compared)))
        elif rating is not None:
            inter.ratings.append(rating)
    return (None, errors) if errors else (inter, [])
