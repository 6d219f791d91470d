"""The loop end to end on the real default model: `ratingloop loop --once` on a store of simulated single
ratings promotes a candidate that answers held-out questions the way the users wanted, and `generate`
then answers with it.

The store (ratingloop.simulate.single): real OASST questions (../shared/data), each human reply cut at
sentence ends into two answers of 6-120 words, each asked by one of 40 askers who rates it once (thumbs or
stars, their own offset and noise); 20% of the askers invert, 20% of the answers are never rated. The users
want concise answers (the `concise` grader, named in every interaction's tags). Twenty questions are never
imported: the test asks them of the base and of whatever `generate` serves after the round, greedy, and
the grader scores both. bench/loop.py measures the same round against an oracle and a naive pipeline over
several seeds (bench/results.md); this test checks the one seed end to end through the CLI, with the
loop's defaults (no --set train.*). About 10-15 minutes on 2 idle cores.
"""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from concise import oasst_threads
from ratingloop.cli import app
from ratingloop.simulate import AskerConfig, cut_variants, grader_for, single_rated
from ratingloop.store import open_engine
from ratingloop.store.jsonl import import_lines
from ratingloop.store.records import Limits

KEY = b"test-user-key"  # the server's secret, which tombstones are keyed with (store.writes.user_hash)

HELD_OUT = 20
ANSWER_TOKENS = 128


def oasst_world(seed: int = 0) -> tuple[list[bytes], list[dict[str, Any]]]:
    """Import lines for the simulated store, and the held-out questions as generate's prompts."""
    questions = [(q, [r["text"].strip() for r in replies]) for q, replies in oasst_threads()]
    random.Random(1234).shuffle(questions)  # the same held-out questions as bench/loop.py
    held, train = questions[:HELD_OUT], questions[HELD_OUT:]
    rng = np.random.default_rng(seed)
    prompts, answers = [], []
    for question, replies in train:
        for reply in replies:
            for text in cut_variants(reply, rng, n=2, max_words=120):
                prompts.append([{"role": "user", "content": question}])
                answers.append(text)
    world = single_rated(prompts, answers, AskerConfig(invert_frac=0.2, unrated_frac=0.2, seed=seed))
    return world.lines, [{"id": f"held-{i}", "messages": [{"role": "user", "content": q}]}
                         for i, (q, _) in enumerate(held)]


def concise_scores(tmp_path: Path, db: str, held: list[dict[str, Any]], model: str | None) -> list[float]:
    prompts, out = tmp_path / "held.jsonl", tmp_path / f"answers-{model or 'served'}.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in held))
    args = ["generate", "--prompts", str(prompts), "--out", str(out), "--max-tokens", str(ANSWER_TOKENS), "--db", db]
    result = CliRunner().invoke(app, args + (["--model", model] if model else []))
    assert result.exit_code == 0, result.output
    answers = [json.loads(line)["response"] for line in out.read_text().splitlines()]
    grader = grader_for({"simulated": {"grader": "concise"}})
    assert grader is not None
    return [grader.score(p["messages"], a) for p, a in zip(held, answers, strict=True)]


@pytest.mark.slow
def test_loop_once_promotes_a_candidate_users_prefer_and_generate_serves_it(default_model: Path,
                                                                            tmp_path: Path) -> None:
    lines, held = oasst_world(seed=0)
    db = f"sqlite:///{tmp_path / 'store.db'}"
    assert not import_lines(open_engine(db), lines, Limits(), user_key=KEY).bad
    base = concise_scores(tmp_path, db, held, str(default_model))

    runner = CliRunner()
    result = runner.invoke(app, ["loop", "--once", "--base", str(default_model), "--out", str(tmp_path / "runs"),
                                 "--db", db])
    assert result.exit_code == 0, result.output
    assert "promoted" in result.output, result.output
    listed = runner.invoke(app, ["versions", "list", "--json", "--db", db])
    versions = json.loads(listed.stdout)
    active = [v for v in versions if v["status"] == "active"]
    assert len(active) == 1 and active[0]["method"] == "kto", versions

    served = concise_scores(tmp_path, db, held, None)  # no --model: the active version
    print(f"held-out concise score: base {statistics.mean(base):+.3f} -> served {statistics.mean(served):+.3f}")
    assert statistics.mean(served) > statistics.mean(base) + 0.2, (base, served)
    assert sum(s > b for s, b in zip(served, base, strict=True)) >= 0.6 * len(held)


@pytest.mark.parametrize(("rows", "batch", "steps"), [(10, 4, 12), (40, 4, 20), (130, 8, 16), (5000, 8, 16)])
def test_the_loops_training_settings_follow_the_data_size(rows: int, batch: int, steps: int) -> None:
    """Two passes over few rows (at least 12 steps), a fixed row budget over many; explicit values win."""
    from ratingloop.train.config import LOOP_LEARNING_RATE, loop_train_config

    cfg = loop_train_config("kto", rows)
    assert (cfg.batch_size, cfg.max_steps, cfg.learning_rate) == (batch, steps, LOOP_LEARNING_RATE["kto"])
    cfg.validate()
    assert loop_train_config("kto", rows, max_steps=3, learning_rate=1e-5).max_steps == 3
    assert loop_train_config("sft", rows).learning_rate == 2e-4  # no loop rate measured: the method's default
    # the round's gate judges a policy on held-out prompts; a reward model's held-out figures are its card
    assert not cfg.eval_after_training and loop_train_config("reward", rows).eval_after_training
