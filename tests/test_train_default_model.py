"""Stage 5 end to end on the real default model: every method trains from ratings in the store, and users
who prefer concise answers make the model answer shorter.

The store holds real OASST questions with a concise and a long answer each, rated with stars by
simulated users who all like concise answers better (tests/concise.py). `train` without --data runs
the whole path - signals (rater bias), the method's builder, the method's trainer - on the real
SmolLM2-135M-Instruct, and the trained model answers 20 held-out questions it never saw, greedy, with
the same token budget as the base (64 tokens; the base fills it on 18-20 of them, so its mean is a floor
and the comparison is conservative), in the dtype `generate` serves with (bf16 where the CPU multiplies it
natively, fp32 elsewhere: emulated bf16 made these answers ~2.6x slower on an AVX2-only CPU).

The runs are short, to fit the suite's budget on a 2-core CPU: 12 steps of 4 rows (about a minute each
on idle cores). The method defaults suit a full epoch over real data; a 12-step run needs larger steps
(SHORT_RUN). DRO's tau is lowered too: its KL-regularised optimum is pi_ref * exp(r / tau) / Z, and with
these rewards (spread ~1.3) tau=0.1 asks for only ~9 nats less on a 114-token long answer - too little to
move where answers end (measured: 59 tokens against the base's 64); tau=0.02 asks for five times more.
A tiny random model cannot stand in: it does not learn where liked answers end in a few steps (30 full
fine-tuning steps moved its sampled length by under 5%).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from concise import concise_store_lines
from ratingloop.loop import train_from_store
from ratingloop.models import generate, load_for_generation
from ratingloop.models.registry import get_run, get_version
from ratingloop.store import open_engine
from ratingloop.store.jsonl import import_lines
from ratingloop.store.records import Limits
from ratingloop.train import TrainConfig
from ratingloop.train.pointwise import completion_logps
from ratingloop.train.scoring import load_scorer

KEY = b"test-user-key"  # the server's secret, which tombstones are keyed with (store.writes.user_hash)

ANSWER_TOKENS = 64
SHORT_RUN: dict[str, dict[str, Any]] = {
    "wsft": {"learning_rate": 4e-4},
    "kto": {"learning_rate": 7e-4},
    "dro": {"learning_rate": 1e-3, "beta": 0.02},
}


@pytest.fixture(scope="module")
def concise_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Engine, list[dict[str, Any]]]:
    lines, held_out = concise_store_lines(n_train=60)
    engine = open_engine(f"sqlite:///{tmp_path_factory.mktemp('concise') / 'store.db'}")
    assert not import_lines(engine, lines, Limits(), user_key=KEY).bad
    return engine, held_out


def answer_tokens(model: str | Path, prompts: list[dict[str, Any]]) -> list[int]:
    """Each greedy answer's length in tokens (re-encoded)."""
    model_, tok = load_for_generation(str(model), dtype="auto", device="cpu")
    answers = generate((model_, tok), prompts, max_tokens=ANSWER_TOKENS, batch_size=10, progress=False)
    return [len(tok(a["response"], add_special_tokens=False).input_ids) for a in answers]


@pytest.fixture(scope="module")
def base_tokens(default_model: Path, concise_store: tuple[Engine, list[dict[str, Any]]]) -> list[int]:
    return answer_tokens(default_model, concise_store[1])


@pytest.mark.slow
@pytest.mark.parametrize("method", list(SHORT_RUN))
def test_concise_raters_make_the_default_model_answer_shorter(
        method: str, default_model: Path, concise_store: tuple[Engine, list[dict[str, Any]]],
        base_tokens: list[int], tmp_path: Path) -> None:
    engine, held_out = concise_store
    # the held-out answers' lengths below are the judgement; the trainer's eval-split loss is not (on 2 AVX2
    # cores that pass cost about a third of each run)
    cfg = TrainConfig.for_method(method, max_steps=12, batch_size=4, max_length=160, save_steps=0,
                                 eval_after_training=False, **SHORT_RUN[method])
    result = train_from_store(engine, method, out_dir=tmp_path / method, base=default_model, cfg=cfg,
                              progress=False)
    version = get_version(engine, result.version_id)
    assert (version.status, get_run(engine, version.training_run_id).status) == ("candidate", "succeeded")

    tokens = answer_tokens(result.out_dir, held_out)
    shorter = sum(t < b for t, b in zip(tokens, base_tokens, strict=True))
    empty = sum(t <= 1 for t in tokens)
    print(f"{method}: {statistics.mean(tokens):.1f} tokens vs base {statistics.mean(base_tokens):.1f}; "
          f"shorter on {shorter}/{len(tokens)}, empty {empty}")
    assert statistics.mean(tokens) < 0.75 * statistics.mean(base_tokens), (tokens, base_tokens)
    assert shorter >= 0.7 * len(tokens), (tokens, base_tokens)
    assert empty <= 0.2 * len(tokens), tokens  # shorter answers, not silence


@pytest.mark.slow
def test_sft_dpo_reward_and_grpo_train_the_default_model_from_the_store(
        default_model: Path, concise_store: tuple[Engine, list[dict[str, Any]]], tmp_path: Path) -> None:
    """The other methods on the same store and the real model, a few steps each: each registers a candidate,
    and each moves the way the ratings point (the DPO margin, the reward model's held-out ranking)."""
    engine, held_out = concise_store
    short = {"batch_size": 4, "max_length": 160, "save_steps": 0, "logging_steps": 1}

    def run(method: str, **values: Any) -> Any:
        result = train_from_store(engine, method, out_dir=tmp_path / method, base=default_model,
                                  cfg=TrainConfig.for_method(method, **(short | values)), progress=False)
        version = get_version(engine, result.version_id)
        assert (version.status, get_run(engine, version.training_run_id).status) == ("candidate", "succeeded")
        assert result.metrics["steps"] == values["max_steps"]
        return result

    sft = run("sft", max_steps=4, learning_rate=1e-3)
    concise_rows = [{"prompt": p["messages"], "completion": [{"role": "assistant", "content": p["concise"]}]}
                    for p in held_out]
    before, after = (statistics.mean(completion_logps(*load_for_generation(str(m), dtype="fp32", device="cpu"),
                                                      concise_rows))
                     for m in (default_model, sft.out_dir))
    print(f"sft: held-out concise answers' log-likelihood {before:.1f} -> {after:.1f}")
    assert after > before  # trained on the liked (concise) answers, it finds unseen ones likelier

    dpo = run("dpo", max_steps=4, learning_rate=7e-4)
    assert dpo.metrics["eval_rewards/margins"] > 0  # held-out prompts: concise answers gained on long ones

    reward = run("reward", max_steps=6, learning_rate=5e-4)
    scorer = load_scorer(reward.out_dir)
    prompts = [p["messages"] for p in held_out]
    concise, _ = scorer.score(prompts, [p["concise"] for p in held_out])
    long, _ = scorer.score(prompts, [p["long"] for p in held_out])
    accuracy = float((concise > long).mean())
    print(f"reward model on the default model, held-out pairs: concise ranked first {accuracy:.2f}")
    assert accuracy >= 0.7, (concise, long)

    grpo = run("grpo", max_steps=2, num_generations=2, max_new_tokens=32)  # against the newest reward model
    assert json.loads((grpo.out_dir / "run.json").read_text())["config"]["reward_model"] == str(reward.out_dir)
    assert -1.0 <= grpo.metrics["last_reward"] <= 1.0
