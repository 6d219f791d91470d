"""Stage 5, train: the `kto` recipe - TRL KTOTrainer + PEFT LoRA on answers labelled desirable/undesirable.

Reads a built kto dataset (prompt/completion/label). The desirable/undesirable weights are the
builder's class-balance weights from DIR/manifest.json ("kto"), so the rarer label is not drowned out;
a folder without them gets weights computed here from its train labels by the same rule. The
reference model is the base itself: with a LoRA model and ref_model=None, TRL computes the reference
log-probs with the adapter disabled, so no second copy of the base is loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ratingloop.errors import RatingloopError
from ratingloop.train.common import fast, lora_config, quiet, trainer_args
from ratingloop.train.common import load_model as load_model  # run.py loads the base with it
from ratingloop.train.config import TrainConfig
from ratingloop.train.data import TrainData

log = logging.getLogger(__name__)


def make_trainer(model: Any, tokenizer: Any, data: TrainData, cfg: TrainConfig, out_dir: Path,
                 progress: bool) -> Any:
    from trl import KTOConfig, KTOTrainer

    weights = kto_weights(data)
    log.info("kto: desirable_weight=%s undesirable_weight=%s (%d desirable / %d undesirable)",
             weights["desirable_weight"], weights["undesirable_weight"], weights["n_desirable"],
             weights["n_undesirable"])
    args = KTOConfig(**trainer_args(cfg, out_dir, progress), desirable_weight=weights["desirable_weight"],
                     undesirable_weight=weights["undesirable_weight"])
    trainer = fast(quiet(KTOTrainer(model=model, ref_model=None, args=args, train_dataset=data.train,
                                    eval_dataset=data.eval, processing_class=tokenizer,
                                    peft_config=lora_config(cfg))), cfg)
    trainer.data_collator = KLFromBatch(trainer.data_collator)
    return trainer


class KLFromBatch:
    """TRL's KTO collator, with each row's KL answer taken from the batch being collated: row i is paired with
    row i-1's answer (row 0 with the last row's), TRL's rule, applied to the batch instead of to the dataset.

    KTO's KL term is estimated on mismatched (prompt, answer) pairs, and TRL wants those answers to be the
    batch's own. It builds them once, from runs of `batch_size` rows in the dataset's order, and requires its
    sequential sampler, so that those runs are the batches. The length buckets (train.group_by_length) draw
    other batches; a row's KL answer then came from a row elsewhere, of any length, so the two KL forwards -
    half of a step's no-grad passes - padded as random batches do. Where batches are the sequential runs this
    changes nothing (tests/test_train_kto_kl.py).
    """

    def __init__(self, collator: Any) -> None:
        self.collator = collator

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if examples and "KL_completion_ids" in examples[0]:
            shifted = examples[-1:] + examples[:-1]
            examples = [dict(row, KL_completion_ids=prev["completion_ids"])
                        for row, prev in zip(examples, shifted, strict=True)]
        return self.collator(examples)


def kto_weights(data: TrainData) -> dict[str, Any]:
    """The manifest's class-balance weights, or the builder's rule applied to the train labels."""
    from ratingloop.dataset import kto_class_weights  # the dataset stage's one class-balance rule

    labels = [bool(x) for x in data.train["label"]]
    if all(labels) or not any(labels):
        kind = "desirable" if all(labels) else "undesirable"
        raise RatingloopError(f"kto: every train row is {kind}; KTO learns from both desirable and undesirable "
                              "answers - collect more ratings (or lower build.z) so both kinds are present")
    recorded = data.manifest.get("kto")
    if isinstance(recorded, dict) and {"desirable_weight", "undesirable_weight"} <= recorded.keys():
        return recorded
    return kto_class_weights(labels)
