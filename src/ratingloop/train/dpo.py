"""Stage 5, train: the `dpo` recipe - TRL DPOTrainer + PEFT LoRA on mined preference pairs.

Reads a built dpo dataset (prompt/chosen/rejected): two answers to one prompt whose rewards clearly
differ, or an answer and its correction. A store with no such pairs stops before training (in
run.py, when the dataset is built or loaded) with what is missing and how to get it. The reference
model is the base itself: with a LoRA model and ref_model=None, TRL computes the reference log-probs
with the adapter disabled, so no second copy of the base is loaded.
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
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(**trainer_args(cfg, out_dir, progress))
    return fast(quiet(DPOTrainer(model=model, ref_model=None, args=args, train_dataset=data.train,
                                 eval_dataset=data.eval, processing_class=tokenizer, peft_config=lora_config(cfg))),
                cfg)
