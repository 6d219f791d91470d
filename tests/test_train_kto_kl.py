"""kto's KL term reads mismatched (prompt, answer) pairs built from the answers of the same batch.

TRL builds each row's KL answer when it prepares the dataset - the previous row's answer within each run of
`batch_size` rows - and requires its sequential sampler, so that those runs are the batches. ratingloop draws
kto's batches by length (train.group_by_length), which broke that pairing: a row's KL answer came from
another batch, of any length, so the KL passes (two of a KTO step's four forwards) padded like random batches.
The recipe rebuilds the KL answers from the batch itself, which is TRL's own rule where batches are sequential.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

from ratingloop.train.config import TrainConfig
from ratingloop.train.data import TrainData
from tiny import tiny_causal_lm, tiny_tokenizer

WORDS = "refund card order today week help thanks sorry please wait account parcel".split()


def rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """kto rows whose answers range from 2 to 60 words, so batches drawn by length differ from random ones."""
    rng = random.Random(seed)
    return [{"prompt": [{"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(2, 6)))}],
             "completion": [{"role": "assistant", "content": " ".join(rng.choices(WORDS, k=rng.randint(2, 60)))}],
             "label": rng.random() < 0.4} for _ in range(n)]


def trainer(tmp_path: Path, group_by_length: bool) -> Any:
    from datasets import Dataset

    from ratingloop.train import kto

    data = rows(48)
    tok = tiny_tokenizer([m["content"] for r in data for m in r["prompt"] + r["completion"]])
    cfg = TrainConfig(lora_r=4, lora_alpha=8, max_steps=1, batch_size=4, max_length=128, bf16=False,
                      group_by_length=group_by_length)
    train = TrainData(Dataset.from_list(data), None, None, {}, tmp_path)
    return kto.make_trainer(tiny_causal_lm(tok), tok, train, cfg, tmp_path / "out", progress=False)


def answers(batch: dict[str, torch.Tensor], prefix: str = "") -> list[tuple[int, ...]]:
    """Each row's answer tokens: the completion_mask's positions of input_ids."""
    ids, mask = batch[f"{prefix}input_ids"], batch[f"{prefix}completion_mask"].bool()
    return [tuple(row[m].tolist()) for row, m in zip(ids, mask, strict=True)]


def prompts(batch: dict[str, torch.Tensor], prefix: str = "") -> list[tuple[int, ...]]:
    ids, mask = batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"].bool()
    done = batch[f"{prefix}completion_mask"].bool()
    return [tuple(row[m & ~d].tolist()) for row, m, d in zip(ids, mask, done, strict=True)]


@pytest.mark.parametrize("group_by_length", [True, False])
def test_each_rows_kl_answer_is_the_previous_answer_of_its_own_batch(tmp_path: Path, group_by_length: bool) -> None:
    torch.manual_seed(0)
    t = trainer(tmp_path, group_by_length)
    batches = list(t.get_train_dataloader())
    assert len(batches) == 12
    kl_padding = []
    for batch in batches:
        own = answers(batch)
        assert answers(batch, "KL_") == own[-1:] + own[:-1]  # (x_1, y_n), (x_2, y_1), ... as TRL pairs them
        assert prompts(batch, "KL_") == prompts(batch)
        mask = batch["KL_attention_mask"]
        kl_padding.append(1 - float(mask.sum()) / mask.numel())
    if group_by_length:  # the KL batches are as short as the batches themselves
        assert sum(kl_padding) / len(kl_padding) < 0.1


def test_sequential_batches_get_trls_own_kl_answers(tmp_path: Path) -> None:
    """Where batches are TRL's sequential runs of rows, the KL answers are the ones TRL prepared."""
    from torch.utils.data import DataLoader, SequentialSampler

    t = trainer(tmp_path, group_by_length=False)
    plain = DataLoader(t.train_dataset, batch_size=4, sampler=SequentialSampler(t.train_dataset),
                       collate_fn=t.data_collator.collator)  # TRL's collator, unwrapped
    ours = DataLoader(t.train_dataset, batch_size=4, sampler=SequentialSampler(t.train_dataset),
                      collate_fn=t.data_collator)
    for a, b in zip(plain, ours, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
