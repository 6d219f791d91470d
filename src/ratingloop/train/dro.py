"""Stage 5, train: the `dro` recipe - Direct Reward Optimisation (Richemond et al. 2024, arXiv:2405.19107).

    ratingloop train --method dro --out runs/dro-1          # or train(engine, "dro", out_dir=...)

Learns offline from what was served and rated: (prompt x, logged answer y, reward r in [-1, 1]), the
`reward` build format. The KL-regularised objective max E[r] - tau * KL(pi || pi_ref) has the optimum
pi*(y|x) = pi_ref(y|x) exp(r(x,y)/tau) / Z(x), which rearranges into r(x,y) - V*(x) = tau * log(pi*/pi_ref)
with V*(x) = tau * log Z(x). DRO fits a policy pi_theta and a value V_phi to that identity by least squares,

    L(theta, phi) = 1/2 * E_(x,y,r)~data [(r - V_phi(x) - tau * log(pi_theta(y|x) / pi_ref(y|x)))^2],

whose unique minimum, for any logging policy that covers the answers, is (pi*, V*) (the paper's Theorem 1).
As in the paper's DRO-V algorithm, the two parts step on their own gradients: the policy on
-(r - V) grad log pi + tau/2 grad (log pi/pi_ref)^2 with V held fixed (dL/dtheta divided by tau, so the
learning rate does not shrink with tau), the value on dL/dphi with the log-ratio held fixed. tau is
train.beta.

Here pi_theta is LoRA on the base and pi_ref the base itself (the adapter disabled; a frozen copy under
train.lora=false). V_phi is a linear head on the reference's final hidden state at the last prompt token -
frozen features of the prompt alone, so the value is a function of x and its gradient never reaches the
policy - trained at train.value_learning_rate, its bias starting at the mean reward. The head is saved as
OUT/value_head.safetensors and in every checkpoint. Logged per step: `loss` (L itself), `dro/value` (mean
V), `dro/log_ratio` (mean log pi/pi_ref, summed over the answer's tokens), `dro/reward`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ratingloop.errors import ConfigError, RatingloopError
from ratingloop.train.config import TrainConfig
from ratingloop.train.data import TrainData

if TYPE_CHECKING:
    from ratingloop.train.pointwise import Sequences

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DROLoss:
    loss: Tensor  # to backpropagate: its value is `objective`, its gradients are DRO-V's policy and value steps
    objective: Tensor  # L(theta, phi), the mean squared residual / 2
    log_ratio: Tensor  # [B] log pi/pi_ref, detached
    values: Tensor  # [B] V(x), detached


def dro_loss(policy_logps: Tensor, ref_logps: Tensor, values: Tensor, rewards: Tensor, tau: float) -> DROLoss:
    """The DRO loss on a batch of (x, y, r): every argument is per row ([B]); `ref_logps` carry no gradient."""
    log_ratio = policy_logps - ref_logps
    objective = 0.5 * (rewards - values - tau * log_ratio).pow(2).mean()
    advantage = (rewards - values).detach()
    policy = -advantage * policy_logps + 0.5 * tau * log_ratio.pow(2)  # dL/dtheta / tau, V fixed
    value = 0.5 * (rewards - values - tau * log_ratio.detach()).pow(2)  # dL/dphi, the log-ratio fixed
    surrogate = (policy + value).mean()
    # report L while stepping on the surrogate's gradients
    loss = surrogate - surrogate.detach() + objective.detach()
    return DROLoss(loss, objective.detach(), log_ratio.detach(), values.detach())


@dataclass
class DROObjective:
    """dro_loss on the trainer's batches; the value head reads the reference's last-prompt-token state."""

    tau: float
    value_head: nn.Linear
    head_learning_rate: float
    column: str = "score"
    needs_reference: bool = True
    wants_features: bool = True
    heads: dict[str, nn.Module] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.heads = {"value_head": self.value_head}

    def reference_rows(self, target: Tensor) -> Tensor:
        return torch.ones_like(target, dtype=torch.bool)

    def __call__(self, seq: Sequences) -> tuple[Tensor, dict[str, float]]:
        features = seq.features
        assert features is not None, "wants_features asks the trainer for them"
        with torch.autocast(features.device.type, enabled=False):  # a scalar regression: keep it in fp32
            values = self.value_head(features.float()).squeeze(-1)
        out = dro_loss(seq.logps.float(), seq.ref_logps, values, seq.target.float(), self.tau)
        return out.loss, {"dro/value": float(out.values.mean()), "dro/log_ratio": float(out.log_ratio.mean()),
                          "dro/reward": float(seq.target.mean())}


def value_head(hidden_size: int, mean_reward: float) -> nn.Linear:
    """V(x) = w . h(x) + b, starting from the mean reward everywhere (w = 0)."""
    head = nn.Linear(hidden_size, 1)
    nn.init.zeros_(head.weight)
    nn.init.constant_(head.bias, mean_reward)
    return head


def check_scores(data: TrainData) -> list[float]:
    """The train split's rewards; stops when they cannot teach anything."""
    scores = [float(s) for s in data.train["score"]]
    bad = [s for s in scores if not -1.0 <= s <= 1.0]
    if bad:
        raise RatingloopError(f"--data {data.data_dir}: {len(bad)} train rows have a score outside [-1, 1] (e.g. "
                              f"{bad[0]}); rebuild it with `ratingloop build --format reward`")
    if max(scores) - min(scores) < 1e-6:
        raise RatingloopError(f"dro: every one of the {len(scores)} train rows has the score {scores[0]:+.4f}; DRO "
                              "learns from differences in reward (with one reward everywhere the optimum is the base "
                              "itself) - collect ratings that tell answers apart, or train --method sft")
    return scores


def make_trainer(model: Any, tokenizer: Any, data: TrainData, cfg: TrainConfig, out_dir: Path,
                 progress: bool) -> Any:
    from ratingloop.train.pointwise import pointwise_trainer

    if cfg.beta <= 0:
        raise ConfigError(f"train.beta={cfg.beta}: DRO's tau must be > 0 (it keeps the policy near the base and "
                          "sets how sharply rewards tilt it); try 0.1")
    scores = check_scores(data)
    mean = sum(scores) / len(scores)
    log.info("dro: %d train rows, rewards %.3f..%.3f (mean %.3f), tau=%s", len(scores), min(scores), max(scores),
             mean, cfg.beta)
    head = value_head(model.config.get_text_config().hidden_size, mean)
    objective = DROObjective(tau=cfg.beta, value_head=head, head_learning_rate=cfg.value_learning_rate)
    return pointwise_trainer(model, tokenizer, data, cfg, out_dir, progress, objective)


def metrics(trainer: Any) -> dict[str, float]:
    from ratingloop.train.pointwise import last_logged

    return last_logged(trainer, "dro/") | {"beta": float(trainer.objective.tau)}
