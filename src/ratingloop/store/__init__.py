"""Stage 1, the store: interactions and ratings (append-only), raters, tombstones, and the registry.

Open it with `open_engine(url)` (migrations run on first use); write only through `write_units`; delete a
user only through `delete_user` (store/deletion.py), which later stages' purge steps join.
"""

from ratingloop.store.comparisons import Comparison, load_comparisons
from ratingloop.store.db import open_engine, upgrade, write_transaction
from ratingloop.store.deletion import Footprint, Purge, delete_user, lock_against_deletions, truncate_wal
from ratingloop.store.jsonl import export_rating
from ratingloop.store.records import CleanInteraction, CleanRating, InteractionIn, Limits, RatingIn
from ratingloop.store.stats import store_stats
from ratingloop.store.writes import UnitResult, WriteUnit, write_units

__all__ = [
    "CleanInteraction", "CleanRating", "Comparison", "Footprint", "InteractionIn", "Limits", "Purge", "RatingIn",
    "UnitResult", "WriteUnit", "delete_user", "export_rating", "load_comparisons", "lock_against_deletions",
    "open_engine", "store_stats", "truncate_wal", "upgrade", "write_transaction", "write_units",
]
