"""Stage 1, the store: Langfuse's blob-storage export (`ratingloop import --format langfuse PATH`).

PATH is the export's folder (the `{project_id}/` that holds `observations_v2/`, `scores/` and, in the legacy
mode, `traces/` and `observations/`, each of `*.jsonl` or `*.json` files, gzipped or not), or one JSON Lines
file holding its rows. Field names follow Langfuse's "Blob Storage Export Field Reference"; the public API's
camelCase objects (`traceId`, `observationId`, `dataType`, `stringValue`, `startTime`, `model`) read too.

- Each GENERATION observation (an LLM call) is an interaction, `langfuse:<observation id>`: its messages from
  `input` and its response from `output` (chat.py lists the shapes read), `provided_model_name` as model, the
  trace's `user_id` and `session_id` (as conversation_id), `start_time`, the latency from start to end, and
  `usage_details` input/output as token counts. Other observations (spans, events) are steps, not answers.
- Each score is a record of its own, rating the observation it names; a trace-level score (no
  observation_id, or one naming a span) rates the trace's last GENERATION in the export. A score naming an
  observation outside the export rates `langfuse:<that id>` if an earlier import stored it.
- A score's `name` says what kind of rating it is (scores.py: `--map NAME=KIND[:LOW-HIGH]`, else the
  defaults: BOOLEAN a thumbs, `user-feedback`-like names a thumbs, `stars` on 1-5, ...); a TEXT score and a
  score's `comment` are comments. Who rated follows `source`: API scores are the trace's user's (end_user),
  ANNOTATION scores their author's (`langfuse:<author_user_id>`, else an anonymous annotator per score),
  EVAL scores a judge's (`langfuse-eval:<name>`, source judge). A score seen twice (a later export window)
  is read once, its last update.

The export is read into memory (scores name observations in other files, in any order): import a large
export a time window (or a few) at a time.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from ratingloop.errors import FieldError, RatingloopError
from ratingloop.store.importers import chat
from ratingloop.store.importers.base import Context, Format, anon
from ratingloop.store.importers.files import Raw, json_array, json_lines, starts_with_bracket
from ratingloop.store.jsonl import ImportRecord
from ratingloop.store.records import pydantic_errors

SOURCES = {"API": "end_user", "ANNOTATION": "annotator", "EVAL": "judge"}
OBSERVATION_TYPES = {"GENERATION", "SPAN", "EVENT", "AGENT", "TOOL", "CHAIN", "RETRIEVER", "EVALUATOR", "EMBEDDING",
                     "GUARDRAIL"}
FOLDERS = {"traces": "trace", "observations": "observation", "observations_v2": "observation", "scores": "score"}


def _alias(*names: str) -> Any:
    return Field(default=None, validation_alias=AliasChoices(*names))


class Observation(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    trace_id: str | None = _alias("trace_id", "traceId")
    type: str | None = None
    name: str | None = None
    start_time: datetime | None = _alias("start_time", "startTime")
    end_time: datetime | None = _alias("end_time", "endTime")
    input: Any = None
    output: Any = None
    model: str | None = _alias("provided_model_name", "model", "providedModelName")
    usage: dict[str, Any] | None = _alias("usage_details", "usageDetails", "usage")
    user_id: str | None = _alias("user_id", "userId")
    session_id: str | None = _alias("session_id", "sessionId")
    trace_name: str | None = _alias("trace_name", "traceName")
    environment: str | None = None
    tags: list[str] | None = None
    release: str | None = None
    prompt_name: str | None = _alias("prompt_name", "promptName")
    prompt_version: int | None = _alias("prompt_version", "promptVersion")


class Score(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    name: str
    trace_id: str | None = _alias("trace_id", "traceId")
    observation_id: str | None = _alias("observation_id", "observationId")
    value: float | None = None
    string_value: str | None = _alias("string_value", "stringValue")
    data_type: str = Field(default="NUMERIC", validation_alias=AliasChoices("data_type", "dataType"))
    source: str = "API"
    comment: str | None = None
    timestamp: datetime | None = None
    updated_at: datetime | None = _alias("updated_at", "updatedAt")
    author_user_id: str | None = _alias("author_user_id", "authorUserId")


class Trace(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    user_id: str | None = _alias("user_id", "userId")
    session_id: str | None = _alias("session_id", "sessionId")
    name: str | None = None
    tags: list[str] | None = None


def kind_of(row: Any) -> str | None:
    """What a row of one mixed file is: a score, an observation or a trace."""
    if not isinstance(row, dict):
        return None
    if "data_type" in row or "dataType" in row or ("name" in row and "value" in row and row.get("source") in SOURCES):
        return "score"
    if ("trace_id" in row or "traceId" in row) and (
            str(row.get("type")).upper() in OBSERVATION_TYPES or "parent_observation_id" in row
            or "parentObservationId" in row or "provided_model_name" in row):
        return "observation"
    if "id" in row and "timestamp" in row and "trace_id" not in row:
        return "trace"
    return None


def looks_like(record: Any) -> bool:
    return kind_of(record) in ("score", "observation")


def records(path: str, context: Context) -> Iterator[ImportRecord]:
    rows = _rows(path)
    traces: dict[str, Trace] = {}
    for _, raw in rows["trace"]:
        try:
            trace = Trace.model_validate(raw.data)
            traces[trace.id] = trace
        except ValidationError:
            pass  # a trace row only adds its user and session to its observations
    export = _Export(traces, context)
    number = 0
    for where, raw in rows["observation"]:
        number += 1
        yield export.observation(number, where, raw)
    for where, raw in _latest(rows["score"]):
        number += 1
        yield export.score(number, where, raw)


class _Export:
    def __init__(self, traces: dict[str, Trace], context: Context) -> None:
        self.traces, self.context = traces, context
        self.reader = context.scores("langfuse")
        self.generations: set[str] = set()
        self.others: dict[str, str] = {}  # a non-generation observation -> its trace
        self.last: dict[str, tuple[datetime | None, str]] = {}  # trace -> its last generation (start, id)

    def observation(self, number: int, where: str, raw: Raw) -> ImportRecord:
        if raw.error is not None:
            return ImportRecord(number, errors=[raw.error], where=where)
        try:
            obs = Observation.model_validate(raw.data)
        except ValidationError as e:
            return ImportRecord(number, errors=pydantic_errors(e), where=where)
        if (obs.type or "GENERATION").upper() != "GENERATION":
            if obs.trace_id:
                self.others[obs.id] = obs.trace_id
            return ImportRecord(number, where=where)
        line, errors = self._line(obs)
        if line is not None:
            self.generations.add(obs.id)
            if obs.trace_id and (obs.trace_id not in self.last or _later(obs.start_time, self.last[obs.trace_id][0])):
                self.last[obs.trace_id] = (obs.start_time, obs.id)
        return ImportRecord(number, [line] if line else [], errors=errors, where=where)

    def _line(self, obs: Observation) -> tuple[dict[str, Any] | None, list[FieldError]]:
        prompt, response = chat.messages(obs.input), chat.answer(obs.output)
        if prompt is None:
            return None, [FieldError("input", "no chat messages or prompt text in it (importers/chat.py lists the "
                                              "shapes read)")]
        if response is None:
            return None, [FieldError("output", "no answer text in it (importers/chat.py lists the shapes read)")]
        trace = self.traces.get(obs.trace_id or "")
        line: dict[str, Any] = {"id": f"langfuse:{obs.id}", "messages": prompt, "response": response}
        usage = obs.usage or {}
        for key, value in (("model", obs.model), ("user_id", obs.user_id or (trace.user_id if trace else None)),
                           ("conversation_id", obs.session_id or (trace.session_id if trace else None)),
                           ("created_at", obs.start_time.isoformat() if obs.start_time else None),
                           ("prompt_tokens", usage.get("input")), ("completion_tokens", usage.get("output"))):
            if value not in (None, ""):
                line[key] = value
        if obs.start_time and obs.end_time and obs.end_time >= obs.start_time:
            line["latency_ms"] = (obs.end_time - obs.start_time).total_seconds() * 1000
        tags = {k: v for k, v in (("trace_id", obs.trace_id), ("name", obs.name),
                                  ("trace_name", obs.trace_name or (trace.name if trace else None)),
                                  ("environment", obs.environment),
                                  ("tags", obs.tags or (trace.tags if trace else None)), ("release", obs.release),
                                  ("prompt_name", obs.prompt_name), ("prompt_version", obs.prompt_version))
                if v not in (None, "", [])}
        line["tags"] = {"langfuse": tags}
        return line, []

    def score(self, number: int, where: str, raw: Raw) -> ImportRecord:
        if raw.error is not None:
            return ImportRecord(number, errors=[raw.error], where=where)
        try:
            s = Score.model_validate(raw.data)
        except ValidationError as e:
            return ImportRecord(number, errors=pydantic_errors(e), where=where)
        target, error = self._target(s)
        ratings, errors = self._ratings(s, target) if error is None else ([], [error])
        return ImportRecord(number, ratings=ratings, errors=errors, where=where)

    def _target(self, s: Score) -> tuple[str, FieldError | None]:
        """The interaction a score rates."""
        if s.observation_id and s.observation_id in self.generations:
            return f"langfuse:{s.observation_id}", None
        if s.observation_id and s.observation_id not in self.others:
            return f"langfuse:{s.observation_id}", None  # outside this export: stored by an earlier import, or 404
        trace = s.trace_id or self.others.get(s.observation_id or "")
        if trace and trace in self.last:
            return f"langfuse:{self.last[trace][1]}", None
        return "", FieldError("trace_id", f"trace {trace!r} has no GENERATION observation in this export; import "
                                          "the export that holds it together with this one (one folder)")

    def _ratings(self, s: Score, target: str) -> tuple[list[dict[str, Any]], list[FieldError]]:
        source = SOURCES.get(s.source.upper(), "end_user")
        who: dict[str, Any] = {"interaction_id": target, "source": source}
        if source == "annotator":
            who["rater_id"] = f"langfuse:{s.author_user_id}" if s.author_user_id else anon("langfuse-annotation", s.id)
        elif source == "judge":
            who["rater_id"] = f"langfuse-eval:{s.name}"
        if s.timestamp is not None:
            who["created_at"] = s.timestamp.isoformat()
        out: list[dict[str, Any]] = []
        kind = s.data_type.upper()
        if kind == "TEXT" or self.reader.text_kind(s.name) == "comment":
            text = s.string_value if s.string_value is not None else s.comment
            return ([{**who, "kind": "comment", "text": text}] if text and text.strip() else []), []
        value: Any = {"BOOLEAN": None if s.value is None else bool(s.value),
                      "CATEGORICAL": s.string_value}.get(kind, s.value)
        rating, error = self.reader.rating(s.name, value, "value" if kind != "CATEGORICAL" else "string_value")
        if error is not None:
            return [], [error]
        if rating is not None:
            out.append({**who, **rating})
        if s.comment and s.comment.strip() and self.reader.text_kind(s.name) != "skip":
            out.append({**who, "kind": "comment", "text": s.comment})
        return out, []


def _later(a: datetime | None, b: datetime | None) -> bool:
    return a is not None and (b is None or a.replace(tzinfo=None) > b.replace(tzinfo=None))


def _latest(scores: list[tuple[str, Raw]]) -> list[tuple[str, Raw]]:
    """Each score once: a score exported again after an update (a later window) counts as its last update."""
    best: dict[Any, tuple[str, Raw]] = {}
    for item in scores:
        data = item[1].data
        key = data.get("id") if isinstance(data, dict) and isinstance(data.get("id"), str) else id(item)
        seen = best.get(key)
        if seen is None or str(data.get("updated_at") or data.get("updatedAt") or "") >= str(
                seen[1].data.get("updated_at") or seen[1].data.get("updatedAt") or ""):
            best[key] = item
    return list(best.values())


def _rows(path: str) -> dict[str, list[tuple[str, Raw]]]:
    """The export's rows by kind, each with where it sits ("scores/2024-05-29.jsonl line 3")."""
    rows: dict[str, list[tuple[str, Raw]]] = {"trace": [], "observation": [], "score": []}
    root = Path(path)
    if root.is_dir():
        found = sorted(p for p in root.rglob("*") if p.is_file() and p.parent.name in FOLDERS)
        if not found:
            raise RatingloopError(f"{path}: no Langfuse export here (no files under observations_v2/, "
                                  "observations/, traces/ or scores/)")
        for file in found:
            for raw in _read(file):
                rows[FOLDERS[file.parent.name]].append((_where(file.relative_to(root), raw), raw))
        return rows
    for raw in _read(Path(path)):
        kind = kind_of(raw.data) if raw.error is None else "observation"
        if kind is None:  # reported with the observations, in the file's order
            raw = Raw(raw.number, error=FieldError("line", "neither a Langfuse observation (trace_id, type, "
                                                           "start_time) nor a score (name, value, data_type)"))
        rows[kind or "observation"].append((f"line {raw.number}", raw))
    return rows


def _read(file: Path) -> Iterator[Raw]:
    name = file.name.removesuffix(".gz")
    if name.endswith(".csv"):
        raise RatingloopError(f"{file}: a CSV export; choose JSONL (or JSON) as the blob-storage file format")
    if name.endswith(".json") and starts_with_bracket(str(file)):
        yield from json_array(str(file))
    else:
        yield from json_lines(str(file))


def _where(relative: Path, raw: Raw) -> str:
    return f"{relative} {'line' if relative.name.removesuffix('.gz').endswith('.jsonl') else 'record'} {raw.number}"


FORMAT = Format("langfuse", records, looks_like, "a blob-storage export folder (observations_v2/, scores/) or "
                                                 "JSON Lines of its observation and score rows")
