"""Stage 1, the store: what an interaction and a rating look like on the way in, and their validation.

One shape for the HTTP API and the import file (DESIGN.md's JSONL). Pydantic checks types; the
per-kind rules (thumbs are ±1, stars lie inside their scale, aspects come from the configured set)
are checked here by hand so every problem is reported with the field it belongs to.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ratingloop.errors import FieldError

KINDS = ("thumbs", "stars", "scale", "aspect", "comment", "correction", "implicit")
SOURCES = ("end_user", "annotator", "simulated", "judge")
Kind = Literal["thumbs", "stars", "scale", "aspect", "comment", "correction", "implicit"]
Source = Literal["end_user", "annotator", "simulated", "judge"]
Id = Field(default=None, min_length=1, max_length=200)

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

    model_config = ConfigDict(extra="forbid")

    interaction_id: str | None = Id
    rater_id: str | None = Id
    source: Source | None = None
    kind: Kind
    aspect: str | None = Field(default=None, min_length=1, max_length=64)
    value: bool | int | float | str | None = None
    scale: tuple[float, float] | None = None
    signal: str | None = Field(default=None, min_length=1, max_length=64)
    text: str | None = None
    created_at: datetime | None = None
    idempotency_key: str | None = Id
    id: str | None = Field(default=None, min_length=1, max_length=64)
    feedback_token: str | None = Field(default=None, exclude=True)


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None


class InteractionIn(BaseModel):
    """An interaction as logged or imported. Unknown top-level fields are kept in `tags`."""

    model_config = ConfigDict(extra="allow")

    id: str | None = Id
    messages: list[Message] = Field(min_length=1)
    response: str
    user_id: str | None = Id
    model: str | None = Id
    conversation_id: str | None = Id
    created_at: datetime | None = None
    tags: dict[str, Any] = Field(default_factory=dict)
    latency_ms: float | None = Field(default=None, ge=0)
    prompt_tokens: int | None = Field(default=None, ge=0)
    completion_tokens: int | None = Field(default=None, ge=0)
    ratings: list[RatingIn] = Field(default_factory=list)


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
    if iid is None:
        bad("interaction_id", "required")
    aspect = r.aspect or "overall"
    if r.kind == "aspect" and r.aspect in (None, "overall"):
        bad("aspect", f"required for kind 'aspect': one of {', '.join(limits.aspects[1:])}")
    elif aspect not in limits.aspects:
        bad("aspect", f"unknown aspect {aspect!r}; configured aspects: {', '.join(limits.aspects)}")
    value, scale = _check_value(r, bad)
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
    ), []


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
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        bad("value", f"kind {r.kind!r} needs a finite number, got {v!r}")
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
    content = {
        "messages": messages, "response": raw.response, "user_id": raw.user_id, "model": raw.model,
        "conversation_id": raw.conversation_id, "tags": tags, "latency_ms": raw.latency_ms,
        "prompt_tokens": raw.prompt_tokens, "completion_tokens": raw.completion_tokens,
    }
    content_hash = canonical_hash(content)
    iid = raw.id or new_id(content_hash)
    inter = CleanInteraction(id=iid, created_at=utc(raw.created_at), content_hash=content_hash,
                             **content)  # type: ignore[arg-type]
    errors: list[FieldError] = []
    for i, r in enumerate(raw.ratings):
        if r.interaction_id is not None and raw.id is not None and r.interaction_id != raw.id:
            errors.append(FieldError(f"ratings[{i}].interaction_id",
                                     f"{r.interaction_id!r} is not this line's id {raw.id!r}; leave it out"))
            continue
        rating, errs = clean_rating(r, limits, f"ratings[{i}]", interaction_id=iid)
        errors += errs
        if rating is not None:
            inter.ratings.append(rating)
    return (None, errors) if errors else (inter, [])
