"""Stage 4, dataset (`ratingloop build ... --preview N`): the first rows of a built set, readable.

Reads what a build wrote (DIR/train.jsonl, then DIR/eval.jsonl: the rows exactly as trained on, train in its
stable shuffled order) and, optionally, the rewards of the signals run it was built from; writes nothing.

    for row in preview(Path("data/kto"), 5, rewards={"chat-001": 0.71, ...}):
        row.split, row.prompt, row.answers, row.label, row.reward, row.interaction_ids

Texts are cut to one line of `width` characters: the last user turn stands for the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import orjson

from ratingloop.dataset.write import SPLITS


@dataclass(frozen=True)
class PreviewRow:
    split: str  # train | eval
    prompt: str  # the last user turn, cut
    answers: list[tuple[str, str]]  # (role, text cut): ("completion", ...) or ("chosen", ...), ("rejected", ...)
    label: str  # "desirable" / "undesirable" (kto), "score +0.42" (reward), "weight -0.30" (weighted), "" (sft, dpo)
    reward: str  # the run's reward of each interaction behind each answer: "+0.71, +0.65", "+0.71 vs -0.40" (dpo)
    interaction_ids: list[list[str]]  # per answer, the interactions it came from


def preview(out_dir: Path, n: int, rewards: Mapping[str, float] | None = None, width: int = 70) -> list[PreviewRow]:
    """The first `n` rows of the build in `out_dir` (train first, then eval)."""
    rows: list[PreviewRow] = []
    for split, data in _rows(out_dir):
        if len(rows) >= n:
            break
        rows.append(_row(split, data, rewards or {}, width))
    return rows


def _rows(out_dir: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for split in SPLITS:
        path = out_dir / f"{split}.jsonl"
        if path.exists():
            with open(path, "rb") as f:
                for line in f:
                    yield split, orjson.loads(line)


def _row(split: str, data: dict[str, Any], rewards: Mapping[str, float], width: int) -> PreviewRow:
    if "chosen" in data:  # dpo
        sides = [("chosen", data["chosen"], data.get("chosen_interaction_ids", [])),
                 ("rejected", data["rejected"], data.get("rejected_interaction_ids", []))]
    else:
        sides = [("completion", data["completion"], data.get("interaction_ids", []))]
    label = ""
    if "label" in data:
        label = "desirable" if data["label"] else "undesirable"
    elif "score" in data:
        label = f"score {data['score']:+.2f}"
    elif "weight" in data:
        label = f"weight {data['weight']:+.2f}"
    reward = " vs ".join(_reward(ids, rewards) for _, _, ids in sides) if rewards else ""
    return PreviewRow(split, cut(_last_user(data["prompt"]), width),
                      [(role, cut(_text(turns), width)) for role, turns, _ in sides], label, reward,
                      [list(ids) for _, _, ids in sides])


def _reward(ids: list[str], rewards: Mapping[str, float], most: int = 4) -> str:
    """The run's reward of each interaction behind an answer (identical answers are merged into one row, each
    with its own reward), '?' where the run has none."""
    values = [f"{rewards[i]:+.2f}" if i in rewards else "?" for i in ids]
    return ", ".join(values[:most]) + (f", ... ({len(values)})" if len(values) > most else "")


def _last_user(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    users = [m for m in prompt if m.get("role") == "user"]
    return _content((users or prompt or [{}])[-1].get("content"))


def _text(turns: Any) -> str:
    return turns if isinstance(turns, str) else " ".join(_content(m.get("content")) for m in turns)


def _content(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def cut(text: str, width: int) -> str:
    """One line of at most `width` characters, whitespace collapsed, '...' where it was cut."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[:width - 3].rstrip() + "..."
