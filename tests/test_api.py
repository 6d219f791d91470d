"""The HTTP feedback API through the real app (lifespan and group-commit writer running), on both databases."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from ratingloop.config import Settings
from ratingloop.serve.app import create_app
from ratingloop.serve.auth import TokenSigner
from ratingloop.store import open_engine
from ratingloop.store.tables import Rating

ADMIN = {"Authorization": "Bearer test-admin-key"}
MSGS = [{"role": "user", "content": "When is my refund due?"}]


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def log(client: TestClient, **fields: Any) -> tuple[str, str]:
    r = client.post("/v1/interactions", json={"messages": MSGS, "response": "On the 3rd.", **fields}, headers=ADMIN)
    assert r.status_code in (200, 201), r.text
    return r.json()["id"], r.json()["feedback_token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def stats(client: TestClient) -> dict[str, Any]:
    r = client.get("/v1/stats", headers=ADMIN)
    assert r.status_code == 200, r.text
    return r.json()


def counts(client: TestClient) -> tuple[int, int]:
    s = stats(client)
    return s["interactions"], s["ratings"]


def assert_error(r: Any, status: int, field: str | None, reason_part: str = "") -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["param"] == field
    if field is not None:
        assert body["errors"][0]["field"] == field
    assert reason_part in body["error"]["message"]
    return body


# -- interactions -------------------------------------------------------------------------------------------

def test_log_interaction_returns_id_token_and_header(client: TestClient) -> None:
    r = client.post("/v1/interactions", json={"messages": MSGS, "response": "On the 3rd.", "user_id": "u1",
                                               "tags": {"area": "billing"}, "product": "chat"}, headers=ADMIN)
    assert r.status_code == 201
    body = r.json()
    assert body["id"] and r.headers["X-Interaction-Id"] == body["id"]
    assert body["feedback_token"].startswith("fbt1.")
    assert body["ratings"] == []
    assert counts(client) == (1, 0)


def test_log_interaction_with_client_id_replays_and_conflicts(client: TestClient) -> None:
    body = {"id": "c-1", "messages": MSGS, "response": "On the 3rd.", "user_id": "u1",
            "ratings": [{"kind": "thumbs", "value": 1, "idempotency_key": "k"}]}
    first = client.post("/v1/interactions", json=body, headers=ADMIN)
    assert first.status_code == 201 and first.json()["id"] == "c-1"
    assert [(x["rater_id"], x["value"]) for x in first.json()["ratings"]] == [("u1", 1)]
    again = client.post("/v1/interactions", json=body, headers=ADMIN)
    assert again.status_code == 200
    assert again.json()["feedback_token"] == first.json()["feedback_token"]
    assert again.json()["ratings"][0]["id"] == first.json()["ratings"][0]["id"]
    conflict = client.post("/v1/interactions", json={**body, "response": "On the 4th."}, headers=ADMIN)
    assert_error(conflict, 409, "id", "already exists with different content")
    assert counts(client) == (1, 1)


@pytest.mark.parametrize("body, field", [
    ({"response": "x"}, "messages"),
    ({"messages": MSGS}, "response"),
    ({"messages": [{"role": "robot", "content": "x"}], "response": "x"}, "messages[0].role"),
    ({"messages": MSGS, "response": "x", "ratings": [{"kind": "thumbs", "value": 1}, {"kind": "stars", "value": 9}]},
     "ratings[1].value"),
])
def test_invalid_interaction_is_422_naming_the_field(client: TestClient, body: dict[str, Any], field: str) -> None:
    assert_error(client.post("/v1/interactions", json=body, headers=ADMIN), 422, field)
    assert counts(client) == (0, 0)


# -- feedback: status codes -----------------------------------------------------------------------------------

def test_feedback_201_new_then_200_replay(client: TestClient) -> None:
    iid, _ = log(client, user_id="u1")
    body = {"interaction_id": iid, "kind": "stars", "value": 4, "idempotency_key": "k-1"}
    first = client.post("/v1/feedback", json=body, headers=ADMIN)
    assert first.status_code == 201
    row = first.json()
    assert (row["interaction_id"], row["kind"], row["value"], row["scale"], row["rater_id"]) == (
        iid, "stars", 4, [1, 5], "u1")
    assert row["idempotency_key"] == "k-1"
    again = client.post("/v1/feedback", json=body, headers=ADMIN)
    assert again.status_code == 200
    assert again.json() == row  # the original rating, same id and created_at
    assert counts(client) == (1, 1)


def test_feedback_409_same_key_other_body_stores_nothing(client: TestClient) -> None:
    iid, _ = log(client)
    body = {"interaction_id": iid, "kind": "stars", "value": 4, "idempotency_key": "k-1"}
    assert client.post("/v1/feedback", json=body, headers=ADMIN).status_code == 201
    r = client.post("/v1/feedback", json={**body, "value": 2}, headers=ADMIN)
    assert_error(r, 409, "idempotency_key", "already used for a different rating")
    assert r.json()["error"]["code"] == "conflict"
    assert counts(client) == (1, 1)


def test_feedback_404_unknown_interaction(client: TestClient) -> None:
    r = client.post("/v1/feedback", json={"interaction_id": "nope", "kind": "thumbs", "value": 1}, headers=ADMIN)
    assert_error(r, 404, "interaction_id", "no interaction 'nope'")
    assert counts(client) == (0, 0)


def test_feedback_401_without_or_with_bad_credentials(client: TestClient, settings: Settings) -> None:
    iid, _ = log(client)
    body = {"interaction_id": iid, "kind": "thumbs", "value": 1}
    cases = [
        {},
        bearer("wrong-admin-key"),
        bearer("fbt1.garbage"),
        bearer(TokenSigner(b"another secret").sign(iid)),  # a token this server never issued
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer "},
    ]
    for headers in cases:
        r = client.post("/v1/feedback", json=body, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.json()["error"]["type"] == "authentication_error"
    forged = client.post("/v1/feedback", json={**body, "feedback_token": TokenSigner(b"x").sign(iid)})
    assert forged.status_code == 401
    for method, path in [("post", "/v1/interactions"), ("get", "/v1/stats"), ("delete", "/v1/users/u1"),
                         ("post", "/v1/feedback/batch")]:
        kwargs = {"json": {"items": [body]}} if path.endswith("batch") else (
            {"json": {"messages": MSGS, "response": "x"}} if method == "post" else {})
        assert getattr(client, method)(path, **kwargs).status_code == 401, path
    assert counts(client) == (1, 0)


def test_feedback_403_token_of_another_interaction(client: TestClient) -> None:
    a, token_a = log(client, user_id="u1")
    b, _ = log(client, user_id="u2")
    r = client.post("/v1/feedback", json={"interaction_id": b, "kind": "thumbs", "value": -1}, headers=bearer(token_a))
    assert_error(r, 403, "interaction_id", "another interaction")
    r = client.post("/v1/feedback",
                    json={"interaction_id": b, "kind": "thumbs", "value": -1, "feedback_token": token_a})
    assert r.status_code == 403
    assert counts(client) == (2, 0)


def test_feedback_403_token_naming_another_rater(client: TestClient) -> None:
    iid, token = log(client, user_id="u1")
    r = client.post("/v1/feedback", json={"interaction_id": iid, "kind": "thumbs", "value": 1, "rater_id": "u2"},
                    headers=bearer(token))
    assert_error(r, 403, "rater_id", "only the admin key may name another rater")
    assert counts(client) == (1, 0)
    # naming yourself is fine
    r = client.post("/v1/feedback", json={"interaction_id": iid, "kind": "thumbs", "value": 1, "rater_id": "u1"},
                    headers=bearer(token))
    assert r.status_code == 201


def test_feedback_403_token_on_admin_endpoints(client: TestClient) -> None:
    iid, token = log(client, user_id="u1")
    for method, path, kwargs in [
        ("get", "/v1/stats", {}),
        ("delete", "/v1/users/u1", {}),
        ("post", "/v1/interactions", {"json": {"messages": MSGS, "response": "x"}}),
    ]:
        r = getattr(client, method)(path, headers=bearer(token), **kwargs)
        assert r.status_code == 403, (path, r.text)
        assert r.json()["error"]["type"] == "permission_error"
    assert counts(client) == (1, 0)  # the user was not deleted, nothing was logged


@pytest.mark.parametrize("body, field, reason", [
    ({"kind": "thumbs", "value": 0}, "value", "thumbs must be 1 or -1"),
    ({"kind": "thumbs", "value": "maybe"}, "value", "thumbs must be 1 or -1"),
    ({"kind": "stars", "value": 6}, "value", "outside the scale [1, 5]"),
    ({"kind": "scale", "value": 3}, "scale", "required for kind 'scale'"),
    ({"kind": "aspect", "value": 3}, "aspect", "required for kind 'aspect'"),
    ({"kind": "aspect", "aspect": "tone", "value": 3}, "aspect", "unknown aspect"),
    ({"kind": "comment"}, "text", "required for kind 'comment'"),
    ({"kind": "comment", "text": "x" * 10_001}, "text", "the limit is 10000"),
    ({"kind": "implicit", "signal": "like"}, "signal", "unknown signal"),
    ({"kind": "maybe", "value": 1}, "kind", ""),
    ({"value": 1}, "kind", "Field required"),
    ({"kind": "thumbs", "value": 1, "colour": "red"}, "colour", "unknown field"),
    ({"kind": "thumbs", "value": 1, "source": "robot"}, "source", ""),
])
def test_feedback_422_names_the_field(client: TestClient, body: dict[str, Any], field: str, reason: str) -> None:
    iid, _ = log(client)
    r = client.post("/v1/feedback", json={"interaction_id": iid, **body}, headers=ADMIN)
    payload = assert_error(r, 422, field, reason)
    assert payload["error"]["code"] == "invalid_value"
    assert counts(client) == (1, 0)


def test_feedback_422_missing_interaction_id_and_bad_json(client: TestClient) -> None:
    assert_error(client.post("/v1/feedback", json={"kind": "thumbs", "value": 1}, headers=ADMIN), 422,
                 "interaction_id", "required")
    r = client.post("/v1/feedback", content=b'{"kind": "thumbs",',
                    headers={**ADMIN, "Content-Type": "application/json"})
    assert_error(r, 422, "body", "not valid JSON")
    assert counts(client) == (0, 0)


def test_comment_of_exactly_10000_chars_is_accepted(client: TestClient) -> None:
    iid, _ = log(client)
    r = client.post("/v1/feedback", json={"interaction_id": iid, "kind": "comment", "text": "y" * 10_000},
                    headers=ADMIN)
    assert r.status_code == 201 and len(r.json()["text"]) == 10_000


def test_413_body_over_the_limit(db_url: str, tmp_path: Path) -> None:
    small = Settings(database_url=db_url, data_dir=tmp_path / "data", admin_key="test-admin-key",
                     max_request_bytes=2_000)
    with TestClient(create_app(small)) as client:
        iid, _ = log(client)
        body = {"interaction_id": iid, "kind": "comment", "text": "z" * 3_000}
        r = client.post("/v1/feedback", json=body, headers=ADMIN)
        assert_error(r, 413, "body", "the limit is 2000")
        assert r.json()["error"]["code"] == "request_too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted as the body arrives
            data = b'{"interaction_id": "%s", "kind": "comment", "text": "%s"}' % (iid.encode(), b"z" * 3_000)
            for i in range(0, len(data), 500):
                yield data[i:i + 500]

        r = client.post("/v1/feedback", content=chunks(), headers={**ADMIN, "Content-Type": "application/json"})
        assert_error(r, 413, "body", "over the limit of 2000 bytes")
        assert counts(client) == (1, 0)
        small_ok = client.post("/v1/feedback", json={**body, "text": "z" * 100}, headers=ADMIN)
        assert small_ok.status_code == 201


# -- rater identity ---------------------------------------------------------------------------------------------

def test_token_rating_is_the_interactions_user(client: TestClient, db_url: str) -> None:
    iid, token = log(client, user_id="u1")
    r = client.post("/v1/feedback", json={"interaction_id": iid, "kind": "thumbs", "value": "up",
                                          "source": "annotator"}, headers=bearer(token))
    assert_error(r, 403, "source", "only the admin key may send source 'annotator'")  # refused, not rewritten
    r = client.post("/v1/feedback", json={"interaction_id": iid, "kind": "thumbs", "value": "up",
                                          "source": "end_user"}, headers=bearer(token))
    assert r.status_code == 201
    assert (r.json()["rater_id"], r.json()["source"], r.json()["value"]) == ("u1", "end_user", 1)
    # the token may also travel in the body
    r = client.post("/v1/feedback", json={"interaction_id": iid, "kind": "stars", "value": 2, "feedback_token": token})
    assert r.status_code == 201 and r.json()["rater_id"] == "u1"
    anon, anon_token = log(client)
    r = client.post("/v1/feedback", json={"interaction_id": anon, "kind": "thumbs", "value": -1},
                    headers=bearer(anon_token))
    assert r.status_code == 201 and r.json()["rater_id"] == f"anon:{anon}"
    with open_engine(db_url).connect() as conn:
        assert sorted(conn.execute(select(Rating.rater_id)).scalars()) == sorted(["u1", "u1", f"anon:{anon}"])


def test_admin_may_name_another_rater_and_source(client: TestClient) -> None:
    iid, _ = log(client, user_id="u1")
    r = client.post("/v1/feedback", json={"interaction_id": iid, "kind": "aspect", "aspect": "accuracy", "value": 2,
                                          "rater_id": "annotator-7", "source": "annotator"}, headers=ADMIN)
    assert r.status_code == 201
    assert (r.json()["rater_id"], r.json()["source"], r.json()["aspect"]) == ("annotator-7", "annotator", "accuracy")
    r = client.post("/v1/feedback", json={"interaction_id": iid, "kind": "thumbs", "value": 1}, headers=ADMIN)
    assert r.json()["rater_id"] == "u1"  # the admin without rater_id rates as the asker
    assert stats(client)["raters"] == 2


# -- batch -----------------------------------------------------------------------------------------------------

def test_batch_stores_all_and_replays(client: TestClient) -> None:
    a, _ = log(client, user_id="u1")
    b, _ = log(client, user_id="u2")
    items = [{"interaction_id": a, "kind": "thumbs", "value": 1, "idempotency_key": "b1"},
             {"interaction_id": b, "kind": "stars", "value": 3, "idempotency_key": "b2"},
             {"interaction_id": b, "kind": "comment", "text": "fine", "rater_id": "u9", "idempotency_key": "b3"}]
    r = client.post("/v1/feedback/batch", json={"items": items}, headers=ADMIN)
    assert r.status_code == 201
    assert (r.json()["created"], r.json()["replayed"]) == (3, 0)
    assert [x["status"] for x in r.json()["items"]] == [201, 201, 201]
    again = client.post("/v1/feedback/batch", json={"items": items}, headers=ADMIN)
    assert again.status_code == 200 and (again.json()["created"], again.json()["replayed"]) == (0, 3)
    assert [x["id"] for x in again.json()["items"]] == [x["id"] for x in r.json()["items"]]
    mixed = client.post("/v1/feedback/batch", json={"items": items + [
        {"interaction_id": a, "kind": "thumbs", "value": -1, "idempotency_key": "b4"}]}, headers=ADMIN)
    assert mixed.status_code == 201 and (mixed.json()["created"], mixed.json()["replayed"]) == (1, 3)
    assert stats(client)["ratings"] == 4


@pytest.mark.parametrize("bad, status, field", [
    ({"kind": "stars", "value": 9}, 422, "items[2].value"),
    ({"kind": "aspect", "value": 3}, 422, "items[2].aspect"),
    ({"kind": "thumbs", "value": 1, "oops": True}, 422, "items[2].oops"),
    ({"kind": "thumbs", "value": 1, "interaction_id": "missing"}, 404, "items[2].interaction_id"),
    ({"kind": "thumbs", "value": -1, "idempotency_key": "taken"}, 409, "items[2].idempotency_key"),
])
def test_batch_is_all_or_nothing(client: TestClient, bad: dict[str, Any], status: int, field: str) -> None:
    iid, _ = log(client)
    assert client.post("/v1/feedback", json={"interaction_id": iid, "kind": "thumbs", "value": 1,
                                             "idempotency_key": "taken"}, headers=ADMIN).status_code == 201
    items = [{"interaction_id": iid, "kind": "thumbs", "value": 1, "idempotency_key": "x0"},
             {"interaction_id": iid, "kind": "stars", "value": 5, "idempotency_key": "x1"},
             {"interaction_id": iid, **bad},
             {"interaction_id": iid, "kind": "comment", "text": "ok", "idempotency_key": "x3"}]
    r = client.post("/v1/feedback/batch", json={"items": items}, headers=ADMIN)
    assert_error(r, status, field)
    s = stats(client)
    assert (s["interactions"], s["ratings"], s["ratings_by_kind"]) == (1, 1, {"thumbs": 1})


def test_batch_with_token_rates_only_its_interaction(client: TestClient) -> None:
    a, token_a = log(client, user_id="u1")
    b, _ = log(client, user_id="u2")
    items = [{"interaction_id": a, "kind": "thumbs", "value": 1}, {"interaction_id": b, "kind": "thumbs", "value": 1}]
    r = client.post("/v1/feedback/batch", json={"items": items}, headers=bearer(token_a))
    assert r.status_code == 403
    ok = client.post("/v1/feedback/batch", json={"items": items[:1] + [{"interaction_id": a, "kind": "stars",
                                                                        "value": 5}]}, headers=bearer(token_a))
    assert ok.status_code == 201 and ok.json()["created"] == 2
    s = stats(client)
    assert (s["ratings"], s["raters"]) == (2, 1)


def test_batch_item_limit(db_url: str, tmp_path: Path) -> None:
    capped = Settings(database_url=db_url, data_dir=tmp_path / "data", admin_key="test-admin-key", max_batch_items=3)
    with TestClient(create_app(capped)) as client:
        iid, _ = log(client)
        items = [{"interaction_id": iid, "kind": "thumbs", "value": 1} for _ in range(4)]
        assert_error(client.post("/v1/feedback/batch", json={"items": items}, headers=ADMIN), 422, "items",
                     "the limit is 3")
        assert_error(client.post("/v1/feedback/batch", json={"items": []}, headers=ADMIN), 422, "items")
        assert counts(client) == (1, 0)
        assert client.post("/v1/feedback/batch", json={"items": items[:3]}, headers=ADMIN).status_code == 201
        assert counts(client) == (1, 3)


# -- stats, users, health, docs -------------------------------------------------------------------------------------

def test_stats_fields(client: TestClient) -> None:
    empty = stats(client)
    assert (empty["interactions"], empty["ratings"], empty["raters"], empty["versions"]) == (0, 0, 0, 0)
    assert empty["ratings_by_kind"] == {}
    a, _ = log(client, user_id="u1")
    b, _ = log(client, user_id="u2")
    items = [{"interaction_id": a, "kind": "thumbs", "value": 1},
             {"interaction_id": a, "kind": "stars", "value": 4, "rater_id": "u7"},
             {"interaction_id": b, "kind": "stars", "value": 2, "rater_id": "u7"},
             {"interaction_id": b, "kind": "comment", "text": "meh"}]
    assert client.post("/v1/feedback/batch", json={"items": items}, headers=ADMIN).status_code == 201
    s = stats(client)
    assert s["interactions"] == 2
    assert s["ratings"] == 4 and isinstance(s["ratings"], int)
    assert s["raters"] == 3  # u1, u2, u7
    assert s["ratings_by_kind"] == {"comment": 1, "stars": 2, "thumbs": 1}
    assert s["versions"] == 0
    assert s["rated_interactions"] == 2


def test_delete_user(client: TestClient, db_url: str) -> None:
    a, _ = log(client, user_id="u1", created_at="2026-01-01T00:00:00Z")
    b, _ = log(client, user_id="u2")
    items = [{"interaction_id": a, "kind": "thumbs", "value": 1},
             {"interaction_id": a, "kind": "stars", "value": 4, "rater_id": "u7"},
             {"interaction_id": b, "kind": "stars", "value": 2, "rater_id": "u1"},
             {"interaction_id": b, "kind": "stars", "value": 3, "rater_id": "u7"}]
    assert client.post("/v1/feedback/batch", json={"items": items}, headers=ADMIN).status_code == 201
    r = client.delete("/v1/users/u1", headers=ADMIN)
    assert r.status_code == 200
    assert r.json() == {"user_id": "u1", "interactions_deleted": 1, "ratings_deleted": 3}
    s = stats(client)
    assert (s["interactions"], s["ratings"], s["raters"], s["deleted_users"]) == (1, 1, 1, 1)
    with open_engine(db_url).connect() as conn:
        assert conn.execute(select(func.count()).where(Rating.rater_id == "u1")).scalar_one() == 0
    # their earlier interaction does not come back through the API either
    again = client.post("/v1/interactions", json={"id": a, "messages": MSGS, "response": "On the 3rd.",
                                                   "user_id": "u1", "created_at": "2026-01-01T00:00:00Z"},
                        headers=ADMIN)
    assert_error(again, 410, "user_id", "was deleted")
    assert stats(client)["interactions"] == 1


def test_deleted_user_who_comes_back_is_logged_and_rates_anew(client: TestClient) -> None:
    """The tombstone keeps old data out; what the same user does after the deletion is new data."""
    log(client, user_id="u1")
    assert client.delete("/v1/users/u1", headers=ADMIN).status_code == 200
    iid, token = log(client, user_id="u1")  # no created_at: the server's clock, after the deletion
    r = client.post("/v1/feedback", json={"interaction_id": iid, "kind": "thumbs", "value": 1}, headers=bearer(token))
    assert r.status_code == 201, r.text
    assert r.json()["rater_id"] == "u1"
    assert counts(client) == (1, 1)


def test_healthz(client: TestClient, db_url: str) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"
    assert r.json()["database"] == ("sqlite" if db_url.startswith("sqlite") else "postgresql")


def test_docs_and_openapi(client: TestClient) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
    assert "swagger" in docs.text.lower()
    spec = client.get("/openapi.json")
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    assert {"/v1/interactions", "/v1/feedback", "/v1/feedback/batch", "/v1/stats", "/v1/users/{user_id}",
            "/healthz"} <= set(paths)
    assert "post" in paths["/v1/feedback"] and "delete" in paths["/v1/users/{user_id}"]
