"""Stage 1, the store: reading the files other tools export, record by record, for importers/.

A record comes with its number, which is what the import report names: its line in a JSON Lines file
(blank lines count, as `ratingloop import` counts them), or its position in a JSON array (from 1). Files
may be gzipped (`.gz`); `-` is stdin. Nothing here knows a format: each importer says how to read a record.
"""

from __future__ import annotations

import gzip
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator

import orjson

from ratingloop.errors import FieldError, RatingloopError


@dataclass
class Raw:
    """One record of a file: its decoded JSON, or why it could not be read."""

    number: int
    data: Any = None
    error: FieldError | None = None


def open_bytes(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    if not Path(path).is_file():
        raise RatingloopError(f"{path}: no such file")
    if path.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def json_lines(path: str) -> Iterator[Raw]:
    """A JSON Lines file, one record per non-blank line."""
    with open_bytes(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield Raw(number, orjson.loads(line))
            except orjson.JSONDecodeError as e:
                yield Raw(number, error=FieldError("line", f"not valid JSON: {e}"))


def json_array(path: str) -> Iterator[Raw]:
    """A JSON file holding one array of records (read whole: these exports are made to be downloaded whole)."""
    with open_bytes(path) as f:
        text = f.read()
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise RatingloopError(f"{path}: not valid JSON ({e}); this format is one JSON array of records") from None
    if not isinstance(data, list):
        raise RatingloopError(f"{path}: a JSON {type(data).__name__}, not an array of records")
    for number, item in enumerate(data, start=1):
        yield Raw(number, item)


def records(path: str) -> Iterator[Raw]:
    """A file's records, whichever of JSON Lines or a JSON array it is (decided by its first character)."""
    yield from json_array(path) if starts_with_bracket(path) else json_lines(path)


def starts_with_bracket(path: str) -> bool:
    if path == "-":
        return False  # stdin is read once: only JSON Lines there
    with open_bytes(path) as f:
        head = f.read(4096).lstrip()
    return head.startswith(b"[")


def first_record(path: str) -> Any:
    """The first record of a file, for sniffing its format (None if it cannot be read as JSON)."""
    if path == "-":
        return None
    if Path(path).is_dir():
        return None
    try:
        if starts_with_bracket(path):
            first = next(json_array(path), None)
        else:
            first = next(json_lines(path), None)
    except RatingloopError:
        return None
    return first.data if first is not None else None


def label(data: Any) -> str:
    """A record's fields, to say what a record that fits no format holds."""
    if isinstance(data, dict):
        return "fields " + ", ".join(sorted(data)[:12]) + (", ..." if len(data) > 12 else "")
    return f"a JSON {type(data).__name__}"
