"""Personal runs in the store (migration 0007, personal/runs.py) on SQLite and PostgreSQL, a deleted user's
weights going with them, and `ratingloop cohorts` / `ratingloop users show` through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, func, inspect, select
from typer.testing import CliRunner

from personal_world import KEY, NO_CONTENT, grouped_store
from ratingloop.cli import app
from ratingloop.errors import RatingloopError
from ratingloop.personal import load_personal, record_personal, user_weights
from ratingloop.privacy import forget_user
from ratingloop.signals import record_signals
from ratingloop.simulate.groups import GroupsConfig
from ratingloop.store import Limits, open_engine
from ratingloop.store import tables as t
from ratingloop.store.db import _alembic_config
from ratingloop.store.jsonl import import_lines

runner = CliRunner()
SMALL = GroupsConfig(n_users=24, min_answers=8, max_answers=12, seed=3)  # 17 concise, 7 thorough
PERSONAL = ("personal_runs", "personal_users", "personal_cohorts")


def test_the_personal_tables_match_the_schema_and_migrate_down_and_up(db_url: str) -> None:
    engine = open_engine(db_url)
    assert set(PERSONAL) <= set(inspect(engine).get_table_names())
    with engine.connect() as conn:  # what autogenerate would still add, drop or change for them: nothing
        diffs = compare_metadata(MigrationContext.configure(conn), t.Base.metadata)
    assert not [d for d in diffs if "personal" in repr(d)], diffs
    with engine.begin() as conn:
        command.downgrade(_alembic_config(conn), "0006")
    assert not set(PERSONAL) & set(inspect(engine).get_table_names())
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "head")
    assert set(PERSONAL) <= set(inspect(engine).get_table_names())


@pytest.fixture
def engine(db_url: str) -> Engine:
    return open_engine(db_url)


def test_a_run_is_stored_and_read_back_as_fitted(engine: Engine) -> None:
    world, signals = grouped_store(engine, SMALL)
    run = record_personal(engine)
    assert run.signals_run_id == signals.run_id and run.k == 2
    assert load_personal(engine) == run  # what later stages read is what was fitted, JSON round trip included
    assert [c.n_users for c in run.cohorts] == [17, 7] and run.summary["n_users"] == 24
    assert run.summary["features"] == ["accuracy", "length"] and run.summary["length_sd"] > 0
    assert [h["k"] for h in run.heldout] == [1, 2, 3, 4] and run.heldout[1]["per_rating"] > run.heldout[0]["per_rating"]
    for uid, group in world.group_of.items():
        u = user_weights(engine, uid)
        if u.cohort is not None:  # the thorough users are the small cohort, and want long answers
            assert u.cohort == group and (u.weights["length"] > 0) == (group == 1)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.personal_users)).scalar_one() == 24


def test_deleting_a_user_deletes_their_weights_in_every_run(engine: Engine, tmp_path: Path) -> None:
    world, _ = grouped_store(engine, SMALL)
    first, second = record_personal(engine), record_personal(engine)
    gone, kept = world.users[0], world.users[1]
    forget_user(engine, gone, user_key=KEY, data_dir=tmp_path / "data")
    u = t.personal_users.c
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).where(u.user_id == gone)).scalar_one() == 0
        assert conn.execute(select(func.count()).where(u.user_id == kept)).scalar_one() == 2
        assert conn.execute(select(func.count()).select_from(t.personal_users)).scalar_one() == 2 * 23
    for run in (first, second):
        with pytest.raises(RatingloopError, match="is not in this store"):
            user_weights(engine, gone, run.run_id)
    assert user_weights(engine, kept, first.run_id).n_ratings > 0


# --- the CLI --------------------------------------------------------------------------------------------------

def test_cohorts_fits_once_lists_the_cohorts_and_refits_with_fit(sqlite_url: str) -> None:
    missing = runner.invoke(app, ["cohorts", "--db", sqlite_url])
    assert missing.exit_code == 1 and "no signals run in this store" in str(missing.exception)
    grouped_store(open_engine(sqlite_url), SMALL)
    shown = runner.invoke(app, ["cohorts", "--db", sqlite_url])  # none yet: it fits one
    assert shown.exit_code == 0, shown.output
    assert "24 users, 24 in cohorts; 2 cohort(s), chosen by held-out log-likelihood per rating: K=1 " in shown.stderr
    assert "shorter answers" in shown.stdout and "longer answers" in shown.stdout
    listed = runner.invoke(app, ["cohorts", "--json", "--db", sqlite_url])
    run = json.loads(listed.stdout)
    assert run["k"] == 2 and [c["n_users"] for c in run["cohorts"]] == [17, 7]
    assert run["run_id"] in shown.stderr  # the same run: listing never refits
    assert {"signals_run_id", "heldout", "summary", "config", "created_at"} <= set(run)
    assert run["newer_signals_run"] is None

    refused = runner.invoke(app, ["cohorts", "--set", "personal.max_cohorts=1", "--db", sqlite_url])
    assert refused.exit_code != 0 and "add --fit" in refused.output
    unknown = runner.invoke(app, ["cohorts", "--fit", "--set", "personal.zz=1", "--db", sqlite_url])
    assert unknown.exit_code == 1 and "personal.zz: unknown key" in str(unknown.exception)
    one = json.loads(runner.invoke(app, ["cohorts", "--fit", "--set", "personal.max_cohorts=1", "--json",
                                         "--db", sqlite_url]).stdout)
    assert one["run_id"] != run["run_id"] and one["k"] == 1 and one["config"]["max_cohorts"] == 1

    record_signals(open_engine(sqlite_url), NO_CONTENT)  # a newer signals run: the weights are stale
    stale = runner.invoke(app, ["cohorts", "--db", sqlite_url])
    assert stale.exit_code == 0 and "is newer than the one these weights came from" in stale.stderr


def test_cohorts_says_when_there_are_too_few_users_for_more_than_one(sqlite_url: str) -> None:
    grouped_store(open_engine(sqlite_url), GroupsConfig(n_users=8, seed=4))
    result = runner.invoke(app, ["cohorts", "--db", sqlite_url])
    assert result.exit_code == 0, result.output
    assert "too few users for more than one cohort: 8 with 5+ varying ratings, and each cohort needs 5" \
        in result.stderr
    assert "1 cohort(s)" in result.stderr and "everyone: " in result.stdout


def test_users_show_gives_weights_count_and_cohort_or_says_why_not(sqlite_url: str) -> None:
    engine = open_engine(sqlite_url)
    world, _ = grouped_store(engine, SMALL)
    nothing = runner.invoke(app, ["users", "show", world.users[0], "--db", sqlite_url])
    assert nothing.exit_code == 1 and "no personal run in this store" in str(nothing.exception)
    # a fan who liked all 6 answers they got, and a user who rated only 3 (under min_user_ratings, 5)
    extra = [{"id": f"{who}-{k}", "messages": [{"role": "user", "content": "hi"}], "response": "hello " * (k + 1),
              "user_id": who, "ratings": [{"rater_id": who, "kind": "thumbs", "value": 1 if who == "fan" or k else -1}]}
             for who, n in (("fan", 6), ("brief", 3)) for k in range(n)]
    assert not import_lines(engine, [json.dumps(x).encode() for x in extra], Limits(), user_key=KEY).bad
    record_signals(engine, NO_CONTENT)
    record_personal(engine)
    fan = runner.invoke(app, ["users", "show", "fan", "--db", sqlite_url])
    assert fan.exit_code == 0 and "6 ratings, mean +1.00, sd 0.00; in no cohort: every rating the same (+1.00)" \
        in fan.stdout
    brief = runner.invoke(app, ["users", "show", "brief", "--db", sqlite_url])
    assert brief.exit_code == 0 and "3 ratings" in brief.stdout and "in no cohort: too few ratings" in brief.stdout
    uid = next(u for u, g in world.group_of.items() if g == 1 and user_weights(engine, u).cohort is not None)
    shown = json.loads(runner.invoke(app, ["users", "show", uid, "--json", "--db", sqlite_url]).stdout)
    assert shown["cohort"] == 1 and shown["status"] == "placed" and 8 <= shown["n_ratings"] <= 12
    assert set(shown["weights"]) == {"accuracy", "length"} and shown["weights"]["length"] > 0
    assert "longer answers" in shown["cohort_description"]
    text = runner.invoke(app, ["users", "show", uid, "--db", sqlite_url])
    assert text.exit_code == 0 and f"ratings, mean {shown['mean_rating']:+.2f}" in text.stdout
    assert "cohort 1: rates longer answers" in text.stdout and "length" in text.stdout

    unknown = runner.invoke(app, ["users", "show", "nobody", "--db", sqlite_url])
    assert unknown.exit_code == 1
    assert str(unknown.exception) == "user 'nobody' is not in this store: no interactions and no ratings under that id"
    quiet = {"id": "q-1", "messages": [{"role": "user", "content": "hi"}], "response": "hello", "user_id": "quiet",
             "ratings": [{"rater_id": world.users[0], "kind": "thumbs", "value": 1}]}  # rated by another, later
    assert not import_lines(engine, [json.dumps(quiet).encode()], Limits(), user_key=KEY).bad
    asked = runner.invoke(app, ["users", "show", "quiet", "--db", sqlite_url])
    assert "has 1 interaction(s) but has rated none" in str(asked.exception)
    # their newest rating is not in the signals run the weights came from: they still have weights; a user whose
    # only ratings are newer has none yet, and is told how to get them
    late = dict(quiet, id="q-2", user_id="late", ratings=[{"rater_id": "late", "kind": "thumbs", "value": -1}])
    assert not import_lines(engine, [json.dumps(late).encode()], Limits(), user_key=KEY).bad
    newer = runner.invoke(app, ["users", "show", "late", "--db", sqlite_url])
    assert newer.exit_code == 1 and "1 of them newer than signals run" in str(newer.exception)
    assert "run `ratingloop signals`, then `ratingloop cohorts --fit`" in str(newer.exception)
