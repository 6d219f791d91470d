"""Stage 5, train: the pipeline settings of a training run, as one frozen dataclass.

The defaults suit the default model (SmolLM2-135M-Instruct, a Llama) on a CPU: LoRA on every linear
layer at rank 16, one epoch, batches of 8 short support answers. Load a file's ``[train]`` table and
``--set train.KEY=VALUE`` overrides with `ratingloop.pipeline_config.load_section(TrainConfig, "train", ...)`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ratingloop.errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    # --- LoRA -------------------------------------------------------------------------------------
    lora_r: int = 16
    lora_alpha: int = 32  # the update is scaled by alpha / r
    # PEFT's default; 0.05 drew a dropout mask over every adapted layer's input, ~15% of a CPU step
    # (bench/results-train.md), for regularisation a one-epoch run hardly needs
    lora_dropout: float = 0.0
    target_modules: str = "all-linear"  # PEFT's shorthand, or comma-separated names: "q_proj,v_proj"
    # --- optimisation ---------------------------------------------------------------------------------
    learning_rate: float = 2e-4  # a usual LoRA rate; full fine-tuning would want ~10x less
    epochs: float = 1.0
    max_steps: int = -1  # > 0 stops after this many optimizer steps, whatever `epochs` says
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.0
    max_length: int = 512  # tokens per example (prompt + answer); longer ones are truncated
    seed: int = 0
    # bf16 matmuls (autocast; with LoRA the frozen base is stored in bf16, the adapter in fp32) where the
    # hardware has them (a CUDA GPU, a CPU with AMX or AVX512-BF16), fp32 elsewhere; see bench/results-train.md
    bf16: bool = True
    # batches of similar-length rows (far less padding); wsft's and dro's each mix liked and disliked rows as the
    # data has them (common.fast)
    group_by_length: bool = True
    logging_steps: int = 5
    activation_checkpointing: bool = False  # trade compute for memory: for large models on a GPU
    lora: bool = True  # false: full fine-tuning (every weight trains; the output folder is a whole model)
    # a PEFT LoRA adapter folder (a version's adapter_path) whose weights this run starts from and goes on training;
    # "" = a fresh LoRA. Its own LoraConfig (r, alpha, dropout, target modules) wins over lora_r etc. Its base must be
    # the run's base. The reference of kto, dpo, grpo, wsft and dro is then this starting adapter, frozen (TRL's
    # "ref" copy of a pretrained adapter; pointwise.py does the same), not the base. Not for method reward.
    init_adapter: str = ""
    save_steps: int = 50  # a resumable checkpoint (weights, optimizer, RNG) every N steps; 0: none
    save_total_limit: int = 2  # checkpoints kept; the newest is what --resume continues from
    # after training, the method's loss and figures on the eval split (eval_* in the run's metrics). A policy's
    # pass costs the same forward passes per row as training (kto: policy, reference and KL): the loop turns it
    # off for policy methods, whose candidates the gate judges on held-out prompts anyway
    eval_after_training: bool = True
    # --- method settings ------------------------------------------------------------------------------
    beta: float = 0.1  # KL strength: kto/dpo's beta, dro's tau, grpo's KL anchor to the reference
    reward_backbone: str = "base"  # reward: "base" (a scalar head + LoRA on the base) or "embed" (a head on
    #                                  frozen all-MiniLM-L6-v2 sentence embeddings: seconds on a CPU, for sparse data)
    reward_model: str = ""  # grpo: the reward model folder (`train --method reward --out DIR`)
    num_generations: int = 4  # grpo: answers sampled per prompt, compared within the group
    max_new_tokens: int = 64  # grpo: the longest sampled answer
    wsft_margin: float = 0.5  # wsft: nats per token; a bad answer's push-down fades once it sits this far below
    #                          the base (to 54% of full strength at 1x, 10% at 3x; NPO's bound, see wsft.py)
    value_learning_rate: float = 1e-3  # dro: the value head's rate (a linear head on frozen features learns
    #                                    faster than the LoRA policy's rate allows)

    @classmethod
    def for_method(cls, method: str, **values: Any) -> TrainConfig:
        """The method's defaults (METHOD_DEFAULTS) under `values`, which win."""
        return cls(**(METHOD_DEFAULTS.get(method, {}) | values))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def modules(self) -> str | list[str]:
        """`target_modules` as PEFT takes it."""
        names = [m.strip() for m in self.target_modules.split(",") if m.strip()]
        return names[0] if names == ["all-linear"] else names

    def validate(self) -> None:
        """Raise ConfigError naming every bad key and its fix."""
        problems = []
        for key in ("lora_r", "lora_alpha", "batch_size", "grad_accum", "max_length", "logging_steps",
                    "save_total_limit", "num_generations", "max_new_tokens"):
            if getattr(self, key) < 1:
                problems.append(f"train.{key}={getattr(self, key)} must be >= 1")
        if not 0.0 <= self.lora_dropout < 1.0:
            problems.append(f"train.lora_dropout={self.lora_dropout} must lie in [0, 1)")
        if not 0.0 <= self.warmup_ratio < 1.0:
            problems.append(f"train.warmup_ratio={self.warmup_ratio} must lie in [0, 1)")
        if self.learning_rate <= 0:
            problems.append(f"train.learning_rate={self.learning_rate} must be > 0")
        if self.max_steps <= 0 and self.epochs <= 0:
            problems.append(f"train.epochs={self.epochs} must be > 0 (or set train.max_steps > 0)")
        if self.max_steps == 0 or self.max_steps < -1:
            problems.append(f"train.max_steps={self.max_steps} must be > 0, or -1 to train for `epochs`")
        if self.save_steps < 0:
            problems.append(f"train.save_steps={self.save_steps} must be >= 0 (0: no checkpoints)")
        if self.beta < 0:
            problems.append(f"train.beta={self.beta} must be >= 0")
        for key in ("wsft_margin", "value_learning_rate"):
            if getattr(self, key) <= 0:
                problems.append(f"train.{key}={getattr(self, key)} must be > 0")
        if self.reward_backbone not in ("base", "embed"):
            problems.append(f'train.reward_backbone={self.reward_backbone!r} must be "base" or "embed"')
        if not self.modules():
            problems.append('train.target_modules is empty; use "all-linear" or names such as "q_proj,v_proj"')
        problems += self.init_adapter_problems()
        if problems:
            raise ConfigError("train config: " + "; ".join(problems))

    def init_adapter_problems(self) -> list[str]:
        """What is wrong with train.init_adapter (nothing when it is empty): a LoRA adapter folder of a policy."""
        if not self.init_adapter:
            return []
        key = f"train.init_adapter={self.init_adapter}"
        problems = []
        if not self.lora:
            problems.append(f"{key} goes on training a LoRA adapter and needs train.lora=true (full fine-tuning "
                            "trains every weight of the base); set train.lora=true or leave train.init_adapter empty")
        folder = Path(self.init_adapter).expanduser()
        if not folder.is_dir():
            return [*problems, f"{key}: no such folder; give a LoRA adapter folder (a version's adapter_path, "
                               "`ratingloop versions list`)"]
        try:
            adapter = json.loads((folder / "adapter_config.json").read_text())
        except FileNotFoundError:
            return [*problems, f"{key}: the folder holds no adapter_config.json, so it is not a PEFT adapter (a whole "
                               "model folder cannot be a LoRA start: give it as --base instead)"]
        except (OSError, ValueError) as e:
            return [*problems, f"{key}: adapter_config.json is unreadable ({e})"]
        kind = adapter.get("peft_type") if isinstance(adapter, dict) else None
        task = adapter.get("task_type") if isinstance(adapter, dict) else None
        if kind != "LORA":
            problems.append(f"{key}: is a {kind} adapter, not LoRA")
        elif task not in (None, "CAUSAL_LM"):
            problems.append(f"{key}: is a {task} adapter (a reward model's?), not a policy's (CAUSAL_LM)")
        return problems


# Per-method defaults for the default model with LoRA, over the dataclass's. Preference and RL losses move
# the policy through log-ratios to a reference and want gentler rates than supervised ones - but not 10x
# gentler: kto at 5e-5 (one epoch, ~17-27 steps over the rows a few hundred single ratings leave) hardly moved
# the default model, while 16 steps of 8 at 5e-4 took held-out answers from 78 to 28 words for users who want
# concise ones (bench/loop.py, bench/results.md "A default round that learns").
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "sft": {},
    "wsft": {"learning_rate": 1e-4},
    "kto": {"learning_rate": 5e-4},
    "dpo": {"learning_rate": 5e-5},
    "dro": {"learning_rate": 5e-5},
    "reward": {"learning_rate": 1e-4},
    "grpo": {"learning_rate": 2e-5, "batch_size": 8, "logging_steps": 1},
}


# The loop's settings from the data's size. A round sees what arrived since the last one: from a few dozen to
# thousands of kept rows. It trains LOOP_EPOCHS passes over them at the method's loop rate, at least
# LOOP_MIN_STEPS steps (a tiny store still moves) and at most LOOP_ROW_BUDGET rows (steps x batch), which keeps
# a round on 2 CPU cores in minutes: a KTO step of 8 rows of ~110 tokens (+ reference and KL passes) is ~10 s on
# idle cores (86 tokens/s, bench/results-train.md). Measured on simulated single ratings (bench/loop.py): 16 steps
# of 8 at kto 5e-4 gave 84% of the largest possible uplift on one seed; the other rates are the 12-step ones of
# tests/test_train_default_model.py (the concise-users store). Every global round trains a fresh adapter on the
# base (the promoted version is its parent for lineage only); a cohort's adapter starts from the active one's.
LOOP_LEARNING_RATE: dict[str, float] = {"kto": 5e-4, "wsft": 4e-4, "dpo": 7e-4}
LOOP_EPOCHS = 2.0
LOOP_MIN_STEPS = 12
LOOP_ROW_BUDGET = 128  # rows (steps x batch) per round at most: 16 steps of 8


def loop_train_config(method: str, n_rows: int, **values: Any) -> TrainConfig:
    """The loop's training settings for a train split of `n_rows` rows: `values` win, then these, then
    METHOD_DEFAULTS. Batches of 8 (4 under 64 rows), LOOP_EPOCHS passes within [LOOP_MIN_STEPS steps,
    LOOP_ROW_BUDGET rows], the method's loop learning rate, and no eval-split pass after a policy's training
    (the round's gate evaluates the candidate; on 2 AVX2 cores that pass took 5 of a KTO round's 15 minutes).

        loop_train_config("kto", 40)    # batch 4, 20 steps: two passes over 40 rows
        loop_train_config("kto", 216)   # batch 8, 16 steps: the row budget (0.6 of an epoch)
    """
    batch = 8 if n_rows >= 64 else 4
    steps = max(LOOP_MIN_STEPS, min(-(-int(LOOP_EPOCHS * n_rows) // batch), LOOP_ROW_BUDGET // batch))
    sized: dict[str, Any] = {"batch_size": batch, "max_steps": steps}
    if method != "reward":  # a reward model's held-out figures are its card; a policy has the round's gate
        sized["eval_after_training"] = False
    if method in LOOP_LEARNING_RATE:
        sized["learning_rate"] = LOOP_LEARNING_RATE[method]
    return TrainConfig.for_method(method, **(sized | values))
