"""Stage 5, train: the fast reward model - a linear head on frozen all-MiniLM-L6-v2 embeddings.

    x = embed_pairs(encoder(), prompts, answers)                 # ratingloop.models.embed
    model = fit_scores(x, scores)                                 # BayesianRidge: mean and predictive sd
    model = fit_pairs(x_chosen, x_rejected)                       # Bradley-Terry: logistic regression on x_c - x_r
    model.save_pretrained(out_dir); EmbedRewardModel.load(out_dir).score(prompts, answers)

Seconds on a CPU, and honest where ratings are sparse: BayesianRidge tunes its own regularisation by
evidence and says how unsure it is per answer (its predictive sd grows away from the training data);
the logistic regression picks its regularisation by cross-validation on the training pairs.

`train --method reward` with train.reward_backbone=embed drives it through `EmbedFit`, which answers the
few calls run.py makes of a transformers Trainer (train, evaluate, state, model.save_pretrained). The
folder holds head.safetensors (plain arrays, no pickle) and reward_model.json (reward_card.CARD).
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator, Sequence

import numpy as np

from ratingloop.errors import RatingloopError
from ratingloop.models.embed import default_cache, embed_pairs, encoder
from ratingloop.train.reward_card import (
    pair_accuracy,
    read_card,
    regression_figures,
    thurstone_sd,
    to_scale,
    write_card,
)
from ratingloop.train.reward_examples import PAIRS, REGRESSION, Pairs, Prompt, Scored, as_messages

log = logging.getLogger(__name__)

HEAD = "head.safetensors"
ENCODER = "all-MiniLM-L6-v2"
MIN_CV_PAIRS = 20  # fewer pairs than this: no cross-validation, C = 1


@dataclass
class EmbedRewardModel:
    """raw(x) = x @ coef + intercept; for regression also the posterior covariance behind the predictive sd."""
    objective: str
    coef: np.ndarray
    intercept: float = 0.0
    x_offset: np.ndarray | None = None  # regression: the training mean of x (BayesianRidge centres x)
    sigma: np.ndarray | None = None  # regression: the posterior covariance of coef
    noise_var: float = 0.0  # regression: 1 / alpha, the score noise BayesianRidge estimated
    card: dict[str, Any] = field(default_factory=dict)  # scale, sd, figures: what reward_model.json holds
    device: str | None = None
    iterations: int = 0  # the solver's iterations in the fit (not saved)

    def raw(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float64) @ self.coef + self.intercept

    def predictive_sd(self, x: np.ndarray) -> np.ndarray:
        """BayesianRidge's predictive sd (sklearn's formula, from the stored arrays)."""
        assert self.sigma is not None and self.x_offset is not None
        centred = np.asarray(x, np.float64) - self.x_offset
        return np.sqrt(np.einsum("ij,ij->i", centred @ self.sigma, centred) + self.noise_var)

    def score_x(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean in [-1, 1], sd) for embedded (prompt, answer) rows."""
        mean = to_scale(self.raw(x), self.card["scale"])
        if self.objective == REGRESSION and self.card["sd"]["kind"] == "predictive":
            return mean, self.predictive_sd(x)
        return mean, np.full(len(mean), float(self.card["sd"]["value"]))

    def score(self, prompts: Sequence[Prompt], answers: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if len(prompts) != len(answers):
            raise ValueError(f"score: {len(prompts)} prompts but {len(answers)} answers")
        return self.score_x(embed_pairs(encoder(self.device), [as_messages(p) for p in prompts], list(answers)))

    def save_pretrained(self, path: str | Path) -> None:
        from safetensors.numpy import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        arrays = {"coef": self.coef, "intercept": np.asarray([self.intercept])}
        if self.sigma is not None and self.x_offset is not None:
            # float32 halves the file (5 MB at 1152 dims); the sd needs no more precision than that
            arrays |= {"sigma": self.sigma.astype(np.float32), "x_offset": self.x_offset,
                       "noise_var": np.asarray([self.noise_var])}
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path / HEAD))
        write_card(path, {"backbone": "embed", "objective": self.objective, "encoder": ENCODER,
                          "features": "[prompt, answer, prompt * answer] embeddings (models.embed.embed_pairs)"}
                   | self.card)

    @classmethod
    def load(cls, path: Path, device: str | None = None) -> EmbedRewardModel:
        from safetensors.numpy import load_file

        card = read_card(path)
        try:
            a = load_file(str(path / HEAD))
        except Exception as e:  # noqa: BLE001 - a missing or damaged file, reported with the folder
            raise RatingloopError(f"reward model {path}: cannot read {HEAD} ({type(e).__name__}: {e}); train the "
                                  "model again") from e
        sigma = a["sigma"].astype(np.float64) if "sigma" in a else None
        return cls(card["objective"], a["coef"], float(a["intercept"][0]), a.get("x_offset"), sigma,
                   float(a["noise_var"][0]) if "noise_var" in a else 0.0, card, device)


# --- fitting ---------------------------------------------------------------------------------------

def fit_scores(x: np.ndarray, scores: np.ndarray, max_iter: int = 300) -> EmbedRewardModel:
    """BayesianRidge on embedded rows -> a regression model clipped to [-1, 1], sd = its predictive sd.

    `max_iter` caps the evidence updates; the model's `iterations` says how many ran."""
    from sklearn.linear_model import BayesianRidge

    with _solver_warnings():
        br = BayesianRidge(max_iter=max_iter).fit(np.asarray(x, np.float64), np.asarray(scores, np.float64))
    return EmbedRewardModel(REGRESSION, br.coef_, float(br.intercept_), br.X_offset_, br.sigma_, 1.0 / br.alpha_,
                            card={"scale": {"map": "clip"}, "sd": {"kind": "predictive", "value": None}},
                            iterations=int(br.n_iter_))


def fit_pairs(x_chosen: np.ndarray, x_rejected: np.ndarray, seed: int = 0, max_iter: int = 2000) -> EmbedRewardModel:
    """Bradley-Terry: P(chosen beats rejected) = sigmoid(w @ (x_c - x_r)), a logistic regression without
    intercept. Half the pairs are presented flipped (label 0), so both classes exist; the logits are
    centred on the training answers' mean, which the tanh scale needs. `max_iter` caps the solver's
    iterations (per fold and C when cross-validating); the model's `iterations` says how many the final fit ran."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    diff = np.asarray(x_chosen, np.float64) - np.asarray(x_rejected, np.float64)
    if len(diff) < 2:
        raise RatingloopError(f"reward: {len(diff)} pair(s); Bradley-Terry needs at least 2")
    flip = np.zeros(len(diff), bool)
    flip[np.random.default_rng(seed).permutation(len(diff))[: len(diff) // 2]] = True
    diff[flip] *= -1
    label = (~flip).astype(int)
    if len(diff) >= MIN_CV_PAIRS:
        clf: Any = LogisticRegressionCV(Cs=10, cv=5, fit_intercept=False, scoring="neg_log_loss",
                                        max_iter=max_iter, l1_ratios=(0.0,), use_legacy_attributes=False)  # plain L2
    else:
        clf = LogisticRegression(C=1.0, fit_intercept=False, max_iter=max_iter)
    with _solver_warnings():
        clf.fit(diff, label)
    coef = clf.coef_[0].astype(np.float64)
    raw = np.concatenate([x_chosen @ coef, x_rejected @ coef])
    scale = {"map": "tanh", "center": float(raw.mean())}
    # until held-out pairs say better (EmbedFit), the sd is the spread of the training answers' scores
    spread = float(np.std(to_scale(raw, scale)))
    return EmbedRewardModel(PAIRS, coef, card={"scale": scale, "sd": {"kind": "train_spread", "value": spread}},
                            iterations=int(np.max(clf.n_iter_)))


@contextlib.contextmanager
def _solver_warnings() -> Iterator[None]:
    """sklearn's ConvergenceWarning (a fit stopped at its iteration cap, e.g. train.max_steps) as one log line."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        yield
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            log.warning("reward (embed): the fit stopped at its iteration cap before converging: %s", w.message)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


# --- the trainer run.py drives ---------------------------------------------------------------------

@dataclass
class _State:
    log_history: list[dict[str, Any]] = field(default_factory=list)
    global_step: int = 0
    num_input_tokens_seen: int = 0


class EmbedFit:
    """One closed-form fit, shaped like the transformers Trainer for the calls run.py makes.

    Its steps are the solver's iterations, which train.max_steps caps (-1: the solver's own cap, run to
    convergence): the log holds the loss before the fit (step 0: the train mean for scores, ln 2 for pairs)
    and after it (at the iterations run), callbacks are kept but never called, and nothing is checkpointed
    (a fit takes seconds; a failed one is simply run again).
    """

    def __init__(self, enc: Any, train: Scored | Pairs, eval_: Scored | Pairs | None, progress: bool,
                 max_steps: int = -1):
        self.encoder, self.train_x, self.eval_x, self.progress = enc, train, eval_, progress
        self.max_steps = max_steps
        self.model: EmbedRewardModel | None = None  # set by train()
        self.state = _State()
        self.args = SimpleNamespace(world_size=1)  # the TrainingArguments fields run.py reads
        self.callbacks: list[Any] = []
        self.heldout: dict[str, Any] = {}

    def add_callback(self, callback: Any) -> None:
        self.callbacks.append(callback)

    def train(self, resume_from_checkpoint: str | None = None) -> Any:
        from transformers.trainer_utils import TrainOutput

        start = time.perf_counter()
        model, before, after = self._fit()
        model.card |= {"train_rows": len(self.train_x.prompts),
                       "eval_rows": len(self.eval_x.prompts) if self.eval_x else 0}
        self._measure(model)
        self.model = model
        runtime = time.perf_counter() - start
        steps = max(model.iterations, 1)
        self.state.log_history = [{"step": 0, "loss": before},
                                  {"step": steps, "loss": after, "train_runtime": runtime}]
        self.state.global_step = steps
        return TrainOutput(steps, after, {"train_runtime": runtime, "train_loss": after})

    def evaluate(self) -> dict[str, float]:
        return {k: v for k, v in self.heldout.items() if k.startswith("eval_")}

    def _embed(self, x: Scored | Pairs) -> tuple[np.ndarray, ...]:
        if isinstance(x, Scored):
            return (embed_pairs(self.encoder, x.prompts, x.answers(), progress=self.progress, cache=default_cache()),)
        both = embed_pairs(self.encoder, x.prompts + x.prompts, [m[-1]["content"] for m in x.chosen + x.rejected],
                           progress=self.progress, cache=default_cache())
        return both[:len(x.prompts)], both[len(x.prompts):]

    def _fit(self) -> tuple[EmbedRewardModel, float, float]:
        """The fitted head, and its train loss before (a constant) and after the fit."""
        if isinstance(self.train_x, Scored):
            [x] = self._embed(self.train_x)
            y = self.train_x.scores
            model = fit_scores(x, y, **self._cap())
            return model, float(np.var(y)), float(np.mean((np.clip(model.raw(x), -1, 1) - y) ** 2))
        xc, xr = self._embed(self.train_x)
        model = fit_pairs(xc, xr, **self._cap())
        margin = model.raw(xc) - model.raw(xr)
        return model, float(np.log(2)), float(np.mean(np.logaddexp(0, -margin)))

    def _cap(self) -> dict[str, int]:
        return {"max_iter": self.max_steps} if self.max_steps > 0 else {}

    def _measure(self, model: EmbedRewardModel) -> None:
        """Held-out figures into the card and `heldout`, as run.py's metrics expect them (eval_*)."""
        figures: dict[str, Any] = {}
        if isinstance(self.eval_x, Scored):
            [x] = self._embed(self.eval_x)
            mean, sd = model.score_x(x)
            figures = regression_figures(mean, self.eval_x.scores) | {"mean_sd": float(sd.mean())}
        elif isinstance(self.eval_x, Pairs):
            xc, xr = self._embed(self.eval_x)
            (chosen, _), (rejected, _) = model.score_x(xc), model.score_x(xr)
            figures = {"pair_accuracy": pair_accuracy(chosen, rejected)}
            model.card["sd"] = {"kind": "heldout_thurstone", "value": thurstone_sd(chosen, rejected)}
        model.card["metrics"] = {k: v for k, v in figures.items() if v is not None}
        self.heldout = {f"eval_{k}": v for k, v in model.card["metrics"].items()}
        if model.card["sd"]["value"] is not None:
            self.heldout["reward_sd"] = model.card["sd"]["value"]
