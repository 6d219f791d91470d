"""Stage 1, the store: PandaLM's human-annotated test set (`ratingloop import --format pandalm FILE`).

The file is one JSON array; a record holds `instruction`, `input` (may be empty), `response1` and `response2`
by the two models named in `cmp_key` ("bloom-7b_llama-7b": response1 is bloom-7b's), and three human labels
`annotator1..3`: 0 a tie, 1 response1 better, 2 response2 better. The prompt is one user message, the
instruction followed by the input after a blank line. The two responses are two interactions with their
model, and each label is a `preference` of response1 (as answer a) against response2 by its annotator:
rater `pandalm:annotator1` (the same person on every record), source `annotator`; ties are kept as "tie".

Interaction ids come from content (`pandalm-<hash of prompt, answer and model>`): one model's answer to one
instruction, compared in several records, is one interaction with every comparison of it.
"""

from __future__ import annotations

from typing import Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from ratingloop.errors import FieldError
from ratingloop.store.importers.base import Context, Format, content_id
from ratingloop.store.importers.files import records as file_records
from ratingloop.store.jsonl import ImportRecord
from ratingloop.store.records import pydantic_errors

LABELS = {0: "tie", 1: "a", 2: "b"}
ANNOTATORS = ("annotator1", "annotator2", "annotator3")


class Row(BaseModel):
    model_config = ConfigDict(extra="allow")

    idx: int | None = None
    cmp_key: str | None = None
    instruction: str
    input: str = ""
    response1: str
    response2: str
    annotator1: Literal[0, 1, 2] | None = None
    annotator2: Literal[0, 1, 2] | None = None
    annotator3: Literal[0, 1, 2] | None = None


def looks_like(record: Any) -> bool:
    return isinstance(record, dict) and {"response1", "response2", "instruction"} <= record.keys() and any(
        a in record for a in ANNOTATORS)


def records(path: str, context: Context) -> Iterator[ImportRecord]:
    for raw in file_records(path):
        where = f"record {raw.number}"
        if raw.error is not None:
            yield ImportRecord(raw.number, errors=[raw.error], where=where)
            continue
        lines, errors = convert(raw.data)
        yield ImportRecord(raw.number, lines, errors=errors, labels=["response1", "response2"],
                           where=where + (f" (idx {raw.data['idx']})" if isinstance(raw.data, dict)
                                          and isinstance(raw.data.get("idx"), int) else ""))


def convert(data: Any) -> tuple[list[dict[str, Any]], list[FieldError]]:
    try:
        row = Row.model_validate(data)
    except ValidationError as e:
        return [], pydantic_errors(e)
    labels = {a: getattr(row, a) for a in ANNOTATORS if getattr(row, a) is not None}
    if not labels:
        return [], [FieldError("annotator1", "no annotator labelled this pair (annotator1..3 are all missing)")]
    models = row.cmp_key.split("_") if row.cmp_key else []
    model1, model2 = models if len(models) == 2 else (None, None)
    prompt = [{"role": "user", "content": row.instruction + (f"\n\n{row.input}" if row.input else "")}]
    id1 = content_id("pandalm", prompt, row.response1, model1)
    id2 = content_id("pandalm", prompt, row.response2, model2)
    if id1 == id2:
        return [], [FieldError("response2", "the same answer by the same model as response1; nothing to compare")]
    first: dict[str, Any] = {"id": id1, "messages": prompt, "response": row.response1}
    second: dict[str, Any] = {"id": id2, "messages": prompt, "response": row.response2, "ratings": [
        {"interaction_id": id1, "kind": "preference", "other_interaction_id": id2, "value": LABELS[label],
         "rater_id": f"pandalm:{a}", "source": "annotator"} for a, label in labels.items()]}
    for line, model in ((first, model1), (second, model2)):
        if model:
            line["model"] = model
    return [first, second], []


FORMAT = Format("pandalm", records, looks_like, "one JSON array of {instruction, input, response1, response2, "
                                                "annotator1..3}")
