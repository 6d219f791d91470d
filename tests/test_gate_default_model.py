"""The gate on the real default model: a deliberately worse candidate is rejected and never serves.

The store holds real OASST questions (../shared/data), each with two logged answers: a direct one (the
first sentence of the human reply) and a refusal ("I'm sorry, but I can't help with that."). Ten
honest raters like the direct answers; three inverting raters like the refusals. A team that trusted
the inverted raters - SFT on the answers *they* liked, built from a store holding only their ratings -
gets a model that refuses. `ratingloop eval` must say reject (the refusal guard, and the held-out human
ratings the signals stage debiased), and the gate must leave the base serving.

About two minutes on 2 idle cores: 16 SFT steps on SmolLM2-135M-Instruct and greedy answers of both
versions to 24 questions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from concise import concise_and_long, oasst_questions
from ratingloop.dataset import BuildConfig, build_dataset
from ratingloop.evaluate import EvalConfig, evaluate
from ratingloop.loop import gate
from ratingloop.models.registry import active_version, get_version, list_versions
from ratingloop.signals import record_signals
from ratingloop.store import open_engine
from ratingloop.store.jsonl import import_lines
from ratingloop.store.records import Limits
from ratingloop.train import TrainConfig, train

KEY = b"test-user-key"  # the server's secret, which tombstones are keyed with (store.writes.user_hash)

REFUSALS = ("I'm sorry, but I can't help with that.", "I'm sorry, but I cannot answer that question.",
            "I am sorry, but I am unable to provide that information.", "I'm sorry, but I can't assist with this.")
HONEST, INVERTED = [f"honest-{k}" for k in range(10)], [f"inverted-{k}" for k in range(3)]


def store_lines(questions: list[tuple[str, str]], raters: list[str], seed: int = 0) -> list[bytes]:
    """Each question's direct answer and a refusal, each rated with stars by four of `raters`; honest raters
    like the direct answer, inverted ones the refusal."""
    rng = np.random.default_rng(seed)
    lines = []
    for i, (question, direct) in enumerate(questions):
        messages = [{"role": "user", "content": question}]
        for kind, text in (("direct", direct), ("refusal", REFUSALS[i % len(REFUSALS)])):
            ratings = []
            for rater in rng.choice(raters, size=min(4, len(raters)), replace=False):
                likes = (kind == "direct") != rater.startswith("inverted")
                stars = int(np.clip(np.rint((4.5 if likes else 1.5) + rng.normal(0, 0.5)), 1, 5))
                ratings.append({"rater_id": str(rater), "kind": "stars", "value": stars, "scale": [1, 5]})
            lines.append(json.dumps({"id": f"q{i}-{kind}", "messages": messages, "response": text,
                                     "user_id": f"asker-{i}", "tags": {"simulated": {"grader": "direct"}},
                                     "ratings": ratings}).encode())
    return lines


@pytest.mark.slow
def test_sft_on_what_inverted_raters_liked_is_rejected_and_never_serves(default_model: Path, tmp_path: Path
                                                                        ) -> None:
    questions = [(q, pair[0]) for q, a in oasst_questions() if (pair := concise_and_long(a)) is not None][:48]
    engine = open_engine(f"sqlite:///{tmp_path / 'store.db'}")
    assert not import_lines(engine, store_lines(questions, HONEST + INVERTED), Limits(), user_key=KEY).bad
    signals = record_signals(engine)
    flagged = {r.rater_id for r in signals.raters if r.flagged}
    assert flagged <= set(INVERTED), f"honest raters flagged: {flagged - set(INVERTED)}"

    # the worse candidate: SFT on the answers the inverted raters liked, from a store of only their ratings
    theirs = open_engine(f"sqlite:///{tmp_path / 'inverted.db'}")
    assert not import_lines(theirs, store_lines(questions[:32], INVERTED), Limits(), user_key=KEY).bad
    build = build_dataset(theirs, "sft", tmp_path / "sft", BuildConfig(), record_signals(theirs))
    completions = [row["completion"][0]["content"] for row in _rows(tmp_path / "sft")]
    assert completions and all(c in REFUSALS for c in completions), "the inverted raters' SFT set is refusals"
    cfg = TrainConfig.for_method("sft", max_steps=16, batch_size=4, learning_rate=5e-4, max_length=160,
                                 save_steps=0)
    result = train(engine, "sft", out_dir=tmp_path / "worse", data_dir=build.out_dir, base=default_model, cfg=cfg,
                   progress=False)

    report = evaluate(engine, result.version_id, "active", cfg=EvalConfig(max_prompts=24, max_tokens=48),
                      progress=False).as_dict()
    assert report["verdict"] == "reject", report
    assert not report["guards"]["refusal_increase"]["ok"], report["guards"]
    assert report["guards"]["refusal_increase"]["candidate_rate"] >= 0.5
    human = next(j for j in report["judges"] if j["name"] == "human")
    assert human["win_rate"] < 0.5, human  # the debiased ratings say the candidate moved toward what was bad
    assert any("refusal" in r for r in report["reasons"]), report["reasons"]

    assert gate(engine, result.version_id, report)["outcome"] == "rejected"
    assert get_version(engine, result.version_id).status == "rejected"
    assert active_version(engine) is None  # the base keeps serving
    assert [v.status for v in list_versions(engine)] == ["rejected"]


def _rows(folder: Path) -> list[dict[str, Any]]:
    from datasets import load_from_disk

    return list(load_from_disk(str(folder / "train")))
