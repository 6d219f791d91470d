"""Stage 4, dataset (`ratingloop build`): answers -> DPO preference pairs {"prompt", "chosen", "rejected"}.

Pairs come from three places, in this order of precedence:

1. Comparisons. A pair of answers that raters compared (a preference, or two answers in different tiers
   of a rank) is a pair when every vote the signals run counted on it - flagged raters' are not counted -
   prefers the same answer: each answer may have been rated only through comparisons. A tie makes no
   pair (it says the answers are alike), and neither do votes that disagree. Comparisons a reward model
   made (source "judge") make none.
2. Rewards. Two answers to the same prompt form a pair when their reward gap is one the uncertainty
   supports: gap > pair_z * sqrt(sd1**2 + sd2**2) (the gap's own sd, the rewards being independent
   estimates) and gap >= pair_min_gap. Where the rewards clearly order two answers the other way from a
   unanimous comparison, the answers make no pair at all.
3. Corrections: the rater's text is chosen over the answer it corrects.

Per prompt at most `max_pairs_per_prompt` pairs from 1 and 2, comparison pairs first (most votes
first), then by gap / sd, so a prompt answered fifty times cannot swamp the set with O(n^2) pairs. The
manifest's "comparisons" section says which comparisons became pairs and why the others did not.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from ratingloop.dataset.answers import Pool
from ratingloop.dataset.config import BuildConfig
from ratingloop.dataset.formats import completion
from ratingloop.dataset.rows import Answer, FilterLog, Row

RULE = ("a pair of answers that raters compared is a DPO pair when every comparison of them that the signals run "
        "counted (flagged raters' are not) prefers the same answer; ties and disagreeing votes make no pair, nor do "
        "comparisons by a reward model (source judge)")


@dataclass
class Votes:
    """What the counted comparisons say about one pair of answers (lo, hi: indices into the pool)."""

    sides: set[int] = field(default_factory=set)  # +1: answer lo preferred, -1: hi preferred, 0: a tie
    rating_ids: list[str] = field(default_factory=list)
    raters: set[str] = field(default_factory=set)


def dpo_rows(pool: Pool, cfg: BuildConfig, log: FilterLog) -> tuple[list[Row], dict[str, Any]]:
    """The pairs and corrections, and the manifest's account of the comparisons."""
    votes, report = comparison_votes(pool, log)
    by_prompt: dict[str, list[int]] = defaultdict(list)
    for k, a in enumerate(pool.answers):
        by_prompt[a.prompt_key].append(k)
    rows: list[Row] = []
    single = within = capped = contradicted = from_comparisons = 0
    made: set[str] = set()
    for ks in by_prompt.values():
        if len(ks) < 2:
            single += 1
            continue
        chosen: list[tuple[tuple[float, ...], int, int, tuple[str, ...]]] = []  # (sort key, winner, loser, ids)
        for lo, hi in combinations(ks, 2):
            v = votes.get((lo, hi))
            unanimous = v is not None and len(v.sides) == 1 and 0 not in v.sides
            mined = _mined(pool.answers[lo], pool.answers[hi], cfg)
            if unanimous and v is not None:
                win, lose = (lo, hi) if v.sides == {1} else (hi, lo)
                if mined is not None and mined[0] is pool.answers[lose]:
                    contradicted += 1  # the rewards clearly say the opposite: no pair either way
                    continue
                chosen.append(((0.0, -len(v.raters), -_z(pool.answers[win], pool.answers[lose])), win, lose,
                               tuple(v.rating_ids)))
            elif mined is not None:
                win, lose = (lo, hi) if mined[0] is pool.answers[lo] else (hi, lo)
                chosen.append(((1.0, 0.0, -_z(pool.answers[win], pool.answers[lose])), win, lose, ()))
            else:
                within += v is None
        chosen.sort(key=lambda c: (*c[0], pool.answers[c[1]].completion, pool.answers[c[2]].completion))
        capped += max(len(chosen) - cfg.max_pairs_per_prompt, 0)
        for _, win, lose, ids in chosen[:cfg.max_pairs_per_prompt]:
            rows.append(pair_row(pool.answers[win], pool.answers[lose], ids))
            from_comparisons += bool(ids)
            made.update(ids)
    report.update(pairs=from_comparisons, contradicted_by_rewards=contradicted, became_pairs=sorted(made))
    log.add("single_answer_prompts", single,
            "prompts have one answer only; DPO needs two answers to one prompt (or a correction)")
    log.add("gap_within_margin", within,
            f"answer pairs nobody compared differ by less than pair_z={cfg.pair_z} sd of their gap (or pair_min_gap="
            f"{cfg.pair_min_gap}); lower pair_z, collect more ratings per answer, or ask raters to compare answers")
    log.add("comparison_contradicted", contradicted,
            "answer pairs compared unanimously one way but clearly ordered the other way by their rewards")
    log.add("over_pair_cap", capped, f"supported pairs exceed max_pairs_per_prompt={cfg.max_pairs_per_prompt}")
    if cfg.use_corrections:
        rows += [Row({"prompt": c.corrected.prompt, "chosen": completion(c.text),
                      "rejected": completion(c.corrected.completion),
                      "chosen_interaction_ids": list(c.corrected.interaction_ids),
                      "rejected_interaction_ids": list(c.corrected.interaction_ids)},
                     c.corrected.prompt_key, (c.rating_id, *c.corrected.rating_ids)) for c in pool.corrections]
    else:
        log.add("corrections_off", len(pool.corrections), "corrections left out (use_corrections=False)")
    return rows, report


def comparison_votes(pool: Pool, log: FilterLog) -> tuple[dict[tuple[int, int], Votes], dict[str, Any]]:
    """Every pair of pool answers the counted comparisons order (or tie), with its votes; and the counts of
    comparisons that cannot make a pair (their answers are not in the pool, or are one answer, or a judge made
    them). `report` is the manifest's "comparisons" section; dpo_rows adds what became of the unanimous pairs."""
    at = {iid: k for k, a in enumerate(pool.answers) for iid in a.interaction_ids}
    votes: dict[tuple[int, int], Votes] = defaultdict(Votes)
    judge = missing = same = 0
    for c in pool.comparisons:
        if c.source == "judge":
            judge += 1
            continue
        ranked = [(at.get(x), t) for t, tier in enumerate(c.tiers) for x in tier]
        missing += any(k is None for k, _ in ranked)
        for (x, tx), (y, ty) in combinations(ranked, 2):
            if x is None or y is None:
                continue
            if x == y or pool.answers[x].completion == pool.answers[y].completion:
                same += 1  # two copies of one answer compared with each other
                continue
            side = 0 if tx == ty else 1 if tx < ty else -1  # +1: x preferred
            v = votes[(min(x, y), max(x, y))]
            v.sides.add(side if x < y else -side)
            v.rating_ids.append(c.rating_id)
            v.raters.add(c.rater_id)
    tied = sum(1 for v in votes.values() if v.sides == {0})
    split = sum(1 for v in votes.values() if len(v.sides) > 1)
    log.add("comparison_tied", tied, "compared answer pairs were tied by every rater: alike, no preference to learn")
    log.add("comparison_split", split,
            "compared answer pairs had votes both ways or a tie beside a preference: not every rater agreed")
    log.add("comparison_answer_missing", missing,
            "comparisons name an answer the build has no row for (empty, rated only by a reward model, or deleted)")
    log.add("comparison_same_answer", same, "compared answers are duplicates of one another (merged into one)")
    log.add("comparison_by_judge", judge, "comparisons a reward model made (source judge) make no pair")
    report: dict[str, Any] = {
        "rule": RULE, "comparisons": len(pool.comparisons), "compared_answer_pairs": len(votes),
        "unanimous": sum(1 for v in votes.values() if len(v.sides) == 1 and 0 not in v.sides),
        "dropped": {"tied": tied, "split": split, "answer_missing": missing, "same_answer": same, "by_judge": judge},
    }
    return votes, report


def _mined(a: Answer, b: Answer, cfg: BuildConfig) -> tuple[Answer, Answer] | None:
    """(better, worse) when the reward gap is one the uncertainty supports, else None."""
    hi, lo = (a, b) if a.reward >= b.reward else (b, a)
    gap, sd = hi.reward - lo.reward, math.hypot(hi.sd, lo.sd)
    return (hi, lo) if gap > cfg.pair_z * sd and gap >= cfg.pair_min_gap else None


def _z(hi: Answer, lo: Answer) -> float:
    return (hi.reward - lo.reward) / max(math.hypot(hi.sd, lo.sd), 1e-12)


def pair_row(chosen: Answer, rejected: Answer, comparisons: tuple[str, ...] = ()) -> Row:
    """A pair's row; its rating ids are both answers' (a comparison of the two is among them)."""
    return Row({"prompt": chosen.prompt, "chosen": completion(chosen.completion),
                "rejected": completion(rejected.completion),
                "chosen_interaction_ids": list(chosen.interaction_ids),
                "rejected_interaction_ids": list(rejected.interaction_ids)},
               chosen.prompt_key, tuple(dict.fromkeys(chosen.rating_ids + rejected.rating_ids + comparisons)))
