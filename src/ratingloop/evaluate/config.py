"""Stage 6, evaluate: EvalConfig, the evaluation's settings (`ratingloop eval --config FILE --set eval.KEY=V`).

Its defaults are the only defaults. The gate promotes iff the paired-bootstrap lower bound of the
win rate clears 0.5 + `margin` and every guard is within its limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from ratingloop.errors import ConfigError

JUDGES = ("reward_model", "human", "simulated")


@dataclass(frozen=True)
class EvalConfig:
    # held-out prompts
    max_prompts: int = 64  # generated for by both versions; the cost of an evaluation grows with it
    max_rated_answers: int = 256  # held-out rated answers the human judge scores (forward passes only)
    # generation: greedy, as served
    max_tokens: int = 128
    batch_size: int = 32  # rows per generate call: CPU decoding is memory-bound, wider batches pay (bench/gate.py)
    dtype: str = "auto"  # generation dtype, what `generate` serves with: auto = bf16 where the CPU has it, else fp32
    score_batch_size: int = 4  # likelihood / KL forward passes, always in fp32 (small LoRA deltas survive)
    score_max_length: int = 1024  # tokens per (prompt, answer); the prompt's beginning is cut first
    # judges and statistics
    judges: tuple[str, ...] = JUDGES  # which judges may vote (each only where it applies)
    reward_model: str = ""  # a reward model folder; "" = the newest registered one
    n_bootstrap: int = 2000
    confidence: float = 0.95
    seed: int = 0
    # the gate
    margin: float = 0.0  # promote iff ci_low > 0.5 + margin
    max_length_ratio: float = 3.0  # mean answer length (words) may grow at most this factor (verbosity gaming)
    min_length_ratio: float = 0.1  # ... and shrink to no less than this share (users may want much shorter)
    max_refusal_increase: float = 0.05  # share of empty or refusing answers may rise by at most this
    # KL(candidate || against), nats per token of the candidate's answers. Measured (bench/results.md, the demo):
    # KTO candidates whose held-out win rate cleared 0.5 had 0.64 and 0.80 (learning to stop early moves the
    # end-of-answer token a lot); a candidate trained on refusals had 2.32. 1.0 lets the first through.
    max_kl: float = 1.0
    max_aspect_drop: float = 0.1  # an aspect's win rate may fall at most this far below 0.5
    min_aspect_answers: int = 5  # fewer held-out answers rated on an aspect: no guard for it
    # MaxMin: a global candidate must not leave any cohort of users (ratingloop.personal) worse off - the win rate
    # on the held-out prompts of a cohort the global version serves must not be below 0.5 beyond its interval
    min_cohort_prompts: int = 8  # fewer voted prompts from a cohort's users: no guard for it

    def __post_init__(self) -> None:
        problems = []
        for name in ("max_prompts", "max_rated_answers", "max_tokens", "batch_size", "score_batch_size",
                     "score_max_length", "n_bootstrap", "min_aspect_answers", "min_cohort_prompts"):
            if getattr(self, name) < 1:
                problems.append(f"eval.{name}={getattr(self, name)}: must be at least 1")
        unknown = [j for j in self.judges if j not in JUDGES]
        if unknown or not self.judges:
            problems.append(f"eval.judges={list(self.judges)}: choose one or more of {', '.join(JUDGES)}")
        if not 0.5 < self.confidence < 1:
            problems.append(f"eval.confidence={self.confidence}: must lie in (0.5, 1), e.g. 0.95")
        if not 0 <= self.margin < 0.5:
            problems.append(f"eval.margin={self.margin}: must lie in [0, 0.5)")
        if self.max_length_ratio <= 1:
            problems.append(f"eval.max_length_ratio={self.max_length_ratio}: must be above 1, e.g. 3")
        if not 0 < self.min_length_ratio < 1:
            problems.append(f"eval.min_length_ratio={self.min_length_ratio}: must lie in (0, 1), e.g. 0.1")
        for name in ("max_refusal_increase", "max_kl", "max_aspect_drop"):
            if getattr(self, name) < 0:
                problems.append(f"eval.{name}={getattr(self, name)}: must be 0 or more")
        if problems:
            raise ConfigError("; ".join(problems))
