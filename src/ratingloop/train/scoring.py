"""Stage 5, train: the one way to use a trained reward model - `load_scorer(path).score(prompts, answers)`.

    scorer = load_scorer(Path("runs/rm-1"))          # the --out of `ratingloop train --method reward`
    mean, sd = scorer.score([[{"role": "user", "content": "Refund?"}]], ["Within 5 days."])

Every consumer (GRPO's reward function, `ratingloop label`, `ratingloop ask`, evaluation) goes through
here, whichever backbone trained the model. A reward folder carries `reward_model.json` (CARD): kind,
backbone, objective, how raw outputs map to the reward scale, the sd, and the held-out figures.

- `mean` is on the reward scale [-1, 1]. Regression models predict that scale directly and are clipped
  to it; Bradley-Terry models output a logit whose only meaning is a difference, so it is mapped to
  2 * P(this answer beats an average training answer) - 1 = tanh((raw - center) / 2).
- `sd` is honest about what the model knows. Embed regression: BayesianRidge's predictive sd (per
  answer; larger far from the training data). Base regression: the held-out RMSE (one number: a
  fine-tuned network has no cheap per-answer posterior). Bradley-Terry: the per-answer noise sd that
  explains how often the model orders held-out pairs wrongly (a Thurstone fit, `thurstone_sd`).
  Without an eval split: the spread of the training scores, i.e. no better than knowing nothing.

The card (CARD, `read_card`) and the figures (`regression_figures`, `pair_accuracy`, `thurstone_sd`), one
definition for training and evaluation, live in reward_card.py; consumers outside train/ import them from here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from ratingloop.errors import RatingloopError
from ratingloop.models import quiet_checkpointing_deprecation
from ratingloop.train.reward_card import (
    CARD,
    pair_accuracy,
    read_card,
    regression_figures,
    thurstone_sd,
    to_scale,
)
from ratingloop.train.reward_examples import Messages, Prompt, as_messages

__all__ = ["CARD", "ModelScorer", "Prompt", "Scorer", "encode", "forward_rewards", "load_scorer", "pad_id",
           "pair_accuracy", "read_card", "regression_figures", "seq_cls_from", "thurstone_sd"]


class Scorer(Protocol):
    card: dict[str, Any]

    def score(self, prompts: Sequence[Prompt], answers: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(mean in [-1, 1], sd), float64 arrays of len(answers)."""
        ...


def load_scorer(path: str | Path, *, device: str | None = None, batch_size: int = 16) -> Scorer:
    """The reward model in `path` (either backbone), ready to score; RatingloopError if it is not one."""
    path = Path(path)
    card = read_card(path)
    if card["backbone"] == "embed":
        from ratingloop.train.embed_reward import EmbedRewardModel

        return EmbedRewardModel.load(path, device=device)
    return ModelScorer(path, card, device=device, batch_size=batch_size)


# --- the base backbone: a sequence-classification model over chat-templated text ------------------

def encode(tokenizer: Any, conversations: Sequence[Messages], max_length: int) -> list[list[int]]:
    """Token ids of each chat-templated conversation, its last `max_length` tokens.

    Truncation keeps the end: the head reads the last token's state, so cutting the answer's end would
    score a half answer; a long prompt's beginning is what goes.
    """
    texts = [tokenizer.apply_chat_template(list(c), tokenize=False) for c in conversations]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [list(x[-max_length:]) for x in ids]


def forward_rewards(model: Any, sequences: Sequence[Sequence[int]], pad_id: int, batch_size: int = 16,
                    bf16: bool = False) -> np.ndarray:
    """The model's scalar output per sequence (no grad; batches of similar length, so little padding).

    bf16: matmuls under bf16 autocast, as a model trained with train.bf16 ran in training (and as its
    held-out figures were measured), and faster on hardware with bf16 units.
    """
    import torch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    bf16 = bf16 or any(p.dtype == torch.bfloat16 for p in model.parameters())  # a bf16 frozen base needs it
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out = np.zeros(len(sequences), dtype=np.float64)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            width = max(len(sequences[i]) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):  # right padding: the head finds the last non-pad token
                ids[row, :len(sequences[i])] = torch.tensor(sequences[i])
                mask[row, :len(sequences[i])] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            out[idx] = logits[:, 0].float().cpu().numpy()
    model.train(was_training)
    return out


class ModelScorer:
    """A base-backbone reward model (LoRA adapter + score head, or a whole fine-tuned model), merged for speed."""

    def __init__(self, path: Path, card: dict[str, Any], device: str | None = None, batch_size: int = 16):
        import torch
        from transformers import AutoTokenizer

        self.card, self.batch_size = card, batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.pad_id = pad_id(self.tokenizer)
            self.model = load_seq_cls(path, self.pad_id).to(self.device).eval()
        except Exception as e:  # noqa: BLE001 - any loader failure is reported with the folder
            raise RatingloopError(f"reward model {path}: cannot load its weights ({type(e).__name__}: {e}); "
                                  "train the model again") from e

    def score(self, prompts: Sequence[Prompt], answers: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if len(prompts) != len(answers):
            raise ValueError(f"score: {len(prompts)} prompts but {len(answers)} answers")
        conversations = [as_messages(p) + [{"role": "assistant", "content": a}]
                         for p, a in zip(prompts, answers, strict=True)]
        raw = forward_rewards(self.model, encode(self.tokenizer, conversations, self.card["max_length"]),
                              self.pad_id, self.batch_size, bf16=bool(self.card.get("bf16")))
        return to_scale(raw, self.card["scale"]), np.full(len(raw), float(self.card["sd"]["value"]))


def pad_id(tokenizer: Any) -> int:
    """The id the score head skips to find the last real token (eos where the tokenizer has no pad)."""
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)


def load_seq_cls(path: Path, pad: int) -> Any:
    """A saved reward model: a LoRA adapter folder (its base + adapter, merged) or a whole model folder."""
    import torch

    if (path / "adapter_config.json").is_file():
        from peft import PeftModel

        base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
        model = seq_cls_from(Path(base), torch.float32, pad)
        with quiet_checkpointing_deprecation():
            return PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    return seq_cls_from(path, torch.float32, pad)


def seq_cls_from(path: Path, dtype: Any, pad: int) -> Any:
    """`path`'s weights under a one-output score head (a causal LM's "score.weight missing" report silenced)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
    finally:
        hf_logging.set_verbosity(level)
    model.config.problem_type = "regression"  # one float label -> MSE
    model.config.pad_token_id = pad
    return model


