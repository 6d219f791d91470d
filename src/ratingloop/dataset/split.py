"""Stage 4, dataset (`ratingloop build`): row de-duplication and the prompt-disjoint train/eval split.

The split hashes each prompt (with `split_salt`) to a number in [0, 1); prompts below
`eval_fraction` are held out. No prompt is in both splits, so eval measures generalisation to new
questions, not recall of a rated answer. A threshold on a hash (not a rank) keeps a prompt's split
stable as the store grows, so successive builds in the loop never move an eval prompt into train.
Only when the threshold holds out nothing, but there are two or more prompts, is the prompt with the
lowest hash held out, so small stores still get an eval split; a lone prompt stays in train.
"""

from __future__ import annotations

import hashlib

import orjson

from ratingloop.dataset.rows import ID_COLUMNS, FilterLog, Row


def row_bytes(row: Row) -> bytes:
    return orjson.dumps(row.data, option=orjson.OPT_SORT_KEYS)


def dedupe_rows(rows: list[Row], log: FilterLog) -> list[Row]:
    """Identical rows (same training columns, same values: the interaction ids they came from aside) once; the
    first keeps its rating and interaction ids, later copies add theirs, since they too are behind the row."""
    seen: dict[bytes, Row] = {}
    for row in rows:
        key = orjson.dumps({k: v for k, v in row.data.items() if k not in ID_COLUMNS}, option=orjson.OPT_SORT_KEYS)
        if key in seen:
            first = seen[key]
            data = {k: list(dict.fromkeys(v + row.data[k])) if k in ID_COLUMNS else v for k, v in first.data.items()}
            seen[key] = Row(data, first.prompt_key, tuple(dict.fromkeys(first.rating_ids + row.rating_ids)))
        else:
            seen[key] = row
    log.add("duplicate_rows", len(rows) - len(seen), "rows were exact duplicates of another row")
    return list(seen.values())


def prompt_bucket(prompt_key: str, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}:{prompt_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_rows(rows: list[Row], eval_fraction: float, salt: str, min_eval_prompts: int = 0
               ) -> tuple[list[Row], list[Row]]:
    """(train, eval), each in a stable order (by row content hash) that mixes prompts. At least
    `min_eval_prompts` prompts are held out (those of the lowest buckets) where that leaves two thirds."""
    buckets = {r.prompt_key: prompt_bucket(r.prompt_key, salt) for r in rows}
    held = {k for k, b in buckets.items() if b < eval_fraction}
    at_least = min(min_eval_prompts, len(buckets) // 3)
    if len(held) < at_least:
        held = set(sorted(buckets, key=lambda k: buckets[k])[:at_least])
    if not held and eval_fraction > 0 and len(buckets) >= 2:
        held = {min(buckets, key=lambda k: buckets[k])}
    if held == set(buckets):
        held = set()  # one prompt only: train on it rather than hold everything out
    order = sorted(rows, key=lambda r: hashlib.sha256(row_bytes(r)).digest())
    return [r for r in order if r.prompt_key not in held], [r for r in order if r.prompt_key in held]
