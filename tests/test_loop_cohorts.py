"""The loop's personal stage (issue 15, item 3): after the global gate a round fits cohorts and trains, for each
cohort with enough ratings, an adapter from that cohort's raters on top of the active version, which the gate
judges on the cohort's own held-out prompts; with one cohort nothing more is trained. And the global gate's
MaxMin guard: a candidate that is worse for a cohort is rejected whatever its overall win rate.

Tiny models and a few steps keep a round to seconds; bench/personal.py measures the default model.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, select

from personal_world import KEY, grouped_store
from ratingloop.dataset import BuildConfig, build_dataset
from ratingloop.evaluate import EvalConfig
from ratingloop.evaluate.guards import failed
from ratingloop.evaluate.heldout import HeldOutPrompt
from ratingloop.evaluate.run import _cohort_guards
from ratingloop.loop import LONGER_FOR_A_LENGTH_COHORT, RoundSpec, _cohort_step, cohort_eval_config, run_loop
from ratingloop.models.registry import COHORT, get_run, get_version, latest_evaluation, list_runs, list_versions
from ratingloop.personal import PersonalConfig, cohort_members, load_personal, record_personal
from ratingloop.rounds import list_rounds
from ratingloop.signals import SignalsConfig, load_signals, record_signals
from ratingloop.signals.content import ContentConfig
from ratingloop.simulate.groups import GroupsConfig, grouped_users
from ratingloop.store import Limits, open_engine
from ratingloop.store import tables as t
from ratingloop.store.jsonl import import_lines

TINY = ("train.max_steps=2", "train.lora_r=4", "train.lora_alpha=8", "train.batch_size=2", "train.max_length=96",
        "train.logging_steps=1", "train.save_steps=0", "eval.max_prompts=6", "eval.max_tokens=8",
        "eval.max_rated_answers=24", "personal.min_cohort_ratings=50")


def _spec(base: Path, tmp_path: Path, *extra: str) -> RoundSpec:
    return RoundSpec(method="kto", base=str(base), overrides=TINY + extra, out_root=str(tmp_path / "runs"))


def _raters(engine: Engine, rating_ids: list[str]) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(t.ratings.c.rater_id).where(t.ratings.c.id.in_(rating_ids))).scalars())


def test_a_cohort_build_holds_only_its_raters_ratings(sqlite_url: str, tmp_path: Path) -> None:
    engine = open_engine(sqlite_url)
    world, stored = grouped_store(engine, GroupsConfig(n_users=30, seed=1))
    thorough = frozenset(u for u, g in world.group_of.items() if g == 1)  # the 30% who want thorough answers
    everyone = build_dataset(engine, "kto", tmp_path / "all", BuildConfig(), stored)
    mine = build_dataset(engine, "kto", tmp_path / "mine", BuildConfig(), stored, raters=thorough)
    assert _raters(engine, mine.manifest["rating_ids"]) <= thorough
    assert _raters(engine, everyone.manifest["rating_ids"]) - thorough  # the other group is in the global set
    assert mine.manifest["raters"] == len(thorough) and "raters" not in everyone.manifest
    assert 0 < mine.manifest["rows"]["train"] < everyone.manifest["rows"]["train"]


def test_maxmin_guard_fails_a_candidate_that_leaves_a_cohort_worse_off() -> None:
    cfg = EvalConfig(min_cohort_prompts=4, n_bootstrap=500)
    prompts = [HeldOutPrompt(f"p{k}", [], users={f"major{k % 7}" if k < 20 else f"minor{k % 3}"}) for k in range(30)]
    outcomes = [1.0] * 20 + [0.0] * 8 + [1.0, 0.5]  # the majority always wins; the minority nearly always loses
    cohorts = {"0": frozenset(f"major{k}" for k in range(7)), "1": frozenset(f"minor{k}" for k in range(3)),
               "2": frozenset({"nobody-asked"})}
    guards = _cohort_guards(prompts, outcomes, cohorts, cfg)
    assert set(guards) == {"cohort:0", "cohort:1"}  # cohort 2 asked fewer than min_cohort_prompts: no guard
    assert guards["cohort:0"]["ok"] and guards["cohort:0"]["value"] == 1.0
    assert not guards["cohort:1"]["ok"] and guards["cohort:1"]["ci_high"] < 0.5 and guards["cohort:1"]["prompts"] == 10
    [reason] = failed(guards)
    assert reason.startswith("guard cohort:1: the 3 users of this cohort would be worse off - win rate 0.150")
    even = _cohort_guards(prompts, [1.0] * 20 + [0.0, 1.0] * 5, cohorts, cfg)
    assert even["cohort:1"]["ok"]  # unproven either way is not worse off


def test_a_cohort_that_rewards_length_may_get_longer_answers() -> None:
    base = EvalConfig()
    thorough = cohort_eval_config(base, {"accuracy": 0.4, "length": 0.6})
    assert thorough.max_length_ratio == LONGER_FOR_A_LENGTH_COHORT > base.max_length_ratio
    assert thorough.min_length_ratio == base.min_length_ratio and thorough.max_kl == base.max_kl
    assert cohort_eval_config(base, {"length": -0.6}) == base == cohort_eval_config(base, {})
    roomy = EvalConfig(max_length_ratio=20.0)
    assert cohort_eval_config(roomy, {"length": 0.6}) == roomy  # a wider setting of the user's stays


def test_a_round_trains_judges_and_serves_an_adapter_per_cohort(sqlite_url: str, tiny_base: Path,
                                                               tmp_path: Path) -> None:
    engine = open_engine(sqlite_url)
    grouped_store(engine, GroupsConfig(n_users=30, seed=0))
    spec = _spec(tiny_base, tmp_path)
    [outcome] = run_loop(engine, spec, user_key=KEY, once=True)

    [round_] = list_rounds(engine)
    assert [s.name for s in round_.steps] == ["train", "label", "eval", "gate", "personal", "cohort-0", "cohort-1"]
    personal = load_personal(engine)
    assert personal is not None and personal.k == 2
    members = cohort_members(engine, personal.run_id)
    active = next((v for v in list_versions(engine, "active")), None)
    assert len(outcome["cohorts"]) == 2
    trained_by: dict[int, set[str]] = {}
    for done in outcome["cohorts"]:
        c, vid = done["cohort"], done["version_id"]
        version = get_version(engine, vid)
        assert (version.personal_run_id, version.cohort) == (personal.run_id, c)
        assert version.status == (COHORT if done["outcome"] == "promoted" else "rejected"), done
        assert version.parent_id == (active.id if active else None)
        run = get_run(engine, str(version.training_run_id))
        assert run.round_id == f"{round_.id}/cohort-{c}"
        assert run.config["init_adapter"] == (str(active.adapter_path) if active else "")
        with engine.connect() as conn:
            manifest = conn.execute(select(t.DatasetSnapshot.__table__.c.manifest).where(
                t.DatasetSnapshot.__table__.c.id == run.dataset_snapshot_id)).scalar_one()
        assert manifest["raters"] == len(members[c][0])
        own = load_signals(engine, manifest["signals_run_id"])  # the cohort's own rater model, fitted on its ratings
        assert own.scope == f"cohort {c} of round {round_.id}" and {r.rater_id for r in own.raters} <= members[c][0]
        assert _raters(engine, manifest["rating_ids"]) <= members[c][0]  # only the cohort's ratings trained it
        trained_by[c] = _raters(engine, manifest["rating_ids"])
        evaluation = latest_evaluation(engine, vid)
        assert evaluation is not None and evaluation["against_id"] == (active.id if active else None)
        asked = {p for p, users in _askers(engine).items() if users & members[c][0]}
        assert evaluation["report"]["n_prompts"] > 0
        assert {_key(x["messages"]) for x in evaluation["report"]["examples"]} <= asked  # judged on its own prompts

    assert load_signals(engine).scope is None  # "the newest signals run" stays everyone's

    # what a user of cohort 1 sees of it (GET /v1/users/{id}/feedback): the version their ratings trained, and which
    # version answers them now
    from ratingloop.serve.page import feedback_summary

    user = sorted(trained_by[1])[0]
    mine = feedback_summary(engine, user)
    cohort_v = next(v for v in mine["versions"] if v["cohort"] == 1)
    assert cohort_v["id"] == outcome["cohorts"][1]["version_id"]
    assert cohort_v["serving"] == (outcome["cohorts"][1]["outcome"] == "promoted") == (cohort_v["went_live_at"]
                                                                                       is not None)
    assert mine["served_by"] == (cohort_v["id"] if cohort_v["serving"] else (active.id if active else "base"))
    assert mine["served_by_cohort"] == (1 if cohort_v["serving"] else None)

    # the step is safe to repeat (a resumed round): the cohort's run is found, no second version
    again = _cohort_step(engine, round_.id, spec, personal.run_id, 1, False)
    assert again["version_id"] == outcome["cohorts"][1]["version_id"]
    assert sum(r.round_id == f"{round_.id}/cohort-1" for r in list_runs(engine)) == 1


def test_one_homogeneous_group_trains_nothing_more(sqlite_url: str, tiny_base: Path, tmp_path: Path) -> None:
    engine = open_engine(sqlite_url)
    grouped_store(engine, GroupsConfig(groups=(("concise", 1.0),), n_users=30, seed=0))
    [outcome] = run_loop(engine, _spec(tiny_base, tmp_path), user_key=KEY, once=True)
    [round_] = list_rounds(engine)
    personal_step = round_.steps[-1]
    assert personal_step.name == "personal" and personal_step.status == "skipped"
    assert "1 cohort(s)" in personal_step.detail["reason"]
    assert outcome["cohorts"] == [] and len(list_versions(engine)) == 1
    assert load_signals(engine).run_id  # the round's own signals run is what personal read


def test_a_small_cohort_is_skipped_with_the_reason(sqlite_url: str, tiny_base: Path, tmp_path: Path) -> None:
    """`ratingloop loop --once` as a user runs it: each cohort's outcome under the round's."""
    from typer.testing import CliRunner

    from ratingloop.cli import app

    engine = open_engine(sqlite_url)
    grouped_store(engine, GroupsConfig(n_users=30, seed=0))
    sets = [x for o in (*TINY, "personal.min_cohort_ratings=100000") for x in ("--set", o)]
    done = CliRunner().invoke(app, ["loop", "--once", "--method", "kto", "--base", str(tiny_base), "--out",
                                    str(tmp_path / "runs"), "--db", sqlite_url, *sets])
    assert done.exit_code == 0, done.output
    lines = done.stdout.splitlines()
    assert lines[0].startswith("round ") and [x.split(":")[0] for x in lines[1:3]] == ["  cohort 0", "  cohort 1"]
    assert "skipped" in lines[2] and "under personal.min_cohort_ratings=100000" in lines[2]
    assert all(v.cohort is None for v in list_versions(engine))


def test_a_minority_the_rater_model_flags_still_forms_its_cohort(sqlite_url: str) -> None:
    """With the content prior on, the population's rater model flags most of a 30% minority that wants thorough
    answers (their ratings disagree with what most raters taught it); personalisation still reads their ratings."""
    engine = open_engine(sqlite_url)
    world = grouped_users(GroupsConfig(n_users=40, seed=0))
    import_lines(engine, world.lines, Limits(), user_key=KEY)
    stored = record_signals(engine, SignalsConfig(content=ContentConfig(mode="on")))
    minority = {u for u, g in world.group_of.items() if g == 1}
    assert len(stored.flagged & minority) > len(minority) / 2 > len(stored.flagged - minority)
    run = record_personal(engine, PersonalConfig())
    assert run.k == 2 and run.summary["n_placed"] >= 0.9 * len(world.users)
    members = cohort_members(engine, run.run_id)
    thorough = max(members, key=lambda c: len(members[c][0] & minority))
    assert len(members[thorough][0] & minority) >= 0.8 * len(minority)  # found, flagged or not

    scoped = record_signals(engine, SignalsConfig(content=ContentConfig(mode="on")), raters=frozenset(minority),
                            scope="the minority")
    assert len(scoped.flagged) < len(stored.flagged & minority)  # among themselves they agree
    assert load_signals(engine).run_id == stored.run_id and load_signals(engine, scoped.run_id).scope == "the minority"


def _askers(engine: Engine) -> dict[str, set[str]]:
    """Prompt key -> the users who asked it (the simulated users share a bank of prompts)."""
    askers: dict[str, set[str]] = {}
    with engine.connect() as conn:
        for messages, user in conn.execute(select(t.interactions.c.messages, t.interactions.c.user_id)):
            askers.setdefault(_key(messages), set()).add(user)
    return askers


def _key(messages: list[dict[str, str]]) -> str:
    from ratingloop.dataset import prompt_key
    from ratingloop.evaluate.heldout import normalise

    return prompt_key(normalise(messages))
