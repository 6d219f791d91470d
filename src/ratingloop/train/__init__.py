"""Stage 5, train: built datasets -> LoRA adapters registered as candidate versions.

config.py   TrainConfig: LoRA rank/alpha/dropout/targets, learning rate, steps, batch, length, seed, bf16
data.py     load_train_data(): open a built dataset folder and check it fits the method, before training
sft.py      train(engine, "sft", out_dir=..., ...) -> TrainResult: TRL SFTTrainer + PEFT LoRA, top to bottom

Importing this package is cheap: torch, transformers, TRL and PEFT load inside `train`.
"""

from ratingloop.train.config import TrainConfig
from ratingloop.train.sft import METHODS, TrainResult, train

__all__ = ["METHODS", "TrainConfig", "TrainResult", "train"]
