"""Stage 6, evaluate: a candidate version against the active one on held-out prompts, and the gate's verdict.

config.py      EvalConfig: prompts, generation, bootstrap, the gate's margin and guard limits
heldout.py     prompts in no training set of either version (dataset manifests' prompt_keys, lineage)
likelihood.py  fp32 answer log-likelihoods and token-level KL between two loaded models
judges.py      reward model, held-out human ratings, simulated graders: one outcome per prompt each
stats.py       win rate, paired bootstrap CI, length-controlled win rate (AlpacaEval LC)
guards.py      length ratio, empty/refusal rate, KL per token, per-aspect change
run.py         evaluate(engine, candidate, against) -> EvalReport, recorded in `evaluations`
purge.py       a deleted user's prompts out of stored reports (their `examples`)
live.py        live_check(): users' ratings of the active version vs what its promotion replaced

    report = evaluate(engine, "01J...", "active")
    report.verdict, report.reasons, report.as_dict()   # what `ratingloop eval --json` prints

Importing this package is cheap: torch and transformers load inside `evaluate`.
"""

from ratingloop.evaluate.config import EvalConfig
from ratingloop.evaluate.live import LiveCheck, LiveConfig, live_check
from ratingloop.evaluate.purge import purge_user
from ratingloop.evaluate.run import CandidateFailed, EvalError, EvalReport, evaluate

__all__ = ["CandidateFailed", "EvalConfig", "EvalError", "EvalReport", "LiveCheck", "LiveConfig", "evaluate",
           "live_check", "purge_user"]
