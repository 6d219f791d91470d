"""Stage 6, evaluate: the guards - what a candidate must not make worse, whatever the judges say.

Each guard is ``{"value", "limit", "ok"}`` (limits from EvalConfig):

- length_ratio: mean answer length in words, candidate / other; ok within [floor, limit]. Asymmetric by
  default (floor 0.1, limit 3): runaway verbosity is the known way to game a judge, while users who want
  concise answers rightly make a candidate 3-5x shorter (bench/results.md, "A default round that
  learns"); collapse to nothing is refusal_increase's to catch.
- refusal_increase: share of answers that are empty or refuse (candidate - other); ok up to limit.
- kl_per_token: KL(candidate || other) in nats per token along the candidate's own greedy answers on
  the held-out prompts (from likelihood.token_kl); ok up to limit.
- aspect:NAME: for each aspect people rated on held-out answers, the human judge's win rate on that
  aspect minus 1/2 (its change); ok down to -limit. Aspects with too few rated answers get no guard.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

Guard = dict[str, Any]  # {"value": float, "limit": float, "ok": bool} (+ detail keys)

# Openers of a refusal; matched at the start of an answer, case-insensitive.
REFUSAL = re.compile(r"^\s*(i'?m sorry,? but|i am sorry,? but|i can(?:no|')t (?:help|assist|answer|provide|do)|"
                     r"i am (?:not able|unable) to|i'?m (?:not able|unable) to|as an ai\b|i won'?t\b)", re.IGNORECASE)


def words(text: str) -> int:
    return len(text.split())


def is_refusal(text: str) -> bool:
    """Empty (or whitespace) answers and answers that open by refusing."""
    return not text.strip() or REFUSAL.match(text) is not None


def length_ratio(candidate: Sequence[str], other: Sequence[str], limit: float, floor: float | None = None) -> Guard:
    """`floor` None: symmetric, 1 / limit."""
    mean_c = sum(map(words, candidate)) / max(len(candidate), 1)
    mean_o = sum(map(words, other)) / max(len(other), 1)
    ratio = mean_c / mean_o if mean_o > 0 else (1.0 if mean_c == 0 else mean_c)  # vs empty answers: words
    low = 1.0 / limit if floor is None else floor
    return {"value": ratio, "limit": limit, "floor": low, "ok": low <= ratio <= limit,
            "candidate_words": mean_c, "other_words": mean_o}


def refusal_increase(candidate: Sequence[str], other: Sequence[str], limit: float) -> Guard:
    rate_c = sum(map(is_refusal, candidate)) / max(len(candidate), 1)
    rate_o = sum(map(is_refusal, other)) / max(len(other), 1)
    return {"value": rate_c - rate_o, "limit": limit, "ok": rate_c - rate_o <= limit,
            "candidate_rate": rate_c, "other_rate": rate_o}


def kl_per_token(total: float, tokens: int, limit: float) -> Guard:
    value = total / tokens if tokens else 0.0
    return {"value": value, "limit": limit, "ok": value <= limit, "tokens": tokens}


def aspect_guard(win_rate: float, n: int, limit: float) -> Guard:
    return {"value": win_rate - 0.5, "limit": -limit, "ok": win_rate - 0.5 >= -limit, "rated_answers": n}


def cohort_guard(win_rate: float, ci_low: float, ci_high: float, n: int, users: int) -> Guard:
    return {"value": win_rate, "ci_low": ci_low, "ci_high": ci_high, "limit": 0.5, "ok": ci_high >= 0.5,
            "prompts": n, "users": users}


def failed(guards: dict[str, Guard]) -> list[str]:
    """One reason per failed guard, with its numbers."""
    out = []
    for name, g in guards.items():
        if g["ok"]:
            continue
        if name == "length_ratio":
            out.append(f"guard length_ratio: answers are {g['value']:.2f}x as long ({g['candidate_words']:.1f} vs "
                       f"{g['other_words']:.1f} words), outside [{g['floor']:.2f}, {g['limit']:.2f}]")
        elif name.startswith("cohort:"):
            out.append(f"guard {name}: the {g['users']} users of this cohort would be worse off - win rate "
                       f"{g['value']:.3f} on their {g['prompts']} held-out prompts, interval [{g['ci_low']:.3f}, "
                       f"{g['ci_high']:.3f}] below 0.5")
        elif name.startswith("aspect:"):
            out.append(f"guard {name}: win rate on the aspect fell {-g['value']:.2f} below 0.5 "
                       f"(limit {-g['limit']:.2f}, {g['rated_answers']} rated answers)")
        else:
            out.append(f"guard {name}: {g['value']:.3f} > limit {g['limit']:.3f}")
    return out

