from ratingloop.store import open_engine
from ratingloop.store.stats import store_stats


def test_fresh_store_is_migrated_and_empty(db_url: str) -> None:
    stats = store_stats(open_engine(db_url))
    assert stats["interactions"] == 0 and stats["ratings"] == 0 and stats["versions"] == 0
