"""The feedback API as an attacker meets it (issue 10): every class of input that used to answer 500 or store
what could not be exported, on both databases; the order requests are admitted in; the loopback mode's guards."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest
from fastapi.testclient import TestClient

from ratingloop.config import Settings
from ratingloop.serve.app import create_app
from ratingloop.store import Limits, open_engine
from ratingloop.store.jsonl import export_lines, import_lines

ADMIN = {"Authorization": "Bearer test-admin-key"}
MSGS = [{"role": "user", "content": "When is my refund due?"}]
JSON = {"Content-Type": "application/json"}


def make_client(url: str, tmp_path: Path, **overrides: Any) -> TestClient:
    settings = Settings(database_url=url, data_dir=tmp_path / "data", admin_key="test-admin-key", **overrides)
    return TestClient(create_app(settings))


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def counts(client: TestClient) -> tuple[int, int]:
    s = client.get("/v1/stats", headers=ADMIN).json()
    return s["interactions"], s["ratings"]


def logged(client: TestClient, **fields: Any) -> tuple[str, str]:
    r = client.post("/v1/interactions", json={"messages": MSGS, "response": "On the 3rd.", **fields}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return r.json()["id"], r.json()["feedback_token"]


def assert_422(r: Any, field: str, reason_part: str = "") -> None:
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"]["param"] == field, body
    assert reason_part in body["error"]["message"], body


# -- class 1: accepted implies storable and exportable ------------------------------------------------------------

# (a rating sent with the interaction's feedback token, as a browser would; the field the 422 must name)
HOSTILE_RATINGS = [
    (b'{"kind": "implicit", "signal": "copy", "value": 1e20}', "value"),
    (b'{"kind": "implicit", "signal": "copy", "value": 100000000000000000000000}', "value"),
    (b'{"kind": "scale", "value": 2, "scale": [1, 1e20]}', "scale"),
    (b'{"kind": "stars", "value": NaN}', "value"),
    (b'{"kind": "stars", "value": Infinity}', "value"),
    (b'{"kind": "comment", "text": "nul \\u0000 inside"}', "text"),
    (b'{"kind": "comment", "text": "lone \\ud800 surrogate"}', "body"),
    (b'{"kind": "thumbs", "value": 1, "idempotency_key": "k\\u0000"}', "idempotency_key"),
    (b'{"kind": "thumbs", "value": 1, "created_at": "9999-12-31T23:59:59-05:00"}', "created_at"),
    (b'{"kind": "thumbs", "value": 1, "created_at": "0001-01-01T00:00:00+05:00"}', "created_at"),
    (b'{"kind": "thumbs", "value": 1, "value": -1}', "value"),  # a key sent twice
]

HOSTILE_INTERACTIONS = [
    (b'"tags": {"x": NaN}', "tags.x"),
    (b'"tags": {"x": [1, Infinity]}', "tags.x[1]"),
    (b'"tags": {"n": 100000000000000000000000}', "tags.n"),
    (b'"tags": {"s": "a\\u0000b"}', "tags.s"),
    (b'"prompt_tokens": 1099511627776', "prompt_tokens"),
    (b'"completion_tokens": 1099511627776', "completion_tokens"),
    (b'"latency_ms": 1e300', "latency_ms"),
    (b'"created_at": "9999-12-31T23:59:59-05:00"', "created_at"),
    (b'"user_id": "u\\u0000"', "user_id"),
    (b'"id": "chat\\u0000"', "id"),
    (b'"response": "x", "response": "y"', "response"),
]


@pytest.mark.parametrize("body, field", HOSTILE_RATINGS)
def test_unstorable_rating_is_422_and_stores_nothing(client: TestClient, body: bytes, field: str) -> None:
    iid, token = logged(client, user_id="u1")
    payload = body[:-1] + b', "interaction_id": ' + orjson.dumps(iid) + b"}"
    r = client.post("/v1/feedback", content=payload, headers={**JSON, "Authorization": f"Bearer {token}"})
    assert_422(r, field)
    assert counts(client) == (1, 0)


@pytest.mark.parametrize("fragment, field", HOSTILE_INTERACTIONS)
def test_unstorable_interaction_is_422_and_stores_nothing(client: TestClient, fragment: bytes, field: str) -> None:
    payload = b'{"messages": [{"role": "user", "content": "hi"}], "response": "hello", ' + fragment + b"}"
    if fragment.startswith(b'"response"'):
        payload = b'{"messages": [{"role": "user", "content": "hi"}], ' + fragment + b"}"
    r = client.post("/v1/interactions", content=payload, headers={**JSON, **ADMIN})
    assert_422(r, field)
    assert counts(client) == (0, 0)


EXOTIC = [  # what must be accepted, stored and carried through export and import unchanged
    {"id": "chat-😀", "messages": [{"role": "user", "content": "¿Dónde está? 日本語"}], "response": "Ça va ✓",
     "user_id": "josé/ñ",
     "tags": {"max": 2**63 - 1, "min": -(2**63) + 1, "f": 9.2e18, "tiny": 1e-300, "deep": {"a": {"b": [1, {}]}}},
     "prompt_tokens": 2**31 - 1, "latency_ms": 1e12, "created_at": "1900-01-01T00:00:00Z",
     "ratings": [{"kind": "implicit", "signal": "copy", "value": 1e12, "created_at": "2999-12-31T23:59:59Z",
                  "idempotency_key": "x-1"},
                 {"kind": "scale", "value": -1e12, "scale": [-1e12, 1e12], "idempotency_key": "x-2"},
                 {"kind": "comment", "text": "emoji 🙂 and \t tabs \n newlines", "idempotency_key": "x-3"}]},
    {"id": "plain-1", "messages": MSGS, "response": "On the 3rd.",
     "ratings": [{"kind": "thumbs", "value": "up", "idempotency_key": "p-1"}]},
]


@pytest.mark.postgres
def test_accepted_values_export_and_import_across_databases(sqlite_url: str, pg_url: str, tmp_path: Path) -> None:
    """What one database accepted, the other imports from its export, and both export the same bytes."""
    for source, target in ((sqlite_url, pg_url), (pg_url, sqlite_url)):
        with make_client(source, tmp_path / "src") as client:
            for line in EXOTIC:
                r = client.post("/v1/interactions", json=line, headers=ADMIN)
                assert r.status_code in (200, 201), r.text
            assert r.headers["X-Interaction-Id"] == "plain-1"
            exotic = client.post("/v1/interactions", json=EXOTIC[0], headers=ADMIN)
            assert exotic.json()["id"] == "chat-😀" and exotic.headers["X-Interaction-Id"] == "chat-%F0%9F%98%80"
            for body, _ in HOSTILE_RATINGS:  # refused, so nothing below can trip on them
                payload = body[:-1] + b', "interaction_id": "plain-1"}'
                assert client.post("/v1/feedback", content=payload, headers={**JSON, **ADMIN}).status_code == 422
        exported = b"".join(export_lines(open_engine(source)))
        assert exported.count(b"\n") == 2
        report = import_lines(open_engine(target), exported.splitlines(), Limits(), user_key=b"test-user-key")
        assert report.bad == [] and report.ratings_new == 4 - (source == pg_url) * 4, report.as_dict()
        assert b"".join(export_lines(open_engine(target))) == exported


# -- class 7: smaller holes -----------------------------------------------------------------------------------

def test_feedback_needs_a_json_content_type(client: TestClient) -> None:
    iid, token = logged(client)
    body = orjson.dumps({"interaction_id": iid, "kind": "thumbs", "value": 1})
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""):
        r = client.post("/v1/feedback", content=body, headers={"Content-Type": ctype, **ADMIN})
        assert r.status_code == 415, (ctype, r.text)
        assert r.json()["error"]["param"] == "Content-Type"
    ok = client.post("/v1/feedback", content=body, headers={"Content-Type": "application/json; charset=utf-8",
                                                           "Authorization": f"Bearer {token}"})
    assert ok.status_code == 201
    assert counts(client) == (1, 1)


def test_credentials_are_checked_before_the_body_is_read(client: TestClient) -> None:
    # not JSON at all, and too big for a request without credentials: the bad key is what is reported
    r = client.post("/v1/feedback", content=b"{" * 10_000, headers={**JSON, "Authorization": "Bearer nope"})
    assert r.status_code == 401
    big = b'{"items": [' + b",".join([b'{"kind": "thumbs", "value": 1}'] * 5000) + b"]}"
    r = client.post("/v1/feedback/batch", content=big, headers=JSON)  # no Authorization: the token would be inside
    assert r.status_code == 413 and r.json()["error"]["param"] == "body", r.text
    assert "Bearer" in r.json()["error"]["message"]
    r = client.post("/v1/interactions", json={"messages": MSGS, "response": "x"})
    assert r.status_code == 401


def test_a_token_with_the_source_of_an_annotator_is_refused(client: TestClient) -> None:
    iid, token = logged(client, user_id="u1")
    r = client.post("/v1/feedback/batch", json={"items": [
        {"interaction_id": iid, "kind": "thumbs", "value": 1},
        {"interaction_id": iid, "kind": "stars", "value": 5, "source": "judge"}]},
        headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403 and r.json()["error"]["param"] == "items[1].source", r.text
    assert counts(client) == (1, 0)


def test_open_admin_is_ignored_when_an_admin_key_is_set(settings: Settings) -> None:
    with TestClient(create_app(settings, open_admin=True)) as client:
        assert client.get("/v1/stats").status_code == 401
        assert client.get("/v1/stats", headers=ADMIN).status_code == 200


@pytest.fixture
def loopback(sqlite_url: str, tmp_path: Path) -> Iterator[TestClient]:
    """Open-admin mode, as `ratingloop serve` runs without an admin key on 127.0.0.1."""
    app = create_app(Settings(database_url=sqlite_url, data_dir=tmp_path / "data"), open_admin=True)
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        yield c


def test_loopback_mode_refuses_other_hosts_and_sites(loopback: TestClient) -> None:
    body = {"messages": MSGS, "response": "x"}
    assert loopback.post("/v1/interactions", json=body).status_code == 201  # this machine, no key: admin
    rebinding = loopback.post("/v1/interactions", json=body, headers={"Host": "evil.example"})
    assert rebinding.status_code == 400 and rebinding.json()["error"]["param"] == "Host"
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        r = loopback.post("/v1/interactions", json=body, headers=headers)
        assert r.status_code == 403, (headers, r.text)
    # a web page can send text/plain without asking the browser first: that is refused too
    simple = loopback.post("/v1/interactions", content=orjson.dumps(body), headers={"Content-Type": "text/plain"})
    assert simple.status_code == 415
    assert loopback.get("/v1/stats", headers={"Origin": "http://localhost:8000"}).json()["interactions"] == 1


# -- class 4: abuse limits --------------------------------------------------------------------------------------

def test_a_flood_from_one_token_is_throttled(sqlite_url: str, tmp_path: Path) -> None:
    with make_client(sqlite_url, tmp_path, token_ratings_per_s=1, token_ratings_burst=20) as client:
        iid, token = logged(client, user_id="u1")
        other, other_token = logged(client, user_id="u2")
        auth = {"Authorization": f"Bearer {token}"}
        statuses = [client.post("/v1/feedback", json={"interaction_id": iid, "kind": "thumbs", "value": 1},
                                headers=auth).status_code for _ in range(30)]
        assert statuses[:20] == [201] * 20 and set(statuses[20:]) == {429}
        r = client.post("/v1/feedback", json={"interaction_id": iid, "kind": "thumbs", "value": 1}, headers=auth)
        assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 2
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        batch = [{"interaction_id": other, "kind": "thumbs", "value": 1}] * 10_000  # more than a bucket holds
        r = client.post("/v1/feedback/batch", json={"items": batch}, headers={"Authorization": f"Bearer {other_token}"})
        assert r.status_code in (413, 429), r.text
        # the other user's token and the admin key are not affected
        ok = client.post("/v1/feedback", json={"interaction_id": other, "kind": "thumbs", "value": 1},
                         headers={"Authorization": f"Bearer {other_token}"})
        assert ok.status_code == 201
        assert counts(client) == (2, 21)


def test_requests_without_the_admin_key_are_throttled_per_address(sqlite_url: str, tmp_path: Path) -> None:
    with make_client(sqlite_url, tmp_path, address_requests_per_s=1, address_requests_burst=5) as client:
        statuses = [client.post("/v1/feedback", json={"kind": "thumbs"}, headers={"Authorization": "Bearer x"}
                                ).status_code for _ in range(5)]
        assert statuses == [401] * 5  # a bad key is refused before the address is charged
        body = {"interaction_id": "i", "kind": "thumbs", "value": 1, "feedback_token": "fbt1.a.b"}
        statuses = [client.post("/v1/feedback", json=body).status_code for _ in range(8)]
        assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}
        assert client.get("/v1/stats", headers=ADMIN).status_code == 200  # the product's server is not throttled


# -- class 5: infrastructure failures are 503s, not bugs -------------------------------------------------------

def test_a_full_disk_answers_503_and_healthz_says_so(sqlite_url: str, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    from sqlalchemy import event

    with make_client(sqlite_url, tmp_path) as client:
        iid, _ = logged(client)
        assert client.get("/healthz").status_code == 200
        engine = open_engine(sqlite_url)
        with engine.connect() as conn:
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar()

        def cap(dbapi_connection: Any, _record: Any) -> None:  # the database may not grow: a full disk to SQLite
            dbapi_connection.execute(f"PRAGMA max_page_count={pages}")

        event.listen(engine, "connect", cap)
        engine.dispose()
        big = {"interaction_id": iid, "kind": "comment", "text": "x" * 9_000}
        with caplog.at_level("WARNING"):
            answers = [client.post("/v1/feedback", json={**big, "idempotency_key": f"k{i}"}, headers=ADMIN)
                       for i in range(20)]
        statuses = [r.status_code for r in answers]
        stored = statuses.index(503)  # what still fitted in the file's free space went in
        assert stored < 5 and set(statuses[stored:]) == {503}, statuses
        refused = answers[stored]
        assert refused.headers["Retry-After"] == "5"
        assert "disk" not in refused.text and "sqlite" not in refused.text.lower()  # no database text out
        assert [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()].__len__() == 1
        assert not [r for r in caplog.records if r.exc_info]  # no traceback per request
        health = client.get("/healthz")
        assert health.status_code == 503 and "writes are failing" in health.json()["problem"]
        event.remove(engine, "connect", cap)
        engine.dispose()
        retry = client.post("/v1/feedback", json={**big, "idempotency_key": f"k{stored}"}, headers=ADMIN)
        assert retry.status_code == 201
        assert counts(client) == (1, stored + 1)


class Proxy:
    """A TCP proxy to PostgreSQL that can be cut: the database refusing connections, for real."""

    def __init__(self, target: tuple[str, int]):
        import socket
        import threading

        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = True
        self.conns: list[Any] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: Any, b: Any) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self) -> None:
        import socket

        self.open = False
        for s in self.conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.conns = []

    def restore(self) -> None:
        self.open = True


@pytest.mark.postgres
def test_a_database_that_refuses_connections_answers_503_then_recovers(pg_url: str, tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(pg_url)
    proxy = Proxy((url.host or "127.0.0.1", url.port or 5432))
    proxied = url.set(port=proxy.port).render_as_string(hide_password=False)
    with make_client(proxied, tmp_path) as client:
        iid, _ = logged(client)
        proxy.cut()
        with caplog.at_level("WARNING"):
            answers = [client.post("/v1/feedback", json={"interaction_id": iid, "kind": "thumbs", "value": 1,
                                                         "idempotency_key": f"k{i}"}, headers=ADMIN)
                       for i in range(10)]
            assert {r.status_code for r in answers} == {503}, answers[0].text
            assert answers[0].headers["Retry-After"] == "5"
            assert client.get("/healthz").status_code == 503
            proxy.restore()
            again = client.post("/v1/feedback", json={"interaction_id": iid, "kind": "thumbs", "value": 1,
                                                      "idempotency_key": "k0"}, headers=ADMIN)
        assert again.status_code == 201, again.text
        messages = [r.getMessage() for r in caplog.records if r.name.startswith("ratingloop")]
        assert sum("unavailable" in m for m in messages) == 1 and sum("available again" in m for m in messages) == 1
        assert counts(client) == (1, 1)


# -- classes 2 and 3 against a real server process -------------------------------------------------------------

POISON = """
CREATE FUNCTION refuse_poison() RETURNS trigger AS $$
BEGIN
  IF NEW.text LIKE '%%poison%%' THEN RAISE EXCEPTION 'this database refuses poison'; END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER refuse_poison BEFORE INSERT ON ratings FOR EACH ROW EXECUTE FUNCTION refuse_poison();
"""


def poison_database(url: str) -> None:
    """A row only the database objects to (what a NUL was to PostgreSQL before validation caught it)."""
    with open_engine(url).begin() as conn:
        conn.exec_driver_sql(POISON)


@pytest.mark.postgres
@pytest.mark.slow
def test_one_poisoning_client_costs_honest_clients_nothing(pg_url: str, tmp_path: Path) -> None:
    import threading

    import httpx

    from servers import running_server_at

    poison_database(pg_url)
    with running_server_at(pg_url, tmp_path) as base, httpx.Client(base_url=base, timeout=30) as c:
        iid = c.post("/v1/interactions", json={"messages": MSGS, "response": "x"}, headers=ADMIN).json()["id"]
        honest: list[int] = []
        poisoned: list[int] = []
        stop = threading.Event()

        def poisoner() -> None:
            with httpx.Client(base_url=base, timeout=30) as pc:
                n = 0
                while not stop.is_set():
                    n += 1
                    r = pc.post("/v1/feedback", headers=ADMIN, json={"interaction_id": iid, "kind": "comment",
                                                                     "text": f"poison {n}"})
                    poisoned.append(r.status_code)

        def client(t: int) -> None:
            with httpx.Client(base_url=base, timeout=30) as hc:
                for n in range(40):
                    r = hc.post("/v1/feedback", headers=ADMIN, json={"interaction_id": iid, "kind": "stars",
                                                                     "value": 1 + n % 5, "rater_id": f"r{t}",
                                                                     "idempotency_key": f"t{t}-{n}"})
                    honest.append(r.status_code)

        bad = threading.Thread(target=poisoner)
        bad.start()
        threads = [threading.Thread(target=client, args=(t,)) for t in range(16)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        stop.set()
        bad.join()
        assert honest.count(201) == 16 * 40, {s: honest.count(s) for s in set(honest)}
        assert poisoned and set(poisoned) == {500}
        assert c.get("/v1/stats", headers=ADMIN).json()["ratings"] == 16 * 40


@pytest.mark.postgres
def test_import_reports_the_line_the_database_refused(pg_url: str) -> None:
    poison_database(pg_url)
    lines = [orjson.dumps({"id": f"i{n}", "messages": MSGS, "response": "x",
                           "ratings": [{"kind": "comment", "text": "poison" if n == 7 else f"fine {n}"}]})
             for n in range(1, 13)]
    report = import_lines(open_engine(pg_url), lines, Limits(), user_key=b"test-user-key")
    assert [n for n, _ in report.bad] == [7]
    assert "refused" in report.bad[0][1][0].reason and "INSERT" not in report.bad[0][1][0].reason
    assert (report.interactions_new, report.ratings_new) == (11, 11)


@pytest.mark.slow
def test_an_unauthenticated_flood_of_large_bodies_leaves_healthz_fast(db_url: str, tmp_path: Path) -> None:
    import statistics
    import threading
    import time

    import httpx

    from servers import running_server_at

    body = b'{"items": [' + b",".join([b'{"interaction_id": "i", "kind": "thumbs", "value": 1}'] * 90_000) + b"]}"
    assert len(body) > 4_500_000
    with running_server_at(db_url, tmp_path) as base:
        stop = threading.Event()
        refused: list[int] = []

        def flood(headers: dict[str, str]) -> None:
            with httpx.Client(base_url=base, timeout=30) as fc:
                while not stop.is_set():
                    try:
                        refused.append(fc.post("/v1/feedback/batch", content=body, headers=headers).status_code)
                    except httpx.HTTPError:  # the server may close the connection on a refused body
                        refused.append(0)

        floods = [threading.Thread(target=flood, args=(h,)) for h in
                  [JSON, JSON, {**JSON, "Authorization": "Bearer wrong"}, {**JSON, "Authorization": "Bearer fbt1.x.y"}]]
        for th in floods:
            th.start()
        time.sleep(1.0)
        latencies = []
        with httpx.Client(base_url=base, timeout=10) as hc:
            for _ in range(100):
                t0 = time.perf_counter()
                assert hc.get("/healthz").status_code == 200
                latencies.append(time.perf_counter() - t0)
                time.sleep(0.02)
        stop.set()
        for th in floods:
            th.join()
    p90 = statistics.quantiles(latencies, n=10)[8]
    assert len(refused) > 20 and set(refused) <= {0, 401, 413, 429}, set(refused)
    # before the fix a flood like this made /healthz take 2-4 s, every request of it; the figure against the 100 ms
    # target is bench/hostile.py's, measured beside a baseline (a timed test on shared cores would only measure
    # them). The 90th percentile, not the 99th: in a full run the other test worker's training stalled two of the
    # hundred requests (p99 1,246 ms on 2026-12-02) while the rest stayed fast, which is not the bug this guards.
    assert p90 < 1.0, f"/healthz p90 {p90 * 1000:.0f} ms under the flood"


def test_a_token_may_store_only_so_many_ratings_on_its_interaction(sqlite_url: str, tmp_path: Path) -> None:
    with make_client(sqlite_url, tmp_path, max_ratings_per_rater_interaction=5) as client:
        iid, token = logged(client, user_id="u1")
        auth = {"Authorization": f"Bearer {token}"}
        r = client.post("/v1/feedback/batch", headers=auth, json={"items": [
            {"interaction_id": iid, "kind": "thumbs", "value": 1, "idempotency_key": f"k{n}"} for n in range(4)]})
        assert r.status_code == 201
        statuses = [client.post("/v1/feedback", headers=auth, json={
            "interaction_id": iid, "kind": "stars", "value": 4, "idempotency_key": f"s{n}"}).status_code
            for n in range(3)]
        assert statuses == [201, 429, 429]
        replay = client.post("/v1/feedback", headers=auth, json={"interaction_id": iid, "kind": "thumbs", "value": 1,
                                                                 "idempotency_key": "k0"})
        assert replay.status_code == 200  # a retry of a stored rating is still answered
        admin = client.post("/v1/feedback", headers=ADMIN, json={"interaction_id": iid, "kind": "thumbs", "value": 1})
        assert admin.status_code == 201  # the product's server is not capped
        assert counts(client) == (1, 6)


def test_idempotency_keys_are_scoped_to_their_interaction(client: TestClient) -> None:
    a, token_a = logged(client, user_id="u1")
    b, token_b = logged(client, user_id="u2")
    body = {"kind": "thumbs", "value": 1, "idempotency_key": "click-1"}
    first = client.post("/v1/feedback", json={**body, "interaction_id": a},
                        headers={"Authorization": f"Bearer {token_a}"})
    # another user sending the same key on their own interaction is neither refused nor told it exists
    other = client.post("/v1/feedback", json={**body, "value": -1, "interaction_id": b},
                        headers={"Authorization": f"Bearer {token_b}"})
    assert (first.status_code, other.status_code) == (201, 201)
    assert first.json()["id"] != other.json()["id"]
    assert counts(client) == (2, 2)


def test_a_token_of_a_deleted_user_answers_410(client: TestClient) -> None:
    iid, token = logged(client, user_id="gone")
    assert client.delete("/v1/users/gone", headers=ADMIN).status_code == 200
    r = client.post("/v1/feedback", json={"interaction_id": iid, "kind": "thumbs", "value": 1},
                    headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 410 and r.json()["error"]["param"] == "interaction_id", r.text
    unknown = client.post("/v1/feedback", json={"interaction_id": "never", "kind": "thumbs", "value": 1}, headers=ADMIN)
    assert unknown.status_code == 404
