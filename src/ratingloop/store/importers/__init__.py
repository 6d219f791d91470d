"""Stage 1, the store: importers of the formats feedback already lives in (`ratingloop import --format F`).

    raw        ratingloop's own JSONL (store/jsonl.py; the default)
    oasst      OpenAssistant message trees           oasst.py
    hh         Anthropic HH-RLHF chosen/rejected      hh.py
    pandalm    PandaLM's three-annotator pairs        pandalm.py
    openai     OpenAI chat fine-tuning JSONL          openai.py
    langfuse   Langfuse's blob-storage export         langfuse.py
    langsmith  LangSmith runs with their feedback     langsmith.py
    openwebui  Open WebUI's feedback export           openwebui.py

Each importer turns its records into ratingloop's own import lines and hands them to store/jsonl.py's
`import_records`, the path `ratingloop import` takes: a record is stored whole or not at all, bad records
are reported by line (or record) with the field at fault, and importing a file twice adds nothing. Before
anything is read in earnest the first record is sniffed: a file that looks like another format than the
one asked for is refused with the format it looks like.

    report, notes = import_file(engine, "trees.jsonl", "oasst", limits, user_key=key)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from sqlalchemy import Engine

from ratingloop.errors import RatingloopError
from ratingloop.store.importers import files, hh, langfuse, langsmith, oasst, openai, openwebui, pandalm
from ratingloop.store.importers.base import Context, Format
from ratingloop.store.importers.scores import Notes, parse_maps
from ratingloop.store.jsonl import ImportReport, import_lines, import_records
from ratingloop.store.records import Limits


def _looks_raw(record: Any) -> bool:
    return isinstance(record, dict) and "messages" in record and "response" in record


RAW = Format("raw", lambda path, context: iter(()), _looks_raw,  # raw goes through import_lines, not records
             'ratingloop\'s JSONL: {"messages": [...], "response": "...", "ratings": [...]}')
# sniffing order: the first whose looks_like holds names the file (raw before openai: both have messages)
FORMATS: dict[str, Format] = {f.name: f for f in (RAW, oasst.FORMAT, hh.FORMAT, pandalm.FORMAT, openai.FORMAT,
                                                   langfuse.FORMAT, langsmith.FORMAT, openwebui.FORMAT)}
NAMES = tuple(FORMATS)


def import_file(engine: Engine, path: str, fmt: str, limits: Limits, *, user_key: bytes, maps: Sequence[str] = (),
                votes_are_distinct: bool = False, progress: Callable[[int], None] | None = None
                ) -> tuple[ImportReport, list[str]]:
    """Import `path` (a file, `-` for stdin, or a folder for langfuse) in format `fmt`. Returns the report and
    notes on what was left out on purpose (a score no --map reads, a deleted message). `maps`: --map specs."""
    if fmt not in FORMATS:
        raise RatingloopError(f"--format {fmt}: one of {', '.join(NAMES)}")
    if maps and fmt not in ("langfuse", "langsmith", "oasst"):
        raise RatingloopError(f"--map reads named scores (langfuse, langsmith, oasst labels); "
                              f"--format {fmt} has none")
    if path != "-" and not Path(path).exists():
        raise RatingloopError(f"{path}: no such file")
    check_format(path, fmt)
    context = Context(limits, parse_maps(list(maps), limits.aspects), Notes())
    if fmt == "raw":
        with files.open_bytes(path) as f:
            report = import_lines(engine, f, limits, progress, user_key=user_key, votes_are_distinct=votes_are_distinct)
    else:
        report = import_records(engine, FORMATS[fmt].records(path, context), limits, progress, user_key=user_key,
                                votes_are_distinct=votes_are_distinct)
    return report, context.notes.lines()


def check_format(path: str, fmt: str) -> None:
    """Refuse a file whose first record is another format's, naming it."""
    if Path(path).is_dir():
        if fmt != "langfuse":
            raise RatingloopError(f"{path} is a folder; only --format langfuse reads one (a blob-storage export)")
        return
    first = files.first_record(path)
    if first is None or FORMATS[fmt].looks_like(first):
        return
    found = sniff(first)
    if found is not None:  # a record of no known format is left to the import, which reports what it lacks
        raise RatingloopError(f"{path} does not look like --format {fmt} ({FORMATS[fmt].shape}): its first record "
                              f"looks like {found} ({FORMATS[found].shape}); import it with --format {found}")


def sniff(record: Any) -> str | None:
    """The format one decoded record looks like, or None."""
    return next((name for name, f in FORMATS.items() if f.looks_like(record)), None)
