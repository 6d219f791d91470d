"""Stage 1, the store: interactions and ratings (append-only), raters, tombstones, and the registry.

Open it with `open_engine(url)` (migrations run on first use); write only through `write_units`.
"""

from ratingloop.store.db import open_engine, upgrade, write_transaction
from ratingloop.store.jsonl import export_rating
from ratingloop.store.records import CleanInteraction, CleanRating, InteractionIn, Limits, RatingIn
from ratingloop.store.stats import store_stats
from ratingloop.store.writes import UnitResult, WriteUnit, delete_user, write_units

__all__ = [
    "CleanInteraction", "CleanRating", "InteractionIn", "Limits", "RatingIn", "UnitResult", "WriteUnit",
    "delete_user", "export_rating", "open_engine", "store_stats", "upgrade", "write_transaction", "write_units",
]
