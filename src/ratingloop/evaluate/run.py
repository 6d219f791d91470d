"""Stage 6, evaluate: `evaluate(engine, candidate, against="active")` - the candidate against what serves,
top to bottom. `ratingloop eval --candidate V [--against active|base|ID] [--json]` calls it.

    1. resolve both versions (the base model when nothing is active), refuse nonsense comparisons
    2. held-out prompts (heldout.py): in no training set of either version or of the judging reward model
    3. greedy answers from both versions (ratingloop.models.generate, the serving dtype); a version's answers
       to prompts an earlier evaluation already had it answer, with the same settings, are read from that
       evaluation's report instead (after a promotion the new active version answered most held-out prompts
       as the candidate, so the next round generates only its own candidate's answers)
    4. fp32 likelihoods: the human judge's moves on held-out rated answers, and KL on the candidate's answers
    5. the judges vote per prompt (judges.py); a prompt's outcome is the mean of the judges that voted
    6. win rate with a paired bootstrap CI, length-controlled win rate (stats.py); guards (guards.py)
    7. the verdict - promote iff ci_low > 0.5 + margin and every guard is ok - recorded with
       registry.record_evaluation. Nothing is promoted or rejected here: loop.py applies the verdict.

Reads the store (interactions, the newest signals run, the registry, dataset manifests) and the
versions' folders; writes one `evaluations` row.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from sqlalchemy import Engine

from ratingloop.errors import RatingloopError
from ratingloop.evaluate import guards as g
from ratingloop.evaluate.config import EvalConfig
from ratingloop.evaluate.heldout import HeldOutPrompt, count_by, held_out_prompts, normalise, training_keys
from ratingloop.evaluate.judges import (
    JudgeResult,
    human_judge,
    newest_reward_model,
    reward_model_judge,
    simulated_judge,
)
from ratingloop.evaluate.likelihood import answer_logprobs, token_kl
from ratingloop.evaluate.stats import lc_win_rate, win_rate

log = logging.getLogger(__name__)

DEFAULTS = EvalConfig()  # frozen: safe as a shared default


class EvalError(RatingloopError):
    """The evaluation cannot run as asked (unknown version, a version against itself, nothing held out)."""


class CandidateFailed(EvalError):
    """The candidate could not be loaded or run; the loop rejects it with this message."""


@dataclass
class EvalReport:
    candidate: str
    against: str  # a version id, or "base"
    n_prompts: int  # held-out prompts at least one judge voted on
    win_rate: float | None
    ci_low: float | None
    ci_high: float | None
    lc_win_rate: float | None
    judges: list[dict[str, Any]]
    guards: dict[str, dict[str, Any]]
    verdict: str  # promote | reject
    reasons: list[str]
    held_out: dict[str, int] = field(default_factory=dict)
    # per voted prompt: its messages, both answers and the mean outcome (1 candidate wins, 0 loses), for a person
    # to read what the numbers summarise
    examples: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # how the answers were generated (what makes an earlier answer reusable) and how many were reused, per side
    generation: dict[str, Any] = field(default_factory=dict)
    reused_answers: dict[str, int] = field(default_factory=dict)
    evaluation_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """What `eval --json` prints and what the evaluations row stores."""
        return {k: v for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Side:
    version_id: str | None  # None: the base model
    ref: str  # what ratingloop.models loads: an adapter/model folder or a base model reference


def evaluate(engine: Engine, candidate: str, against: str = "active", *, cfg: EvalConfig = DEFAULTS,
             progress: bool = True, users: frozenset[str] | None = None,
             cohorts: dict[str, frozenset[str]] | None = None, signals_run_id: str | None = None) -> EvalReport:
    """Compare `candidate` with `against` ("active", "base" or a version id) and record the verdict.

    `users`: judge on what these users asked and rated only (a cohort version on its cohort). The candidate
    must then be trained on top of `against` (its parent): what both learnt from the parent's training set is
    shared, so only the candidate's own training prompts are held out.
    `cohorts`: name -> users of each cohort `against` serves; a cohort whose win rate is below 0.5 beyond its
    interval fails the candidate (MaxMin: no group made worse off).
    `signals_run_id`: the human judge reads this run's rewards (a cohort's own) instead of the newest run's."""
    start = time.monotonic()
    cand, other = _sides(engine, candidate, against)
    warnings: list[str] = []

    # 2. held-out prompts
    exclude: set[str] = set()
    shared = users is not None and _parent(engine, candidate) == other.version_id
    if users is not None and not shared:
        warnings.append(f"{candidate} was not trained on top of {other.version_id or 'the base'}: both lineages' "
                        "training prompts are held out")
    for side in (cand,) if shared else (cand, other):  # shared: what `against` trained on, both sides learnt
        keys, notes = training_keys(engine, side.version_id, lineage=not shared)
        exclude |= keys
        warnings += notes
    rm = newest_reward_model(engine, cfg.reward_model) if "reward_model" in cfg.judges else None
    rm_keys: set[str] = set()
    if rm is not None and rm.version_id is not None:
        rm_keys, notes = training_keys(engine, rm.version_id)
        warnings += notes
    prompts = held_out_prompts(engine, exclude, _rewards(engine, cfg, warnings, signals_run_id), users)
    if not prompts:
        raise EvalError(f"no held-out prompts: every prompt in the store is in a training set of {cand.version_id} "
                        f"or {other.version_id or 'the base'}; serve or import new prompts, then evaluate again")
    counts = count_by(prompts)
    prompts = prompts[:cfg.max_prompts]

    # 3. greedy answers
    generation = _generation(cfg, cand, other)
    answers_c, reused_c = _answers(engine, cand, prompts, cfg, generation, progress, candidate=True)
    answers_o, reused_o = _answers(engine, other, prompts, cfg, generation, progress, candidate=False)

    # 4. fp32 likelihoods, 5. judges
    results: list[JudgeResult] = []
    kl_total, kl_tokens, moves = _likelihoods(cand, other, prompts, answers_c, cfg)
    if "human" in cfg.judges and moves:
        results.append(human_judge(prompts, moves))
    if rm is not None:
        judged = [k for k, p in enumerate(prompts) if p.key not in rm_keys]
        if judged:
            results.append(reward_model_judge(rm, [prompts[k] for k in judged], [answers_c[k] for k in judged],
                                              [answers_o[k] for k in judged]))
        else:
            warnings.append(f"reward model {rm.path} was trained on every held-out prompt; it does not judge")
    if "simulated" in cfg.judges:
        results.append(simulated_judge(prompts, answers_c, answers_o))
    results = [r for r in results if r.outcomes]
    if not results:
        raise EvalError(f"no judge could vote on the {len(prompts)} held-out prompts: no registered reward model, "
                        "no held-out rated answers (run `ratingloop signals`), no simulated grader")

    # 6. statistics and guards
    voted = [k for k, p in enumerate(prompts) if any(p.key in r.outcomes for r in results)]
    outcomes = [float(np.mean([r.outcomes[prompts[k].key] for r in results if prompts[k].key in r.outcomes]))
                for k in voted]
    overall = win_rate(outcomes, n_resamples=cfg.n_bootstrap, confidence=cfg.confidence, seed=cfg.seed)
    lc = lc_win_rate(outcomes, [g.words(answers_c[k]) for k in voted], [g.words(answers_o[k]) for k in voted])
    judges = [{"name": r.name, **_finite(win_rate(list(r.outcomes.values()), n_resamples=cfg.n_bootstrap,
                                                  confidence=cfg.confidence, seed=cfg.seed).as_dict()),
               **r.detail} for r in results]
    guards = {"length_ratio": g.length_ratio(answers_c, answers_o, cfg.max_length_ratio, cfg.min_length_ratio),
              "refusal_increase": g.refusal_increase(answers_c, answers_o, cfg.max_refusal_increase),
              "kl_per_token": g.kl_per_token(kl_total, kl_tokens, cfg.max_kl),
              **_aspect_guards(prompts, moves, cfg),
              **_cohort_guards([prompts[k] for k in voted], outcomes, cohorts or {}, cfg)}

    # 7. the verdict
    reasons = []
    if not overall.ci_low > 0.5 + cfg.margin:
        reasons.append(f"win rate {overall.win_rate:.3f} over {overall.n} prompts: its {cfg.confidence:.0%} CI "
                       f"[{overall.ci_low:.3f}, {overall.ci_high:.3f}] does not clear {0.5 + cfg.margin:.3f}")
    reasons += g.failed(guards)
    report = EvalReport(candidate=candidate, against=other.version_id or "base", n_prompts=overall.n,
                        win_rate=overall.win_rate, ci_low=overall.ci_low, ci_high=overall.ci_high,
                        lc_win_rate=lc, judges=judges, guards=guards,
                        verdict="reject" if reasons else "promote", reasons=reasons, held_out=counts,
                        examples=[{"messages": prompts[k].messages, "candidate": answers_c[k], "against": answers_o[k],
                                   "outcome": o} for k, o in zip(voted, outcomes, strict=True)],
                        warnings=warnings, seconds=round(time.monotonic() - start, 1), generation=generation,
                        reused_answers={"candidate": reused_c, "against": reused_o})
    report.evaluation_id = _record(engine, report, other.version_id)
    log.info("eval %s vs %s: %d held-out prompts, win rate %.3f [%.3f, %.3f], LC %.3f -> %s%s", candidate,
             report.against, overall.n, overall.win_rate, overall.ci_low, overall.ci_high, lc, report.verdict,
             "".join(f"; {r}" for r in reasons))
    return report


# --- 1. the two sides --------------------------------------------------------------------------------

def _sides(engine: Engine, candidate: str, against: str) -> tuple[Side, Side]:
    from ratingloop.models.registry import active_version

    cand = _version(engine, candidate, "--candidate")
    if against == "active":
        active = active_version(engine)
        other = Side(active.id, active.adapter_path or active.base_model) if active else Side(None, cand.base_model)
    elif against == "base":
        other = Side(None, cand.base_model)
    else:
        v = _version(engine, against, "--against")
        other = Side(v.id, v.adapter_path or v.base_model)
    if other.version_id == candidate:
        what = "the active version" if against == "active" else "itself"
        raise EvalError(f"--candidate {candidate} is {what}: nothing to compare; give another --candidate, or "
                        "--against base or another version id")
    return Side(cand.id, cand.adapter_path or cand.base_model), other


def _version(engine: Engine, version_id: str, flag: str) -> Any:
    from ratingloop.models.registry import REWARD_METHODS, get_version, version_method

    try:
        version = get_version(engine, version_id)
    except RatingloopError as e:
        raise EvalError(f"{flag} {version_id}: {e}") from e
    if version_method(engine, version_id) in REWARD_METHODS:
        raise EvalError(f"{flag} {version_id} is a reward model, which scores answers and does not write them; "
                        "give a policy version (`ratingloop versions list`)")
    return version


def _rewards(engine: Engine, cfg: EvalConfig, warnings: list[str], run_id: str | None = None
             ) -> dict[str, tuple[float, dict[str, float]]]:
    """Interaction id -> (reward, aspects) from signals run `run_id` (default the newest); empty (with a warning)
    when none."""
    if "human" not in cfg.judges:
        return {}
    from ratingloop.signals import load_signals

    try:
        stored = load_signals(engine, run_id)
    except RatingloopError as e:
        warnings.append(f"no human judge: {e}")
        return {}
    return {s.interaction_id: (s.reward, dict(s.aspects)) for s in stored.interactions}


# --- 3, 4. the models ----------------------------------------------------------------------------------

def _generation(cfg: EvalConfig, cand: Side, other: Side) -> dict[str, Any]:
    """The settings behind the answers: greedy, `max_tokens`, the dtype "auto" resolved to on this machine, and
    what each side loaded (the base model has no version id, so its answers are known by its reference)."""
    from ratingloop import models

    return {"max_tokens": cfg.max_tokens, "dtype": str(models.resolve_dtype(cfg.dtype, models.default_device())),
            "candidate_ref": cand.ref, "against_ref": other.ref}


def _answers(engine: Engine, side: Side, prompts: Sequence[HeldOutPrompt], cfg: EvalConfig,
             generation: dict[str, Any], progress: bool, candidate: bool) -> tuple[list[str], int]:
    """`side`'s greedy answer to every prompt, and how many of them were earlier evaluations' answers."""
    from ratingloop import models  # `from ratingloop.models import generate` would name the module

    earlier = _earlier_answers(engine, side, generation)
    missing = [k for k, p in enumerate(prompts) if p.key not in earlier]
    answers = {k: earlier[p.key] for k, p in enumerate(prompts) if p.key in earlier}
    model: tuple[Any, Any] | None = None
    try:
        if missing:
            model = models.load_for_generation(side.ref, dtype=cfg.dtype)
            made = models.generate(model, [{"id": k, "messages": prompts[k].messages} for k in missing],
                                   max_tokens=cfg.max_tokens, temperature=0.0, batch_size=cfg.batch_size,
                                   progress=progress)
            answers.update({k: a["response"] for k, a in zip(missing, made, strict=True)})
    except Exception as e:
        raise _failure(side, candidate, "generate", e) from e
    finally:
        model = None
        gc.collect()
    if earlier:
        log.info("eval: %d of %d answers of %s read from earlier evaluations", len(prompts) - len(missing),
                 len(prompts), side.version_id or side.ref)
    return [answers[k] for k in range(len(prompts))], len(prompts) - len(missing)


def _earlier_answers(engine: Engine, side: Side, generation: dict[str, Any]) -> dict[str, str]:
    """Prompt key -> `side`'s answer in earlier evaluations generated with the same settings, the newest winning.
    A version's weights never change, and greedy decoding of the same prompt with the same settings gives the
    same answer, so generating it again would only cost time. An evaluation recorded before reports carried
    their settings is not read."""
    from sqlalchemy import or_, select

    from ratingloop.dataset import prompt_key
    from ratingloop.store import tables as t

    e = t.evaluations.c
    mine = (or_(e.candidate_id == side.version_id, e.against_id == side.version_id) if side.version_id is not None
            else e.against_id.is_(None))
    same = {k: generation[k] for k in ("max_tokens", "dtype")}
    out: dict[str, str] = {}
    with engine.connect() as conn:
        for row in conn.execute(select(e.candidate_id, e.report).where(mine).order_by(e.created_at, e.id)):
            report = row.report or {}
            settings = report.get("generation") or {}
            which = "candidate" if side.version_id is not None and row.candidate_id == side.version_id else "against"
            if {k: settings.get(k) for k in same} != same or settings.get(f"{which}_ref") != side.ref:
                continue
            for example in report.get("examples") or []:
                out[prompt_key(normalise(example["messages"]))] = example[which]
    return out


def _likelihoods(cand: Side, other: Side, prompts: Sequence[HeldOutPrompt], answers_c: Sequence[str],
                 cfg: EvalConfig) -> tuple[float, int, dict[str, float]]:
    """(KL total, KL tokens, interaction id -> per-token log-likelihood move of each held-out rated answer)."""
    from ratingloop import models

    loaded = []
    for side, is_cand in ((cand, True), (other, False)):
        try:
            loaded.append(models.load_for_generation(side.ref, dtype="fp32"))
        except Exception as e:
            raise _failure(side, is_cand, "load", e) from e
    (model_c, tok), (model_o, tok_o) = loaded
    if len(tok) != len(tok_o):
        raise EvalError(f"{cand.ref} and {other.ref} use different tokenizers ({len(tok)} vs {len(tok_o)} tokens); "
                        "versions compared must share a base model")
    kw = {"batch_size": cfg.score_batch_size, "max_length": cfg.score_max_length}
    messages = [p.messages for p in prompts]
    kl, n = token_kl(model_c, model_o, tok, messages, answers_c, **kw)
    rated = [(p.messages, r) for p in prompts for r in p.rated][:cfg.max_rated_answers]
    moves: dict[str, float] = {}
    if rated:
        texts = [r.response for _, r in rated]
        lp_c, count = answer_logprobs(model_c, tok, [m for m, _ in rated], texts, **kw)
        lp_o, _ = answer_logprobs(model_o, tok, [m for m, _ in rated], texts, **kw)
        moves = {r.interaction_id: float((a - b) / max(c, 1))
                 for (_, r), a, b, c in zip(rated, lp_c, lp_o, count, strict=True)}
    del loaded, model_c, model_o
    gc.collect()
    return float(kl.sum()), int(n.sum()), moves


def _failure(side: Side, candidate: bool, step: str, e: Exception) -> EvalError:
    if isinstance(e, EvalError):
        return e
    what = f"{type(e).__name__}: {e}" if not isinstance(e, RatingloopError) else str(e)
    if candidate:
        return CandidateFailed(f"candidate {side.version_id} ({side.ref}) failed to {step}: {what}")
    return EvalError(f"{side.version_id or 'the base model'} ({side.ref}) failed to {step}: {what}")


# --- 6, 7. guards on aspects, recording --------------------------------------------------------------

def _aspect_guards(prompts: Sequence[HeldOutPrompt], moves: dict[str, float], cfg: EvalConfig) -> dict[str, Any]:
    rated = [r for p in prompts for r in p.rated if r.interaction_id in moves]
    aspects = sorted({a for r in rated for a in r.aspects} - {"overall"})
    out = {}
    for aspect in aspects:
        result = human_judge(prompts, moves, aspect)
        n = int(result.detail["rated_answers"])
        if n >= cfg.min_aspect_answers:
            rate = float(np.mean(list(result.outcomes.values())))
            out[f"aspect:{aspect}"] = g.aspect_guard(rate, n, cfg.max_aspect_drop)
    return out


def _cohort_guards(voted: Sequence[HeldOutPrompt], outcomes: Sequence[float], cohorts: dict[str, frozenset[str]],
                   cfg: EvalConfig) -> dict[str, Any]:
    """MaxMin: per cohort, the win rate on the voted prompts its users asked; fails when its interval's top is
    below 0.5 (the candidate is worse for that cohort, not merely unproven)."""
    out = {}
    for name, members in sorted(cohorts.items()):
        mine = [o for p, o in zip(voted, outcomes, strict=True) if p.users & members]
        if len(mine) < cfg.min_cohort_prompts:
            continue
        w = win_rate(mine, n_resamples=cfg.n_bootstrap, confidence=cfg.confidence, seed=cfg.seed)
        out[f"cohort:{name}"] = g.cohort_guard(w.win_rate, w.ci_low, w.ci_high, w.n, len(members))
    return out


def _parent(engine: Engine, version_id: str) -> str | None:
    from ratingloop.models.registry import get_version

    return get_version(engine, version_id).parent_id


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    """NaN (no outcomes) as None: the report is JSON, and JSON has no NaN."""
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in d.items()}


def _record(engine: Engine, report: EvalReport, against_id: str | None) -> str:
    from ratingloop.models.registry import record_evaluation

    return record_evaluation(engine, report.candidate, against_id, report.verdict, report.as_dict())
