"""The loop: the order of the stages, in one place. Read this file top to bottom to see every stage.

    signals  (ratingloop.signals.record_signals)   fit the rater model once; record the run in the store
    build    (ratingloop.dataset.build_dataset)     that run's rewards -> the method's training set, OUT/data
    train    (ratingloop.train.train)               the set -> a LoRA adapter, registered as a candidate

`train_from_store` is that chain; `ratingloop train` without `--data` runs it, and so does every loop
round (with its round id, so a restarted round finds its own training run), and each cohort adapter of a
round (from its cohort's raters only, `raters`). The stages hand over
through the store and the data folder only: the dataset reads the recorded signals run, training
reads the folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

from sqlalchemy import Engine

from ratingloop.dataset import BuildConfig, build_dataset
from ratingloop.errors import ConfigError, RatingloopError
from ratingloop.rounds import (
    Durable,
    durable_step,
    finish_round,
    last_round,
    new_ratings,
    runner_lock,
    set_round_version,
    start_round,
    unfinished_rounds,
)
from ratingloop.signals import SignalsConfig, record_signals
from ratingloop.train import (
    METHODS,
    TrainConfig,
    TrainResult,
    check_out_dir,
    dataset_format,
    is_main_process,
    main_process_first,
    train,
)

if TYPE_CHECKING:
    from ratingloop.evaluate import LiveCheck

log = logging.getLogger(__name__)
T = TypeVar("T")

# what to try instead when the store cannot feed a method
ALTERNATIVE = {"dpo": "; or train --method kto or sft, which need no pairs"}


def train_from_store(engine: Engine, method: str, *, out_dir: Path, base: str | Path | None = None,
                     cfg: TrainConfig | Callable[[int], TrainConfig] | None = None,
                     build_cfg: BuildConfig | None = None,
                     signals_cfg: SignalsConfig | None = None, parent_version_id: str | None = None,
                     round_id: str | None = None, progress: bool = True, callbacks: Sequence[Any] = (),
                     raters: frozenset[str] | None = None, scope: str | None = None) -> TrainResult:
    """Record a signals run, build the method's dataset from it into OUT/data, and train on it.

    `cfg` may be a function of the number of train rows the build kept (the loop sizes its steps by the
    data: `train.config.loop_train_config`). Under `accelerate launch` only the main process records and
    builds; the others wait for it and train on the same folder. With `raters` (a cohort's users, under `scope`),
    the signals run is fitted on their ratings only and the build holds only theirs."""
    out_dir = Path(out_dir)
    data_dir = out_dir / "data"
    if method not in METHODS:  # before anything is written
        raise ConfigError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    fmt = dataset_format(method)
    with main_process_first():
        if is_main_process():
            check_out_dir(out_dir)  # before the build replaces OUT/data of a model already there
            try:
                signals = record_signals(engine, signals_cfg or SignalsConfig(), raters=raters, scope=scope)
                built = build_dataset(engine, fmt, data_dir, build_cfg or BuildConfig(), signals, raters)
            except RatingloopError as e:
                raise RatingloopError(f"train --method {method}: cannot build its dataset from the store: {e}"
                                      f"{ALTERNATIVE.get(method, '')}") from e
    if callable(cfg):
        if not is_main_process():
            raise ConfigError("a training config sized by the data needs the main process's build; under "
                              "`accelerate launch` pass a TrainConfig")
        cfg = cfg(built.n_train)
    return train(engine, method, out_dir=out_dir, data_dir=data_dir, base=base, cfg=cfg,
                 parent_version_id=parent_version_id, round_id=round_id, progress=progress, callbacks=callbacks)


# --- the round: `ratingloop loop` ------------------------------------------------------------------------
#
#     train   signals -> build -> train (train_from_store above), tagged with the round id
#     label   when a reward model exists and most answers are unrated: judge ratings for the next round
#     eval    the candidate against the active version (ratingloop.evaluate), on held-out prompts
#     gate    promote when the evaluation says so, else reject with its reasons (ratingloop.models.registry)
#     personal fit per-user weights and cohorts (ratingloop.personal) from the round's signals run
#     cohort  per cohort with enough ratings: train on its raters' ratings on top of the active version, judge it
#             on the cohort's held-out prompts against what the cohort is served now, serve it to the cohort
#             or reject it. With one cohort, nothing more is trained.
#
# The global candidate's evaluation has a MaxMin guard: a cohort the active version serves (of the newest
# personal run) must not be worse off under the candidate (ratingloop.evaluate, `cohorts`).
#
# Each step is a durable step (ratingloop.rounds): after a crash the round resumes at the step that was
# running, and that step must be safe to run twice - train finds the round's own training run by its
# round id (succeeded: reuse its version; killed: resume its checkpoint, else train afresh), label's
# ratings have idempotency keys, eval records one more evaluation, and promote/reject of what is already
# so changes nothing. A version becomes active only in promote's one transaction, so the store never has
# no active version (or the base) whatever is killed when.

DEFAULT_METHOD = "kto"
SECTIONS = ("train", "build", "signals", "eval", "personal")  # the tables `loop --config/--set` may set
LABEL_WHEN_UNRATED = 0.5  # label runs when at least this share of the interactions has no rating
# The gate judges a candidate on the prompts no training set used. A store of ~70 questions holds out 7 at the
# build's 10%, and 7 cannot clear a 95% interval unless nearly every answer wins (tests/test_loop_default.py
# rejected a candidate at win rate 0.69 that way); a round trains on at most 128 rows anyway
# (loop_train_config), so holding out more prompts costs a small store little.
LOOP_BUILD_DEFAULTS = {"min_eval_prompts": 24}


@dataclass(frozen=True)
class RoundSpec:
    """What a round was asked to do; stored with the round and replayed as is when it resumes."""

    method: str = DEFAULT_METHOD
    base: str | None = None
    config: str | None = None  # a TOML/YAML file with [train] [build] [signals] [eval] tables
    overrides: tuple[str, ...] = ()  # train.KEY=VALUE ...
    out_root: str = "runs/loop"  # each round trains into OUT_ROOT/<round id>/

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "base": self.base, "config": self.config, "overrides": list(self.overrides),
                "out_root": self.out_root}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoundSpec:
        return cls(d["method"], d.get("base"), d.get("config"), tuple(d.get("overrides") or ()), d["out_root"])

    def section(self, cls: type[T], name: str, defaults: dict[str, Any] | None = None) -> T:
        from ratingloop.pipeline_config import load_section

        mine = [o for o in self.overrides if o.split("=", 1)[0].strip().startswith(name + ".")]
        return load_section(cls, name, Path(self.config) if self.config else None, mine, defaults)

    def train_config(self, n_rows: int) -> TrainConfig:
        """The round's training settings for `n_rows` kept rows: what the config file and --set say, over the
        loop's sizing by the data (steps, batch, learning rate: `train.config.loop_train_config`)."""
        from ratingloop.pipeline_config import section_values
        from ratingloop.train.config import loop_train_config

        mine = [o for o in self.overrides if o.split("=", 1)[0].strip().startswith("train.")]
        self.section(TrainConfig, "train")  # names an unknown key or a wrong type before anything runs
        return loop_train_config(self.method, n_rows,
                                 **section_values("train", Path(self.config) if self.config else None, mine))

    def check(self) -> None:
        """Every setting resolves (names the bad key) before a round is recorded."""
        from ratingloop.evaluate import EvalConfig

        dataset_format(self.method)
        stray = [o for o in self.overrides if o.split("=", 1)[0].strip().split(".")[0] not in SECTIONS]
        if stray:
            raise ConfigError(f"--set {stray[0]!r}: write SECTION.KEY=VALUE with SECTION one of {', '.join(SECTIONS)}")
        self.train_config(100).validate()
        self.section(BuildConfig, "build")
        self.section(SignalsConfig, "signals")
        self.section(EvalConfig, "eval")
        self.personal().check()

    def personal(self) -> Any:
        from ratingloop.personal import PersonalConfig

        return self.section(PersonalConfig, "personal")


def run_round(engine: Engine, round_id: str, spec_dict: dict[str, Any], *, user_key: bytes,
              progress: bool = False) -> dict[str, Any]:
    """One round, step by step; returns its outcome ({"outcome": promoted | rejected | failed, ...}).
    `user_key` (the server's secret, for label's writes) and `progress` (a bar for training and for the
    gate's answers) are bound, never part of the durable workflow's inputs."""
    spec = RoundSpec.from_dict(spec_dict)
    trained = durable_step(engine, round_id, "train", 1, lambda: _train_step(engine, round_id, spec, progress))
    version_id = trained.get("version_id")
    if trained.get("status") == "failed" or not version_id:
        error = trained.get("error") or "training registered no version"
        finish_round(engine, round_id, outcome="failed", error=error)
        log.error("round %s failed in training: %s; the active version keeps serving", round_id, error)
        return {"round_id": round_id, "outcome": "failed", "error": error, "version_id": None}
    set_round_version(engine, round_id, version_id)
    durable_step(engine, round_id, "label", 2, lambda: _label_step(engine, user_key))
    report = durable_step(engine, round_id, "eval", 3, lambda: _eval_step(engine, version_id, spec, progress))
    gate = durable_step(engine, round_id, "gate", 4, lambda: _gate_step(engine, round_id, version_id, report))
    cohorts = _cohort_steps(engine, round_id, spec, progress)
    finish_round(engine, round_id, outcome=gate["outcome"], version_id=version_id)
    log.info("round %s: candidate %s %s (%s)", round_id, version_id, gate["outcome"], "; ".join(gate["reasons"]))
    return {"round_id": round_id, "outcome": gate["outcome"], "version_id": version_id, "reasons": gate["reasons"],
            "cohorts": cohorts}


def _cohort_steps(engine: Engine, round_id: str, spec: RoundSpec, progress: bool) -> list[dict[str, Any]]:
    """The personal step, then one step per cohort (train, scope, evaluate, gate: each safe to repeat)."""
    fitted = durable_step(engine, round_id, "personal", 5, lambda: _personal_step(engine, spec))
    outcomes = []
    for k, plan in enumerate(fitted.get("cohorts") or []):
        if not plan["train"]:
            outcomes.append({"cohort": plan["cohort"], "outcome": "skipped", "reasons": [plan["reason"]]})
            continue
        outcomes.append(durable_step(engine, round_id, f"cohort-{plan['cohort']}", 6 + k, partial(
            _cohort_step, engine, round_id, spec, fitted["personal_run_id"], int(plan["cohort"]), progress)))
    return outcomes


def _personal_step(engine: Engine, spec: RoundSpec) -> dict[str, Any]:
    from ratingloop.personal import cohort_members, record_personal

    cfg = spec.personal()
    if not cfg.cohort_adapters:
        return {"status": "skipped", "reason": "personal.cohort_adapters is false"}
    try:
        run = record_personal(engine, cfg)
    except RatingloopError as e:
        return {"status": "skipped", "reason": f"no personal weights: {e}"}
    if run.k < 2:
        return {"status": "skipped", "personal_run_id": run.run_id, "k": run.k,
                "reason": f"{run.k} cohort(s): one model serves everyone; nothing more to train"}
    plans = []
    for cohort, (users, n_ratings) in cohort_members(engine, run.run_id).items():
        enough = n_ratings >= cfg.min_cohort_ratings
        plans.append({"cohort": cohort, "users": len(users), "ratings": n_ratings, "train": enough,
                      "reason": "" if enough else f"cohort {cohort}: {n_ratings} ratings from {len(users)} users, "
                                                  f"under personal.min_cohort_ratings={cfg.min_cohort_ratings}"})
    return {"personal_run_id": run.run_id, "k": run.k, "cohorts": plans}


def _cohort_step(engine: Engine, round_id: str, spec: RoundSpec, personal_run_id: str, cohort: int,
                 progress: bool) -> dict[str, Any]:
    """Train cohort `cohort`'s adapter on top of the active version, judge it on the cohort against what serves
    the cohort now, and serve it to the cohort or reject it."""
    from ratingloop.evaluate import EvalConfig, evaluate
    from ratingloop.models.registry import get_version, promote_cohort, reject, set_cohort
    from ratingloop.personal import cohort_members

    users = cohort_members(engine, personal_run_id).get(cohort, (frozenset(), 0))[0]
    out: dict[str, Any] = {"cohort": cohort, "personal_run_id": personal_run_id, "users": len(users)}
    trained = _train_step(engine, round_id, spec, progress, cohort=(cohort, users))
    version_id = trained.get("version_id")
    if trained.get("status") == "failed" or not version_id:
        return out | {"status": "failed", "outcome": "failed", "error": trained.get("error")}
    set_cohort(engine, version_id, personal_run_id, cohort)
    against = serving(engine, users)
    cfg = cohort_eval_config(spec.section(EvalConfig, "eval"), _cohort_weights(engine, personal_run_id, cohort))
    try:
        report = evaluate(engine, version_id, against, cfg=cfg, progress=progress, users=users,
                          signals_run_id=_snapshot_signals(engine, version_id))
        verdict, reasons, evaluation_id = report.verdict, report.reasons, report.evaluation_id
        out |= {"against": report.against, "win_rate": report.win_rate, "ci_low": report.ci_low,
                "ci_high": report.ci_high, "n_prompts": report.n_prompts}
    except Exception as e:  # noqa: BLE001 - a candidate the gate could not judge is rejected, never served
        verdict, reasons, evaluation_id = "reject", [f"evaluation crashed: {type(e).__name__}: {e}"], None
    if verdict == "promote":
        try:
            promote_cohort(engine, version_id, actor="loop", reason=f"round {round_id}: " + "; ".join(reasons),
                           evaluation_id=evaluation_id)
            return out | {"version_id": version_id, "outcome": "promoted", "reasons": reasons}
        except RatingloopError as e:
            reasons = [f"promotion refused: {e}"]
    if get_version(engine, version_id).status != "rejected":
        reject(engine, version_id, actor="loop", reasons=reasons or ["the gate said reject"],
               evaluation_id=evaluation_id)
    return out | {"version_id": version_id, "outcome": "rejected", "reasons": reasons}


# A cohort whose ratings reward longer answers asked for them: the verbosity guard (eval.max_length_ratio, 3x the
# answers of what serves) rejected the thorough cohort's adapter of bench/personal.py seed 1 at 5.5x (72.6 vs 13.2
# words, after a global version that had learnt the majority's two-line answers) with a win rate of 0.77 for them.
LONGER_FOR_A_LENGTH_COHORT = 10.0


def cohort_eval_config(cfg: Any, weights: dict[str, float]) -> Any:
    """The gate's settings for a cohort's adapter: `cfg`, with the length guard's ceiling raised to
    LONGER_FOR_A_LENGTH_COHORT when the cohort's mean weight on the answer's length is positive (their own
    ratings reward longer answers). Everything else, the floor included, is as for any candidate."""
    from dataclasses import replace

    if weights.get("length", 0.0) > 0 and cfg.max_length_ratio < LONGER_FOR_A_LENGTH_COHORT:
        return replace(cfg, max_length_ratio=LONGER_FOR_A_LENGTH_COHORT)
    return cfg


def _cohort_weights(engine: Engine, personal_run_id: str, cohort: int) -> dict[str, float]:
    from ratingloop.personal import load_personal

    run = load_personal(engine, personal_run_id)
    return next((dict(c.weights) for c in run.cohorts if c.cohort == cohort), {}) if run else {}


def _snapshot_signals(engine: Engine, version_id: str) -> str | None:
    """The signals run a version's training set was built from (a cohort's own run, for a cohort version)."""
    from sqlalchemy import select

    from ratingloop.models.registry import get_version
    from ratingloop.store import tables as t

    snapshot = get_version(engine, version_id).dataset_snapshot_id
    s = t.DatasetSnapshot.__table__.c
    with engine.connect() as conn:
        return conn.execute(select(s.signals_run_id).where(s.id == snapshot)).scalar() if snapshot else None


def serving(engine: Engine, users: frozenset[str]) -> str:
    """The version most of `users` are served now (as serve routes them): a cohort version, the active one, or
    "base"."""
    from collections import Counter

    from ratingloop.serve.routing import ACTIVE, load_routes

    routes = load_routes(engine)
    counts = Counter(routes.pick(ACTIVE, u).version for u in users)
    return counts.most_common(1)[0][0] if counts else routes.active.version


def _train_step(engine: Engine, round_id: str, spec: RoundSpec, progress: bool = False,
                cohort: tuple[int, frozenset[str]] | None = None) -> dict[str, Any]:
    """The round's global candidate; with `cohort` (its number and users), that cohort's adapter, from its users'
    ratings only and starting from the active version's adapter. Its training run is tagged ROUND/cohort-N."""
    from dataclasses import replace

    from ratingloop.models.registry import active_version, fail_run, list_runs, list_versions
    from ratingloop.train import resume

    tag = round_id if cohort is None else f"{round_id}/cohort-{cohort[0]}"
    earlier = [r for r in list_runs(engine) if r.round_id == tag]  # a crash ran this step before
    for run in earlier:
        if run.status == "succeeded":  # killed after training registered its version: that is the round's
            [version] = [v for v in list_versions(engine) if v.training_run_id == run.id]
            return {"version_id": version.id, "run_id": run.id, "reused": True}
    for run in earlier:
        if run.status != "running":
            continue
        try:  # killed mid-training: continue from its newest checkpoint, on its own data
            result = resume(engine, run.id, progress=progress)
            return _trained(result, resumed=True)
        except RatingloopError as e:
            fail_run(engine, run.id, f"the loop process died during this run and it cannot resume ({e}); "
                                     "the round trains again")
    active = active_version(engine)
    name = "train" if cohort is None else f"cohort-{cohort[0]}"
    out_dir = Path(spec.out_root) / round_id / f"{name}-{len(earlier) + 1}"
    cfg: Callable[[int], TrainConfig] = spec.train_config
    if cohort is not None and active is not None and active.adapter_path:
        cfg = lambda n: replace(spec.train_config(n), init_adapter=str(active.adapter_path))  # noqa: E731
    try:
        result = train_from_store(
            engine, spec.method, out_dir=out_dir, base=spec.base, cfg=cfg,
            build_cfg=spec.section(BuildConfig, "build", LOOP_BUILD_DEFAULTS),
            signals_cfg=spec.section(SignalsConfig, "signals"),
            parent_version_id=active.id if active else None, round_id=tag, progress=progress,
            raters=cohort[1] if cohort is not None else None,
            scope=f"cohort {cohort[0]} of round {round_id}" if cohort is not None else None)
    except Exception as e:  # noqa: BLE001 - any training failure fails the round, recorded with its reason
        return {"status": "failed", "error": f"{type(e).__name__}: {e}"}
    return _trained(result, resumed=False)


def _trained(result: TrainResult, *, resumed: bool) -> dict[str, Any]:
    keep = ("train_rows", "steps", "first_loss", "last_loss", "train_runtime_s")
    return {"version_id": result.version_id, "run_id": result.run_id, "resumed": resumed,
            "dataset_snapshot_id": result.dataset_snapshot_id, "out_dir": str(result.out_dir),
            "metrics": {k: result.metrics.get(k) for k in keep}}


def _label_step(engine: Engine, user_key: bytes) -> dict[str, Any]:
    from sqlalchemy import func, select

    from ratingloop.store import tables as t
    from ratingloop.train.label import label, reward_model_dir, unrated_count

    try:
        model = reward_model_dir(engine, None)
    except RatingloopError:
        return {"status": "skipped", "reason": "no reward model in the registry"}
    with engine.connect() as conn:
        total = int(conn.execute(select(func.count()).select_from(t.interactions)).scalar_one())
    unrated = unrated_count(engine)
    if not total or unrated / total < LABEL_WHEN_UNRATED:
        return {"status": "skipped", "reason": f"{unrated} of {total} interactions unrated: feedback is not sparse"}
    report = label(engine, model, user_key=user_key)
    return {"reward_model": str(model), "scored": report.scored, "written": report.written}


def _eval_step(engine: Engine, version_id: str, spec: RoundSpec, progress: bool = False) -> dict[str, Any]:
    """The evaluation's report; one that crashes is a reject with the error (never a promote)."""
    from ratingloop.evaluate import EvalConfig, evaluate

    try:
        report: dict[str, Any] = evaluate(engine, version_id, "active", cfg=spec.section(EvalConfig, "eval"),
                                          progress=progress, cohorts=_served_cohorts(engine)).as_dict()
    except Exception as e:  # noqa: BLE001 - the gate rejects a candidate it could not judge
        log.error("round: evaluating %s crashed: %s", version_id, e)
        return {"status": "failed", "verdict": "reject", "reasons": [f"evaluation crashed: {type(e).__name__}: {e}"],
                "error": f"{type(e).__name__}: {e}"}
    # The examples (users' prompts and both versions' answers) stay in the evaluations row, which deleting a
    # user purges; a step's output is also kept by DBOS in its own tables, which no purge reaches.
    report.pop("examples", None)
    return report


def _served_cohorts(engine: Engine) -> dict[str, frozenset[str]]:
    """The newest personal run's cohorts (2 or more), less the users a cohort version serves: whom the active
    version serves, and a global candidate must not leave worse off."""
    from ratingloop.personal import cohort_members, load_personal
    from ratingloop.serve.routing import load_routes

    run = load_personal(engine)
    if run is None or run.k < 2:
        return {}
    own = load_routes(engine).cohorts
    return {str(c): frozenset(u for u in users if u not in own) for c, (users, _) in
            cohort_members(engine, run.run_id).items()}


def _gate_step(engine: Engine, round_id: str, version_id: str, report: dict[str, Any]) -> dict[str, Any]:
    return gate(engine, version_id, report, actor="loop", note=f"round {round_id}")


def gate(engine: Engine, version_id: str, report: dict[str, Any], *, actor: str = "gate",
         note: str | None = None) -> dict[str, Any]:
    """Apply an evaluation's verdict: promote (one transaction; a missing or corrupt adapter is refused
    and the candidate rejected instead) or reject with the report's reasons. Safe to repeat: promoting
    the active version or rejecting a rejected one changes nothing."""
    from ratingloop.models.registry import get_version, promote, reject

    reasons = [str(r) for r in report.get("reasons") or []]
    evaluation_id = report.get("evaluation_id")
    if report.get("verdict") == "promote":
        why = "; ".join(reasons) or f"win rate {report.get('win_rate')}"
        try:
            promote(engine, version_id, actor=actor, reason=f"{note}: {why}" if note else why,
                    evaluation_id=evaluation_id)
            return {"outcome": "promoted", "reasons": reasons}
        except RatingloopError as e:  # a missing or corrupt adapter never becomes active
            reasons = [f"promotion refused: {e}"]
    if get_version(engine, version_id).status != "rejected":  # a repeat after a crash adds no second event
        reject(engine, version_id, actor=actor, reasons=reasons or ["the gate said reject"],
               evaluation_id=evaluation_id)
    return {"outcome": "rejected", "reasons": reasons}


# --- running rounds: once, or whenever enough ratings arrived -----------------------------------------

def run_loop(engine: Engine, spec: RoundSpec, *, user_key: bytes, once: bool, min_new_ratings: int = 100,
             every_s: float | None = None, wait_for_lock: bool = False, poll_s: float = 30.0,
             max_rounds: int | None = None, say: Callable[[str], None] = log.info,
             progress: bool = False) -> list[dict[str, Any]]:
    """Resume what a killed loop left, then run rounds: `once` one now if any rating arrived since the
    last round; else whenever `min_new_ratings` arrived or `every_s` passed with at least one new rating.
    `user_key` is the server's secret (`Settings.feedback_secret()`): label's judge ratings go through the
    store's write path, which checks tombstones with it."""
    spec.check()
    _quiet_libraries()
    outcomes: list[dict[str, Any]] = []
    round_fn = partial(run_round, engine, user_key=user_key, progress=progress)  # DBOS records (round id, spec)
    with runner_lock(engine, wait=wait_for_lock), Durable(engine, round_fn) as durable:
        watch_live(engine, say)
        pending = set(durable.pending())
        for unfinished in unfinished_rounds(engine):
            say(f"resuming round {unfinished.id}, left unfinished by a stopped loop")
            outcomes.append(durable.wait(unfinished.id) if unfinished.id in pending
                            else durable.run(unfinished.id, unfinished.spec))
        if once:
            if outcomes:
                return outcomes
            n = new_ratings(engine)
            if n == 0:
                last = last_round(engine)
                say("no new ratings since the last round" + (f" ({last.id})" if last else "") + "; nothing to do")
                return outcomes
            return [durable.run(start_round(engine, trigger="once", spec=spec.as_dict()), spec.as_dict())]
        while max_rounds is None or len(outcomes) < max_rounds:
            trigger = _wait_for_trigger(engine, min_new_ratings, every_s, poll_s)
            watch_live(engine, say)
            say(f"starting a round: {trigger}")
            outcomes.append(durable.run(start_round(engine, trigger=trigger, spec=spec.as_dict()), spec.as_dict()))
    return outcomes


def watch_live(engine: Engine, say: Callable[[str], None] = log.info) -> LiveCheck | None:
    """Before a round: when users rate the active version worse than the one it replaced (evaluate's live
    check), roll back to that one, recorded with the numbers. Returns the check (None: nothing to undo)."""
    from ratingloop.evaluate import live_check
    from ratingloop.models.registry import rollback

    check = live_check(engine)
    if check is not None and check.rollback:
        rollback(engine, actor="live-check", reason=check.reason)
        say(f"rolled back: {check.reason}")
    return check


def _quiet_libraries() -> None:
    """A round runs unattended: no per-file bars from datasets (saving, tokenising) or transformers (loading,
    saving weights) between the round's own lines; warnings still go to the log."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def _wait_for_trigger(engine: Engine, min_new: int, every_s: float | None, poll_s: float) -> str:
    import time

    last = last_round(engine)
    since = last.created_at.timestamp() if last else time.time()
    while True:
        n = new_ratings(engine)
        if n >= min_new:
            return f"{n} new ratings"
        if every_s is not None and n > 0 and time.time() - since >= every_s:
            return f"every {every_s:g}s ({n} new ratings)"
        time.sleep(poll_s)
