"""Stage 4, dataset (`ratingloop build`): the pipeline settings of a dataset build, as one frozen dataclass.

Every threshold works on a reward's uncertainty, not on the raw reward alone. The signals stage gives
each interaction a reward in [-1, 1] and a confidence in [0, 1] (1 - posterior sd / prior sd of its
quality), so a reward's standard deviation is `prior_sd * (1 - confidence)` in reward units. An answer
is "confidently good" when `reward - z * sd` clears a bar, and two answers make a DPO pair when their
gap exceeds `pair_z * sqrt(sd1**2 + sd2**2)`. A single thumbs from an unknown rater therefore rarely
passes, while agreeing ratings from reliable raters do. The rewards come from a recorded signals
run; how they are fitted (the content prior included) is `ratingloop signals`' business, not the build's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ratingloop.errors import ConfigError

FORMATS = ("sft", "kto", "dpo", "reward", "weighted")


@dataclass(frozen=True)
class BuildConfig:
    # --- uncertainty ---------------------------------------------------------------------------
    z: float = 1.0  # one-sided sds a reward's bound must clear for sft/kto (1.0: ~84% sure)
    reward_prior_sd: float | None = None  # reward sd at confidence 0; None: from the signals fit
    # --- per format -------------------------------------------------------------------------------
    sft_min_reward: float = 0.3  # sft keeps answers with reward - z*sd >= this ("confidently good")
    kto_neutral: float = 0.0  # kto: desirable if reward - z*sd > this, undesirable if reward + z*sd < this
    kto_min_class: int = 8  # kto: a class short of this, beside one that is not, is filled with the unsure answers
    # of its side of kto_neutral closest to clearing z (KTO needs both classes; 0 turns this off)
    pair_z: float = 1.645  # dpo: gap > pair_z * sqrt(sd1^2 + sd2^2), i.e. ~95% sure of the order
    pair_min_gap: float = 0.1  # dpo: and at least this gap in reward units, however sure the fit is
    max_pairs_per_prompt: int = 16  # dpo: the best-supported pairs per prompt; keeps one prompt from dominating
    min_confidence: float = 0.2  # reward/weighted: rows whose reward is less sure than this are noise
    # answers only a reward model rated (`ratingloop label`, source "judge") count with their confidence times
    # this; 0 leaves them out. `reward` builds always leave them out: a reward model must not learn its own scores
    judge_weight: float = 0.5
    weighted_min_abs: float = 0.05  # weighted: |weight| below this carries no signal; dropped
    use_corrections: bool = True  # a correction is an sft target, kto desirable, dpo chosen, weight 1
    correction_weight: float = 1.0  # weighted: the weight of a correction row
    # --- cleaning and split -------------------------------------------------------------------------
    dedupe: bool = True  # identical answers merged (precision-weighted), identical rows dropped
    scrub_pii: bool = False  # replace emails and phone numbers with [EMAIL] / [PHONE]
    eval_fraction: float = 0.1  # share of prompts (not rows) held out
    min_eval_prompts: int = 0  # hold out at least this many prompts (never more than a third): a gate judging
    # a candidate on 7 held-out prompts cannot clear its confidence interval unless nearly every answer wins
    split_salt: str = "ratingloop"  # changing it reshuffles which prompts are held out
    warn_below: int = 50  # warn when the train split has fewer rows than this

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        """Raise ConfigError naming every bad key and its fix."""
        problems = []
        for key in ("z", "pair_z", "pair_min_gap", "weighted_min_abs", "correction_weight", "kto_min_class"):
            if getattr(self, key) < 0:
                problems.append(f"{key}={getattr(self, key)} must be >= 0")
        for key in ("sft_min_reward", "kto_neutral"):
            if not -1.0 <= getattr(self, key) <= 1.0:
                problems.append(f"{key}={getattr(self, key)} must lie in [-1, 1], the reward's range")
        if not 0.0 <= self.judge_weight <= 1.0:
            problems.append(f"judge_weight={self.judge_weight} must lie in [0, 1]")
        if not 0.0 <= self.min_confidence <= 1.0:
            problems.append(f"min_confidence={self.min_confidence} must lie in [0, 1]")
        if not 0.0 <= self.eval_fraction < 1.0:
            problems.append(f"eval_fraction={self.eval_fraction} must lie in [0, 1)")
        if self.min_eval_prompts < 0:
            problems.append(f"min_eval_prompts={self.min_eval_prompts} must be >= 0")
        if self.reward_prior_sd is not None and self.reward_prior_sd <= 0:
            problems.append(f"reward_prior_sd={self.reward_prior_sd} must be > 0 (or unset to take it from the fit)")
        if self.max_pairs_per_prompt < 1:
            problems.append(f"max_pairs_per_prompt={self.max_pairs_per_prompt} must be >= 1")
        if problems:
            raise ConfigError("build config: " + "; ".join(problems))


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
