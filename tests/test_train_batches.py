"""train.common.LengthBuckets: batches of similar length, every row once per epoch, replayable from the seed."""

from __future__ import annotations

import random

import torch

from ratingloop.train.common import LengthBuckets


def batches(sampler: LengthBuckets, size: int) -> list[list[int]]:
    order = list(sampler)
    return [order[i:i + size] for i in range(0, len(order), size)]


def padding(groups: list[list[int]], lengths: list[int]) -> float:
    padded = sum(len(g) * max(lengths[i] for i in g) for g in groups)
    return 1 - sum(lengths) / padded


def test_every_row_once_in_batches_of_similar_length() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(20, 400) for _ in range(301)]  # 37 full batches of 8 and a short one
    torch.manual_seed(0)
    sampler = LengthBuckets(lengths, batch_size=8)
    groups = batches(sampler, 8)
    assert sorted(i for g in groups for i in g) == list(range(301))
    assert [len(g) for g in groups] == [8] * 37 + [5]  # the short batch last, so the DataLoader cuts these
    torch.manual_seed(0)
    shuffled = torch.randperm(301).tolist()
    random_padding = padding([shuffled[i:i + 8] for i in range(0, 301, 8)], lengths)
    grouped_padding = padding(groups, lengths)
    assert random_padding > 0.3  # random batches of these lengths are mostly padding ...
    assert grouped_padding < 0.05  # ... grouped ones hardly any


def test_the_seed_replays_the_order_and_epochs_differ() -> None:
    lengths = list(range(100))
    torch.manual_seed(3)
    first, second = list(LengthBuckets(lengths, 4)), list(LengthBuckets(lengths, 4))
    torch.manual_seed(3)
    assert list(LengthBuckets(lengths, 4)) == first
    assert first != second
