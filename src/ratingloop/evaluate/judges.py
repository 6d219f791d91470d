"""Stage 6, evaluate: the judges - each turns both versions' behaviour on the held-out prompts into one
outcome per prompt (1 the candidate wins, 0 it loses, 1/2 a tie; see stats.py).

- reward_model: the newest registered reward model (train.scoring.load_scorer) scores both versions'
  greedy answers; the higher score wins. Its training prompts are held out like the versions' own.
- human: the held-out answers people rated (a signals run's debiased rewards). Per answer, the
  candidate wins if its log-likelihood per token moved, relative to the other version, in the
  direction of the answer's reward: up for answers rated good, down for answers rated bad. The moves
  are centred on their median first, so a candidate that makes every text likelier (or less likely)
  wins nothing by that alone; what counts is preferring what raters preferred. A prompt's outcome is
  the mean over its rated answers.
- simulated: on a simulated store, the hidden grader its interactions name
  (`tags["simulated"]["grader"]`) scores both answers from their text.

Identical answers tie under the answer judges without being scored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from sqlalchemy import Engine

from ratingloop.evaluate.heldout import HeldOutPrompt
from ratingloop.evaluate.stats import outcome

log = logging.getLogger(__name__)


@dataclass
class JudgeResult:
    name: str
    outcomes: dict[str, float] = field(default_factory=dict)  # prompt key -> outcome
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RewardModel:
    path: Path
    version_id: str | None  # None: a folder given by hand, not registered


def newest_reward_model(engine: Engine, given: str = "") -> RewardModel | None:
    """`given` (a folder), else the newest registered reward model whose folder still holds its card; None if
    the store has none. Rejected reward models are skipped."""
    from ratingloop.models.registry import list_runs, list_versions
    from ratingloop.train.scoring import CARD

    if given:
        return RewardModel(Path(given), None)
    runs = {r.id: r for r in list_runs(engine)}
    for v in list_versions(engine):  # newest first
        run = runs.get(v.training_run_id or "")
        if run is None or run.method != "reward" or v.status == "rejected" or not v.adapter_path:
            continue
        if (Path(v.adapter_path) / CARD).is_file():
            return RewardModel(Path(v.adapter_path), v.id)
        log.warning("reward model %s (version %s) holds no %s; trying an older one", v.adapter_path, v.id, CARD)
    return None


def reward_model_judge(model: RewardModel, prompts: Sequence[HeldOutPrompt], candidate: Sequence[str],
                       other: Sequence[str]) -> JudgeResult:
    from ratingloop.train.scoring import load_scorer

    scorer = load_scorer(model.path)
    differ = [k for k in range(len(prompts)) if candidate[k] != other[k]]
    result = JudgeResult("reward_model", {p.key: 0.5 for p in prompts},
                         {"path": str(model.path), "version": model.version_id})
    if differ:
        messages = [prompts[k].messages for k in differ]
        mean_c, _ = scorer.score(messages, [candidate[k] for k in differ])
        mean_o, _ = scorer.score(messages, [other[k] for k in differ])
        for k, a, b in zip(differ, mean_c, mean_o, strict=True):
            result.outcomes[prompts[k].key] = outcome(float(a - b))
        result.detail |= {"mean_candidate": float(np.mean(mean_c)), "mean_other": float(np.mean(mean_o))}
    return result


def simulated_judge(prompts: Sequence[HeldOutPrompt], candidate: Sequence[str], other: Sequence[str]) -> JudgeResult:
    from ratingloop.simulate import grader_for

    result = JudgeResult("simulated")
    scores_c, scores_o = [], []
    for p, a, b in zip(prompts, candidate, other, strict=True):
        grader = grader_for({"simulated": {"grader": p.grader}}) if p.grader else None
        if grader is None:
            continue
        sa, sb = grader.score(p.messages, a), grader.score(p.messages, b)
        scores_c.append(sa)
        scores_o.append(sb)
        result.outcomes[p.key] = outcome(sa - sb)
    if scores_c:
        result.detail = {"mean_candidate": float(np.mean(scores_c)), "mean_other": float(np.mean(scores_o))}
    return result


def human_judge(prompts: Sequence[HeldOutPrompt], moves: dict[str, float], aspect: str | None = None) -> JudgeResult:
    """`moves`: interaction id -> (candidate - other) log-likelihood per token of that rated answer.

    The centre is halfway between the median move of the answers rated good and that of the answers
    rated bad (the median of all moves when one side is missing): a candidate that shifts every text
    alike then lands near 1/2 however many more good answers than bad ones were rated.
    With `aspect`, the sign comes from the answer's reward on that aspect (answers without it are skipped).
    """
    signed: list[tuple[str, str, float, float]] = []  # (prompt key, interaction id, sign, move)
    for p in prompts:
        for r in p.rated:
            reward = r.reward if aspect is None else r.aspects.get(aspect)
            if r.interaction_id in moves and reward is not None:
                signed.append((p.key, r.interaction_id, float(np.sign(reward)), moves[r.interaction_id]))
    good = [m for _, _, s, m in signed if s > 0]
    bad = [m for _, _, s, m in signed if s < 0]
    if good and bad:
        centre = 0.5 * (float(np.median(good)) + float(np.median(bad)))
    else:
        centre = float(np.median([m for *_, m in signed])) if signed else 0.0
    per_prompt: dict[str, list[float]] = {}
    for key, _, sign, move in signed:
        per_prompt.setdefault(key, []).append(outcome(sign * (move - centre), tie=1e-9))
    result = JudgeResult("human" if aspect is None else f"human:{aspect}",
                         {k: float(np.mean(v)) for k, v in per_prompt.items()})
    result.detail = {"rated_answers": len(signed), "good": len(good), "bad": len(bad), "centre": centre}
    return result
