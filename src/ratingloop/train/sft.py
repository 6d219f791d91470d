"""Stage 5, train: the `sft` recipe - TRL SFTTrainer + PEFT LoRA on confidently good answers and corrections.

Reads a built sft dataset (prompt/completion chat messages). run.py loads the data and the base, then
calls `make_trainer`, trains, saves and registers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ratingloop.train.common import lora_config, quiet, trainer_args
from ratingloop.train.config import TrainConfig
from ratingloop.train.data import TrainData


def make_trainer(model: Any, tokenizer: Any, data: TrainData, cfg: TrainConfig, out_dir: Path,
                 progress: bool) -> Any:
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(**trainer_args(cfg, out_dir, progress))
    return quiet(SFTTrainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
                            processing_class=tokenizer, peft_config=lora_config(cfg)))
