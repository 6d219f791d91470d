"""Simulation: users in groups whose hidden preferences oppose (concise vs thorough answers, say), each asking
support questions and rating the answers they got: what `ratingloop.personal` must tell apart as cohorts.

Each user belongs to one group; a group is a hidden grader (`simulate.graders`: concise, thorough, direct) and
a share of the users. A user asks `min_answers`..`max_answers` support questions and rates every answer once,
thumbs or 1-5 stars, with their own leniency and noise. An answer has 1-9 correct sentences (short to long);
in `wrong_frac` of them one sentence is false. What a user perceives is
``scale * ((1 - accuracy_weight) * grader + accuracy_weight * correct) + offset + noise``: everyone dislikes a
wrong answer, the groups differ in what else they want. Now and then (`aspect_frac`) a user also rates the
answer's accuracy (an aspect, 1-5). Writes nothing; `grouped_users` returns `ratingloop import` lines and the
truth behind them.

    world = grouped_users(GroupsConfig(groups=(("concise", 0.7), ("thorough", 0.3)), n_users=60))
    import_lines(engine, world.lines, Limits(), user_key=settings.feedback_secret())
    world.group_of        # user id -> the index of their group in cfg.groups
    fresh_questions(48)   # support questions no simulated user drew: held out, to score what a version answers
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import orjson

from ratingloop.errors import ConfigError
from ratingloop.simulate.graders import GRADERS, Grader
from ratingloop.simulate.texts import POLITE, TOPICS, _fill, _pick


@dataclass(frozen=True)
class GroupsConfig:
    """Who is in which group and how they rate. Rating units are rewards: [-1, 1] spans the star scale."""

    groups: tuple[tuple[str, float], ...] = (("concise", 0.7), ("thorough", 0.3))  # (grader, share of users)
    n_users: int = 60
    min_answers: int = 10  # each user asks and rates between these many answers
    max_answers: int = 20
    thumbs_frac: float = 0.4  # users who rate with thumbs; the others give 1-5 stars
    aspect_frac: float = 0.3  # share of answers whose accuracy the user also rates
    wrong_frac: float = 0.25  # share of answers with one false sentence
    accuracy_weight: float = 0.3  # how much a wrong answer counts against the group's own taste
    scale: float = 0.8
    offset_sd: float = 0.3  # lenient (+) / harsh (-) users
    noise_sd: float = 0.25  # per rating
    seed: int = 0

    def validate(self) -> None:
        problems = [f"groups: {name!r} is not a grader ({', '.join(GRADERS)})" for name, _ in self.groups
                    if name not in GRADERS]
        if not self.groups or any(share <= 0 for _, share in self.groups):
            problems.append("groups: give at least one (grader, share) with shares above 0")
        if not 1 <= self.min_answers <= self.max_answers:
            problems.append(f"min_answers={self.min_answers}, max_answers={self.max_answers}: need 1 <= min <= max")
        for key in ("thumbs_frac", "aspect_frac", "wrong_frac", "accuracy_weight"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                problems.append(f"{key}={getattr(self, key)} must lie in [0, 1]")
        if problems:
            raise ConfigError("simulated groups: " + "; ".join(problems))


@dataclass(frozen=True)
class GroupedWorld:
    lines: list[bytes]  # `ratingloop import` lines, one per interaction
    users: list[str]  # user ids, by user index
    group: np.ndarray  # int (n_users,): index into the config's groups
    asker: np.ndarray  # int (n_interactions,): who asked (and rated) each answer
    hidden: np.ndarray  # float (n_interactions,): what the asker truly thinks of it, in [-1, 1]

    @property
    def group_of(self) -> dict[str, int]:
        return dict(zip(self.users, self.group.tolist(), strict=True))


def grouped_users(cfg: GroupsConfig = GroupsConfig()) -> GroupedWorld:
    """The users (exactly round(share * n_users) per group, the last group takes the rest), their answers and
    ratings. Deterministic for `cfg.seed`."""
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)
    shares = np.asarray([share for _, share in cfg.groups], float)
    sizes = np.floor(cfg.n_users * shares / shares.sum() + 0.5).astype(int)
    sizes[-1] = cfg.n_users - sizes[:-1].sum()
    group = rng.permutation(np.repeat(np.arange(len(cfg.groups)), sizes))
    users = [f"gu{cfg.seed}-{u:03d}" for u in range(cfg.n_users)]
    offset = cfg.offset_sd * rng.standard_normal(cfg.n_users)
    thumbs = rng.random(cfg.n_users) < cfg.thumbs_frac
    lines: list[bytes] = []
    askers: list[int] = []
    hidden: list[float] = []
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for u in rng.permutation(cfg.n_users).tolist():  # users take turns, as they would arrive
        name = cfg.groups[int(group[u])][0]
        grader = Grader(name, GRADERS[name])
        for _ in range(int(rng.integers(cfg.min_answers, cfg.max_answers + 1))):
            prompt, answer, correct = _answer(rng, cfg.wrong_frac)
            right = 1.0 if correct else -1.0
            h = (1 - cfg.accuracy_weight) * grader.score(prompt, answer) + cfg.accuracy_weight * right
            perceived = cfg.scale * h + offset[u] + cfg.noise_sd * rng.standard_normal()
            at = start + timedelta(minutes=2 * len(lines))
            ratings = [_overall(users[u], perceived, bool(thumbs[u]), at)]
            if rng.random() < cfg.aspect_frac:
                seen = 0.9 * right + cfg.noise_sd * rng.standard_normal()
                ratings.append({"rater_id": users[u], "source": "simulated", "kind": "aspect", "aspect": "accuracy",
                                "value": int(np.clip(np.rint(3 + 2 * seen), 1, 5)), "scale": [1, 5],
                                "created_at": (at + timedelta(minutes=1)).isoformat()})
            lines.append(orjson.dumps({
                "id": f"grp{cfg.seed}-{len(lines):05d}", "messages": prompt, "response": answer, "user_id": users[u],
                "model": "sim", "created_at": at.isoformat(), "tags": {"simulated": {"grader": name}},
                "ratings": ratings}))
            askers.append(u)
            hidden.append(h)
    return GroupedWorld(lines, users, group, np.asarray(askers), np.asarray(hidden))


def _answer(rng: np.random.Generator, wrong_frac: float) -> tuple[list[dict[str, str]], str, bool]:
    """A support question and an answer of 1-9 sentences (with courtesy phrases between the facts), one of
    them false in `wrong_frac` of answers."""
    questions, good, wrong = TOPICS[tuple(TOPICS)[int(rng.integers(len(TOPICS)))]]
    k = int(rng.integers(1, 10))
    parts = [_pick(good if j % 2 == 0 else POLITE, rng) for j in range(k)]
    correct = rng.random() >= wrong_frac
    if not correct:
        parts[2 * int(rng.integers((k + 1) // 2))] = _pick(wrong, rng)  # a fact, not a courtesy, turns false
    question = _fill(questions[int(rng.integers(len(questions)))], rng)
    return [{"role": "user", "content": question}], " ".join(parts), correct


def _overall(user: str, perceived: float, thumbs: bool, at: datetime) -> dict[str, Any]:
    rating: dict[str, Any] = {"rater_id": user, "source": "simulated", "created_at": (at + timedelta(minutes=1))
                              .isoformat()}
    if thumbs:
        return rating | {"kind": "thumbs", "value": 1 if perceived > 0 else -1}
    return rating | {"kind": "stars", "value": int(np.clip(np.rint(3 + 2 * perceived), 1, 5)), "scale": [1, 5]}


FRESH_SEED = 10_000  # the held-out questions' seed: no simulated user draws from it


def fresh_questions(n: int) -> list[dict[str, Any]]:
    """`n` distinct support questions as `generate` prompt lines ({"id", "messages"}), drawn round-robin over the
    topics with a seed no simulated user draws from (a topic whose questions have no blanks to fill runs out of
    new ones; the others then fill in): held out from every world, to score what a version answers."""
    rng = np.random.default_rng(FRESH_SEED)
    seen: set[str] = set()
    prompts: list[dict[str, Any]] = []
    topics = list(TOPICS)
    for attempt in range(1000 * n):
        if len(prompts) == n:
            break
        questions = TOPICS[topics[attempt % len(topics)]][0]
        q = _fill(questions[int(rng.integers(len(questions)))], rng)
        if q not in seen:
            seen.add(q)
            prompts.append({"id": len(prompts), "messages": [{"role": "user", "content": q}]})
    return prompts
