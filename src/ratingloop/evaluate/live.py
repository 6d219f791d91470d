"""Stage 6, evaluate: the live check - do real users rate the version that serves now worse than the
one it replaced?

The gate judges a candidate before it serves, on held-out prompts; once it serves, the people it
answers judge it too. Every interaction records the version that answered it (serve/chat.py), so the
live ratings of the active version and of the version its promotion replaced can be compared: each
end user's (or simulated user's) deliberate overall ratings (thumbs, stars, scales) on [-1, 1] as the signals stage
normalises them. When both have at least `min_ratings` and the active version's mean is lower by more
than `margin` with a one-sided Welch test below `alpha`, the check says roll back (the loop does, before
its next round: loop.py).

    check = live_check(engine)        # None when no promotion is there to undo
    check.rollback, check.reason
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sqlalchemy import Engine, select

from ratingloop.models.registry import rollback_plan
from ratingloop.signals import KIND_CODE, rewards
from ratingloop.store import tables as t

LIVE_KINDS = ("thumbs", "stars", "scale")
BASE = "base"  # what serve logs as the version when the base model answered


@dataclass(frozen=True)
class LiveConfig:
    min_ratings: int = 50  # each side, before the check says anything
    alpha: float = 0.01  # one-sided: so few false rollbacks that a loop checking every round rarely makes one
    margin: float = 0.0  # on [-1, 1]: how much worse the active version may be before it counts


@dataclass(frozen=True)
class LiveCheck:
    active: str  # a version id, or "base"
    previous: str
    n_active: int
    n_previous: int
    mean_active: float | None
    mean_previous: float | None
    p_value: float | None
    rollback: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def live_rewards(engine: Engine, version: str) -> np.ndarray:
    """End users' deliberate overall ratings of what `version` answered, on [-1, 1]."""
    r, i = t.Rating.__table__.c, t.Interaction.__table__.c
    query = (select(r.kind, r.value, r.scale_min, r.scale_max)
             .join(t.Interaction.__table__, i.id == r.interaction_id)
             .where(i.model == version, r.kind.in_(LIVE_KINDS), r.aspect == "overall",
                    r.source.in_(("end_user", "simulated"))))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    if not rows:
        return np.zeros(0)
    kind = np.array([KIND_CODE[row.kind] for row in rows])
    value = np.array([np.nan if row.value is None else row.value for row in rows], dtype=float)
    low = np.array([np.nan if row.scale_min is None else row.scale_min for row in rows], dtype=float)
    high = np.array([np.nan if row.scale_max is None else row.scale_max for row in rows], dtype=float)
    out = rewards(kind, value, low, high)
    return out[np.isfinite(out)]


def live_check(engine: Engine, cfg: LiveConfig = LiveConfig()) -> LiveCheck | None:
    """Compare the active version's live ratings with those of what its promotion replaced; None when there
    is no promotion to undo."""
    from scipy import stats

    from ratingloop.errors import RatingloopError

    try:
        active, previous = rollback_plan(engine)
    except RatingloopError:
        return None
    a_id, p_id = active or BASE, previous or BASE
    now, before = live_rewards(engine, a_id), live_rewards(engine, p_id)
    mean_now = float(now.mean()) if len(now) else None
    mean_before = float(before.mean()) if len(before) else None
    if min(len(now), len(before)) < cfg.min_ratings:
        return LiveCheck(a_id, p_id, len(now), len(before), mean_now, mean_before, None, False,
                         f"too few live ratings to compare ({len(now)} of {a_id}, {len(before)} of {p_id}; "
                         f"live.min_ratings={cfg.min_ratings} each)")
    test = stats.ttest_ind(now, before - cfg.margin, equal_var=False, alternative="less")
    p = float(test.pvalue) if np.isfinite(test.pvalue) else 1.0
    worse = p < cfg.alpha
    assert mean_now is not None and mean_before is not None
    verdict = "worse" if worse else "not worse"
    reason = (f"users rate {a_id} {verdict} than {p_id}: mean {mean_now:+.3f} over {len(now)} ratings vs "
              f"{mean_before:+.3f} over {len(before)} (one-sided Welch p={p:.2g}, alpha {cfg.alpha})")
    return LiveCheck(a_id, p_id, len(now), len(before), mean_now, mean_before, p, worse, reason)
