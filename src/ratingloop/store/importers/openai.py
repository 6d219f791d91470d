"""Stage 1, the store: OpenAI's chat fine-tuning JSONL (`ratingloop import --format openai FILE`).

A record is `{"messages": [{"role", "content"}, ...]}` (OpenAI's supervised fine-tuning format; `tools` and
`parallel_tool_calls` may sit beside it). Each assistant message with text is an interaction whose messages
are the conversation above it, so a multi-turn example holds several. An assistant message's `weight` is the
file author's verdict on it - 1 "train on this", 0 "do not" - and becomes a thumbs (up / down) by the
interaction's anonymous asker, source `annotator`; without a weight it is unrated. (`ratingloop export
--format openai --weighted` writes these weights from the rewards, so its verdicts come back as thumbs.)
`weight` keys are dropped from the messages an interaction keeps as its prompt. An assistant message without
text (only tool calls) is no answer to rate, and is noted.
"""

from __future__ import annotations

from typing import Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from ratingloop.errors import FieldError
from ratingloop.store.importers.base import Context, Format
from ratingloop.store.importers.chat import text
from ratingloop.store.importers.files import json_lines
from ratingloop.store.jsonl import ImportRecord
from ratingloop.store.records import pydantic_errors


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    weight: Literal[0, 1] | None = None


class Example(BaseModel):
    model_config = ConfigDict(extra="allow")

    messages: list[Message]


def looks_like(record: Any) -> bool:
    return (isinstance(record, dict) and isinstance(record.get("messages"), list) and "response" not in record
            and any(isinstance(m, dict) and m.get("role") == "assistant" for m in record["messages"]))


def records(path: str, context: Context) -> Iterator[ImportRecord]:
    for raw in json_lines(path):
        if raw.error is not None:
            yield ImportRecord(raw.number, errors=[raw.error])
            continue
        lines, labels, errors = convert(raw.data, context)
        yield ImportRecord(raw.number, lines, errors=errors, labels=labels)


def convert(data: Any, context: Context) -> tuple[list[dict[str, Any]], list[str], list[FieldError]]:
    try:
        example = Example.model_validate(data)
    except ValidationError as e:
        return [], [], pydantic_errors(e)
    lines, labels = [], []
    above: list[dict[str, Any]] = []
    for k, m in enumerate(example.messages):
        said = m.model_dump(exclude_unset=True, exclude={"weight"})
        if m.role == "assistant":
            response = text(m.content)
            if response is None:
                context.notes.add("openai: an assistant message without text (tool calls only) left unrated")
            elif not above:
                return [], [], [FieldError(f"messages[{k}]", "an assistant message with nothing above it; "
                                                             "an answer needs a prompt")]
            else:
                line: dict[str, Any] = {"messages": list(above), "response": response}
                if m.weight is not None:
                    line["ratings"] = [{"kind": "thumbs", "value": 1 if m.weight else -1, "source": "annotator"}]
                lines.append(line)
                labels.append(f"messages[{k}]")
        above.append(said)
    if not lines:
        return [], [], [FieldError("messages", "no assistant message with text: nothing to import")]
    return lines, labels, []


FORMAT = Format("openai", records, looks_like, 'JSON Lines of {"messages": [..., {"role": "assistant", '
                                               '"content": "...", "weight": 1}]}')
