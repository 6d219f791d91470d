"""Stage 5, train: the `grpo` recipe - TRL GRPOTrainer against a trained reward model, KL-anchored to the base.

    ratingloop train --method reward --out runs/rm-1                            # the reward model first
    ratingloop train --method grpo --out runs/grpo-1 --set train.reward_model=runs/rm-1

GRPO (Shao et al. 2024) samples train.num_generations answers per prompt from the policy, scores each
with the reward model (`scoring.load_scorer(train.reward_model).score`, the mean on [-1, 1]), and moves
the policy towards the answers that beat their group's average, minus train.beta * KL(policy || reference).
The reference is the base itself: with a LoRA model and beta > 0, TRL computes its log-probs with the
adapter disabled (no second copy of the base is loaded). Generation runs in transformers on the
training device (no vLLM), at most train.max_new_tokens tokens per answer.

Reads the `reward` build format, of which only the prompts are used (each once: several rated answers
to one prompt are one prompt here); a prompt longer than train.max_length - train.max_new_tokens tokens
is left out. train.batch_size counts answers, so it must hold whole groups (a multiple of
train.num_generations): 8 with 4 generations trains on 2 prompts per step.

With train.reward_model empty the newest registered reward model is used: `prepare(engine, cfg)` fills
it in before the run is recorded, so the run's config names the exact folder (and `--resume` reuses
it). Without one, the run stops before training and names the command that makes one. Logged per
step: `reward` (mean over the batch's answers), `reward_std`, `rewards/reward_model/mean`, `kl`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from sqlalchemy import Engine

from ratingloop.errors import ConfigError, RatingloopError
from ratingloop.train.common import lora_config, quiet, trainer_args
from ratingloop.train.config import TrainConfig
from ratingloop.train.data import TrainData

log = logging.getLogger(__name__)

EVAL_PROMPTS = 64  # held-out prompts scored after training; each costs num_generations sampled answers
NO_REWARD_MODEL = ("grpo needs a reward model: train one with `ratingloop train --method reward --out DIR`, "
                   "then `ratingloop train --method grpo --set train.reward_model=DIR`")


# --- the reward model ----------------------------------------------------------------------------

def prepare(engine: Engine, cfg: TrainConfig) -> TrainConfig:
    """`cfg` with train.reward_model set: as given, else the newest registered reward model's folder."""
    from ratingloop.train.label import reward_model_dir

    if cfg.reward_model:
        return cfg
    try:
        found = reward_model_dir(engine, None, fix=NO_REWARD_MODEL)
    except RatingloopError as e:
        raise ConfigError(f"train.reward_model is empty and {e}") from e
    log.info("grpo: train.reward_model=%s (the newest registered reward model)", found)
    return replace(cfg, reward_model=str(found))


class RewardModelReward:
    """The reward function GRPOTrainer calls: conversational prompts (message lists) and completions
    (one assistant message each) -> the reward model's mean per answer, on [-1, 1]."""

    __name__ = "reward_model"  # TRL names the logged column after it: rewards/reward_model/mean

    def __init__(self, scorer: Any):
        self.scorer = scorer

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
        answers = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        mean, _sd = self.scorer.score(list(prompts), answers)
        return [float(x) for x in mean]


def load_reward(cfg: TrainConfig) -> RewardModelReward:
    """The reward function for train.reward_model; a ConfigError names a missing or wrong folder."""
    from ratingloop.train.scoring import load_scorer

    if not cfg.reward_model:
        raise ConfigError(f"train.reward_model is empty; {NO_REWARD_MODEL}")
    try:
        return RewardModelReward(load_scorer(Path(cfg.reward_model)))
    except RatingloopError as e:
        raise ConfigError(f"train.reward_model={cfg.reward_model}: {e}") from e


# --- the recipe protocol (run.py) ----------------------------------------------------------------

def make_trainer(model: Any, tokenizer: Any, data: TrainData, cfg: TrainConfig, out_dir: Path,
                 progress: bool) -> Any:
    reward = load_reward(cfg)
    (out_dir / "grpo.json").write_text(json.dumps({"reward_model": str(Path(cfg.reward_model).resolve()),
                                                   "card": reward.scorer.card}, indent=2) + "\n")
    return grpo_trainer(model, tokenizer, data, cfg, out_dir, progress, reward)


def grpo_trainer(model: Any, tokenizer: Any, data: TrainData, cfg: TrainConfig, out_dir: Path, progress: bool,
                 reward: Any) -> Any:
    """GRPOTrainer on `data`'s distinct prompts, rewarded by `reward` (a TRL reward function)."""
    from trl import GRPOConfig, GRPOTrainer

    if cfg.batch_size % cfg.num_generations:
        raise ConfigError(f"train.batch_size={cfg.batch_size} counts sampled answers and must hold whole groups of "
                          f"train.num_generations={cfg.num_generations}; set train.batch_size="
                          f"{cfg.num_generations * max(1, round(cfg.batch_size / cfg.num_generations))}")
    if cfg.beta <= 0:
        raise ConfigError(f"train.beta={cfg.beta}: grpo against a learned reward model needs a KL anchor (beta > 0, "
                          "e.g. 0.1), or the policy drifts to whatever the reward model overrates")
    limit = cfg.max_length - cfg.max_new_tokens
    train = prompts_dataset(data.train, tokenizer, limit, "train")
    eval_ = prompts_dataset(data.eval, tokenizer, limit, "eval", EVAL_PROMPTS) if data.eval is not None else None
    if not len(train):
        raise RatingloopError(f"grpo: every train prompt is longer than train.max_length - train.max_new_tokens = "
                              f"{limit} tokens; raise train.max_length")
    args = trainer_args(cfg, out_dir, progress)
    args.pop("max_length")  # GRPO has no such key: prompts are filtered above, answers end at max_new_tokens
    # GRPO counts prompt and answer tokens itself; the Trainer's own count looks for input_ids and warns
    args["include_num_input_tokens_seen"] = False
    log.info("grpo: %d train / %d eval prompts, %d answers each, reward model %s", len(train),
             len(eval_) if eval_ is not None else 0, cfg.num_generations, cfg.reward_model or "given")
    grpo_args = GRPOConfig(**args, beta=cfg.beta, num_generations=cfg.num_generations,
                           max_completion_length=cfg.max_new_tokens, use_vllm=False)
    return quiet(GRPOTrainer(model=model, reward_funcs=[reward], args=grpo_args, train_dataset=train,
                             eval_dataset=eval_ if eval_ is not None and len(eval_) else None,
                             processing_class=tokenizer, peft_config=lora_config(cfg)))


def metrics(trainer: Any) -> dict[str, float]:
    """The mean reward at the first and the last logged step (what GRPO maximises; run.py adds the last `kl`)."""
    rewards = [float(x["reward"]) for x in trainer.state.log_history if "reward" in x]
    out = {"beta": float(trainer.args.beta), "num_generations": float(trainer.args.num_generations)}
    if rewards:
        out |= {"first_reward": rewards[0], "last_reward": rewards[-1]}
    return out


def prompts_dataset(split: Any, tokenizer: Any, limit: int, name: str, cap: int | None = None) -> Any:
    """The split's distinct prompts that fit in `limit` tokens (chat-templated, with the generation prompt)."""
    from datasets import Dataset

    seen: dict[str, Any] = {}
    for prompt in split["prompt"]:
        seen.setdefault(json.dumps(prompt, sort_keys=True), prompt)
    prompts = list(seen.values())
    lengths = [len(tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)
                   ["input_ids"]) for p in prompts]
    kept = [p for p, n in zip(prompts, lengths, strict=True) if n <= limit]
    if len(kept) < len(prompts):
        log.warning("grpo: %d of %d %s prompts are longer than %d tokens (train.max_length - train.max_new_tokens) "
                    "and are left out", len(prompts) - len(kept), len(prompts), name, limit)
    if cap is not None and len(kept) > cap:
        kept = kept[:cap]
    return Dataset.from_dict({"prompt": kept})
