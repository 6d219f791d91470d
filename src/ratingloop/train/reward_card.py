"""Stage 5, train: a reward model's card (reward_model.json) and the figures it is judged by.

    write_card(out_dir, {"backbone": "embed", "objective": ..., "scale": ..., "sd": ..., "metrics": ...})
    card = read_card(out_dir)                         # RatingloopError when the folder is not a reward model
    mean = to_scale(raw, card["scale"])               # raw outputs -> the reward scale [-1, 1]

Both backbones write the card when they save and the scorer (scoring.py) reads it; the figures
(`regression_figures`, `pair_accuracy`, `thurstone_sd`) are one definition for training and evaluation.
What the fields mean: scoring.py's docstring. Consumers outside train/ import these from scoring.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ratingloop.errors import RatingloopError

CARD = "reward_model.json"


def read_card(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise RatingloopError(f"reward model {path}: no such folder; train one with "
                              "`ratingloop train --method reward --out DIR`")
    if not (path / CARD).is_file():
        what = ("a policy adapter or model" if (path / "adapter_config.json").is_file()
                or (path / "config.json").is_file() else "not a trained model")
        raise RatingloopError(f"reward model {path}: is {what}, not a reward model (no {CARD}); train one with "
                              "`ratingloop train --method reward --out DIR`")
    try:
        card = json.loads((path / CARD).read_text())
    except (OSError, ValueError) as e:
        raise RatingloopError(f"reward model {path}: {CARD} is unreadable ({e}); train the model again") from e
    if not isinstance(card, dict) or card.get("kind") != "reward_model" or card.get("backbone") not in ("base",
                                                                                                          "embed"):
        raise RatingloopError(f"reward model {path}: {CARD} does not describe a reward model of a known backbone "
                              "(base or embed); train the model again")
    return card


def write_card(path: Path, card: dict[str, Any]) -> None:
    (path / CARD).write_text(json.dumps({"kind": "reward_model"} | card, indent=2) + "\n")


def to_scale(raw: np.ndarray, scale: dict[str, Any]) -> np.ndarray:
    """Raw model outputs -> the reward scale [-1, 1] (see the module docstring)."""
    raw = np.asarray(raw, dtype=np.float64)
    if scale["map"] == "tanh":
        return np.tanh((raw - scale["center"]) / 2.0)
    return np.clip(raw, -1.0, 1.0)


# --- figures -------------------------------------------------------------------------------------

def regression_figures(pred: np.ndarray, target: np.ndarray, max_rows: int = 3000) -> dict[str, float | None]:
    """MSE, RMSE, Pearson, Spearman and pairwise accuracy of predicted vs target scores.

    Pairwise accuracy: over pairs of rows whose targets differ, the share ordered the same way by the
    predictions (a predicted tie counts half); above `max_rows` rows a fixed random sample of rows is used.
    """
    from scipy.stats import pearsonr, spearmanr

    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    err = pred - target
    out: dict[str, float | None] = {"mse": float(np.mean(err ** 2)), "rmse": float(np.sqrt(np.mean(err ** 2))),
                                    "pearson": None, "spearman": None, "pair_accuracy": None}
    if len(pred) >= 2 and np.ptp(pred) > 0 and np.ptp(target) > 0:
        out["pearson"] = float(pearsonr(pred, target)[0])
        out["spearman"] = float(spearmanr(pred, target)[0])
    if len(pred) > max_rows:
        keep = np.random.default_rng(0).choice(len(pred), max_rows, replace=False)
        pred, target = pred[keep], target[keep]
    i, j = np.triu_indices(len(pred), k=1)
    dt, dp = target[i] - target[j], pred[i] - pred[j]
    differ = np.abs(dt) > 1e-6
    if differ.any():
        hits = np.where(dp[differ] == 0, 0.5, (np.sign(dp[differ]) == np.sign(dt[differ])).astype(float))
        out["pair_accuracy"] = float(hits.mean())
    return out


def pair_accuracy(chosen: np.ndarray, rejected: np.ndarray) -> float | None:
    """Share of pairs where the chosen answer scores higher (a tie counts half); None without pairs."""
    margin = np.asarray(chosen, np.float64) - np.asarray(rejected, np.float64)
    if not len(margin):
        return None
    return float(np.where(margin == 0, 0.5, (margin > 0).astype(float)).mean())


def thurstone_sd(chosen: np.ndarray, rejected: np.ndarray) -> float:
    """The per-answer noise sd s (on the reward scale) under which P(chosen wins) = Phi(margin / (s * sqrt 2))
    best explains the held-out pairs - how far a score may be off, judged by the orders it gets wrong.

    Two pseudo-pairs at the median |margin|, one right and one wrong, keep a handful of all-correct
    pairs from claiming certainty; with many pairs they weigh nothing.
    """
    from scipy.optimize import minimize_scalar
    from scipy.stats import norm

    margin = np.asarray(chosen, np.float64) - np.asarray(rejected, np.float64)
    if not len(margin):
        return 1.0
    mid = float(np.median(np.abs(margin))) or 1e-3
    margin = np.concatenate([margin, [mid, -mid]])

    def nll(log_s: float) -> float:
        return float(-norm.logcdf(margin / (math.exp(log_s) * math.sqrt(2))).sum())

    best = minimize_scalar(nll, bounds=(math.log(1e-3), math.log(4.0)), method="bounded")
    return float(math.exp(best.x))
