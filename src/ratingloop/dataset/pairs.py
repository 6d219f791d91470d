"""Stage 4, dataset (`ratingloop build`): answers -> DPO preference pairs {"prompt", "chosen", "rejected"}.

Two answers to the same prompt form a pair only when their reward gap is one the uncertainty
supports: gap > pair_z * sqrt(sd1**2 + sd2**2) (the gap's own sd, the rewards being independent
estimates) and gap >= pair_min_gap. Pairs are ranked by gap / sd, and each prompt gives at most
`max_pairs_per_prompt`, so a prompt answered fifty times cannot swamp the set with O(n^2) pairs.
A correction is a pair on its own: the rater's text is chosen over the answer it corrects.
"""

from __future__ import annotations

import math
from collections import defaultdict
from itertools import combinations

from ratingloop.dataset.answers import Pool
from ratingloop.dataset.config import BuildConfig
from ratingloop.dataset.formats import completion
from ratingloop.dataset.rows import Answer, FilterLog, Row


def dpo_rows(pool: Pool, cfg: BuildConfig, log: FilterLog) -> list[Row]:
    by_prompt: dict[str, list[Answer]] = defaultdict(list)
    for a in pool.answers:
        by_prompt[a.prompt_key].append(a)
    rows: list[Row] = []
    single = within = capped = 0
    for answers in by_prompt.values():
        if len(answers) < 2:
            single += 1
            continue
        supported = []
        for a, b in combinations(answers, 2):
            hi, lo = (a, b) if a.reward >= b.reward else (b, a)
            gap, sd = hi.reward - lo.reward, math.hypot(hi.sd, lo.sd)
            if gap > cfg.pair_z * sd and gap >= cfg.pair_min_gap:
                supported.append((gap / sd, hi, lo))
            else:
                within += 1
        supported.sort(key=lambda s: (-s[0], s[1].completion, s[2].completion))  # deterministic ties
        capped += max(len(supported) - cfg.max_pairs_per_prompt, 0)
        rows += [pair_row(hi, lo) for _, hi, lo in supported[:cfg.max_pairs_per_prompt]]
    log.add("single_answer_prompts", single,
            "prompts have one answer only; DPO needs two answers to one prompt (or a correction)")
    log.add("gap_within_margin", within,
            f"answer pairs differ by less than pair_z={cfg.pair_z} sd of their gap (or pair_min_gap="
            f"{cfg.pair_min_gap}); lower pair_z or collect more ratings per answer")
    log.add("over_pair_cap", capped, f"supported pairs exceed max_pairs_per_prompt={cfg.max_pairs_per_prompt}")
    if cfg.use_corrections:
        rows += [Row({"prompt": c.corrected.prompt, "chosen": completion(c.text),
                      "rejected": completion(c.corrected.completion)},
                     c.corrected.prompt_key, (c.rating_id, *c.corrected.rating_ids)) for c in pool.corrections]
    else:
        log.add("corrections_off", len(pool.corrections), "corrections left out (use_corrections=False)")
    return rows


def pair_row(chosen: Answer, rejected: Answer) -> Row:
    return Row({"prompt": chosen.prompt, "chosen": completion(chosen.completion),
                "rejected": completion(rejected.completion)},
               chosen.prompt_key, chosen.rating_ids + rejected.rating_ids)
