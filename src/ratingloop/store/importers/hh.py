"""Stage 1, the store: Anthropic's HH-RLHF preference pairs (`ratingloop import --format hh FILE`).

A record is `{"chosen": str, "rejected": str}` (JSON Lines, usually gzipped), each a whole dialogue written
`\\n\\nHuman: ...\\n\\nAssistant: ...`; the two differ only in the final assistant turn. The shared part is the
prompt (Human turns as `user` messages, Assistant turns as `assistant`), and the two last turns are two
answers to it: two interactions, with one `preference` for the chosen one (value "a", interaction_id the
chosen answer), by the crowdworker who held the conversation and picked - nobody named, so the
interaction's anonymous asker, source `annotator`. The split into turns starts from the two dialogues' common
prefix, so an answer that itself contains "\\n\\nAssistant:" (a few do) stays whole.

Interaction ids come from content (`hh-<hash of prompt and answer>`): an answer met again in another pair is
the same interaction, and importing the file twice adds nothing.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, ValidationError

from ratingloop.errors import FieldError
from ratingloop.store.importers.base import Context, Format, content_id
from ratingloop.store.importers.files import json_lines
from ratingloop.store.jsonl import ImportRecord
from ratingloop.store.records import pydantic_errors

ASSISTANT = "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")


class Pair(BaseModel):
    model_config = ConfigDict(extra="allow")

    chosen: str
    rejected: str


def looks_like(record: Any) -> bool:
    return (isinstance(record, dict) and isinstance(record.get("chosen"), str)
            and isinstance(record.get("rejected"), str))


def records(path: str, context: Context) -> Iterator[ImportRecord]:
    for raw in json_lines(path):
        if raw.error is not None:
            yield ImportRecord(raw.number, errors=[raw.error])
            continue
        lines, errors = convert(raw.data)
        yield ImportRecord(raw.number, lines, errors=errors, labels=["rejected", "chosen"])


def convert(data: Any) -> tuple[list[dict[str, Any]], list[FieldError]]:
    """The pair as two import lines, rejected first (the chosen line holds the preference that names it)."""
    try:
        pair = Pair.model_validate(data)
    except ValidationError as e:
        return [], pydantic_errors(e)
    split = _split(pair.chosen, pair.rejected)
    if isinstance(split, FieldError):
        return [], [split]
    prompt, chosen, rejected = split
    if chosen == rejected:
        return [], [FieldError("rejected", "its final answer is the chosen one's; a pair of one answer says nothing")]
    ids = content_id("hh", prompt, chosen), content_id("hh", prompt, rejected)
    return [
        {"id": ids[1], "messages": prompt, "response": rejected},
        {"id": ids[0], "messages": prompt, "response": chosen,
         "ratings": [{"kind": "preference", "other_interaction_id": ids[1], "value": "a", "source": "annotator"}]},
    ], []


def _split(chosen: str, rejected: str) -> tuple[list[dict[str, str]], str, str] | FieldError:
    """(prompt messages, chosen answer, rejected answer)."""
    common = 0
    for a, b in zip(chosen, rejected, strict=False):
        if a != b:
            break
        common += 1
    cut = chosen.rfind(ASSISTANT, 0, common)  # the last turn marker inside the common prefix
    if cut < 0 or rejected[cut:cut + len(ASSISTANT)] != ASSISTANT:
        return FieldError("chosen", "chosen and rejected do not share a dialogue up to a final Assistant turn")
    prompt = _turns(chosen[:cut])
    if not prompt or prompt[0]["role"] != "user":
        return FieldError("chosen", "the dialogue does not start with a Human turn before its final Assistant turn")
    return prompt, _strip(chosen[cut + len(ASSISTANT):]), _strip(rejected[cut + len(ASSISTANT):])


def _turns(dialogue: str) -> list[dict[str, str]]:
    parts = _TURN.split(dialogue)
    return [{"role": "user" if who == "Human" else "assistant", "content": _strip(said)}
            for who, said in zip(parts[1::2], parts[2::2], strict=True)]


def _strip(said: str) -> str:
    return said[1:] if said.startswith(" ") else said


FORMAT = Format("hh", records, looks_like, 'JSON Lines of {"chosen": "\\n\\nHuman: ...", "rejected": "..."}')
