"""Cohort versions (issue 15, items 3-4): the registry keeps one serving version per cohort beside the global
active one, `serve` and `generate` route a user to their cohort's version, and a deleted or new user gets the
global version. On SQLite and PostgreSQL, with real adapters of a tiny random Llama.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, update
from sqlalchemy.exc import IntegrityError

from personal_world import KEY, grouped_store
from ratingloop.config import Settings
from ratingloop.errors import RatingloopError
from ratingloop.models.registry import (
    COHORT,
    finish_run,
    get_version,
    list_events,
    list_versions,
    model_versions,
    promote,
    promote_cohort,
    reject,
    retire_cohort,
    set_cohort,
    set_traffic_share,
    start_run,
)
from ratingloop.personal import PersonalConfig, StoredPersonal, record_personal
from ratingloop.serve.app import backend_from_env, create_app
from ratingloop.serve.routing import ACTIVE, load_routes
from ratingloop.simulate.groups import GroupsConfig
from ratingloop.store import open_engine
from servers import ADMIN_KEY
from tiny import save_random_adapter, save_varied_base

H = {"Authorization": f"Bearer {ADMIN_KEY}"}
ASK = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_varied_base(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def adapters(base: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return [save_random_adapter(base, tmp_path_factory.mktemp(f"adapter{seed}"), seed=seed) for seed in (1, 2, 3, 4)]


def register(engine: Engine, adapter: Path, base: Path) -> str:
    run = start_run(engine, method="kto", config={}, base_model=str(base))
    return finish_run(engine, run, adapter_path=adapter, metrics={})


def two_cohorts(engine: Engine) -> tuple[StoredPersonal, dict[int, list[str]]]:
    """A 70/30 concise vs thorough population and its personal run, which finds the two groups."""
    grouped_store(engine, GroupsConfig(n_users=40, seed=0))
    run = record_personal(engine, PersonalConfig())
    assert run.k == 2, run.heldout
    members: dict[int, list[str]] = {}
    with engine.connect() as conn:
        from ratingloop.store import tables as t

        u = t.personal_users.c
        for row in conn.execute(t.personal_users.select().where(u.run_id == run.run_id, u.cohort.is_not(None))):
            members.setdefault(row.cohort, []).append(row.user_id)
    return run, members


def test_one_serving_version_per_cohort_beside_the_active_one(db_url: str, base: Path, adapters: list[Path]) -> None:
    engine = open_engine(db_url)
    run, _ = two_cohorts(engine)
    glob, c0, c0_again, c1 = (register(engine, a, base) for a in adapters)
    promote(engine, glob, actor="test")
    set_cohort(engine, c0, run.run_id, 0)
    set_cohort(engine, c0, run.run_id, 0)  # a resumed round repeats it: nothing changes
    set_cohort(engine, c0_again, run.run_id, 0)
    set_cohort(engine, c1, run.run_id, 1)
    with pytest.raises(RatingloopError, match="has no cohort 7"):
        set_cohort(engine, register(engine, adapters[0], base), run.run_id, 7)
    with pytest.raises(RatingloopError, match="only a global candidate"):
        set_cohort(engine, glob, run.run_id, 1)

    assert promote_cohort(engine, c0, actor="test") == []
    assert promote_cohort(engine, c1, actor="test") == []
    assert promote_cohort(engine, c1, actor="test") == []  # a retried gate
    assert [get_version(engine, v).status for v in (glob, c0, c1)] == ["active", COHORT, COHORT]
    assert promote_cohort(engine, c0_again, actor="test", reason="better for cohort 0") == [c0]
    assert [get_version(engine, v).status for v in (glob, c0, c0_again)] == ["active", "retired", COHORT]
    assert {v.id for v in list_versions(engine, COHORT)} == {c0_again, c1}
    assert [e.action for e in list_events(engine)][-3:] == ["cohort", "cohort", "cohort"]

    with pytest.raises(RatingloopError, match="cannot become the global active version"):
        promote(engine, c1, actor="test")
    with pytest.raises(RatingloopError, match="serves that cohort's users"):
        set_traffic_share(engine, c1, 0.2, actor="test")
    with pytest.raises(RatingloopError, match="versions retire"):
        reject(engine, c1, actor="test", reasons=["no"])
    with engine.begin() as conn, pytest.raises(IntegrityError):  # the index: one serving version per cohort
        conn.execute(update(model_versions).where(model_versions.c.id == c0).values(status=COHORT))

    retire_cohort(engine, c1, actor="test", reason="users complained")
    assert get_version(engine, c1).status == "retired"
    assert list_events(engine)[-1].action == "retire"
    with pytest.raises(RatingloopError, match="not serving a cohort"):
        retire_cohort(engine, c1, actor="test")
    assert get_version(engine, glob).status == "active"  # the global version never moved


def test_routes_send_a_cohort_to_its_version_and_everyone_else_to_the_active_one(
        db_url: str, base: Path, adapters: list[Path], tmp_path: Path) -> None:
    from ratingloop.privacy import forget_user

    engine = open_engine(db_url)
    run, members = two_cohorts(engine)
    glob, c0 = register(engine, adapters[0], base), register(engine, adapters[1], base)
    promote(engine, glob, actor="test")
    set_cohort(engine, c0, run.run_id, 0)
    promote_cohort(engine, c0, actor="test")

    cache: dict = {}
    routes = load_routes(engine, members=cache)
    assert all(routes.pick(ACTIVE, u).version == c0 for u in members[0])
    assert all(routes.pick(ACTIVE, u).version == glob for u in members[1])  # no version of its own: the global one
    assert routes.pick(ACTIVE, "someone-new").version == glob
    assert routes.pick(ACTIVE, None).version == glob
    assert routes.pick(c0, members[1][0]).version == c0  # a named version answers whoever asks
    assert routes.pick("base", members[0][0]).version == "base"
    assert {t.version for t in routes.live} == {glob, c0}

    gone = members[0][0]
    forget_user(engine, gone, user_key=KEY, data_dir=tmp_path / "data")
    again = load_routes(engine, members=cache)
    assert again.pick(ACTIVE, gone).version == glob  # their weights went, and with them their cohort
    assert all(again.pick(ACTIVE, u).version == c0 for u in members[0][1:])


def test_a_refitted_cohort_replaces_the_older_runs_version(sqlite_url: str, base: Path, adapters: list[Path]) -> None:
    engine = open_engine(sqlite_url)
    first, members = two_cohorts(engine)
    old = register(engine, adapters[0], base)
    set_cohort(engine, old, first.run_id, 1)
    promote_cohort(engine, old, actor="test")
    second = record_personal(engine, PersonalConfig())  # the same users, refitted: cohort numbers may move
    minority = next(c.cohort for c in second.cohorts if c.cohort != 0)
    new = register(engine, adapters[1], base)
    set_cohort(engine, new, second.run_id, minority)
    assert promote_cohort(engine, new, actor="test") == [old]
    routes = load_routes(engine)
    assert {routes.pick(ACTIVE, u).version for u in members[1]} == {new}


def test_generate_routes_each_prompt_by_its_user(sqlite_url: str, base: Path, adapters: list[Path],
                                                  tmp_path: Path) -> None:
    engine = open_engine(sqlite_url)
    run, members = two_cohorts(engine)
    glob, c1 = register(engine, adapters[0], base), register(engine, adapters[1], base)
    promote(engine, glob, actor="test")
    set_cohort(engine, c1, run.run_id, 1)
    promote_cohort(engine, c1, actor="test")
    prompts = tmp_path / "prompts.jsonl"
    lines = [{"id": "a", "messages": ASK, "user": members[1][0]}, {"id": "b", "messages": ASK, "user": members[0][0]},
             {"id": "c", "messages": ASK}, {"id": "d", "messages": ASK, "user": members[1][1]}]
    prompts.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "answers.jsonl"
    cmd = [sys.executable, "-m", "ratingloop.cli", "generate", "--prompts", str(prompts), "--out", str(out),
           "--max-tokens", "6", "--db", sqlite_url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    answers = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(a["id"], a["version"]) for a in answers] == [("a", c1), ("b", glob), ("c", glob), ("d", c1)]
    assert answers[0]["response"] == answers[3]["response"] != answers[1]["response"]  # really other weights

    prompts.write_text(json.dumps({"id": "x", "messages": ASK, "user": ""}) + "\n")
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "line 1.user" in bad.stderr, bad.stderr


def test_serve_answers_a_cohort_user_with_their_cohort_version(settings: Settings, base: Path,
                                                              adapters: list[Path]) -> None:
    engine = open_engine(settings.url)
    run, members = two_cohorts(engine)
    glob, c1 = register(engine, adapters[0], base), register(engine, adapters[1], base)
    promote(engine, glob, actor="test")
    factory = backend_from_env({"RATINGLOOP_SERVE_BACKEND": "transformers", "RATINGLOOP_SERVE_MODEL": str(base)})
    app = create_app(settings.model_copy(update={"admin_key": ADMIN_KEY, "serve_registry_poll_s": 0.2}),
                     backend_factory=factory)
    with TestClient(app) as client:
        def served(user: str | None) -> str:
            body = {"messages": ASK, "max_tokens": 2} | ({"user": user} if user else {})
            r = client.post("/v1/chat/completions", headers=H, json=body)
            assert r.status_code == 200, r.text
            assert r.json()["ratingloop"]["version"] == r.json()["model"]
            return str(r.json()["model"])

        assert served(members[1][0]) == glob
        set_cohort(engine, c1, run.run_id, 1)
        promote_cohort(engine, c1, actor="test")
        deadline = time.monotonic() + 10
        while served(members[1][0]) != c1:  # the server notices the registry within its poll
            assert time.monotonic() < deadline, "the cohort version was not served within 10 s"
            time.sleep(0.1)
        assert {served(u) for u in members[1]} == {c1}
        assert {served(u) for u in members[0][:5]} == {glob}
        assert served("a-new-user") == glob and served(None) == glob


def test_versions_cli_serves_and_retires_a_cohort_version(sqlite_url: str, base: Path, adapters: list[Path]) -> None:
    from typer.testing import CliRunner

    from ratingloop.cli import app

    runner = CliRunner()
    engine = open_engine(sqlite_url)
    run, _ = two_cohorts(engine)
    c1 = register(engine, adapters[0], base)
    set_cohort(engine, c1, run.run_id, 1)
    plan = runner.invoke(app, ["versions", "promote", c1, "--db", sqlite_url])
    assert plan.exit_code == 1 and f"would serve {c1} to cohort 1 of personal run {run.run_id}" in plan.stderr
    done = runner.invoke(app, ["versions", "promote", c1, "--yes", "--db", sqlite_url])
    assert done.exit_code == 0 and f"{c1} serves cohort 1" in done.stdout, done.output
    rows = json.loads(runner.invoke(app, ["versions", "list", "--json", "--db", sqlite_url]).stdout)
    assert [(r["status"], r["cohort"], r["personal_run_id"]) for r in rows] == [(COHORT, 1, run.run_id)]
    retired = runner.invoke(app, ["versions", "retire", c1, "--reason", "try again", "--db", sqlite_url])
    assert retired.exit_code == 0 and "its users get the active version" in retired.stdout, retired.output
    assert get_version(engine, c1).status == "retired" and list_events(engine)[-1].reason == "try again"
    again = runner.invoke(app, ["versions", "retire", c1, "--db", sqlite_url])
    assert isinstance(again.exception, RatingloopError) and "not serving a cohort" in str(again.exception)
