"""Stage 5, train: the `wsft` recipe - rating-weighted SFT: good answers pulled up, bad ones pushed down, by rating.

    ratingloop train --method wsft --out runs/wsft-1        # or train(engine, "wsft", out_dir=...)

Reads the `weighted` build format: (prompt, completion, weight), weight = reward * confidence in [-1, 1].
Per row, with nll = the completion's mean token negative log-likelihood and r = its mean per-token
log-ratio log pi(y|x) - log pi_ref(y|x) against the base (the adapter disabled; a frozen copy under
train.lora=false):

    weight > 0:   weight * nll                                       SFT, scaled by how good and how sure
    weight < 0:  |weight| * 2m * softplus(r / m)                     a bounded push-down, m = train.wsft_margin

The push-down is NPO's loss (Zhang et al. 2024, "Negative Preference Optimization", arXiv:2404.05868) per
token: while the answer is as likely as under the base its gradient is exactly SFT's reversed (the
unlikelihood direction of Welleck et al. 2019, applied to a whole answer), and it fades as the answer
drops below the base - to 54% of that at m nats per token below, 10% at 3m - so, unlike gradient ascent
on the NLL, it cannot run the answer's probability (and the model with it) to zero. The loss is bounded
below by 0.

The batch loss is sum_i |w_i| * term_i / (batch size * mean |w| over the train split): a batch of typical
weights then steps like SFT at the same learning rate, while a batch of weak, unsure rows steps less.
Logged per step: `wsft/nll` (mean NLL of the rows pulled up), `wsft/log_ratio` (mean per-token log-ratio
of the rows pushed down).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ratingloop.errors import RatingloopError
from ratingloop.train.config import TrainConfig
from ratingloop.train.data import TrainData

if TYPE_CHECKING:
    from ratingloop.train.pointwise import Sequences

log = logging.getLogger(__name__)


def wsft_loss(mean_logps: Tensor, mean_ref_logps: Tensor, weights: Tensor, margin: float,
              weight_scale: float) -> Tensor:
    """The weighted loss of a batch; `mean_logps` are per-token means over each completion, per row ([B])."""
    nll = -mean_logps
    push = 2 * margin * F.softplus((mean_logps - mean_ref_logps) / margin)
    zero = torch.zeros_like(nll)
    term = torch.where(weights > 0, nll, torch.where(weights < 0, push, zero))
    return (weights.abs() * term).sum() / (len(weights) * weight_scale)


@dataclass
class WeightedObjective:
    margin: float
    weight_scale: float  # mean |weight| over the train split
    needs_reference: bool  # any negative weight in the train split
    column: str = "weight"
    wants_features: bool = False
    heads: dict[str, nn.Module] = field(default_factory=dict)
    head_learning_rate: float = 0.0

    def reference_rows(self, target: Tensor) -> Tensor:
        return target < 0

    def __call__(self, seq: Sequences) -> tuple[Tensor, dict[str, float]]:
        mean_logps = seq.logps.float() / seq.tokens
        mean_ref = seq.ref_logps / seq.tokens
        w = seq.target.float()
        loss = wsft_loss(mean_logps, mean_ref, w, self.margin, self.weight_scale)
        figures = {}
        if bool((w > 0).any()):
            figures["wsft/nll"] = float(-mean_logps[w > 0].detach().mean())
        if bool((w < 0).any()):
            figures["wsft/log_ratio"] = float((mean_logps - mean_ref)[w < 0].detach().mean())
        return loss, figures


def check_weights(data: TrainData) -> list[float]:
    """The train split's weights; stops when they are unusable or all zero."""
    weights = [float(w) for w in data.train["weight"]]
    bad = [w for w in weights if not (math.isfinite(w) and -1.0 <= w <= 1.0)]
    if bad:
        raise RatingloopError(f"--data {data.data_dir}: {len(bad)} train rows have a weight outside [-1, 1] (e.g. "
                              f"{bad[0]}); rebuild it with `ratingloop build --format weighted`")
    if not any(weights):
        raise RatingloopError(f"wsft: all {len(weights)} train rows have weight 0, so there is nothing to learn; "
                              "collect more ratings (weights are reward * confidence), or lower "
                              "build.weighted_min_abs")
    if not any(w > 0 for w in weights):
        log.warning("wsft: no train row has a positive weight; training only pushes answers down")
    return weights


def make_trainer(model: Any, tokenizer: Any, data: TrainData, cfg: TrainConfig, out_dir: Path,
                 progress: bool) -> Any:
    from ratingloop.train.pointwise import pointwise_trainer

    weights = check_weights(data)
    scale = sum(abs(w) for w in weights) / len(weights)
    n_neg = sum(w < 0 for w in weights)
    log.info("wsft: %d train rows, %d pulled up, %d pushed down, mean |weight| %.3f, margin %s nats/token",
             len(weights), sum(w > 0 for w in weights), n_neg, scale, cfg.wsft_margin)
    objective = WeightedObjective(margin=cfg.wsft_margin, weight_scale=scale, needs_reference=n_neg > 0)
    return pointwise_trainer(model, tokenizer, data, cfg, out_dir, progress, objective)


def metrics(trainer: Any) -> dict[str, float]:
    from ratingloop.train.pointwise import last_logged

    return last_logged(trainer, "wsft/") | {"wsft_margin": float(trainer.objective.margin)}
