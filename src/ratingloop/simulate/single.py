"""Simulation: the realistic single-rated regime — every answer rated once, by the person who asked it,
or not at all — as `ratingloop import` lines whose users rate a hidden preference of the text.

What a new deployment sees: a few hundred answers, each asked by one user; most users rate their own
answer once (thumbs or 1-5 stars), each with their own leniency (offset) and noise, some rate the
opposite of what they mean (inverting trolls), and some answers are never rated. What the users want
is a hidden grader (`simulate.graders`, named in every interaction's ``tags["simulated"]["grader"]``)
that scores the answer's text in [-1, 1]; evaluation scores held-out answers with the same grader.

Reads (prompt, answer) pairs from any source: `support_answers` (bundled, support-desk questions with
answers of 1-7 sentences) or your own (bench/loop.py: real OASST questions, replies cut to various
lengths by `cut_variants`). Writes nothing; `single_rated` returns the lines and the truth behind them.

    prompts, answers = support_answers(300, seed=0)
    world = single_rated(prompts, answers, AskerConfig(invert_frac=0.2, unrated_frac=0.2))
    import_lines(engine, world.lines, Limits(), user_key=settings.feedback_secret())
    world.score       # each interaction's hidden score; world.inverting: which askers invert
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

import numpy as np
import orjson

from ratingloop.errors import ConfigError
from ratingloop.simulate.graders import GRADERS, Messages, grader_for
from ratingloop.simulate.texts import POLITE, TOPICS, _fill, _pick


@dataclass(frozen=True)
class AskerConfig:
    """Who asks and how they rate. Rating units are rewards: [-1, 1] spans the whole star scale."""

    n_askers: int = 40
    invert_frac: float = 0.2  # share of askers who rate the hidden preference upside down
    unrated_frac: float = 0.2  # share of interactions nobody rates
    thumbs_frac: float = 0.4  # askers who rate with thumbs; the others give 1-5 stars
    scale: float = 0.8  # how far the hidden score (in [-1, 1]) moves an honest asker's perception
    offset_sd: float = 0.35  # lenient (+) / harsh (-) askers
    noise_sd: float = 0.3  # per-rating noise
    activity_sigma: float = 0.8  # log-sd of how many questions each asker asks
    grader: str = "concise"
    seed: int = 0

    def validate(self) -> None:
        problems = []
        for key in ("invert_frac", "unrated_frac", "thumbs_frac"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                problems.append(f"{key}={getattr(self, key)} must lie in [0, 1]")
        if self.n_askers < 1:
            problems.append(f"n_askers={self.n_askers} must be >= 1")
        if self.grader not in GRADERS:
            problems.append(f"grader={self.grader!r} must be one of {', '.join(GRADERS)}")
        if problems:
            raise ConfigError("simulated askers: " + "; ".join(problems))


@dataclass(frozen=True)
class SingleRatedWorld:
    """The import lines and the truth behind them, indexed by interaction (or, for askers, by asker)."""

    lines: list[bytes]
    ids: list[str]  # interaction ids, "sim-000000", ...
    score: np.ndarray  # float (n,): the hidden grader's score of each answer
    asker: np.ndarray  # int (n,): who asked
    rated: np.ndarray  # bool (n,)
    value: np.ndarray  # float (n,): thumbs -1/+1 or stars 1-5; nan where unrated
    thumbs: np.ndarray  # bool (n,): the rating is a thumbs
    inverting: np.ndarray  # bool (n_askers,)
    offset: np.ndarray  # float (n_askers,)

    def naive_label(self) -> np.ndarray:
        """What a naive pipeline reads from each rating: thumbs up or >= 4 stars is good (nan: unrated)."""
        good = np.where(self.thumbs, self.value > 0, self.value >= 4)
        return np.where(self.rated, good.astype(float), np.nan)


def single_rated(prompts: Sequence[Messages], answers: Sequence[str], cfg: AskerConfig = AskerConfig()
                 ) -> SingleRatedWorld:
    """One interaction per (prompt, answer); each asked by one asker (busier askers ask more) who rates it
    once, unless it falls in the unrated share. Deterministic for `cfg.seed`."""
    cfg.validate()
    if len(prompts) != len(answers):
        raise ConfigError(f"single_rated: {len(prompts)} prompts but {len(answers)} answers; give one answer each")
    rng = np.random.default_rng(cfg.seed)
    n, m = len(answers), cfg.n_askers
    grader = grader_for({"simulated": {"grader": cfg.grader}})
    assert grader is not None  # validate() checked the name
    score = np.asarray([grader.score(p, a) for p, a in zip(prompts, answers, strict=True)], float)

    inverting = np.zeros(m, bool)
    inverting[rng.choice(m, int(round(cfg.invert_frac * m)), replace=False)] = True
    offset = cfg.offset_sd * rng.standard_normal(m)
    uses_thumbs = rng.random(m) < cfg.thumbs_frac
    activity = np.exp(cfg.activity_sigma * rng.standard_normal(m))
    asker = rng.choice(m, n, p=activity / activity.sum())
    rated = rng.random(n) >= cfg.unrated_frac

    signal = cfg.scale * np.where(inverting[asker], -score, score)
    perceived = signal + offset[asker] + cfg.noise_sd * rng.standard_normal(n)
    thumbs = uses_thumbs[asker]
    value = np.where(thumbs, np.where(perceived > 0, 1.0, -1.0), np.clip(np.rint(3.0 + 2.0 * perceived), 1, 5))
    value = np.where(rated, value, np.nan)

    ids = [f"sim-{i:06d}" for i in range(n)]
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    lines = []
    for i in range(n):
        at = start + timedelta(minutes=2 * i)
        ratings: list[dict[str, Any]] = []
        if rated[i]:
            rating: dict[str, Any] = {"rater_id": f"u{int(asker[i]):05d}", "source": "simulated",
                                      "kind": "thumbs" if thumbs[i] else "stars", "value": int(value[i]),
                                      "created_at": (at + timedelta(minutes=1)).isoformat()}
            if not thumbs[i]:
                rating["scale"] = [1, 5]
            ratings.append(rating)
        lines.append(orjson.dumps({
            "id": ids[i], "messages": list(prompts[i]), "response": answers[i], "user_id": f"u{int(asker[i]):05d}",
            "model": "sim", "created_at": at.isoformat(), "tags": {"simulated": {"grader": cfg.grader}},
            "ratings": ratings}))
    return SingleRatedWorld(lines, ids, score, asker, rated, value, thumbs, inverting, offset)


# --- answer sources ------------------------------------------------------------------------------------
def cut_variants(reply: str, rng: np.random.Generator, n: int = 2, min_words: int = 6,
                 max_words: int = 140) -> list[str]:
    """`n` distinct answers cut from one reply at sentence ends, at lengths drawn log-uniformly between
    `min_words` and `max_words`: the same content, concise or long (what the `concise` grader tells apart)."""
    sentences = [s for s in re.split(r"(?<=[.!?])\s+|\n+", reply.strip()) if s.strip()]
    cuts, out = [], []
    words = 0
    for s in sentences:
        words += len(s.split())
        cuts.append(words)
    for _ in range(4 * n):
        target = float(np.exp(rng.uniform(np.log(min_words), np.log(max_words))))
        k = int(np.argmin([abs(c - target) for c in cuts])) + 1
        text = " ".join(" ".join(sentences[:k]).split()[:max_words])
        if text not in out:
            out.append(text)
        if len(out) == n:
            break
    return out


def support_answers(n: int, seed: int = 0) -> tuple[list[list[dict[str, str]]], list[str]]:
    """`n` bundled support-desk questions, each with an answer of 1-7 sentences (correct ones, with
    courtesy phrases in between): short ones are what concise users want."""
    rng = np.random.default_rng(seed)
    names = tuple(TOPICS)
    prompts, answers = [], []
    for _ in range(n):
        questions, good, _ = TOPICS[names[int(rng.integers(len(names)))]]
        prompts.append([{"role": "user", "content": _fill(questions[int(rng.integers(len(questions)))], rng)}])
        k = int(rng.integers(1, 8))
        parts = [_pick(good if j % 2 == 0 else POLITE, rng) for j in range(k)]
        answers.append(" ".join(parts))
    return prompts, answers
