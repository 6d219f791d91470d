"""Stage 1, the store: Open WebUI's feedback export (`ratingloop import --format openwebui FILE`).

The file is what Admin Panel > Evaluations > Feedbacks > Export gives: one JSON array of feedback rows, each as
Open WebUI stores it (backend/open_webui/models/feedbacks.py: `id`, `user_id`, `type` "rating", `data`, `meta`,
`snapshot`, `created_at`, `updated_at` in epoch seconds). `data` is the rated message's annotation: `rating`
(1 / -1), `details.rating` (1-10), `reason`, `comment`, `tags`, `model_id` and, when the prompt had several
answers, `sibling_model_ids`; `meta.message_id` names the rated message in `snapshot.chat`, the whole chat
(`chat.history.messages`, a tree of messages linked by `parentId` / `childrenIds`).

- The rated message is an interaction (`openwebui:<message id>`) whose messages are the chat above it, asked
  and rated by the feedback's user (its `user_id`), in the chat as `conversation_id`, by its `model`.
- `rating` is a thumbs, `details.rating` a `scale` rating on [1, 10], and `reason` and `comment` one `comment`
  ("accurate information; the second step was wrong"), all dated `updated_at`.
- Sibling answers to the same prompt (other models in the chat, or the arena) are interactions too, and the
  thumbs is also a comparison: a `preference` of the rated answer over each sibling (thumbs up) or of each
  sibling over it (thumbs down), as Open WebUI's own leaderboard reads it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, ValidationError

from ratingloop.errors import FieldError
from ratingloop.store.importers.base import Context, Format
from ratingloop.store.importers.files import records as file_records
from ratingloop.store.importers.scores import thumb
from ratingloop.store.jsonl import ImportRecord
from ratingloop.store.records import pydantic_errors


class Feedback(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    user_id: str
    type: str
    data: dict[str, Any] | None = None
    meta: dict[str, Any] | None = None
    snapshot: dict[str, Any] | None = None
    created_at: int
    updated_at: int


def looks_like(record: Any) -> bool:
    return isinstance(record, dict) and record.get("type") == "rating" and "data" in record and "meta" in record


def records(path: str, context: Context) -> Iterator[ImportRecord]:
    for raw in file_records(path):
        where = f"record {raw.number}"
        if raw.error is not None:
            yield ImportRecord(raw.number, errors=[raw.error], where=where)
            continue
        lines, labels, errors = convert(raw.data, context)
        yield ImportRecord(raw.number, lines, errors=errors, labels=labels, where=where)


def convert(data: Any, context: Context) -> tuple[list[dict[str, Any]], list[str], list[FieldError]]:
    try:
        fb = Feedback.model_validate(data)
    except ValidationError as e:
        return [], [], pydantic_errors(e)
    if fb.type != "rating":
        context.notes.add(f"openwebui: feedback of type {fb.type!r} left out (only ratings are read)")
        return [], [], []
    history = _history(fb.snapshot)
    rated_id = (fb.meta or {}).get("message_id")
    if history is None:
        return [], [], [FieldError("snapshot.chat", "no chat history (snapshot.chat.chat.history.messages): the "
                                                    "conversation the rating is about is not in the export")]
    if not isinstance(rated_id, str) or not isinstance(history.get(rated_id), dict):
        return [], [], [FieldError("meta.message_id", f"{rated_id!r} is not a message of the snapshot's chat")]
    if history[rated_id].get("role") != "assistant":
        return [], [], [FieldError("meta.message_id", f"{rated_id!r} is a {history[rated_id].get('role')!r} "
                                                      "message, not an answer")]
    chat_id = (fb.meta or {}).get("chat_id")
    prompt, errors = _above(history, rated_id)
    if errors:
        return [], [], errors
    rated = _line(history[rated_id], prompt, fb.user_id, chat_id)
    siblings = [_line(history[m], prompt, fb.user_id, chat_id) for m in _siblings(history, rated_id)]
    info = fb.data or {}
    up = thumb(info.get("rating"))
    when = _time(fb.updated_at)
    ratings: list[dict[str, Any]] = []
    if up is not None:
        ratings.append({"kind": "thumbs", "value": 1 if up else -1, "created_at": when})
        ratings += [{"kind": "preference", "other_interaction_id": s["id"], "value": "a" if up else "b",
                     "created_at": when} for s in siblings]
    details = info.get("details") or (data.get("details") if isinstance(data, dict) else None)
    detail = details.get("rating") if isinstance(details, dict) else None
    if detail is not None:
        ratings.append({"kind": "scale", "value": detail, "scale": [1, 10], "created_at": when})
    said = "; ".join(x for x in (str(info.get("reason") or "").replace("_", " ").strip(),
                                 str(info.get("comment") or "").strip()) if x)
    if said:
        ratings.append({"kind": "comment", "text": said, "created_at": when})
    rated["ratings"] = ratings
    return [rated, *siblings], [f"message {rated_id}"] + [f"sibling {s['id']}" for s in siblings], []


def _history(snapshot: dict[str, Any] | None) -> dict[str, Any] | None:
    chat = (snapshot or {}).get("chat")
    inner = chat.get("chat") if isinstance(chat, dict) and isinstance(chat.get("chat"), dict) else chat
    history = inner.get("history") if isinstance(inner, dict) else None
    messages = history.get("messages") if isinstance(history, dict) else None
    if isinstance(messages, list):  # some versions keep them as a list
        messages = {m.get("id"): m for m in messages if isinstance(m, dict)}
    return messages if isinstance(messages, dict) and messages else None


def _above(history: dict[str, Any], message_id: str) -> tuple[list[dict[str, Any]], list[FieldError]]:
    """The conversation above a message, oldest first."""
    out: list[dict[str, Any]] = []
    parent = history[message_id].get("parentId")
    seen = {message_id}
    while parent is not None:
        m = history.get(parent)
        if not isinstance(m, dict) or parent in seen:
            return [], [FieldError(f"snapshot.chat.history.messages.{parent}", "missing, or a loop in parentId")]
        seen.add(parent)
        out.append({"role": m.get("role"), "content": m.get("content", "")})
        parent = m.get("parentId")
    if not out:
        return [], [FieldError("meta.message_id", "the rated message has nothing above it; an answer needs a prompt")]
    return out[::-1], []


def _siblings(history: dict[str, Any], message_id: str) -> list[str]:
    parent = history.get(history[message_id].get("parentId") or "")
    children = (parent.get("childrenIds") or []) if isinstance(parent, dict) else []
    return [c for c in children if c != message_id and isinstance(history.get(c), dict)
            and history[c].get("role") == "assistant"]


def _line(m: dict[str, Any], prompt: list[dict[str, Any]], user_id: str, chat_id: Any) -> dict[str, Any]:
    line: dict[str, Any] = {"id": f"openwebui:{m.get('id')}", "messages": prompt, "response": m.get("content", ""),
                            "user_id": user_id}
    if isinstance(chat_id, str):
        line["conversation_id"] = chat_id
    if isinstance(m.get("model"), str):
        line["model"] = m["model"]
    if isinstance(m.get("timestamp"), (int, float)):
        line["created_at"] = _time(m["timestamp"])
    return line


def _time(epoch: float) -> str:
    seconds = epoch / 1000 if epoch > 1e11 else epoch  # chat-level timestamps are in milliseconds
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat()


FORMAT = Format("openwebui", records, looks_like, 'one JSON array of {"type": "rating", "data": {"rating": 1, ...}, '
                                                  '"meta": {"message_id"}, "snapshot": {"chat"}}')
