"""The write path (store/writes.py, store/db.py) on real SQLite and real PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, func, inspect, select, text

from ratingloop.store import Limits, RatingIn, WriteUnit, open_engine
from ratingloop.store import delete_user as store_delete_user
from ratingloop.store import write_units as store_write_units
from ratingloop.store.db import current_revision, head_revision
from ratingloop.store.records import InteractionIn, clean_interaction, clean_rating
from ratingloop.store.tables import DeletedUser, Interaction, Rater, Rating
from ratingloop.store.writes import legacy_user_hash, user_hash

LIMITS = Limits()
EARLY = "2026-01-01T00:00:00Z"
KEY = b"test-user-key"  # the server's secret, which tombstones are keyed with (store.writes.user_hash)


def write_units(engine: Engine, units: list[WriteUnit]) -> list[Any]:
    return store_write_units(engine, units, user_key=KEY)


def delete_user(engine: Engine, user_id: str) -> tuple[int, int]:
    gone = store_delete_user(engine, user_id, user_key=KEY)
    return gone.interactions, gone.ratings


def inter(iid: str | None = "c-1", ratings: list[dict[str, Any]] | None = None, **fields: Any) -> Any:
    body = {"messages": [{"role": "user", "content": f"question {iid}"}], "response": f"answer {iid}",
            "created_at": EARLY, **fields, "ratings": ratings or []}
    if iid is not None:
        body["id"] = iid
    clean, errors = clean_interaction(InteractionIn.model_validate(body), LIMITS, lambda h: "i-" + h[:26])
    assert clean is not None, errors
    return clean


def rating(interaction_id: str, path: str = "", **fields: Any) -> Any:
    clean, errors = clean_rating(RatingIn.model_validate({"interaction_id": interaction_id, **fields}), LIMITS, path)
    assert clean is not None, errors
    return clean


def count(engine: Engine, table: Any, where: Any = None) -> int:
    query = select(func.count()).select_from(table.__table__)
    if where is not None:
        query = query.where(where)
    with engine.connect() as conn:
        return conn.execute(query).scalar_one()


def rating_rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(Rating.__table__).order_by(Rating.id)).mappings()]


@pytest.fixture
def engine(db_url: str) -> Engine:
    return open_engine(db_url)


def seed(engine: Engine, *interactions: Any) -> None:
    results = write_units(engine, [WriteUnit(interactions=[i]) for i in interactions])
    assert all(r.ok for r in results), [r.errors for r in results]


# -- opening the store ----------------------------------------------------------------------------------

def test_migrations_run_on_first_use(db_url: str) -> None:
    engine = open_engine(db_url)
    assert head_revision() is not None
    assert current_revision(engine) == head_revision()
    tables = set(inspect(engine).get_table_names())
    assert {"interactions", "ratings", "raters", "deleted_users", "model_versions", "dataset_snapshots",
            "training_runs", "alembic_version"} <= tables
    # opening it again (a new process would) finds it at head and changes nothing
    from ratingloop.store.db import dispose_engines, upgrade

    dispose_engines()
    again = open_engine(db_url)
    assert upgrade(again) == head_revision() == current_revision(again)


def test_sqlite_runs_in_wal_mode(sqlite_url: str) -> None:
    engine = open_engine(sqlite_url)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar_one().lower() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
    # WAL is a property of the file: a plain sqlite3 connection sees it too
    import sqlite3

    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"


# -- interactions ----------------------------------------------------------------------------------------

def test_interaction_is_stored_with_its_ratings(engine: Engine) -> None:
    [result] = write_units(engine, [WriteUnit(interactions=[inter("c-1", user_id="u1", tags={"area": "billing"},
                                                                  ratings=[{"kind": "thumbs", "value": 1},
                                                                           {"rater_id": "u7", "kind": "stars",
                                                                            "value": 4}])])])
    assert result.ok and result.interactions == [("c-1", 201)]
    assert [status for _, status in result.ratings] == [201, 201]
    with engine.connect() as conn:
        row = conn.execute(select(Interaction.__table__)).mappings().one()
    assert row["user_id"] == "u1" and row["tags"] == {"area": "billing"}
    assert row["created_at"] == datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = sorted(rating_rows(engine), key=lambda r: r["kind"])
    # a rating without a rater_id is the asker's own
    assert [(r["kind"], r["rater_id"], r["value"], r["source"]) for r in rows] == [
        ("stars", "u7", 4.0, "end_user"), ("thumbs", "u1", 1.0, "end_user")]
    assert count(engine, Rater) == 2


def test_rating_on_anonymous_interaction_is_attributed_to_it(engine: Engine) -> None:
    seed(engine, inter("c-anon"))
    [result] = write_units(engine, [WriteUnit(ratings=[rating("c-anon", kind="thumbs", value=-1)])])
    assert result.ok and result.ratings[0][0]["rater_id"] == "anon:c-anon"


def test_interaction_id_replay_is_200_and_conflict_is_409(engine: Engine) -> None:
    seed(engine, inter("c-1", user_id="u1"))
    [replay] = write_units(engine, [WriteUnit(interactions=[inter("c-1", user_id="u1")])])
    assert replay.ok and replay.interactions == [("c-1", 200)]
    [conflict] = write_units(engine, [WriteUnit(interactions=[inter("c-1", user_id="u1", response="other")])])
    assert not conflict.ok
    assert [(e.field, e.status) for e in conflict.errors] == [("id", 409)]
    assert count(engine, Interaction) == 1
    with engine.connect() as conn:
        assert conn.execute(select(Interaction.response)).scalar_one() == "answer c-1"


def test_conflicting_interaction_stores_none_of_its_ratings(engine: Engine) -> None:
    seed(engine, inter("c-1"))
    [result] = write_units(engine, [WriteUnit(interactions=[inter("c-1", response="other",
                                                                  ratings=[{"kind": "thumbs", "value": 1}])])])
    assert [e.status for e in result.errors] == [409]
    assert count(engine, Rating) == 0


def test_replayed_interaction_adds_only_its_new_ratings(engine: Engine) -> None:
    seed(engine, inter("c-1", ratings=[{"kind": "thumbs", "value": 1, "idempotency_key": "a"}]))
    [result] = write_units(engine, [WriteUnit(interactions=[inter("c-1", ratings=[
        {"kind": "thumbs", "value": 1, "idempotency_key": "a"},
        {"kind": "stars", "value": 2, "idempotency_key": "b"}])])])
    assert result.interactions == [("c-1", 200)]
    assert [s for _, s in result.ratings] == [200, 201]
    assert count(engine, Rating) == 2


# -- ratings: idempotency -----------------------------------------------------------------------------------

def test_same_key_same_body_is_a_replay_of_the_original_row(engine: Engine) -> None:
    seed(engine, inter("c-1", user_id="u1"))
    [first] = write_units(engine, [WriteUnit(ratings=[rating("c-1", kind="stars", value=4, idempotency_key="k1")])])
    row, status = first.ratings[0]
    assert status == 201
    [again] = write_units(engine, [WriteUnit(ratings=[rating("c-1", kind="stars", value=4, idempotency_key="k1")])])
    row2, status2 = again.ratings[0]
    assert status2 == 200
    assert row2["id"] == row["id"] and row2["created_at"] == row["created_at"] and row2["value"] == 4.0
    assert count(engine, Rating) == 1


@pytest.mark.parametrize("change", [{"value": 5}, {"kind": "scale", "value": 4, "scale": [1, 7]},
                                    {"rater_id": "u9"}, {"aspect": "accuracy"}, {"source": "annotator"}])
def test_same_key_different_body_is_409_and_stores_nothing(engine: Engine, change: dict[str, Any]) -> None:
    seed(engine, inter("c-1", user_id="u1"))
    write_units(engine, [WriteUnit(ratings=[rating("c-1", kind="stars", value=4, idempotency_key="k1")])])
    before = rating_rows(engine)
    [result] = write_units(engine, [WriteUnit(ratings=[rating("c-1", **{"kind": "stars", "value": 4,
                                                                         "idempotency_key": "k1", **change})])])
    assert [(e.field, e.status) for e in result.errors] == [("idempotency_key", 409)]
    assert rating_rows(engine) == before


def test_same_key_twice_in_one_call_is_one_row(engine: Engine) -> None:
    seed(engine, inter("c-1"))
    one = rating("c-1", kind="thumbs", value=1, idempotency_key="dup")
    results = write_units(engine, [WriteUnit(ratings=[one]), WriteUnit(ratings=[one]),
                                   WriteUnit(ratings=[rating("c-1", kind="thumbs", value=-1, idempotency_key="dup")])])
    assert [r.ratings[0][1] if r.ok else r.errors[0].status for r in results] == [201, 200, 409]
    assert count(engine, Rating) == 1


def test_rating_without_key_gets_a_unique_one(engine: Engine) -> None:
    seed(engine, inter("c-1"))
    write_units(engine, [WriteUnit(ratings=[rating("c-1", kind="thumbs", value=1)])])
    write_units(engine, [WriteUnit(ratings=[rating("c-1", kind="thumbs", value=1)])])
    rows = rating_rows(engine)
    assert len(rows) == 2  # without a key, a second rating is a second event (it supersedes the first)
    assert all(r["idempotency_key"] == f"auto:{r['id']}" for r in rows)


def test_rating_id_reused_under_another_key_is_409(engine: Engine) -> None:
    seed(engine, inter("c-1"))
    write_units(engine, [WriteUnit(ratings=[rating("c-1", kind="thumbs", value=1, id="r-1", idempotency_key="a")])])
    [result] = write_units(engine, [WriteUnit(ratings=[rating("c-1", kind="thumbs", value=1, id="r-1",
                                                              idempotency_key="b")])])
    assert [(e.field, e.status) for e in result.errors] == [("id", 409)]
    assert count(engine, Rating) == 1


def test_unknown_interaction_is_404_and_stores_nothing(engine: Engine) -> None:
    [result] = write_units(engine, [WriteUnit(ratings=[rating("nope", kind="thumbs", value=1, rater_id="u1")])])
    assert [(e.field, e.status) for e in result.errors] == [("interaction_id", 404)]
    assert "nope" in result.errors[0].reason
    assert count(engine, Rating) == 0 and count(engine, Rater) == 0


def test_unvouched_rating_cannot_name_another_rater(engine: Engine) -> None:
    seed(engine, inter("c-1", user_id="u1"))
    [bad] = write_units(engine, [WriteUnit(ratings=[rating("c-1", kind="thumbs", value=1, rater_id="u2")],
                                           vouched=False)])
    assert [(e.field, e.status) for e in bad.errors] == [("rater_id", 403)]
    [ok] = write_units(engine, [WriteUnit(ratings=[rating("c-1", kind="thumbs", value=1, source="judge")],
                                          vouched=False)])
    row = ok.ratings[0][0]
    assert (row["rater_id"], row["source"]) == ("u1", "end_user")  # a token can't claim to be a judge
    [admin] = write_units(engine, [WriteUnit(ratings=[rating("c-1", kind="thumbs", value=1, rater_id="u2",
                                                             source="annotator")])])
    assert (admin.ratings[0][0]["rater_id"], admin.ratings[0][0]["source"]) == ("u2", "annotator")
    assert count(engine, Rating) == 2


# -- units: each lands whole or not at all ----------------------------------------------------------------

def test_a_bad_unit_stores_nothing_while_the_others_land(engine: Engine) -> None:
    seed(engine, inter("c-1"), inter("c-2"))
    write_units(engine, [WriteUnit(ratings=[rating("c-1", kind="thumbs", value=1, idempotency_key="taken")])])
    good1 = WriteUnit(ratings=[rating("c-1", kind="stars", value=3, idempotency_key="g1"),
                               rating("c-2", kind="stars", value=4, idempotency_key="g2")])
    bad_404 = WriteUnit(ratings=[rating("c-2", "items[0]", kind="thumbs", value=1, idempotency_key="b1"),
                                 rating("missing", "items[1]", kind="thumbs", value=1, idempotency_key="b2")])
    bad_409 = WriteUnit(ratings=[rating("c-1", "items[0]", kind="stars", value=2, idempotency_key="b3"),
                                 rating("c-1", "items[1]", kind="thumbs", value=-1, idempotency_key="taken")])
    bad_inter = WriteUnit(interactions=[inter("c-3"), inter("c-1", response="changed")])
    good2 = WriteUnit(interactions=[inter("c-4", ratings=[{"kind": "comment", "text": "ok"}])])
    results = write_units(engine, [good1, bad_404, bad_409, bad_inter, good2])
    assert [r.ok for r in results] == [True, False, False, False, True]
    assert [(e.field, e.status) for e in results[1].errors] == [("items[1].interaction_id", 404)]
    assert [(e.field, e.status) for e in results[2].errors] == [("items[1].idempotency_key", 409)]
    assert [(e.field, e.status) for e in results[3].errors] == [("id", 409)]
    keys = {r["idempotency_key"] for r in rating_rows(engine)}
    assert {"taken", "g1", "g2"} <= keys and not keys & {"b1", "b2", "b3"}
    assert count(engine, Rating) == 4  # taken, g1, g2, the comment on c-4
    with engine.connect() as conn:
        assert set(conn.execute(select(Interaction.id)).scalars()) == {"c-1", "c-2", "c-4"}


def test_ratings_in_a_unit_may_rate_the_interaction_it_adds(engine: Engine) -> None:
    [result] = write_units(engine, [WriteUnit(interactions=[inter("c-9")],
                                              ratings=[rating("c-9", kind="thumbs", value=1)])])
    assert result.ok and count(engine, Rating) == 1


# -- deleting a user ----------------------------------------------------------------------------------------

def _people(engine: Engine) -> None:
    """u1 asked c-1 and c-2 (rated by u1 and u7) and rated u2's c-3; u7 also rated c-3."""
    seed(engine,
         inter("c-1", user_id="u1", ratings=[{"kind": "thumbs", "value": 1}, {"rater_id": "u7", "kind": "stars",
                                                                              "value": 2}]),
         inter("c-2", user_id="u1", ratings=[{"rater_id": "u7", "kind": "comment", "text": "meh"}]),
         inter("c-3", user_id="u2", ratings=[{"rater_id": "u1", "kind": "stars", "value": 5,
                                              "created_at": EARLY},
                                             {"rater_id": "u7", "kind": "thumbs", "value": -1},
                                             {"kind": "thumbs", "value": 1}]))


def test_delete_user_removes_their_interactions_and_every_rating_they_touched(engine: Engine) -> None:
    _people(engine)
    assert (count(engine, Interaction), count(engine, Rating)) == (3, 6)
    n_inter, n_ratings = delete_user(engine, "u1")
    assert (n_inter, n_ratings) == (2, 4)  # c-1, c-2; u1+u7 on c-1, u7 on c-2, u1 on c-3
    with engine.connect() as conn:
        assert list(conn.execute(select(Interaction.id)).scalars()) == ["c-3"]
        left = sorted(conn.execute(select(Rating.interaction_id, Rating.rater_id)).all())
        assert left == [("c-3", "u2"), ("c-3", "u7")]
        assert "u1" not in set(conn.execute(select(Rater.id)).scalars())
        tomb = conn.execute(select(DeletedUser.__table__)).mappings().one()
    assert tomb["user_hash"] == user_hash("u1", KEY) != legacy_user_hash("u1")  # keyed: not the id, not its sha256
    assert (tomb["interactions_deleted"], tomb["ratings_deleted"]) == (2, 4)
    assert count(engine, Rating, Rating.rater_id == "u1") == 0


def test_tombstone_blocks_their_earlier_data_but_not_unrelated_data(engine: Engine) -> None:
    _people(engine)
    delete_user(engine, "u1")
    # the same lines again: u1's own interactions and u1's rating elsewhere are refused with 410
    results = write_units(engine, [
        WriteUnit(interactions=[inter("c-1", user_id="u1", ratings=[{"kind": "thumbs", "value": 1}])]),
        WriteUnit(interactions=[inter("c-3", user_id="u2", ratings=[{"rater_id": "u1", "kind": "stars",
                                                                     "value": 5, "created_at": EARLY}])]),
        WriteUnit(interactions=[inter("c-5", user_id="u2", ratings=[{"rater_id": "u7", "kind": "thumbs",
                                                                     "value": 1}])]),
    ])
    assert [(e.field, e.status) for e in results[0].errors] == [("user_id", 410)]
    assert [(e.field, e.status) for e in results[1].errors] == [("ratings[0].rater_id", 410)]
    assert results[2].ok  # unrelated data still lands
    assert count(engine, Interaction, Interaction.user_id == "u1") == 0
    assert count(engine, Rating, Rating.rater_id == "u1") == 0
    assert count(engine, Interaction) == 2 and count(engine, Rating) == 3


def test_data_created_after_the_deletion_is_accepted(engine: Engine) -> None:
    _people(engine)
    delete_user(engine, "u1")
    later = (datetime.now(timezone.utc) + timedelta(minutes=1)).isoformat()
    [result] = write_units(engine, [WriteUnit(interactions=[inter("c-new", user_id="u1", created_at=later,
                                                                  ratings=[{"kind": "thumbs", "value": 1,
                                                                            "created_at": later}])])])
    assert result.ok
    assert count(engine, Interaction, Interaction.user_id == "u1") == 1


def test_deleting_twice_keeps_one_tombstone_with_totals(engine: Engine) -> None:
    _people(engine)
    delete_user(engine, "u1")
    assert delete_user(engine, "u1") == (0, 0)
    with engine.connect() as conn:
        tomb = conn.execute(select(DeletedUser.__table__)).mappings().one()
    assert (tomb["interactions_deleted"], tomb["ratings_deleted"]) == (2, 4)
    assert delete_user(engine, "nobody") == (0, 0)
    assert count(engine, DeletedUser) == 2


# -- racing writers ---------------------------------------------------------------------------------------------

def test_racing_writers_with_the_same_keys_store_each_once(db_url: str) -> None:
    """Writers in separate engines (as separate server processes would be) race on the same keys: on
    PostgreSQL both may read "not there yet", the unique index refuses the second insert, and that unit
    is judged again as a replay. Exactly one 201 per key, the rest 200, one row per key."""
    import threading

    from ratingloop.store.db import new_engine

    seed(open_engine(db_url), inter("c-1"))
    n_writers, rounds = 6, 5
    engines = [new_engine(db_url) for _ in range(n_writers)]
    statuses: list[list[int]] = [[] for _ in range(rounds)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_writers)

    def writer(engine: Engine) -> None:
        try:
            for n in range(rounds):
                barrier.wait(timeout=30)
                units = [WriteUnit(ratings=[rating("c-1", kind="stars", value=3, idempotency_key=f"race-{n}-{k}")])
                         for k in range(20)]
                results = write_units(engine, units)
                statuses[n].extend(r.ratings[0][1] for r in results)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=writer, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for e in engines:
        e.dispose()
    assert errors == []
    for n in range(rounds):
        assert sorted(statuses[n]).count(201) == 20 and statuses[n].count(200) == 20 * (n_writers - 1)
    engine = open_engine(db_url)
    assert count(engine, Rating) == 20 * rounds
    with engine.connect() as conn:
        assert conn.execute(select(func.count(func.distinct(Rating.idempotency_key)))).scalar_one() == 20 * rounds
