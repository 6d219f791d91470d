"""Personalisation on the real default model (issue 15): in a population of two groups whose hidden preferences
oppose (70% want concise answers, 30% thorough ones), the loop's personal step finds the two cohorts, and the
minority's own adapter - trained from its cohort's ratings only, judged by the gate on its cohort's prompts -
is served to the minority's users and answers them better than what served them before, while the majority
keeps what it had.

The whole round (the global candidate, then an adapter per cohort) is bench/personal.py's, ~11 min on 2 idle
cores; this test takes the minority's path alone. No global version serves yet, so its adapter trains on the
base and faces the base: the minority must end better off than under the base. The comparison with a single
global version is bench/personal.py's (bench/results.md: that version left the minority at or below the base
on both seeds). About 5-8 minutes on 2 cores.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from sklearn.metrics import adjusted_rand_score
from typer.testing import CliRunner

from ratingloop.cli import app
from ratingloop.loop import RoundSpec, _cohort_step, _personal_step
from ratingloop.models.registry import COHORT, get_version, list_versions
from ratingloop.personal import cohort_members
from ratingloop.rounds import start_round
from ratingloop.signals import SignalsConfig, record_signals
from ratingloop.simulate.graders import GRADERS
from ratingloop.simulate.groups import GroupsConfig, fresh_questions, grouped_users
from ratingloop.store import Limits, open_engine
from ratingloop.store.jsonl import import_lines

KEY = b"test-user-key"  # the server's secret, which tombstones are keyed with (store.writes.user_hash)
HELD_OUT = 16
ANSWER_TOKENS = 128


@pytest.mark.slow
def test_the_minority_gets_its_own_adapter_and_it_serves_them_better(default_model: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/store.db"
    engine = open_engine(db)
    world = grouped_users(GroupsConfig(groups=(("concise", 0.7), ("thorough", 0.3)), n_users=60, seed=0))
    assert not import_lines(engine, world.lines, Limits(), user_key=KEY).bad
    spec = RoundSpec(method="kto", out_root=str(tmp_path / "runs"))
    round_id = start_round(engine, trigger="test", spec=spec.as_dict())
    record_signals(engine, spec.section(SignalsConfig, "signals"))  # what the round's training step records first

    fitted = _personal_step(engine, spec)
    assert fitted["k"] == 2, fitted
    members = cohort_members(engine, fitted["personal_run_id"])
    placed = [(u, c) for c, (users, _) in members.items() for u in users]
    assert adjusted_rand_score([world.group_of[u] for u, _ in placed], [c for _, c in placed]) > 0.9
    thorough = {u for u, g in world.group_of.items() if g == 1}
    minority = max(members, key=lambda c: len(members[c][0] & thorough))
    assert [p["train"] for p in fitted["cohorts"]] == [True, True]  # both have enough ratings for an adapter

    outcome = _cohort_step(engine, round_id, spec, fitted["personal_run_id"], minority, False)
    assert outcome["outcome"] == "promoted", outcome
    assert outcome["win_rate"] > 0.5 and outcome["ci_low"] > 0.5
    version = get_version(engine, outcome["version_id"])
    assert (version.status, version.cohort) == (COHORT, minority)
    assert not list_versions(engine, "active")  # the majority still gets the base

    # fresh questions, each asked by one user of each group, routed as `serve` routes them ("user" per line)
    majority = next(c for c in members if c != minority)
    one_of = {0: min(members[majority][0] - thorough), 1: min(members[minority][0] & thorough)}
    held = fresh_questions(HELD_OUT)
    lines = [{"id": f"{g}-{p['id']}", "messages": p["messages"], "user": one_of[g]} for g in (0, 1) for p in held]
    prompts, out = tmp_path / "held.jsonl", tmp_path / "answers.jsonl"
    prompts.write_text("".join(json.dumps(x) + "\n" for x in lines))
    result = CliRunner().invoke(app, ["generate", "--prompts", str(prompts), "--out", str(out), "--max-tokens",
                                      str(ANSWER_TOKENS), "--db", db])
    assert result.exit_code == 0, result.output
    answers = {a["id"]: a for a in map(json.loads, out.read_text().splitlines())}
    assert {answers[f"1-{p['id']}"]["version"] for p in held} == {version.id}
    assert {answers[f"0-{p['id']}"]["version"] for p in held} == {"base"}

    # the base's greedy answers are what the majority's user got; the minority's grader scores both
    def score(g: int) -> float:
        return statistics.mean(GRADERS["thorough"](p["messages"], answers[f"{g}-{p['id']}"]["response"])
                               for p in held)

    under_base, under_own = score(0), score(1)
    words = {g: statistics.mean(len(answers[f"{g}-{p['id']}"]["response"].split()) for p in held) for g in (0, 1)}
    print(f"gate {outcome['win_rate']:.3f} [{outcome['ci_low']:.3f}, {outcome['ci_high']:.3f}]; the minority's "
          f"hidden score under the base {under_base:+.3f} ({words[0]:.1f} words), under its own {under_own:+.3f} "
          f"({words[1]:.1f} words)")
    assert under_own > under_base + 0.1, (under_base, under_own)
