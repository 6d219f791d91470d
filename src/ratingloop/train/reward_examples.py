"""Stage 5, train: what a reward model learns from and reads - scored answers or preference pairs.

    train, eval_ = checked(data, objective_of(data))   # Scored (regression) or Pairs (Bradley-Terry)

A `reward` folder (prompt, completion, score in [-1, 1]) gives Scored rows, a `dpo` folder (prompt, chosen,
rejected) gives Pairs. Both backbones (reward.py: the base model; embed_reward.py: the embedding head) and
the scorer (scoring.py) share these shapes; they live here, apart from all three, so none of them imports
another to get them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ratingloop.errors import RatingloopError
from ratingloop.train.data import TrainData

log = logging.getLogger(__name__)

REGRESSION, PAIRS = "regression", "bradley_terry"
Messages = Sequence[dict[str, str]]
Prompt = Messages | str


def as_messages(prompt: Prompt) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


@dataclass
class Scored:
    """Pointwise rows: each prompt's answer (the completion's messages) and its reward in [-1, 1]."""
    prompts: list[list[dict[str, str]]]
    completions: list[list[dict[str, str]]]
    scores: np.ndarray

    def answers(self) -> list[str]:
        return [c[-1]["content"] for c in self.completions]


@dataclass
class Pairs:
    """Preference rows: for each prompt, the chosen and the rejected answer (messages)."""
    prompts: list[list[dict[str, str]]]
    chosen: list[list[dict[str, str]]]
    rejected: list[list[dict[str, str]]]


def objective_of(data: TrainData) -> str:
    """Pairs for a dpo folder (data.py lets `reward` read one), regression for a reward folder."""
    return PAIRS if "chosen" in data.train.column_names else REGRESSION


def examples(split: Any, objective: str) -> Scored | Pairs:
    if objective == PAIRS:
        return Pairs(list(split["prompt"]), list(split["chosen"]), list(split["rejected"]))
    return Scored(list(split["prompt"]), list(split["completion"]), np.asarray(split["score"], np.float64))


def checked(data: TrainData, objective: str) -> tuple[Scored | Pairs, Scored | Pairs | None]:
    """The train and eval examples, after the checks that would make training pointless."""
    train = examples(data.train, objective)
    fix = f"check the build's filters in {data.data_dir / 'manifest.json'}"
    if isinstance(train, Scored):
        if not np.isfinite(train.scores).all() or np.abs(train.scores).max() > 1:
            raise RatingloopError(f"reward: --data {data.data_dir}: scores must be finite and lie in [-1, 1] (the "
                                  "reward scale); rebuild it with `ratingloop build --format reward`")
        if np.ptp(train.scores) < 1e-6:
            raise RatingloopError(f"reward: every one of the {len(train.scores)} train scores is "
                                  f"{train.scores[0]:+.3f}; a reward model learns from answers whose rewards differ - "
                                  f"collect ratings on answers of different quality, or {fix}")
    else:
        same = sum(c == r for c, r in zip(train.chosen, train.rejected, strict=True))
        if len(train.chosen) - same < 2:
            raise RatingloopError(f"reward: --data {data.data_dir} holds {len(train.chosen) - same} pair(s) whose "
                                  "chosen and rejected answers differ; Bradley-Terry needs at least 2 - mine more "
                                  f"pairs (`ratingloop build --format dpo`), or {fix}")
        if same:
            log.warning("reward: %d pairs have the same chosen and rejected answer; they teach nothing", same)
    return train, examples(data.eval, objective) if data.eval is not None else None


def conversations(x: Scored | Pairs) -> list[list[dict[str, str]]]:
    if isinstance(x, Scored):
        return [p + c for p, c in zip(x.prompts, x.completions, strict=True)]
    chosen = [p + c for p, c in zip(x.prompts, x.chosen, strict=True)]
    return chosen + [p + r for p, r in zip(x.prompts, x.rejected, strict=True)]
