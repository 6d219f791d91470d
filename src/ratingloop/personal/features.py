"""Personalisation: each end user's overall ratings, and the shared features of the answers they rated.

Reads a stored signals run (`signals.load_signals`; never refits it) and the store: the overall ratings
(thumbs, stars, scale) that run read, given by end users (sources `end_user` and `simulated`; annotators and
judges rate for the product, not for their own use) - the latest per user, answer and kind - each as a reward
in [-1, 1] by `signals.rewards` (the one normalisation), and the rated answers' texts. Writes `UserRatings`,
one row per rating; nothing goes to the store.

The ratings of users the signals run flagged count here too. The run flags a rater whose ratings disagree with
everyone else's, and a minority who want other answers than the majority (thorough where most want concise)
disagrees in just that way: measured on a 70/30 population with the content prior on, it flagged 14 of the
18 minority users and 1 of the 42 others (bench/results.md, "Personalisation"). Left out, the minority would
vanish from its own cohort. A cohort of trolls gets at most an adapter that serves the trolls themselves.

The features of an answer are what every user sees the same way:
- each aspect the signals run rewarded (relevance, accuracy, helpfulness, ...: its debiased per-aspect
  reward in [-1, 1]; 0, neutral, where nobody rated that aspect of the answer), when at least
  `min_feature_ratings` rated answers have it;
- `length`: log(1 + words) of the answer, standardised over the rated answers (mean and sd kept, so that a
  new answer's feature is made the same way).
A signals run stores no per-answer comment hints (a comment's sentiment goes into the reward only), so
none are features here; an aspect a later signals run stores is picked up like any other.
The run's `overall` reward is not a feature: where an answer is rated once, it is mostly the user's own rating.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Engine, select

from ratingloop.signals import KIND_CODE, RATING_KINDS, StoredSignals, rewards
from ratingloop.store import tables as t

log = logging.getLogger(__name__)

USER_SOURCES = ("end_user", "simulated")  # whose ratings say what *they* want from an answer
OVERALL_KINDS = tuple(k for k in RATING_KINDS if k != "aspect")  # thumbs, stars, scale
LENGTH = "length"


@dataclass(frozen=True)
class UserRatings:
    """One row per counted overall rating of an end user."""

    signals_run_id: str
    users: list[str]  # user index -> rater id
    user: np.ndarray  # int (n,): who rated
    y: np.ndarray  # float (n,): the rating as a reward in [-1, 1]
    X: np.ndarray  # float (n, f): the rated answer's features
    features: tuple[str, ...]  # the columns of X: aspects (sorted), then "length"
    length_mean: float  # of log(1 + words) over the rated answers
    length_sd: float
    left_out: dict[str, int]  # aspects with too few rated answers to be a feature: how many rated answers had them

    @property
    def n_users(self) -> int:
        return len(self.users)


def user_ratings(engine: Engine, stored: StoredSignals, min_feature_ratings: int = 10) -> UserRatings:
    """The end users' overall ratings `stored` read, flagged users' included, with their answers' features (see
    the module notes)."""
    r, i = t.ratings.c, t.interactions.c
    query = (select(r.rater_id, r.interaction_id, r.kind, r.value, r.scale_min, r.scale_max, i.response)
             .select_from(t.ratings).join(t.interactions, r.interaction_id == i.id)
             .where(r.aspect == "overall", r.kind.in_(OVERALL_KINDS), r.source.in_(USER_SOURCES),
                    r.rater_id.is_not(None))
             .order_by(r.rater_id, r.created_at, r.id))
    if stored.last_rating_at is not None:  # what the run read: nothing newer
        query = query.where(r.created_at <= stored.last_rating_at)
    with engine.connect() as conn:
        latest = {(row.rater_id, row.interaction_id, row.kind): row for row in conn.execute(query)}
    rows = list(latest.values())  # the latest per user, answer and kind, in (user, time) order
    users = sorted({row.rater_id for row in rows})
    index = {u: k for k, u in enumerate(users)}
    y = rewards(np.asarray([KIND_CODE[row.kind] for row in rows], np.int64), _floats([row.value for row in rows]),
                _floats([row.scale_min for row in rows]), _floats([row.scale_max for row in rows]))
    iids = [row.interaction_id for row in rows]
    words = np.log1p([len(row.response.split()) for row in rows])
    mean, sd = _spread({iid: w for iid, w in zip(iids, words.tolist(), strict=True)})
    aspects = {s.interaction_id: s.aspects for s in stored.interactions}
    columns, left_out = {}, {}
    for name in sorted({a for iid in iids for a in aspects.get(iid, {})} - {"overall"}):
        col = np.asarray([aspects.get(iid, {}).get(name, np.nan) for iid in iids], float)
        rated = len({iid for iid, v in zip(iids, col.tolist(), strict=True) if not np.isnan(v)})
        if rated >= min_feature_ratings:
            columns[name] = np.nan_to_num(col, nan=0.0)
        else:
            left_out[name] = rated
    columns[LENGTH] = (words - mean) / sd
    X = np.column_stack(list(columns.values())) if rows else np.zeros((0, len(columns)))
    log.info("personal: %d overall ratings by %d end users in signals run %s; features %s%s", len(rows), len(users),
             stored.run_id, ", ".join(columns), f" ({', '.join(left_out)} on too few answers)" if left_out else "")
    return UserRatings(stored.run_id, users, np.asarray([index[row.rater_id] for row in rows], np.int64), y, X,
                       tuple(columns), mean, sd, left_out)


def _floats(values: list[float | None]) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], float)


def _spread(by_answer: dict[str, float]) -> tuple[float, float]:
    """Mean and sd over distinct answers (an answer rated by several users counts once); sd 1 when all alike."""
    values = np.asarray(list(by_answer.values()), float)
    if not len(values):
        return 0.0, 1.0
    sd = float(values.std())
    return float(values.mean()), sd if sd > 1e-9 else 1.0
