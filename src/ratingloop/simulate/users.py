"""Simulation: a population of users who chat with a served model and rate it the way people do.

Each user weighs the hidden preferences of simulate/bank.py their own way (a Dirichlet draw), and
perceives an answer as ``p = scale * hidden + offset + noise``; they rate only some answers (their own
rate around the population's), with their habit (thumbs, stars, or both), sometimes an aspect, a
comment saying what was wrong, a correction of a wrong fact, or an implicit copy of a good answer.
Trolls: inverters (rate the opposite of what they perceive), random raters, floods (the worst mark on
everything), and a coordinated burst of new accounts that invert together. Everything is seeded.

    users = make_users(PopulationConfig(users=20, trolls=0.2, rate=0.3, seed=0))
    users[0].hidden(prompt, answer)          # the truth in [-1, 1]: what the simulation reports
    users[0].feedback(prompt, answer, rng)   # the /v1/feedback bodies this user sends (maybe none)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ratingloop.errors import RatingloopError
from ratingloop.simulate.bank import PREFERENCES, BankPrompt, preference_scores

TROLLS = ("inverter", "random", "flood", "coordinated")
COMPLAINTS = {"direct": "it did not answer the question directly", "concise": "too long",
              "correct": "the answer is wrong", "friendly": "the tone was rude", "helpful": "it refused to help"}


@dataclass(frozen=True)
class PopulationConfig:
    users: int = 20
    trolls: float = 0.0  # the share of users who troll
    rate: float = 0.3  # the mean share of answers a user rates
    seed: int = 0
    # what the population wants: preference -> weight (bank.PREFERENCES); each user's weights scatter around
    # it (a Dirichlet with this mean); None: every preference alike, each user their own mix
    preferences: dict[str, float] | None = None

    def check(self) -> None:
        problems = []
        if self.users < 1:
            problems.append(f"--users {self.users}: at least 1")
        if not 0 <= self.trolls < 1:
            problems.append(f"--trolls {self.trolls}: a share in [0, 1)")
        if not 0 < self.rate <= 1:
            problems.append(f"--rate {self.rate}: a share in (0, 1]")
        unknown = set(self.preferences or {}) - set(PREFERENCES)
        if unknown:
            problems.append(f"preferences {sorted(unknown)}: not among {', '.join(PREFERENCES)}")
        if self.preferences is not None and not sum(self.preferences.values()) > 0:
            problems.append("preferences: the weights must add up to more than 0")
        if problems:
            raise RatingloopError("; ".join(problems))


@dataclass(frozen=True)
class SimUser:
    id: str
    weights: dict[str, float]
    offset: float
    scale: float
    noise: float
    habit: str  # thumbs | stars | mixed
    rate: float
    troll: str  # none | inverter | random | flood | coordinated
    comments: float  # chance of saying what was wrong with an answer they disliked
    corrects: float  # chance of giving the right answer to a fact they saw answered wrongly
    aspects: float  # chance of also rating accuracy

    def hidden(self, prompt: BankPrompt, answer: str) -> float:
        """What this user truly thinks of the answer, in [-1, 1]: their weighted preferences (`correct`
        counts only on fact questions)."""
        scores = preference_scores(prompt, answer)
        weights = {k: w for k, w in self.weights.items() if k != "correct" or prompt.answers}
        total = sum(weights.values())
        return float(sum(w * scores[k] for k, w in weights.items()) / total)

    def perceived(self, prompt: BankPrompt, answer: str, rng: np.random.Generator) -> float:
        p = self.scale * self.hidden(prompt, answer) + self.offset + self.noise * rng.standard_normal()
        if self.troll in ("inverter", "coordinated"):
            return -p
        if self.troll == "random":
            return float(rng.uniform(-1, 1))
        if self.troll == "flood":
            return -1.0
        return float(p)

    def feedback(self, prompt: BankPrompt, answer: str, rng: np.random.Generator) -> list[dict[str, Any]]:
        """The ratings this user gives the answer (rater id and interaction are the token's)."""
        if rng.random() >= self.rate:
            return []
        p = self.perceived(prompt, answer, rng)
        kind = self.habit if self.habit != "mixed" else ("thumbs", "stars")[int(rng.integers(2))]
        out: list[dict[str, Any]] = [{"kind": "thumbs", "value": 1 if p > 0 else -1} if kind == "thumbs" else
                                     {"kind": "stars", "value": _stars(p), "scale": [1, 5]}]
        if self.troll != "none":
            return out
        scores = preference_scores(prompt, answer)
        if prompt.answers and rng.random() < self.aspects:
            out.append({"kind": "aspect", "aspect": "accuracy", "value": 5 if scores["correct"] > 0 else 1,
                        "scale": [1, 5]})
        if p < 0 and rng.random() < self.comments:
            worst = min((k for k in self.weights if k != "correct" or prompt.answers), key=lambda k: scores[k])
            out.append({"kind": "comment", "text": f"Not great: {COMPLAINTS[worst]}."})
        if prompt.answers and scores["correct"] < 0 and rng.random() < self.corrects:
            out.append({"kind": "correction", "text": f"{prompt.answers[0].capitalize()}."})
        if p > 0.5 and rng.random() < 0.2:
            out.append({"kind": "implicit", "signal": "copy"})
        return out


def _stars(p: float) -> int:
    return int(np.clip(round(3 + 2 * p), 1, 5))


def make_users(cfg: PopulationConfig) -> list[SimUser]:
    """The population: honest users first (ids sim-u...), then the trolls (sim-t... ; a coordinated burst
    shares one id prefix, as accounts created together do)."""
    cfg.check()
    rng = np.random.default_rng(cfg.seed)
    n_trolls = int(round(cfg.trolls * cfg.users))
    if cfg.preferences is None:
        alpha = np.ones(len(PREFERENCES))
    else:  # concentrated around the population's mean: users agree on what matters, not exactly how much
        total = sum(cfg.preferences.values())
        alpha = 20 * np.array([cfg.preferences.get(k, 0) / total for k in PREFERENCES]) + 0.05
    users = []
    for i in range(cfg.users):
        troll = "none" if i < cfg.users - n_trolls else TROLLS[(i - (cfg.users - n_trolls)) % len(TROLLS)]
        weights = dict(zip(PREFERENCES, rng.dirichlet(alpha), strict=True))
        own = rng.beta(2, 2 / cfg.rate - 2) if cfg.rate < 1 else 1.0  # around the population's rate
        rate = 1.0 if troll in ("flood", "coordinated") else float(np.clip(own, 0.02, 1))
        prefix = "sim-u" if troll == "none" else "sim-burst" if troll == "coordinated" else "sim-t"
        users.append(SimUser(
            id=f"{prefix}{cfg.seed}-{i}", weights={k: float(w) for k, w in weights.items()},
            offset=float(rng.normal(0, 0.2)), scale=float(np.exp(rng.normal(np.log(0.8), 0.25))),
            noise=float(rng.uniform(0.05, 0.3)), habit=("thumbs", "stars", "mixed")[int(rng.integers(3))],
            rate=rate, troll=troll, comments=float(rng.uniform(0, 0.5)), corrects=float(rng.uniform(0, 0.5)),
            aspects=float(rng.uniform(0, 0.4))))
    return users
