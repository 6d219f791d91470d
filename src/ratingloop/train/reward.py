"""Stage 5, train: the `reward` recipe - a reward model of the content, for GRPO, labelling and evaluation.

    ratingloop train --method reward --out runs/rm-1                         # regression on the store's rewards
    ratingloop train --method reward --data pairs/ --out runs/rm-2           # Bradley-Terry on a dpo folder
    ratingloop train --method reward --set train.reward_backbone=embed ...   # the seconds-on-a-CPU head

    mean, sd = load_scorer("runs/rm-1").score(prompts, answers)              # see scoring.py

What it learns from decides the objective: a `reward` folder (prompt, completion, score = the debiased
reward in [-1, 1]) -> regression (MSE on the score); a `dpo` folder (prompt, chosen, rejected) ->
Bradley-Terry (-log sigmoid(r_chosen - r_rejected)). train.reward_backbone decides the model:

- "base": the base model with a one-output score head (AutoModelForSequenceClassification) and LoRA;
  the head is new, so it trains in full and is saved with the adapter (modules_to_save). The answer is
  chat-templated after its prompt and the head reads the last token. Regression runs in a transformers
  Trainer (float labels -> MSE), pairs in TRL's RewardTrainer. Checkpoints and `--resume` work as for
  every method.
- "embed": a linear head on frozen all-MiniLM-L6-v2 embeddings (embed_reward.py): BayesianRidge for
  scores, a logistic regression on embedding differences for pairs.

run.py drives the recipe: `load_model`, `make_trainer`, train, `metrics`, evaluate, save. `metrics`
scores the eval split once and writes OUT/reward_model.json (backbone, objective, scale, sd, held-out
figures: MSE, Pearson, Spearman and pairwise accuracy for regression; pairwise accuracy for pairs),
which is what `load_scorer` reads. The rows both backbones learn from (Scored, Pairs) and their checks are
in reward_examples.py; the card and the figures in reward_card.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ratingloop.models import ModelLoadError, ResolvedModel
from ratingloop.train.common import chat_tokenizer, lora_config, quiet, trainer_args
from ratingloop.train.config import TrainConfig
from ratingloop.train.data import TrainData
from ratingloop.train.reward_card import pair_accuracy, regression_figures, thurstone_sd, to_scale, write_card
from ratingloop.train.reward_examples import PAIRS, Pairs, Scored, checked, conversations, objective_of
from ratingloop.train.scoring import encode, forward_rewards, pad_id, seq_cls_from

log = logging.getLogger(__name__)

CENTER_SAMPLE = 128  # train answers scored after training to centre a Bradley-Terry model's logits


# --- the recipe protocol (run.py) ----------------------------------------------------------------

def uses_base(cfg: TrainConfig) -> bool:
    """Whether --base matters: the embed head never reads it (run.py may skip resolving it)."""
    return cfg.reward_backbone != "embed"


def load_model(resolved: ResolvedModel | None, cfg: TrainConfig) -> tuple[Any, Any]:
    """The base under a one-output score head and its tokenizer; for the embed backbone, the frozen encoder
    and its tokenizer (run.py saves that tokenizer beside the head; the base is not used)."""
    if cfg.reward_backbone == "embed":
        from ratingloop.models.embed import encoder

        enc = encoder()
        return enc, enc.tokenizer
    import torch
    from transformers import AutoTokenizer, set_seed

    if resolved is None:
        raise ModelLoadError("train.reward_backbone=base needs a base model; give --base, or run "
                             "`ratingloop model pull` for the default")
    path = resolved.weights_path
    set_seed(cfg.seed)  # the new score head is drawn while loading
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = seq_cls_from(path, torch.float32, pad_id(tokenizer))
    except Exception as e:  # noqa: BLE001 - any loader failure is reported with the folder
        raise ModelLoadError(f"--base {path}: cannot load it under a sequence-classification head "
                             f"({type(e).__name__}: {e}); give a Hugging Face model folder, or run "
                             "`ratingloop model pull` for the default") from e
    return model, chat_tokenizer(tokenizer, path, "the reward model reads")


@dataclass
class RewardRun:
    """What `metrics` needs after training, kept on the trainer by `make_trainer`."""
    out_dir: Path
    objective: str
    cfg: TrainConfig
    tokenizer: Any
    train: Scored | Pairs
    eval: Scored | Pairs | None


def make_trainer(model: Any, tokenizer: Any, data: TrainData, cfg: TrainConfig, out_dir: Path,
                 progress: bool) -> Any:
    objective = objective_of(data)
    train, eval_ = checked(data, objective)
    log.info("reward: %s on the %s backbone, %d train / %d eval rows", objective, cfg.reward_backbone,
             len(train.prompts), len(eval_.prompts) if eval_ else 0)
    if cfg.reward_backbone == "embed":
        from ratingloop.train.embed_reward import EmbedFit

        return EmbedFit(model, train, eval_, progress, max_steps=cfg.max_steps)
    args = trainer_args(cfg, out_dir, progress)  # seeds before the LoRA matrices are drawn
    model = with_lora(model, cfg)
    if objective == PAIRS:
        trainer = _pairs_trainer(model, tokenizer, train, eval_, cfg, args)  # type: ignore[arg-type]
    else:
        trainer = _regression_trainer(model, tokenizer, train, eval_, cfg, args)  # type: ignore[arg-type]
    trainer.reward_run = RewardRun(out_dir, objective, cfg, tokenizer, train, eval_)
    return quiet(trainer)


def metrics(trainer: Any) -> dict[str, Any]:
    """The held-out figures; for the base backbone also written, with the scale and sd, to reward_model.json
    (the embed head writes its own when saved)."""
    from ratingloop.train.embed_reward import EmbedFit

    if isinstance(trainer, EmbedFit):
        return trainer.heldout
    run: RewardRun = trainer.reward_run
    card = _base_card(trainer.model, run, bf16=bool(trainer.args.bf16))
    if trainer.is_world_process_zero():  # one writer under a multi-process launch
        write_card(run.out_dir, card)
    return {f"eval_{k}": v for k, v in card["metrics"].items()} | {"reward_sd": card["sd"]["value"]}


# --- the base backbone ---------------------------------------------------------------------------

def with_lora(model: Any, cfg: TrainConfig) -> Any:
    """LoRA on the base's linear layers; the new score head trains in full and is saved with the adapter."""
    peft_config = lora_config(cfg, task_type="SEQ_CLS")
    if peft_config is None:
        return model
    from peft import get_peft_model

    model.score.float()  # the head trains in fp32 even over a base stored in bf16: small updates must not round away
    peft_config.modules_to_save = ["score"]
    return get_peft_model(model, peft_config)


def _regression_trainer(model: Any, tokenizer: Any, train: Scored, eval_: Scored | None, cfg: TrainConfig,
                        args: dict[str, Any]) -> Any:
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    def dataset(x: Scored) -> Any:
        ids = encode(tokenizer, conversations(x), cfg.max_length)
        return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(i) for i in ids],
                                  "labels": x.scores.astype(np.float32).tolist()})

    args.pop("max_length")  # a TRL key; encode() has truncated already
    targs = TrainingArguments(**args, label_names=["labels"], remove_unused_columns=False)
    return Trainer(model=model, args=targs, train_dataset=dataset(train),
                   eval_dataset=dataset(eval_) if eval_ else None, processing_class=tokenizer,
                   data_collator=DataCollatorWithPadding(tokenizer))


def _pairs_trainer(model: Any, tokenizer: Any, train: Pairs, eval_: Pairs | None, cfg: TrainConfig,
                   args: dict[str, Any]) -> Any:
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    def dataset(x: Pairs) -> Any:
        # tokenized here (RewardTrainer then skips its own step) so truncation keeps each answer's end
        # instead of TRL's dropping every pair longer than max_length
        ids = encode(tokenizer, conversations(x), cfg.max_length)
        return Dataset.from_dict({"chosen_ids": ids[:len(x.prompts)], "rejected_ids": ids[len(x.prompts):]})

    return RewardTrainer(model=model, args=RewardConfig(**args), train_dataset=dataset(train),
                         eval_dataset=dataset(eval_) if eval_ else None, processing_class=tokenizer)


def _base_card(model: Any, run: RewardRun, bf16: bool) -> dict[str, Any]:
    """Score the eval split (and, for pairs, a sample of train answers to centre the logits) once, in the
    precision it trained in; the scorer reads `bf16` from the card and scores the same way."""
    pad = pad_id(run.tokenizer)

    def raw(convs: Sequence[Sequence[dict[str, str]]]) -> np.ndarray:
        return forward_rewards(model, encode(run.tokenizer, convs, run.cfg.max_length), pad, run.cfg.batch_size,
                               bf16=bf16)

    figures: dict[str, Any] = {}
    if isinstance(run.train, Scored):
        scale: dict[str, Any] = {"map": "clip"}
        if isinstance(run.eval, Scored):
            pred = to_scale(raw(conversations(run.eval)), scale)
            figures = regression_figures(pred, run.eval.scores)
            sd = {"kind": "heldout_rmse", "value": figures["rmse"]}
        else:
            sd = {"kind": "train_spread", "value": float(np.std(run.train.scores))}
    else:
        sample = conversations(run.train)
        sample = [sample[i] for i in np.random.default_rng(0).permutation(len(sample))[:CENTER_SAMPLE]]
        center = raw(sample)
        scale = {"map": "tanh", "center": float(center.mean())}
        if isinstance(run.eval, Pairs):
            both = to_scale(raw(conversations(run.eval)), scale)
            chosen, rejected = both[:len(run.eval.prompts)], both[len(run.eval.prompts):]
            figures = {"pair_accuracy": pair_accuracy(chosen, rejected)}
            sd = {"kind": "heldout_thurstone", "value": thurstone_sd(chosen, rejected)}
        else:
            sd = {"kind": "train_spread", "value": float(np.std(to_scale(center, scale)))}
    base = getattr(getattr(model, "config", None), "_name_or_path", None)
    return {"backbone": "base", "objective": run.objective, "base_model": str(base) if base else None,
            "max_length": run.cfg.max_length, "bf16": bf16, "lora": run.cfg.lora, "scale": scale, "sd": sd,
            "train_rows": len(run.train.prompts), "eval_rows": len(run.eval.prompts) if run.eval else 0,
            "metrics": {k: v for k, v in figures.items() if v is not None}}
