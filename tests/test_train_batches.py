"""train.common.LengthBuckets: batches of similar length, every row once per epoch, replayable from the seed, and -
where rows carry a number (wsft's weight, dro's score) - each batch mixing liked and disliked rows as
the data does, even when their lengths differ (bench/results.md: grouping alone made all-liked and all-disliked
batches, and a short weighted run alternated directions)."""

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


def test_strata_keep_each_batch_mixed_when_liked_and_disliked_differ_in_length() -> None:
    rng = random.Random(1)
    liked = [rng.random() < 0.3 for _ in range(400)]
    lengths = [rng.randint(20, 120) if good else rng.randint(100, 400) for good in liked]  # liked answers shorter
    torch.manual_seed(0)
    plain = batches(LengthBuckets(lengths, 8), 8)
    torch.manual_seed(0)
    sampler = LengthBuckets(lengths, 8, strata=liked)
    mixed = batches(sampler, 8)
    assert sorted(i for g in mixed for i in g) == list(range(400))
    assert [len(g) for g in mixed] == [8] * 50

    def shares(groups: list[list[int]]) -> list[float]:
        return [sum(liked[i] for i in g) / len(g) for g in groups]

    assert max(shares(plain)) == 1 and min(shares(plain)) == 0  # length alone: all-liked and all-disliked batches
    overall = sum(liked) / len(liked)
    assert all(abs(s - overall) <= 1 / 8 + 1e-9 for s in shares(mixed))  # within one row of the data's mix
    torch.manual_seed(0)
    shuffled = torch.randperm(400).tolist()
    random_padding = padding([shuffled[i:i + 8] for i in range(0, 400, 8)], lengths)
    assert padding(mixed, lengths) < random_padding - 0.1  # still far less padding than random batches
    torch.manual_seed(0)
    one = list(LengthBuckets(lengths, 8, strata=[True] * 400))
    torch.manual_seed(0)
    assert one == list(LengthBuckets(lengths, 8))  # a single stratum is plain grouping


def test_which_rows_are_the_liked_ones() -> None:
    from datasets import Dataset

    from ratingloop.train.common import rating_strata

    assert rating_strata(Dataset.from_dict({"input_ids": [[1], [2], [3]], "weight": [0.5, -1.0, 0.0]})) == [
        True, False, False]  # wsft: pulled up or not
    assert rating_strata(Dataset.from_dict({"input_ids": [[1], [2], [3]], "score": [0.9, 0.1, 0.2]})) == [
        True, False, False]  # dro: above the mean
    assert rating_strata(Dataset.from_dict({"prompt_ids": [[1]], "completion_ids": [[2]], "label": [True]})) is None
    assert rating_strata(Dataset.from_dict({"input_ids": [[1]]})) is None  # sft
