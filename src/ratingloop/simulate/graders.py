"""Simulation: hidden preferences that a grader computes from an answer's text.

A simulated store says which hidden preference its users have in each interaction's tags:
``tags["simulated"] = {"grader": NAME}``. Evaluation (`ratingloop eval`) scores the answers that a
candidate and the active version give to held-out prompts with the same grader, so on a simulated
store the gate can be checked against the truth the simulated users rated by. Scores are in [-1, 1].

    grader = grader_for(interaction.tags)        # None: not simulated, or an unknown grader
    grader.score(messages, "Paris.")             # a float in [-1, 1]

Graders see only text (what a real user would see); they never read the model or the store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

Messages = Sequence[Mapping[str, Any]]

CONCISE_IDEAL_WORDS = 25  # a complete one-sentence answer; longer answers lose score smoothly
MIN_WORDS = 3  # fewer words than this is not an answer ("Yes." to a how-to question)


def concise(messages: Messages, answer: str) -> float:
    """Users who want a short, complete answer: +1 at up to ~25 words, falling toward -1 at 4x that;
    empty or near-empty answers score -1 (shorter is better only while it still answers)."""
    words = len(answer.split())
    if words < MIN_WORDS:
        return -1.0
    excess = max(words - CONCISE_IDEAL_WORDS, 0) / (3 * CONCISE_IDEAL_WORDS)
    return float(1.0 - 2.0 * min(excess, 1.0))


def direct(messages: Messages, answer: str) -> float:
    """Users who want the answer first: penalise openers that restate or hedge before answering."""
    first = re.split(r"(?<=[.!?])\s+", answer.strip(), maxsplit=1)[0].lower()
    if len(answer.split()) < MIN_WORDS:
        return -1.0
    hedges = ("sure", "certainly", "of course", "great question", "as an ai", "i'm sorry", "i am sorry",
              "i cannot", "i can't", "there are many", "it depends")
    if first.startswith(hedges):
        return -0.5
    return 1.0 if len(first) < 200 else 0.5  # a first sentence that runs on buries the answer


def thorough(messages: Messages, answer: str) -> float:
    """Users who want the whole explanation, the mirror of `concise`: -1 for a bare answer of up to ~25
    words, rising to +1 at 4x that; empty or near-empty answers score -1 too."""
    if len(answer.split()) < MIN_WORDS:
        return -1.0
    return -concise(messages, answer)


GRADERS: dict[str, Callable[[Messages, str], float]] = {"concise": concise, "direct": direct, "thorough": thorough}


@dataclass(frozen=True)
class Grader:
    name: str
    fn: Callable[[Messages, str], float]

    def score(self, messages: Messages, answer: str) -> float:
        return max(-1.0, min(1.0, float(self.fn(messages, answer))))


def grader_for(tags: Mapping[str, Any] | None) -> Grader | None:
    """The hidden grader a simulated interaction names in its tags, or None."""
    sim = (tags or {}).get("simulated")
    name = sim.get("grader") if isinstance(sim, Mapping) else None
    return Grader(name, GRADERS[name]) if isinstance(name, str) and name in GRADERS else None
