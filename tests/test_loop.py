"""Stage 7, the loop: rounds recorded step by step, one runner per store, and a real `ratingloop loop`
process SIGKILLed mid-round that, started again, finishes the same round with exactly one new version.

Tiny models (train_support's tiny base) and a few training steps keep a round to seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from ratingloop.errors import ConfigError
from ratingloop.loop import RoundSpec, _gate_step, _wait_for_trigger, run_loop
from ratingloop.models.registry import active_version, list_events, list_runs, list_versions
from ratingloop.rounds import (
    Durable,
    LoopBusy,
    durable_step,
    list_rounds,
    new_ratings,
    runner_lock,
    start_round,
    system_database,
)
from ratingloop.store import open_engine
from ratingloop.store import tables as t
from ratingloop.store.db import new_engine
from ratingloop.store.jsonl import import_lines
from ratingloop.store.records import Limits
from train_support import EXAMPLE

KEY = b"test-user-key"  # the server's secret, which tombstones are keyed with (store.writes.user_hash)

TINY = ("train.max_steps=3", "train.lora_r=4", "train.lora_alpha=8", "train.batch_size=2", "train.max_length=128",
        "train.logging_steps=1", "train.save_steps=0", "eval.max_prompts=4")


def _spec(base: Path, tmp_path: Path, *extra: str, method: str = "sft") -> RoundSpec:
    return RoundSpec(method=method, base=str(base), overrides=TINY + extra, out_root=str(tmp_path / "runs"))


def _round_versions(engine: Engine, round_id: str) -> list[str]:
    runs = {r.id for r in list_runs(engine) if r.round_id == round_id}
    return [v.id for v in list_versions(engine) if v.training_run_id in runs]


def test_a_round_watched_by_a_person_draws_its_training_and_gate_bars(engine: Engine, tiny_base: Path,
                                                                       tmp_path: Path, capsys: Any) -> None:
    """What the demo and `ratingloop loop` on a terminal do: progress=True inside the durable round's thread."""
    [outcome] = run_loop(engine, _spec(tiny_base, tmp_path), user_key=KEY, once=True, progress=True)
    assert outcome["outcome"] in ("promoted", "rejected")
    drawn = capsys.readouterr().err
    assert "training sft" in drawn and "loss" in drawn and "tokens/s" in drawn  # the training bar
    assert drawn.count("generating") >= 2  # the gate's answers from both versions


def test_a_round_records_its_steps_and_a_second_once_has_nothing_to_do(engine: Engine, tiny_base: Path,
                                                                        tmp_path: Path) -> None:
    said: list[str] = []
    [outcome] = run_loop(engine, _spec(tiny_base, tmp_path), user_key=KEY, once=True, say=said.append)

    [round_] = list_rounds(engine)
    assert round_.id == outcome["round_id"] and round_.status == "succeeded" and round_.trigger == "once"
    assert round_.outcome == outcome["outcome"] in ("promoted", "rejected")
    assert [s.name for s in round_.steps] == ["train", "label", "eval", "gate", "personal"]
    assert all(s.attempts == 1 and s.duration_s is not None for s in round_.steps)
    train, label, eval_, gate, personal = round_.steps
    assert personal.status == "skipped"  # the example store's users rate too few answers each for cohorts
    assert train.status == "succeeded" and train.detail["metrics"]["steps"] == 3
    assert "win_rate" in eval_.detail and "examples" not in eval_.detail  # no user text in durable step outputs
    assert label.status == "skipped" and "no reward model" in label.detail["reason"]
    assert gate.detail["outcome"] == round_.outcome
    # exactly one version for the round, and the gate's decision is what the registry says
    assert _round_versions(engine, round_.id) == [round_.version_id] == [outcome["version_id"]]
    active = active_version(engine)
    if round_.outcome == "promoted":
        assert active is not None and active.id == round_.version_id
    else:
        assert active is None  # the base keeps serving
        [version] = [v for v in list_versions(engine) if v.id == round_.version_id]
        assert version.status == "rejected"
    assert round_.new_ratings == round_.ratings_total > 0
    # the gate run again (a crash after it decided, before its step was checkpointed) changes nothing
    events = list_events(engine)
    assert _gate_step(engine, round_.id, round_.version_id, gate.detail | {"verdict": (
        "promote" if round_.outcome == "promoted" else "reject")})["outcome"] == round_.outcome
    assert list_events(engine) == events

    # no rating arrived since: --once says so and records nothing
    assert run_loop(engine, _spec(tiny_base, tmp_path), user_key=KEY, once=True, say=said.append) == []
    assert "no new ratings since the last round" in said[-1] and len(list_rounds(engine)) == 1


def test_a_training_failure_fails_the_round_and_the_active_version_keeps_serving(engine: Engine,
                                                                                  tmp_path: Path) -> None:
    [outcome] = run_loop(engine, _spec(tmp_path / "no-such-model", tmp_path), user_key=KEY, once=True)
    [round_] = list_rounds(engine)
    assert outcome["outcome"] == round_.outcome == "failed" == round_.status
    assert round_.error and "no-such-model" in round_.error
    assert [(s.name, s.status) for s in round_.steps] == [("train", "failed")]
    assert list_versions(engine) == [] and active_version(engine) is None
    [run] = list_runs(engine)
    assert run.status == "failed" and run.round_id == round_.id


def test_a_candidate_whose_evaluation_crashes_is_rejected_with_the_error(engine: Engine, tiny_base: Path,
                                                                          tmp_path: Path) -> None:
    not_a_reward_model = tmp_path / "not-a-reward-model"
    not_a_reward_model.mkdir()
    [outcome] = run_loop(engine, _spec(tiny_base, tmp_path, f"eval.reward_model={not_a_reward_model}"), user_key=KEY,
                          once=True)
    [round_] = list_rounds(engine)
    assert outcome["outcome"] == round_.outcome == "rejected" and round_.status == "succeeded"
    _train, _label, eval_, gate, _personal = round_.steps
    assert eval_.detail["verdict"] == "reject" and "not-a-reward-model" in eval_.detail["error"]
    assert any(r.startswith("evaluation crashed") for r in gate.detail["reasons"])
    [version] = list_versions(engine)
    assert version.id == round_.version_id and version.status == "rejected"
    assert active_version(engine) is None  # the base keeps serving
    [event] = list_events(engine)
    assert event.action == "reject" and "evaluation crashed" in (event.reason or "")


def test_bad_settings_are_refused_before_a_round_is_recorded(engine: Engine, tiny_base: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.no_such_key"):
        run_loop(engine, _spec(tiny_base, tmp_path, "train.no_such_key=1"), user_key=KEY, once=True)
    with pytest.raises(ConfigError, match="SECTION.KEY=VALUE"):
        run_loop(engine, _spec(tiny_base, tmp_path, "loop.x=1"), user_key=KEY, once=True)
    assert list_rounds(engine) == []


def test_new_ratings_count_what_arrived_since_the_last_round(engine: Engine) -> None:
    before = new_ratings(engine)
    assert before > 0  # no round yet: every usable rating counts
    start_round(engine, trigger="test", spec={})
    assert new_ratings(engine) == 0
    line = json.loads(EXAMPLE.read_bytes().splitlines()[0])
    line |= {"id": "late-1", "ratings": [{"rater_id": "late-rater", "kind": "thumbs", "value": 1}]}
    assert not import_lines(engine, [json.dumps(line).encode()], Limits(), user_key=KEY).bad
    assert new_ratings(engine) == 1


def test_without_once_a_round_starts_on_enough_new_ratings_or_after_every(engine: Engine) -> None:
    n = new_ratings(engine)
    assert _wait_for_trigger(engine, min_new=n, every_s=None, poll_s=0.01) == f"{n} new ratings"
    start_round(engine, trigger="test", spec={})
    line = json.loads(EXAMPLE.read_bytes().splitlines()[0])
    line |= {"id": "late-1", "ratings": [{"rater_id": "late-rater", "kind": "thumbs", "value": 1}]}
    assert not import_lines(engine, [json.dumps(line).encode()], Limits(), user_key=KEY).bad
    started = time.monotonic()
    assert _wait_for_trigger(engine, min_new=100, every_s=0.3, poll_s=0.05).startswith("every 0.3s (1 new ratings)")
    assert time.monotonic() - started >= 0.2  # it waited for --every, not for 100 ratings


def test_one_runner_per_store(db_url: str) -> None:
    first, second = open_engine(db_url), new_engine(db_url)  # two engines: two sessions, as two processes
    try:
        with runner_lock(first, wait=False):
            with pytest.raises(LoopBusy, match="another `ratingloop loop` runs on this store.*--wait"):
                with runner_lock(second, wait=False):
                    pass
        with runner_lock(second, wait=False):  # released on exit
            pass
    finally:
        second.dispose()


def test_the_durable_engine_lives_beside_the_store_on_both_backends(db_url: str) -> None:
    """A round's steps are recorded once each and checkpointed: a step that finished is not run again when
    the same round runs a second time (what a restart after a crash does)."""
    engine = open_engine(db_url)
    url, schema = system_database(engine)
    assert url.startswith(engine.dialect.name)
    calls: list[str] = []

    def round_fn(round_id: str, spec: dict[str, Any]) -> dict[str, Any]:
        a = durable_step(engine, round_id, "train", 1, lambda: calls.append("train") or {"version_id": "v"})
        b = durable_step(engine, round_id, "gate", 2, lambda: calls.append("gate") or {"outcome": "rejected"})
        return {"round_id": round_id, **a, **b}

    round_id = start_round(engine, trigger="test", spec={})
    try:
        with Durable(engine, round_fn) as durable:
            assert durable.run(round_id, {}) == {"round_id": round_id, "version_id": "v", "outcome": "rejected"}
            assert durable.run(round_id, {})["outcome"] == "rejected"  # the same workflow id: its recorded result
        assert calls == ["train", "gate"]
        [round_] = list_rounds(engine)
        assert [(s.name, s.status, s.attempts) for s in round_.steps] == [("train", "succeeded", 1),
                                                                          ("gate", "succeeded", 1)]
    finally:
        if schema is not None:  # the test's PostgreSQL schema is dropped; DBOS's beside it too
            with engine.begin() as conn:
                conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# --- a real process, killed ------------------------------------------------------------------------------

def _loop_cmd(db: str, base: Path, out: Path, *extra: str) -> list[str]:
    sets = [x for s in ("train.max_steps=12", "train.save_steps=4", "train.lora_r=4", "train.lora_alpha=8",
                        "train.batch_size=2", "train.max_length=128", "eval.max_prompts=4") for x in ("--set", s)]
    return [sys.executable, "-m", "ratingloop.cli", "loop", "--once", "--db", db, "--base", str(base), "--method",
            "sft", "--out", str(out), *sets, *extra]


@pytest.mark.slow  # two real processes, each importing torch and training: ~1-2 minutes on 2 busy cores
def test_a_loop_killed_mid_round_finishes_that_round_with_one_version(engine: Engine, tiny_base: Path,
                                                                       tmp_path: Path) -> None:
    db = str(engine.url)
    env = {**os.environ, "RATINGLOOP_LOG_LEVEL": "WARNING"}
    log = open(tmp_path / "first.log", "wb")
    proc = subprocess.Popen(_loop_cmd(db, tiny_base, tmp_path / "runs"), stdout=log, stderr=subprocess.STDOUT,
                            env=env)
    # kill it once training has written a checkpoint: mid-round, mid-step, nothing cleans up
    deadline = time.monotonic() + 240
    while not list((tmp_path / "runs").glob("*/train-1/checkpoints/checkpoint-*/trainer_state.json")):
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "training never wrote a checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL

    [round_] = list_rounds(engine)
    assert round_.status == "running" and [(s.name, s.status) for s in round_.steps] == [("train", "running")]
    [orphan] = list_runs(engine)
    assert orphan.status == "running" and orphan.round_id == round_.id
    assert list_versions(engine) == []

    # a second loop while nothing runs is the runner: it resumes the round, and runs no other
    again = subprocess.run(_loop_cmd(db, tiny_base, tmp_path / "runs"), capture_output=True, text=True, env=env,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming round {round_.id}" in again.stderr
    [done] = list_rounds(engine)
    assert done.id == round_.id and done.status == "succeeded" and done.outcome in ("promoted", "rejected")
    train = done.steps[0]
    assert train.attempts == 2 and train.detail["resumed"] is True  # continued from its checkpoint
    [run] = list_runs(engine)
    assert run.id == orphan.id and run.status == "succeeded" and run.metrics["steps"] == 12
    assert _round_versions(engine, done.id) == [done.version_id]  # one version for the round
    with engine.connect() as conn:
        active = conn.execute(select(t.model_versions.c.id).where(t.model_versions.c.status == "active")).all()
    assert len(active) == (1 if done.outcome == "promoted" else 0)

    status = subprocess.run([sys.executable, "-m", "ratingloop.cli", "loop", "status", "--json", "--db", db],
                            capture_output=True, text=True, env=env, timeout=60)
    [shown] = json.loads(status.stdout)
    assert shown["id"] == done.id and [s["name"] for s in shown["steps"]] == ["train", "label", "eval", "gate",
                                                                                 "personal"]
    assert shown["steps"][0]["attempts"] == 2


def test_a_second_loop_on_the_same_store_exits_with_a_clear_message(engine: Engine, tiny_base: Path,
                                                                     tmp_path: Path) -> None:
    with runner_lock(engine, wait=False):
        second = subprocess.run(_loop_cmd(str(engine.url), tiny_base, tmp_path / "runs"), capture_output=True,
                                text=True, timeout=120)
    assert second.returncode == 1
    assert "another `ratingloop loop` runs on this store" in second.stderr and f"process {os.getpid()}" in second.stderr
    assert list_rounds(engine) == []
