"""Stage 5, train: built datasets -> LoRA adapters registered as candidate versions.

config.py   TrainConfig: LoRA rank/alpha/dropout/targets, learning rate, steps, batch, length, seed, bf16
data.py     load_train_data(): open a built dataset folder and check it fits the method, before training
run.py      train(engine, method, out_dir=..., ...) -> TrainResult: data, base, trainer, save, registry
common.py   what every recipe's TRL trainer shares: TrainingArguments from TrainConfig, the LoRA config
sft.py      the sft recipe: TRL SFTTrainer
kto.py      the kto recipe: TRL KTOTrainer, desirable/undesirable weights from the build manifest
dpo.py      the dpo recipe: TRL DPOTrainer on mined pairs

Importing this package is cheap: torch, transformers, TRL and PEFT load inside `train`.
"""

from ratingloop.train.config import TrainConfig
from ratingloop.train.run import METHODS, TrainResult, train

__all__ = ["METHODS", "TrainConfig", "TrainResult", "train"]
