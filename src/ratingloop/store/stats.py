"""Stage 1, the store: counts for `ratingloop stats` and `GET /v1/stats` (one definition for both)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select, union

from ratingloop.store.tables import compared_interactions, deleted_users, interactions, model_versions, ratings


def store_stats(engine: Engine) -> dict[str, Any]:
    """interactions, ratings, raters, ratings_by_kind, versions (DESIGN.md's fields) and a few more."""
    I, R, V, D = interactions, ratings, model_versions, deleted_users
    with engine.connect() as conn:
        def count(table: Any) -> int:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())

        def by(column: Any) -> dict[str, int]:
            return {k: v for k, v in conn.execute(select(column, func.count()).group_by(column).order_by(column))}

        # an answer rated only through comparisons (the b side of a preference, a rank's other tiers) counts too
        named = union(select(R.c.interaction_id), select(compared_interactions.c.interaction_id)).subquery()
        rated = conn.execute(select(func.count()).select_from(named)).scalar_one()
        first, last = conn.execute(select(func.min(I.c.created_at), func.max(I.c.created_at))).one()
        last_rating = conn.execute(select(func.max(R.c.created_at))).scalar_one()
        active = conn.execute(select(V.c.id).where(V.c.status == "active")).scalars().first()
        return {
            "interactions": count(I),
            "ratings": count(R),
            "raters": conn.execute(select(func.count(func.distinct(R.c.rater_id)))).scalar_one(),
            "ratings_by_kind": by(R.c.kind),
            "ratings_by_source": by(R.c.source),
            "rated_interactions": rated,
            "versions": count(V),
            "versions_by_status": by(V.c.status),
            "active_version": active,
            "deleted_users": count(D),
            "first_interaction_at": _iso(first),
            "last_interaction_at": _iso(last),
            "last_rating_at": _iso(last_rating),
        }


def _iso(value: datetime | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):  # SQLite's min()/max() bypass the column type and return text
        value = datetime.fromisoformat(value)
    return value.isoformat().replace("+00:00", "Z") if value.tzinfo else value.isoformat() + "Z"
