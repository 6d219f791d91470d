"""Stage 5, train --method grpo: GRPO against a trained reward model, KL-anchored to the adapter-disabled base.

End to end: the example store trains the fast reward model (embed backbone, one fit), `grpo.prepare`
finds it in the registry, and `train` runs a few GRPO steps of a LoRA adapter on a tiny random Llama
(tests/tiny.py), logging the reward model's mean reward and the KL to the reference, and registers a
candidate. Learning: a reward that counts one token of the policy's own vocabulary, which a policy
can climb in a few steps, rises from where the base starts. Bad input - no reward model, a folder
that is not one, batches that split a group - stops before the first step and names the fix.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest
from sqlalchemy import Engine

from ratingloop.errors import ConfigError, RatingloopError
from ratingloop.loop import train_from_store
from ratingloop.models.registry import list_runs, list_versions
from ratingloop.train import TrainConfig
from ratingloop.train.data import TrainData
from ratingloop.train.grpo import RewardModelReward, grpo_trainer, prepare
from tiny import tiny_causal_lm, tiny_tokenizer
from train_support import PAIRS, sha256

FAST = TrainConfig.for_method("grpo", lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=2e-2, max_steps=2,
                              batch_size=8, num_generations=4, max_new_tokens=8, max_length=256, save_steps=0,
                              bf16=False)  # fp32: the measured learning curve below does not depend on the CPU



def test_grpo_trains_against_the_newest_reward_model_and_registers_a_candidate(engine: Engine, tiny_base: Path,
                                                                              tmp_path: Path) -> None:
    from safetensors.torch import load_file

    rm = train_from_store(engine, "reward", out_dir=tmp_path / "rm", base=tiny_base,  # the embed head ignores the base
                          cfg=TrainConfig.for_method("reward", reward_backbone="embed"), progress=False)
    cfg = prepare(engine, FAST)  # train.reward_model was empty: the newest registered reward model
    assert Path(cfg.reward_model) == rm.out_dir.resolve()
    base_hash = sha256(tiny_base / "model.safetensors")
    out = tmp_path / "grpo"
    result = train_from_store(engine, "grpo", out_dir=out, base=tiny_base, cfg=cfg, progress=False)

    # every step logged the reward model's mean reward (on [-1, 1]) and the KL to the reference
    logged = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    steps = [x for x in logged if "reward" in x]
    assert len(steps) == FAST.max_steps
    for x in steps:
        assert -1 <= x["reward"] <= 1 and math.isfinite(x["loss"]) and math.isfinite(x["kl"]), x
        assert x["rewards/reward_model/mean"] == pytest.approx(x["reward"])
    # the reference is the base with the adapter disabled: identical to the policy before the first update,
    # apart from it after
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6) and steps[-1]["kl"] > 0
    m = result.metrics
    assert m["steps"] == FAST.max_steps and m["beta"] == FAST.beta and m["num_generations"] == 4
    assert m["first_reward"] == steps[0]["reward"] and m["last_reward"] == steps[-1]["reward"]
    assert "eval_reward" in m  # the held-out prompts were answered and scored once after training

    # a LoRA adapter that moved; the base folder untouched
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert weights and all("lora_" in k for k in weights)
    assert any(float(v.abs().sum()) > 0 for k, v in weights.items() if "lora_B" in k)
    assert sha256(tiny_base / "model.safetensors") == base_hash
    assert json.loads((out / "grpo.json").read_text())["reward_model"] == str(rm.out_dir.resolve())

    # the registry: the grpo run names its reward model in its config, and its candidate is the newest version
    run = next(r for r in list_runs(engine) if r.method == "grpo")
    assert (run.id, run.status, run.config["reward_model"]) == (result.run_id, "succeeded", cfg.reward_model)
    newest = list_versions(engine)[0]
    assert (newest.id, newest.status, newest.training_run_id) == (result.version_id, "candidate", run.id)


# --- learning ----------------------------------------------------------------------------------------

class TokenScorer:
    """A reward model by the scoring contract: how often `piece` occurs in an answer of at most `tokens`
    tokens, as a share of them, on [-1, 1]; sd 0.1 everywhere."""

    card = {"backbone": "test", "sd": {"kind": "constant", "value": 0.1}}

    def __init__(self, piece: str, tokens: int):
        self.piece, self.tokens = piece, tokens

    def score(self, prompts: Sequence[Any], answers: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        share = np.asarray([min(a.count(self.piece), self.tokens) / self.tokens for a in answers])
        return 2 * share - 1, np.full(len(answers), 0.1)


def test_grpo_raises_the_reward_it_is_given(tmp_path: Path) -> None:
    import torch
    from datasets import Dataset

    tok = tiny_tokenizer([x for pair in PAIRS for x in pair])
    model = tiny_causal_lm(tok, seed=1)
    with torch.no_grad():  # logits that can move: at the 0.02 init every next token is near-uniform
        model.get_input_embeddings().weight.mul_(10.0)
    prompts = [[{"role": "user", "content": q}] for q, _, _ in PAIRS]
    cfg = replace(FAST, learning_rate=5e-2, max_steps=6, batch_size=16, max_new_tokens=12, lora_r=8, lora_alpha=16,
                  beta=0.01)
    # the reward: the printable token the base samples most, in about 1 answer token of 7 (reward ~ -0.7)
    torch.manual_seed(0)
    sampled: Counter[int] = Counter()
    for prompt in prompts:
        ids = tok.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        out = model.generate(**ids, do_sample=True, max_new_tokens=cfg.max_new_tokens, num_return_sequences=16,
                             pad_token_id=tok.pad_token_id)
        sampled.update(out[:, ids["input_ids"].shape[1]:].flatten().tolist())
    token, n = next((t, n) for t, n in sampled.most_common()
                    if tok.decode([t]).strip() and tok.decode([t]).isprintable() and "\ufffd" not in tok.decode([t]))
    assert n / sum(sampled.values()) > 0.1  # frequent enough that answers in a group differ

    data = TrainData(Dataset.from_dict({"prompt": prompts}), None, None, {}, tmp_path)
    trainer = grpo_trainer(model, tok, data, cfg, tmp_path / "out", False,
                           RewardModelReward(TokenScorer(tok.decode([token]), cfg.max_new_tokens)))
    trainer.train()
    rewards = [x["reward"] for x in trainer.state.log_history if "reward" in x]
    assert len(rewards) == cfg.max_steps
    assert np.mean(rewards[-2:]) > np.mean(rewards[:2]) + 0.5, rewards  # measured: -0.88 -> +0.65


# --- bad input ---------------------------------------------------------------------------------------

def test_without_a_reward_model_grpo_stops_before_training(engine: Engine, tiny_base: Path, tmp_path: Path) -> None:
    fix = r"ratingloop train --method reward --out DIR.*train\.reward_model=DIR"
    with pytest.raises(ConfigError, match=fix):
        prepare(engine, FAST)  # the store registers no reward model
    with pytest.raises(ConfigError, match=fix):
        train_from_store(engine, "grpo", out_dir=tmp_path / "run", base=tiny_base, cfg=FAST, progress=False)
    # a folder that is not a reward model (the base: a causal LM) is named as such
    with pytest.raises(ConfigError, match=r"train\.reward_model=.*is a policy adapter or model, not a reward model"):
        train_from_store(engine, "grpo", out_dir=tmp_path / "run2", base=tiny_base,
                         cfg=replace(FAST, reward_model=str(tiny_base)), progress=False)
    # no reward model at all is found before the run is recorded; a wrong folder fails the recorded run
    assert [r.status for r in list_runs(engine)] == ["failed"]
    assert list_versions(engine) == []
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_bad_settings_stop_before_training_and_prompts_are_used_once(tmp_path: Path) -> None:
    from datasets import Dataset

    question = [{"role": "user", "content": "Where is my refund?"}]
    tok = tiny_tokenizer(["Where is my refund? Within five days."])
    data = TrainData(Dataset.from_dict({"prompt": [question, question]}), None, None, {}, tmp_path)
    reward = RewardModelReward(TokenScorer("a", 4))
    with pytest.raises(ConfigError, match=r"train\.batch_size=6 .* train\.num_generations=4; set train\.batch_size=8"):
        grpo_trainer(tiny_causal_lm(tok), tok, data, replace(FAST, batch_size=6), tmp_path, False, reward)
    with pytest.raises(ConfigError, match=r"train\.beta=0.0: .*KL anchor"):
        grpo_trainer(tiny_causal_lm(tok), tok, data, replace(FAST, beta=0.0), tmp_path, False, reward)
    with pytest.raises(RatingloopError, match=r"every train prompt is longer than .* = 4 tokens; raise train"):
        grpo_trainer(tiny_causal_lm(tok), tok, data, replace(FAST, max_length=12), tmp_path, False, reward)
    # two rated answers to one question are one prompt to sample for
    trainer = grpo_trainer(tiny_causal_lm(tok), tok, data, FAST, tmp_path, False, reward)
    assert trainer.train_dataset["prompt"] == [question]
