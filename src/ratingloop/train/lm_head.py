"""Stage 5, train: TRL's chunked LM head, folded with fewer passes over each tile where it runs on a CPU.

Every TRL trainer (and our pointwise one) gets its log-probabilities from `trl.kernels.ChunkedLogProbFunction`:
the LM head is projected tile by tile ([tokens x 32768 vocabulary columns]) and each tile is folded into an
online log-sum-exp. On a GPU a Triton kernel folds a tile in one pass; on a CPU TRL folds it with plain torch ops,
`_forward_tile` and `_backward_tile`, written for any logit transform (scale, temperature, soft-cap): ~12 passes
over a tile of fp32 logits in the forward and as many in the backward, most of them multiplications by 1.0 and
masks as wide as the tile. A tile of a batch's answer tokens is tens of MB, so each pass goes to memory; on the
default model those passes were ~40% of an SFT step on 2 CPU cores (bench/results.md, issue 14's seventh part).

`fold_tiles_lean()` replaces the two CPU fallbacks with versions for the untransformed case (no scale,
temperature 1, no soft-cap - every model ratingloop trains): shift and exponentiate in place, the entropy's sum
as a row-wise dot product, the "target is the top-1 token" test on the rows whose target lies in the tile only,
and in the backward the softmax scaled in place plus the target's own column. They compute the same numbers
(tests/test_train_lm_head.py); anything else - a transform, log_sum_sq_probs, an entropy gradient - goes to
TRL's own fold. Idempotent; a TRL without these functions is left as it is (the test fails, so an upgrade that
moves them is seen).
"""

from __future__ import annotations

import math
from typing import Any


def fold_tiles_lean() -> None:
    """Put the lean folds in place of TRL's CPU tile folds (they run only where Triton does not)."""
    try:
        import trl.kernels.chunked_logprob as kernels
    except ImportError:
        return
    forward, backward = getattr(kernels, "_forward_tile", None), getattr(kernels, "_backward_tile", None)
    if forward is None or backward is None or getattr(forward, "ratingloop_lean", False):
        return
    kernels._forward_tile = _lean_forward(forward)
    kernels._backward_tile = _lean_backward(backward)


def _untransformed(kwargs: dict[str, Any]) -> bool:
    return not kwargs["HAS_SOFTCAP"] and kwargs["logit_scale"] == 1.0 and kwargs["inv_t"] == 1.0


def _lean_forward(original: Any) -> Any:
    def forward_tile(tile: Any, tile_stride: int, targets: Any, running_max: Any, sum_exp: Any, x_sum_exp: Any,
                     sq_sum_exp: Any, z_sum: Any, max_before_target: Any, target_logit: Any, vocab_start: int,
                     n_cols: int, **kwargs: Any) -> None:
        if not _untransformed(kwargs) or kwargs["HAS_LOG_SUM_SQ_PROBS"]:
            return original(tile, tile_stride, targets, running_max, sum_exp, x_sum_exp, sq_sum_exp, z_sum,
                            max_before_target, target_logit, vocab_start, n_cols, **kwargs)
        import torch

        z = tile.float()
        local = targets - vocab_start
        in_tile = (local >= 0) & (local < n_cols)
        target_z = z.gather(-1, local.clamp(0, n_cols - 1).unsqueeze(-1)).squeeze(-1)
        if kwargs["HAS_MEAN_LOGITS"]:
            z_sum += z.sum(-1)
        tile_max = z.amax(-1)
        if kwargs["HAS_IS_TOP1"]:
            # the largest logit before the target (argmax takes the first maximum): the whole tile for rows whose
            # target lies beyond it, a prefix for the rows whose target lies in it, nothing for the others
            max_before_target.copy_(torch.where(local >= n_cols, torch.maximum(max_before_target, tile_max),
                                                max_before_target))
            rows = in_tile.nonzero().squeeze(-1)
            if rows.numel():
                before = torch.arange(n_cols, device=z.device) < local[rows].unsqueeze(-1)
                prefix = z.index_select(0, rows).masked_fill_(~before, -math.inf).amax(-1)
                max_before_target[rows] = torch.maximum(max_before_target[rows], prefix)
        new_m = torch.maximum(running_max, tile_max)
        rescale = torch.exp(running_max - new_m)
        z.sub_(new_m.unsqueeze(-1))  # z - m: every entry <= 0
        if kwargs["HAS_ENTROPY"]:
            e = torch.exp(z)
            tile_sum = e.sum(-1)
            # sum(e * z) over the unshifted z = sum(e * (z - m)) + m * sum(e); z is spent, so it takes the product
            x_sum_exp.mul_(rescale).add_(z.mul_(e).sum(-1) + new_m * tile_sum)
        else:
            tile_sum = z.exp_().sum(-1)
        sum_exp.mul_(rescale).add_(tile_sum)
        running_max.copy_(new_m)
        target_logit.copy_(torch.where(in_tile, target_z, target_logit))

    forward_tile.ratingloop_lean = True  # type: ignore[attr-defined]
    forward_tile.original = original  # type: ignore[attr-defined]  # bench/train.py measures against it
    return forward_tile


def _lean_backward(original: Any) -> Any:
    def backward_tile(tile: Any, tile_stride: int, targets: Any, log_z: Any, entropy: Any, grad_logprobs: Any,
                      grad_entropy: Any, vocab_start: int, n_cols: int, **kwargs: Any) -> None:
        if not _untransformed(kwargs) or kwargs["HAS_ENTROPY_GRAD"] or not kwargs["HAS_LOGPROB_GRAD"]:
            return original(tile, tile_stride, targets, log_z, entropy, grad_logprobs, grad_entropy, vocab_start,
                            n_cols, **kwargs)
        # d(g * log p_target) / dz_j = g * (1[j = target] - p_j): the softmax times -g, then +g at the target
        p = tile.float().sub_(log_z.unsqueeze(-1)).exp_()
        p.mul_(grad_logprobs.neg().unsqueeze(-1))
        local = targets - vocab_start
        rows = ((local >= 0) & (local < n_cols)).nonzero().squeeze(-1)
        if rows.numel():
            p[rows, local[rows]] += grad_logprobs[rows]
        tile.copy_(p)

    backward_tile.ratingloop_lean = True  # type: ignore[attr-defined]
    backward_tile.original = original  # type: ignore[attr-defined]
    return backward_tile
