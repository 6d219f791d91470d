"""Stage 5, train: the `sft` recipe - TRL SFTTrainer + PEFT LoRA on confidently good answers and corrections.

Reads a built sft dataset (prompt/completion chat messages). run.py loads the data and the base
(`load_model`: bf16 frozen weights under train.bf16), then calls `make_trainer`, trains, saves and registers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ratingloop.train.common import fast, lora_config, quiet, trainer_args
from ratingloop.train.common import load_model as load_model  # run.py loads the base with it
from ratingloop.train.config import TrainConfig
from ratingloop.train.data import TrainData


def make_trainer(model: Any, tokenizer: Any, data: TrainData, cfg: TrainConfig, out_dir: Path,
                 progress: bool) -> Any:
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(**trainer_args(cfg, out_dir, progress))
    return fast(quiet(SFTTrainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
                                 processing_class=tokenizer, peft_config=lora_config(cfg))), cfg)
