"""Stage 1, the store: LangSmith runs with their feedback (`ratingloop import --format langsmith FILE`).

FILE is JSON Lines (or one JSON array) of the objects LangSmith's API and SDK return: runs (`Run`: `id`,
`name`, `run_type`, `inputs`, `outputs`, `start_time`, `end_time`, `extra`, `parent_run_id`, `trace_id`,
`prompt_tokens`, `completion_tokens`, ...) as `client.list_runs(...)` gives them, and feedback (`Feedback`:
`id`, `run_id`, `trace_id`, `key`, `score`, `value`, `comment`, `correction`, `feedback_source`,
`created_at`) as `client.list_feedback(run_ids=...)` gives it - one object per line, in any order, or a run
carrying its feedback in a `feedback` list. The field names are langsmith-sdk's `schemas.Run` and
`schemas.Feedback`; a line is a run when it has `run_type` and `inputs`, feedback when it has `key`.

- A root run (no parent_run_id), and any run that has feedback, is an interaction `langsmith:<run id>`: its
  prompt from `inputs`, its answer from `outputs` (chat.py lists the shapes read), the model from
  `extra.invocation_params` or `extra.metadata.ls_model_name`, the user from `extra.metadata.user_id`, the
  thread (`extra.metadata` thread_id, session_id or conversation_id) as conversation_id. Child runs without
  feedback are steps of their root's answer and are left out; runs that failed without output are noted.
- Feedback rates its `run_id` (or, with only a `trace_id`, the trace's root run; a run outside the file
  rates `langsmith:<run id>` if an earlier import stored it). `key` with `score` (or a categorical `value`)
  is read as scores.py says (`--map KEY=KIND[:LOW-HIGH]`, else the defaults: a boolean or `user_score`-like
  key is a thumbs, ...); `comment` is a comment and `correction` a correction (the better answer). Who rated
  follows `feedback_source.type`: `api` is the run's user (end_user), `app` (a person in LangSmith's UI) is
  `langsmith:<user_id>` (annotator), `model` / `auto_eval` is the judge `langsmith-eval:<key>`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, ValidationError

from ratingloop.errors import FieldError
from ratingloop.store.importers import chat
from ratingloop.store.importers.base import Context, Format, anon
from ratingloop.store.importers.files import Raw, starts_with_bracket
from ratingloop.store.importers.files import records as file_records
from ratingloop.store.importers.scores import ScoreReader
from ratingloop.store.jsonl import ImportRecord
from ratingloop.store.records import pydantic_errors

SOURCES = {"api": "end_user", "app": "annotator", "model": "judge", "auto_eval": "judge"}


class Source(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str = "api"
    user_id: str | None = None
    user_name: str | None = None


class Feedback(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    key: str
    run_id: str | None = None
    trace_id: str | None = None
    score: bool | int | float | None = None
    value: str | dict[str, Any] | float | None = None
    comment: str | None = None
    correction: str | dict[str, Any] | None = None
    feedback_source: Source | None = None
    created_at: datetime | None = None


class Run(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    name: str | None = None
    run_type: str
    inputs: dict[str, Any] | None = None
    outputs: dict[str, Any] | None = None
    error: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    extra: dict[str, Any] | None = None
    parent_run_id: str | None = None
    trace_id: str | None = None
    session_id: str | None = None
    tags: list[str] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    feedback: list[dict[str, Any]] | None = None


def is_run(row: Any) -> bool:
    return isinstance(row, dict) and "run_type" in row and "inputs" in row


def is_feedback(row: Any) -> bool:
    return isinstance(row, dict) and "key" in row and ("run_id" in row or "trace_id" in row)


def looks_like(record: Any) -> bool:
    return is_run(record) or is_feedback(record)


def records(path: str, context: Context) -> Iterator[ImportRecord]:
    raws = list(file_records(path))  # feedback may come before the run it rates: read the file whole
    array = path != "-" and starts_with_bracket(path)

    def where(number: int) -> str | None:
        return f"record {number}" if array else None

    feedback: dict[str, list[dict[str, Any]]] = {}  # run id -> its feedback rows given on their own lines
    for raw in raws:
        if is_feedback(raw.data):
            target = raw.data.get("run_id") or raw.data.get("trace_id")
            feedback.setdefault(str(target), []).append(raw.data)
    reader = context.scores("langsmith")
    for raw in raws:
        if raw.error is not None or not (is_run(raw.data) or is_feedback(raw.data)):
            error = raw.error or FieldError("line", "neither a LangSmith run (run_type, inputs) nor feedback (key, "
                                                    "run_id)")
            yield ImportRecord(raw.number, errors=[error], where=where(raw.number))
        elif is_run(raw.data):
            record = _run(raw, reader, context, bool(feedback.get(str(raw.data.get("id")))))
            record.where = where(raw.number)
            yield record
    for raw in raws:
        if raw.error is None and is_feedback(raw.data):
            ratings, errors = _feedback(raw.data, reader, None)
            yield ImportRecord(raw.number, ratings=ratings, errors=errors, where=where(raw.number))


def _run(raw: Raw, reader: ScoreReader, context: Context, rated_elsewhere: bool) -> ImportRecord:
    try:
        run = Run.model_validate(raw.data)
    except ValidationError as e:
        return ImportRecord(raw.number, errors=pydantic_errors(e))
    if run.parent_run_id and not run.feedback and not rated_elsewhere:
        return ImportRecord(raw.number)  # a step of its root run's answer
    if run.outputs is None and run.error:
        context.notes.add("langsmith: a run that failed without output left out")
        return ImportRecord(raw.number)
    prompt, response = chat.messages(run.inputs), chat.answer(run.outputs)
    if prompt is None or response is None:
        field = "inputs" if prompt is None else "outputs"
        return ImportRecord(raw.number, errors=[FieldError(field, "no chat messages or text in it that ratingloop "
                                                                  "reads (importers/chat.py lists the shapes)")])
    iid = f"langsmith:{run.id}"
    extra = run.extra or {}
    meta: dict[str, Any] = extra["metadata"] if isinstance(extra.get("metadata"), dict) else {}
    params: dict[str, Any] = extra["invocation_params"] if isinstance(extra.get("invocation_params"), dict) else {}
    line: dict[str, Any] = {"id": iid, "messages": prompt, "response": response}
    thread = next((meta[k] for k in ("thread_id", "session_id", "conversation_id") if isinstance(meta.get(k), str)),
                  None)
    for key, value in (("model", params.get("model") or params.get("model_name") or meta.get("ls_model_name")),
                       ("user_id", meta.get("user_id")), ("conversation_id", thread),
                       ("created_at", run.start_time.isoformat() if run.start_time else None),
                       ("prompt_tokens", run.prompt_tokens), ("completion_tokens", run.completion_tokens)):
        if value not in (None, ""):
            line[key] = value
    if run.start_time and run.end_time and run.end_time >= run.start_time:
        line["latency_ms"] = (run.end_time - run.start_time).total_seconds() * 1000
    line["tags"] = {"langsmith": {k: v for k, v in (("name", run.name), ("run_type", run.run_type),
                                                    ("trace_id", run.trace_id), ("project_id", run.session_id),
                                                    ("tags", run.tags)) if v not in (None, "", [])}}
    ratings: list[dict[str, Any]] = []
    errors: list[FieldError] = []
    for k, fb in enumerate(run.feedback or []):
        got, errs = _feedback(fb, reader, iid)
        ratings += got
        errors += [e.within(f"feedback[{k}]") for e in errs]
    line["ratings"] = ratings
    return ImportRecord(raw.number, [line], errors=errors)


def _feedback(data: dict[str, Any], reader: ScoreReader, on: str | None) -> tuple[list[dict[str, Any]],
                                                                                  list[FieldError]]:
    """A feedback object's ratings; `on`: the interaction of the run line it sits in (None: its own line)."""
    try:
        fb = Feedback.model_validate(data)
    except ValidationError as e:
        return [], pydantic_errors(e)
    source = fb.feedback_source or Source()
    kind = SOURCES.get(source.type, "annotator")
    who: dict[str, Any] = {"source": kind}
    if on is None:
        who["interaction_id"] = f"langsmith:{fb.run_id or fb.trace_id}"
    if kind == "annotator":
        person = source.user_id or source.user_name
        who["rater_id"] = f"langsmith:{person}" if person else anon("langsmith-feedback", fb.id)
    elif kind == "judge":
        who["rater_id"] = f"langsmith-eval:{fb.key}"
    if fb.created_at is not None:
        who["created_at"] = fb.created_at.isoformat()
    out: list[dict[str, Any]] = []
    value = fb.score if fb.score is not None else fb.value if isinstance(fb.value, str) else None
    rating, error = reader.rating(fb.key, value, "score" if fb.score is not None else "value")
    if error is not None:
        return [], [error]
    if rating is not None:
        out.append({**who, **rating})
    if fb.comment and fb.comment.strip():
        out.append({**who, "kind": "comment", "text": fb.comment})
    if fb.correction is not None:
        better = chat.answer(fb.correction)
        if not better or not better.strip():
            return [], [FieldError("correction", "no answer text in it (a string, or an object with output, "
                                                 "answer, content or text)")]
        out.append({**who, "kind": "correction", "text": better})
    return out, []


FORMAT = Format("langsmith", records, looks_like, "JSON Lines of LangSmith runs {run_type, inputs, outputs} and "
                                                  "feedback {run_id, key, score}")
