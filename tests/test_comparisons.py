"""Comparative ratings - `preference` (two answers to one prompt) and `rank` (several, best first, ties allowed) -
through validation, the write path and its token rules, the API, import and export, stats, privacy deletion and
the latest-comparison rule; and the signals stage and the DPO builder, which use them. Both databases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import Engine, func, select
from typer.testing import CliRunner

from build_store import CASES, KEY, store_with
from ratingloop.cli import app as cli_app
from ratingloop.config import Settings
from ratingloop.dataset import BuildConfig, build_dataset
from ratingloop.errors import FieldError
from ratingloop.serve.app import create_app
from ratingloop.signals import load_signals, record_signals
from ratingloop.store import Limits, RatingIn, WriteUnit, delete_user, load_comparisons, open_engine, write_units
from ratingloop.store import tables as t
from ratingloop.store.jsonl import export_lines
from ratingloop.store.records import CleanRating, InteractionIn, clean_interaction, clean_rating, pydantic_errors

LIMITS = Limits()
ADMIN = {"Authorization": "Bearer test-admin-key"}
PLANS = [{"role": "user", "content": "Which plan fits a team of five?"}]  # the prompt the answers compared share
OTHER = [{"role": "user", "content": "Do you ship to Canada?"}]
runner = CliRunner()


def rate(**fields: Any) -> tuple[CleanRating | None, list[FieldError]]:
    """One rating through pydantic and the per-kind rules, as on line 'i-1' of an import."""
    try:
        raw = RatingIn.model_validate(fields)
    except ValidationError as e:
        return None, pydantic_errors(e)
    return clean_rating(raw, LIMITS, interaction_id="i-1")


def line_errors(iid: str, ratings: list[dict[str, Any]]) -> list[str]:
    body = {"id": iid, "messages": PLANS, "response": "x", "ratings": ratings}
    inter, errors = clean_interaction(InteractionIn.model_validate(body), LIMITS, lambda h: "i-" + h[:26])
    assert (inter is None) == bool(errors)
    return [f"{e.field}: {e.reason}" for e in errors]


# -- validation (store/records.py) ------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, value, strength", [
    ({"value": "a"}, 1.0, None),
    ({"value": "b", "strength": 0.5}, -1.0, 0.5),
    ({"value": "a", "strength": 1}, 1.0, 1.0),
    ({"value": "tie"}, 0.0, None),
])
def test_a_preference_is_stored_from_the_first_answers_side(fields: dict[str, Any], value: float,
                                                            strength: float | None) -> None:
    rating, errors = rate(kind="preference", other_interaction_id="i-2", **fields)
    assert errors == [] and rating is not None
    assert (rating.interaction_id, rating.other_interaction_id, rating.value, rating.strength) == (
        "i-1", "i-2", value, strength)
    assert rating.compared == ("i-1", "i-2") and rating.ranking is None and rating.scale_min is None


def test_a_rank_keeps_its_tiers_and_defaults_to_its_best_answer() -> None:
    rating, errors = rate(kind="rank", ranking=[["i-2"], ["i-1", "i-3"], ["i-4"]])
    assert errors == [] and rating is not None
    assert rating.ranking == [["i-2"], ["i-1", "i-3"], ["i-4"]] and rating.value is None
    assert rating.interaction_id == "i-1" and rating.compared == ("i-1", "i-2", "i-3", "i-4")
    # sent to the API, where no line names the interaction, a rank is the rating of its best answer
    alone, errors = clean_rating(RatingIn(kind="rank", ranking=[["i-9", "i-8"], ["i-7"]]), LIMITS)
    assert errors == [] and alone is not None and alone.interaction_id == "i-9"
    assert alone.compared == ("i-9", "i-8", "i-7")


@pytest.mark.parametrize("fields, field, reason_part", [
    ({"kind": "preference", "other_interaction_id": "i-2", "value": "c"}, "value", "'a', 'b' or 'tie'"),
    ({"kind": "preference", "other_interaction_id": "i-2", "value": 1}, "value", "'a', 'b' or 'tie'"),
    ({"kind": "preference", "other_interaction_id": "i-2"}, "value", "'a', 'b' or 'tie'"),
    ({"kind": "preference", "value": "a"}, "other_interaction_id", "required for kind 'preference'"),
    ({"kind": "preference", "other_interaction_id": "i-1", "value": "a"}, "other_interaction_id", "itself"),
    ({"kind": "preference", "other_interaction_id": "i-2", "value": "a", "strength": 0}, "strength", "(0, 1]"),
    ({"kind": "preference", "other_interaction_id": "i-2", "value": "a", "strength": 1.5}, "strength", "(0, 1]"),
    ({"kind": "preference", "other_interaction_id": "i-2", "value": "tie", "strength": 0.5}, "strength", "a tie"),
    ({"kind": "preference", "other_interaction_id": "i-2", "value": "a", "scale": [1, 5]}, "scale", "no scale"),
    ({"kind": "preference", "other_interaction_id": "i-2", "value": "a", "ranking": [["i-1"], ["i-2"]]}, "ranking",
     "only kind 'rank'"),
    ({"kind": "rank"}, "ranking", "required for kind 'rank'"),
    ({"kind": "rank", "ranking": [["i-1"]]}, "ranking", "at least 2"),
    ({"kind": "rank", "ranking": [["i-1", "i-2"], ["i-3", "i-1"]]}, "ranking[1][1]", "'i-1' twice"),
    ({"kind": "rank", "ranking": [["i-1"], [], ["i-2"]]}, "ranking[1]", "empty"),
    ({"kind": "rank", "ranking": [["i-2"], ["i-3"]]}, "ranking", "does not list 'i-1'"),
    ({"kind": "rank", "ranking": [["i-1"], ["i-2"]], "value": 1}, "value", "no value"),
    ({"kind": "rank", "ranking": [["i-1"], ["i-2"]], "strength": 0.5}, "strength", "only kind 'preference'"),
    ({"kind": "rank", "ranking": [["i-1"], ["i-2"]], "other_interaction_id": "i-3"}, "other_interaction_id",
     "only kind 'preference'"),
    ({"kind": "thumbs", "value": 1, "other_interaction_id": "i-2"}, "other_interaction_id", "only kind 'preference'"),
    ({"kind": "stars", "value": 4, "ranking": [["i-1"], ["i-2"]]}, "ranking", "only kind 'rank'"),
    ({"kind": "rank", "ranking": [["i-1"], ["bad\nid"]]}, "ranking", "control character"),
    ({"kind": "rank", "ranking": "i-1 > i-2"}, "ranking", "Input should be a valid list"),
])
def test_bad_comparisons_name_the_field(fields: dict[str, Any], field: str, reason_part: str) -> None:
    rating, errors = rate(**fields)
    assert rating is None
    assert [e.field for e in errors] == [field], errors
    assert reason_part in errors[0].reason and errors[0].status == 422


def test_a_comparison_on_an_import_line_compares_that_lines_answer() -> None:
    # on its own line, or on the line of the other answer it names
    assert line_errors("c-2", [{"kind": "preference", "other_interaction_id": "c-1", "value": "b"}]) == []
    assert line_errors("c-2", [{"kind": "preference", "interaction_id": "c-1", "other_interaction_id": "c-2",
                                "value": "a"}]) == []
    assert line_errors("c-3", [{"kind": "rank", "interaction_id": "c-1", "ranking": [["c-1"], ["c-3"]]}]) == []
    # not on the line of an answer it does not compare
    assert line_errors("c-3", [{"kind": "preference", "interaction_id": "c-1", "other_interaction_id": "c-2",
                                "value": "a"}]) == [
        "ratings[0].interaction_id: a comparison on this line must compare its interaction 'c-3'; "
        "it compares 'c-1', 'c-2'"]
    assert line_errors("c-3", [{"kind": "thumbs", "interaction_id": "c-1", "value": 1}]) == [
        "ratings[0].interaction_id: 'c-1' is not this line's id 'c-3'; leave it out"]
    assert line_errors("c-3", [{"kind": "rank", "ranking": [["c-1"], ["c-2"]]}]) == [
        "ratings[0].ranking: does not list 'c-3', the interaction it rates"]


# -- the write path: prompts, unknown answers, the token rule (store/writes.py) ------------------------------

def inter(iid: str, user: str | None = "u1", messages: list[dict[str, Any]] = PLANS,
          ratings: list[dict[str, Any]] | None = None) -> Any:
    body = {"id": iid, "messages": messages, "response": f"answer {iid}", "created_at": "2026-01-01T00:00:00Z",
            "ratings": ratings or [], **({"user_id": user} if user else {})}
    clean, errors = clean_interaction(InteractionIn.model_validate(body), LIMITS, lambda h: "i-" + h[:26])
    assert clean is not None, errors
    return clean


def rating(**fields: Any) -> CleanRating:
    clean, errors = clean_rating(RatingIn.model_validate(fields), LIMITS)
    assert clean is not None, errors
    return clean


@pytest.fixture
def engine(db_url: str) -> Engine:
    engine = open_engine(db_url)
    seeded = write_units(engine, [WriteUnit(interactions=[inter("x1"), inter("x2"), inter("x3", user="u2"),
                                                          inter("x4", user=None), inter("y1", messages=OTHER)])],
                         user_key=KEY)
    assert seeded[0].ok, seeded[0].errors
    return engine


def write(engine: Engine, *ratings: CleanRating, vouched: bool = True) -> Any:
    [result] = write_units(engine, [WriteUnit(ratings=list(ratings), vouched=vouched)], user_key=KEY)
    return result


def n_ratings(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return (conn.execute(select(func.count()).select_from(t.ratings)).scalar_one(),
                conn.execute(select(func.count()).select_from(t.compared_interactions)).scalar_one())


def test_comparisons_are_stored_with_every_answer_they_name(engine: Engine) -> None:
    pref = rating(interaction_id="x1", kind="preference", other_interaction_id="x3", value="b", strength=0.8,
                  rater_id="ann", source="annotator", idempotency_key="p-1")
    rank = rating(kind="rank", ranking=[["x3"], ["x1", "x4"], ["x2"]], rater_id="ann")
    result = write(engine, pref, rank)
    assert result.ok and [status for _, status in result.ratings] == [201, 201]
    assert n_ratings(engine) == (2, 6)
    with engine.connect() as conn:
        rows = {r.kind: r for r in conn.execute(select(t.ratings))}
        links = sorted(conn.execute(select(t.compared_interactions.c.rating_id,
                                           t.compared_interactions.c.interaction_id)).all())
    assert (rows["preference"].interaction_id, rows["preference"].other_interaction_id, rows["preference"].value,
            rows["preference"].strength, rows["preference"].ranking) == ("x1", "x3", -1.0, 0.8, None)
    assert (rows["rank"].interaction_id, rows["rank"].ranking, rows["rank"].value) == (
        "x3", [["x3"], ["x1", "x4"], ["x2"]], None)
    assert links == sorted([(rows["preference"].id, "x1"), (rows["preference"].id, "x3")]
                           + [(rows["rank"].id, x) for x in ("x1", "x2", "x3", "x4")])
    # the same key and body again is a replay; another answer under the same key a conflict
    again = write(engine, pref)
    assert again.ok and again.ratings[0][1] == 200 and again.ratings[0][0]["id"] == rows["preference"].id
    other = rating(interaction_id="x1", kind="preference", other_interaction_id="x2", value="b", strength=0.8,
                   rater_id="ann", source="annotator", idempotency_key="p-1")
    assert [(e.field, e.status) for e in write(engine, other).errors] == [("idempotency_key", 409)]
    assert n_ratings(engine) == (2, 6)


@pytest.mark.parametrize("fields, field, status, reason_part", [
    ({"interaction_id": "x1", "kind": "preference", "other_interaction_id": "y1", "value": "a"},
     "other_interaction_id", 422, "answers another prompt than 'x1'"),
    ({"interaction_id": "x1", "kind": "preference", "other_interaction_id": "nope", "value": "a"},
     "other_interaction_id", 404, "no interaction 'nope'"),
    ({"interaction_id": "nope", "kind": "preference", "other_interaction_id": "x1", "value": "a"},
     "interaction_id", 404, "no interaction 'nope'"),
    ({"kind": "rank", "ranking": [["x1"], ["x2", "y1"]]}, "ranking[1][1]", 422, "answers another prompt than 'x1'"),
    ({"kind": "rank", "ranking": [["x1"], ["x2"], ["gone"]]}, "ranking[2][0]", 404, "no interaction 'gone'"),
])
def test_a_comparison_of_other_prompts_or_unknown_answers_stores_nothing(
        engine: Engine, fields: dict[str, Any], field: str, status: int, reason_part: str) -> None:
    good = rating(interaction_id="x1", kind="thumbs", value=1)
    result = write(engine, good, rating(**fields))
    assert [(e.field, e.status) for e in result.errors] == [(field, status)], result.errors
    assert reason_part in result.errors[0].reason
    assert n_ratings(engine) == (0, 0)  # the unit's good thumbs did not land either


def test_a_token_compares_only_answers_served_to_its_own_user(engine: Engine) -> None:
    mine = rating(interaction_id="x1", kind="preference", other_interaction_id="x2", value="a")
    result = write(engine, mine, vouched=False)
    assert result.ok and result.ratings[0][0]["rater_id"] == "u1"
    theirs = rating(interaction_id="x1", kind="preference", other_interaction_id="x3", value="a")
    refused = write(engine, theirs, vouched=False)
    assert [(e.field, e.status) for e in refused.errors] == [("other_interaction_id", 403)]
    assert "only answers served to its own user" in refused.errors[0].reason
    ranked = rating(kind="rank", ranking=[["x1"], ["x2", "x3"]])
    assert [(e.field, e.status) for e in write(engine, ranked, vouched=False).errors] == [("ranking[1][1]", 403)]
    # an anonymous asker is a user of one answer: there is nothing of theirs to compare it with
    anon = rating(interaction_id="x4", kind="preference", other_interaction_id="x1", value="a")
    assert [(e.field, e.status) for e in write(engine, anon, vouched=False).errors] == [("other_interaction_id", 403)]
    assert n_ratings(engine) == (1, 2)
    # the admin key vouches for its rater: any answers to one prompt
    assert write(engine, theirs, ranked, anon).ok


# -- privacy, stats, the latest comparison ------------------------------------------------------------------------

def test_deleting_a_user_removes_the_comparisons_of_their_answers_and_the_ones_they_gave(engine: Engine) -> None:
    kept = rating(interaction_id="x3", kind="preference", other_interaction_id="x4", value="a", rater_id="ann")
    write(engine,
          rating(interaction_id="x3", kind="preference", other_interaction_id="x1", value="a", rater_id="ann"),
          rating(kind="rank", ranking=[["x3", "x4"], ["x2"]], rater_id="ann"),  # names u1's x2 last
          rating(interaction_id="x3", kind="preference", other_interaction_id="x4", value="b", rater_id="u1"),
          kept)
    assert n_ratings(engine) == (4, 9)
    footprint = delete_user(engine, "u1", user_key=KEY)
    assert (footprint.interactions, footprint.ratings) == (3, 3)  # x1, x2, y1; every comparison but `kept`
    with engine.connect() as conn:
        left = conn.execute(select(t.ratings.c.interaction_id, t.ratings.c.other_interaction_id,
                                   t.ratings.c.rater_id, t.ratings.c.value)).all()
    assert left == [("x3", "x4", "ann", 1.0)]
    assert n_ratings(engine) == (1, 2)


def test_stats_count_comparisons_by_kind(db_url: str, engine: Engine) -> None:
    write(engine, rating(interaction_id="x1", kind="preference", other_interaction_id="x2", value="tie"),
          rating(kind="rank", ranking=[["x1"], ["x2"], ["x3"]]), rating(interaction_id="x1", kind="thumbs", value=1))
    result = runner.invoke(cli_app, ["stats", "--json", "--db", db_url])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["ratings_by_kind"] == {"preference": 1, "rank": 1, "thumbs": 1}
    assert (stats["ratings"], stats["raters"]) == (3, 1)
    assert stats["rated_interactions"] == 3  # x2 and x3 were rated only through comparisons, and count


def test_a_later_comparison_by_the_same_rater_of_the_same_answers_supersedes_the_earlier(engine: Engine) -> None:
    def at(minute: int, **fields: Any) -> CleanRating:
        return rating(created_at=f"2026-02-01T10:{minute:02d}:00Z", **fields)

    write(engine,
          at(0, interaction_id="x1", kind="preference", other_interaction_id="x2", value="a", rater_id="ann"),
          at(1, interaction_id="x2", kind="preference", other_interaction_id="x1", value="tie", rater_id="ann"),
          at(2, interaction_id="x1", kind="preference", other_interaction_id="x2", value="b", rater_id="bob",
             strength=0.4),
          at(3, kind="rank", ranking=[["x3"], ["x1"], ["x2"]], rater_id="ann"),
          at(4, interaction_id="x1", kind="preference", other_interaction_id="x2", value="a", rater_id="ann",
             aspect="accuracy"),
          at(5, kind="rank", ranking=[["x2"], ["x1", "x3"]], rater_id="ann"),
          at(6, kind="rank", ranking=[["x1"], ["x2"]], rater_id="bob"))
    got = [(c.rater_id, c.kind, c.aspect, c.tiers, c.strength) for c in load_comparisons(engine)]
    assert got == [
        ("ann", "preference", "overall", (("x2", "x1"),), None),  # ann's tie over {x1, x2} replaced her "a"
        ("ann", "preference", "accuracy", (("x1",), ("x2",)), None),  # another aspect: a comparison of its own
        ("ann", "rank", "overall", (("x2",), ("x1", "x3")), None),  # replaced her earlier rank of the same three
        ("bob", "rank", "overall", (("x1",), ("x2",)), None),  # a rank of the pair replaced bob's preference
    ]
    assert len(load_comparisons(engine, latest=False)) == 7


# -- the HTTP API -------------------------------------------------------------------------------------------------

@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def log(client: TestClient, user: str, messages: list[dict[str, Any]] = PLANS) -> tuple[str, str]:
    r = client.post("/v1/interactions", json={"messages": messages, "response": f"answer for {user}",
                                              "user_id": user}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return r.json()["id"], r.json()["feedback_token"]


def stored(client: TestClient) -> int:
    return client.get("/v1/stats", headers=ADMIN).json()["ratings"]


def test_the_api_takes_comparisons_with_a_token_of_one_of_its_users_answers(client: TestClient) -> None:
    a, token = log(client, "u1")
    b, _ = log(client, "u1")
    c, _ = log(client, "u2")
    elsewhere, _ = log(client, "u1", OTHER)
    auth = {"Authorization": f"Bearer {token}"}
    body = {"interaction_id": a, "kind": "preference", "other_interaction_id": b, "value": "b", "strength": 0.9,
            "idempotency_key": "k-1"}
    first = client.post("/v1/feedback", json=body, headers=auth)
    assert first.status_code == 201, first.text
    row = first.json()
    assert {k: row[k] for k in ("interaction_id", "other_interaction_id", "kind", "value", "strength", "rater_id",
                                "source")} == {
        "interaction_id": a, "other_interaction_id": b, "kind": "preference", "value": "b", "strength": 0.9,
        "rater_id": "u1", "source": "end_user"}
    assert client.post("/v1/feedback", json=body, headers=auth).json() == row  # 200, the same rating
    for changes, status, field in [
        ({"other_interaction_id": c}, 403, "other_interaction_id"),  # another user's answer
        ({"other_interaction_id": elsewhere}, 422, "other_interaction_id"),  # another prompt
        ({"other_interaction_id": "nope"}, 404, "other_interaction_id"),
        ({"value": "maybe"}, 422, "value"),
        ({"interaction_id": b, "other_interaction_id": a}, 403, "interaction_id"),  # the token is a's
    ]:
        r = client.post("/v1/feedback", json={**body, **changes, "idempotency_key": "k-2"}, headers=auth)
        assert (r.status_code, r.json()["error"]["param"]) == (status, field), (changes, r.text)
    # a rank sent with a token is stored under the token's interaction, which it must list
    ranked = client.post("/v1/feedback", json={"kind": "rank", "ranking": [[b], [a]]}, headers=auth)
    assert ranked.status_code == 201 and ranked.json()["ranking"] == [[b], [a]]
    assert ranked.json()["interaction_id"] == a and ranked.json()["rater_id"] == "u1"
    r = client.post("/v1/feedback", json={"kind": "rank", "ranking": [[b], [c]]}, headers=auth)
    assert (r.status_code, r.json()["error"]["param"]) == (422, "ranking") and repr(a) in r.text
    assert stored(client) == 2


def test_a_batch_with_a_bad_comparison_stores_nothing_and_names_it(client: TestClient) -> None:
    a, _ = log(client, "u1")
    b, _ = log(client, "u2")
    elsewhere, _ = log(client, "u3", OTHER)
    items = [{"interaction_id": a, "kind": "thumbs", "value": 1},
             {"interaction_id": a, "kind": "preference", "other_interaction_id": b, "value": "a"},
             {"kind": "rank", "ranking": [[a], [b, a]]},
             {"kind": "rank", "ranking": [[b], [elsewhere]]}]
    r = client.post("/v1/feedback/batch", json={"items": items}, headers=ADMIN)
    assert r.status_code == 422 and [e["field"] for e in r.json()["errors"]] == ["items[2].ranking[1][1]"]
    r = client.post("/v1/feedback/batch", json={"items": items[:2] + items[3:]}, headers=ADMIN)
    assert r.status_code == 422 and [e["field"] for e in r.json()["errors"]] == ["items[2].ranking[1][0]"]
    assert stored(client) == 0
    r = client.post("/v1/feedback/batch", json={"items": items[:2]}, headers=ADMIN)
    assert r.status_code == 201 and r.json()["created"] == 2


def test_the_openapi_schema_describes_comparisons(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()["components"]["schemas"]["RatingIn"]
    props = schema["properties"]
    assert {"preference", "rank"} <= set(props["kind"]["enum"])
    assert {"other_interaction_id", "strength", "ranking"} <= set(props)
    assert "best first" in props["ranking"]["description"] and "(0, 1]" in props["strength"]["description"]


# -- import and export (store/jsonl.py) ----------------------------------------------------------------------------

def answer(iid: str, minute: int, user: str, ratings: list[dict[str, Any]] | None = None,
           messages: list[dict[str, Any]] = PLANS) -> dict[str, Any]:
    return {"id": iid, "messages": messages, "response": f"answer {iid}", "user_id": user,
            "created_at": f"2026-11-01T10:{minute:02d}:00Z", "ratings": ratings or []}


COMPARED = [
    answer("p-1", 1, "u1", [{"rater_id": "u1", "kind": "thumbs", "value": 1}]),
    answer("p-2", 2, "u2"),
    # a comparison names answers on earlier lines, or its own
    answer("p-3", 3, "u3", [
        {"rater_id": "ann", "kind": "preference", "other_interaction_id": "p-1", "value": "a", "strength": 0.7,
         "created_at": "2026-11-02T08:00:00Z"},
        {"rater_id": "ann", "kind": "rank", "ranking": [["p-2"], ["p-1", "p-3"]], "interaction_id": "p-1",
         "created_at": "2026-11-02T09:00:00Z"},
        {"rater_id": "bob", "kind": "preference", "interaction_id": "p-1", "other_interaction_id": "p-3",
         "value": "tie", "created_at": "2026-11-02T10:00:00Z"}]),
    # older than the others, so exported first: its comparison moves to the line of p-3, which it names
    answer("p-0", 0, "u4", [{"rater_id": "cid", "kind": "preference", "other_interaction_id": "p-3", "value": "b",
                             "created_at": "2025-01-01T00:00:00Z"}]),
]


def write_lines(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def run_import(url: str, path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = runner.invoke(cli_app, ["import", str(path), "--db", url, "--json", *args])
    return result.exit_code, json.loads(result.stdout)


def test_import_export_import_keeps_every_comparison(db_url: str, tmp_path: Path) -> None:
    code, report = run_import(db_url, write_lines(tmp_path / "in.jsonl", COMPARED))
    assert code == 0 and (report["interactions_new"], report["ratings_new"], report["bad_lines"]) == (4, 5, [])
    first = tmp_path / "first.jsonl"
    assert runner.invoke(cli_app, ["export", "--format", "raw", "--out", str(first), "--db", db_url]).exit_code == 0
    exported = [json.loads(x) for x in first.read_text().splitlines()]
    assert [x["id"] for x in exported] == ["p-0", "p-1", "p-2", "p-3"]
    by_line = {x["id"]: [(r.get("interaction_id", x["id"]), r["kind"], r.get("value")) for r in x["ratings"]]
               for x in exported}
    assert by_line == {"p-0": [], "p-1": [("p-1", "thumbs", 1)], "p-2": [],
                       "p-3": [("p-0", "preference", "b"), ("p-3", "preference", "a"), ("p-1", "rank", None),
                               ("p-1", "preference", "tie")]}
    compared = {r["kind"] + r["rater_id"]: r for r in exported[3]["ratings"]}
    assert compared["rankann"]["ranking"] == [["p-2"], ["p-1", "p-3"]]
    assert compared["preferenceann"]["strength"] == 0.7 and compared["preferenceann"]["other_interaction_id"] == "p-1"
    assert "strength" not in compared["preferencebob"]
    # the same when every page of the export holds one interaction: comparisons wait across pages
    assert b"".join(export_lines(open_engine(db_url), page=1)) == first.read_bytes()

    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    code, again = run_import(fresh, first)
    assert code == 0 and (again["ratings_new"], again["bad_lines"]) == (5, [])
    second = tmp_path / "second.jsonl"
    assert runner.invoke(cli_app, ["export", "--out", str(second), "--db", fresh]).exit_code == 0
    assert second.read_bytes() == first.read_bytes()
    # and into the store it came from: nothing new
    code, back = run_import(db_url, first)
    assert code == 0 and (back["ratings_new"], back["ratings_existing"]) == (0, 5)


def test_import_refuses_a_comparison_of_a_later_line_or_another_prompt(db_url: str, tmp_path: Path) -> None:
    lines = [answer("q-1", 0, "u1", [{"rater_id": "ann", "kind": "preference", "other_interaction_id": "q-2",
                                      "value": "a"}]),
             answer("q-2", 1, "u1"),
             answer("q-3", 2, "u1", [{"rater_id": "ann", "kind": "rank", "ranking": [["q-3"], ["q-2"], ["q-9"]]}]),
             answer("q-4", 3, "u1", [{"rater_id": "ann", "kind": "rank", "ranking": [["q-4", "q-4"]]}]),
             answer("q-5", 4, "u1", [{"rater_id": "ann", "kind": "preference", "other_interaction_id": "q-2",
                                      "value": "a"}], messages=OTHER)]
    code, report = run_import(db_url, write_lines(tmp_path / "in.jsonl", lines))
    assert code == 1
    bad = {b["line"]: [(e["field"], e["reason"]) for e in b["errors"]] for b in report["bad_lines"]}
    assert [(n, [field for field, _ in errors]) for n, errors in bad.items()] == [
        (1, ["ratings[0].other_interaction_id"]), (3, ["ratings[0].ranking[2][0]"]),
        (4, ["ratings[0].ranking[0][1]"]), (5, ["ratings[0].other_interaction_id"])]
    assert "no interaction 'q-2'" in bad[1][0][1] and "no interaction 'q-9'" in bad[3][0][1]
    assert "'q-4' twice" in bad[4][0][1] and "'q-2' answers another prompt than 'q-5'" in bad[5][0][1]
    assert (report["interactions_new"], report["ratings_new"]) == (1, 0)  # q-2 alone


# -- the signals stage and the builders read comparisons -----------------------------------------------------------

def with_comparisons(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    extra = {"good-5": [{"rater_id": "r1", "kind": "preference", "other_interaction_id": "bad-5", "value": "a"}],
             "bad-1": [{"rater_id": "r2", "kind": "rank", "ranking": [["good-1"], ["good-1-again", "bad-1"]]},
                       {"rater_id": "u1", "kind": "preference", "other_interaction_id": "good-1", "value": "tie"}]}
    return [dict(x, ratings=x["ratings"] + extra.get(x["id"], [])) for x in lines]


def test_signals_count_comparisons_as_ratings_of_every_answer_they_name(db_url: str, tmp_path: Path) -> None:
    plain = store_with(f"sqlite:///{tmp_path / 'plain.db'}", CASES, signals=False)
    compared = store_with(db_url, with_comparisons(CASES), signals=False)
    runs = [record_signals(engine) for engine in (plain, compared)]
    assert runs[1].summary["n_ratings"] == runs[0].summary["n_ratings"] + 3
    assert runs[1].summary["n_counted"] == runs[0].summary["n_counted"] + 3
    rewards = [{s.interaction_id: (s.reward, s.n_ratings) for s in load_signals(e).interactions}
               for e in (plain, compared)]
    assert rewards[0].keys() == rewards[1].keys() and len(rewards[0]) == len(CASES)
    more = {"good-5": 1, "bad-5": 1, "good-1": 2, "good-1-again": 1, "bad-1": 2}  # each comparison naming it
    assert {iid: n - rewards[0][iid][1] for iid, (_, n) in rewards[1].items()} == {
        iid: more.get(iid, 0) for iid in rewards[0]}
    assert rewards[1]["good-5"][0] > rewards[1]["bad-5"][0]
    for fmt in ("dpo", "sft", "kto", "reward"):  # the run read every rating, comparisons too: nothing is stale
        built = build_dataset(compared, fmt, tmp_path / "compared" / fmt, BuildConfig())
        assert not [w for w in built.warnings if "arrived after" in w]
        if fmt == "dpo":  # r1's preference is a pair; good-1 vs bad-1 has r2's win and u1's tie: no comparison pair
            section = built.manifest["comparisons"]
            assert (section["comparisons"], section["pairs"]) == (3, 1)
            assert section["dropped"] | {"split": 1, "same_answer": 1} == section["dropped"]
            plain_dpo = build_dataset(plain, fmt, tmp_path / "plain" / fmt, BuildConfig())
            assert built.content_hash == plain_dpo.content_hash  # the same pairs: the rewards made them too
