"""Stage 5, train: what every recipe's TRL trainer shares - its TrainingArguments and its LoRA config.

    args = KTOConfig(**trainer_args(cfg, out_dir, progress), desirable_weight=...)
    trainer = quiet(KTOTrainer(model=model, args=args, ..., peft_config=lora_config(cfg)))

Each recipe (sft.py, kto.py, dpo.py) adds only its method's own settings; run.py does the rest.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from ratingloop.train.config import TrainConfig


def trainer_args(cfg: TrainConfig, out_dir: Path, progress: bool) -> dict[str, Any]:
    """Keyword arguments every TRL config (SFTConfig, KTOConfig, DPOConfig) takes, from `cfg`."""
    import torch
    from transformers import set_seed

    set_seed(cfg.seed)  # before TRL wraps the model: the LoRA A matrices are drawn then
    return dict(
        output_dir=str(out_dir / "checkpoints"),
        report_to=reporters(),
        learning_rate=cfg.learning_rate, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, max_length=cfg.max_length,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a value below 1 is a fraction of the steps
        seed=cfg.seed, bf16=cfg.bf16, logging_steps=cfg.logging_steps, logging_first_step=True,
        save_strategy="steps" if cfg.save_steps else "no", save_steps=cfg.save_steps or 500,
        save_total_limit=cfg.save_total_limit, eval_strategy="no", disable_tqdm=not progress, dataloader_num_workers=0,
        # TRL turns activation checkpointing on by default; it recomputes every layer's forward (~30% more
        # compute) to save memory a 135M model on CPU does not need
        activation_checkpointing=cfg.activation_checkpointing, include_num_input_tokens_seen=True,
        dataloader_pin_memory=torch.cuda.is_available(),
        # a CPU-only machine: without use_cpu, torchrun / accelerate launch would not set up CPU (gloo) DDP
        use_cpu=not torch.cuda.is_available(),
    )


def reporters() -> list[str] | str:
    """Where metrics go besides log.jsonl: TensorBoard when installed, W&B when installed and configured."""
    found = [] if importlib.util.find_spec("tensorboard") is None else ["tensorboard"]
    if importlib.util.find_spec("wandb") is not None and (os.environ.get("WANDB_API_KEY")
                                                          or os.environ.get("WANDB_MODE") == "offline"):
        found.append("wandb")
    return found or "none"


def lora_config(cfg: TrainConfig, task_type: str = "CAUSAL_LM") -> Any:
    """The PEFT LoRA config the trainer wraps the base with (`peft_config=`); None for full fine-tuning."""
    if not cfg.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.modules(), task_type=task_type)


def quiet(trainer: Any) -> Any:
    """The trainer without PrinterCallback, which prints log dicts to stdout (stdout is for results)."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer
