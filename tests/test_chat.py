"""Chat completions on a tiny random Llama: OpenAI's shapes, plain and streamed, every answer logged and
rateable, stop strings and limits, errors in OpenAI's shape, batching, hot swap and traffic split.

In-process (TestClient, which runs the app's lifespan and so the registry watcher) on SQLite and
PostgreSQL; the official `openai` client and a client that goes away mid-stream against a real server.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from ratingloop.config import Settings
from ratingloop.models.registry import finish_run, promote, set_traffic_share, start_run
from ratingloop.serve.app import backend_from_env, create_app
from ratingloop.store import open_engine
from ratingloop.store.tables import Interaction
from servers import ADMIN_KEY, running_server_at
from tiny import save_random_adapter, save_varied_base

H = {"Authorization": f"Bearer {ADMIN_KEY}"}
ASK = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_varied_base(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def adapters(base: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return [save_random_adapter(base, tmp_path_factory.mktemp(f"adapter{seed}"), seed=seed) for seed in (1, 2)]


def chat_app(settings: Settings, base: Path, **extra: Any) -> TestClient:
    settings = settings.model_copy(update={"admin_key": ADMIN_KEY, "serve_registry_poll_s": 0.2, **extra})
    factory = backend_from_env({"RATINGLOOP_SERVE_BACKEND": "transformers", "RATINGLOOP_SERVE_MODEL": str(base)})
    return TestClient(create_app(settings, backend_factory=factory))


@pytest.fixture
def client(settings: Settings, base: Path) -> Iterator[TestClient]:
    with chat_app(settings, base) as c:
        yield c


def register(engine: Engine, adapter: Path, base: Path) -> str:
    run = start_run(engine, method="kto", config={}, base_model=str(base))
    return finish_run(engine, run, adapter_path=adapter, metrics={})


def stored(engine: Engine, iid: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(Interaction.__table__).where(Interaction.__table__.c.id == iid)).mappings().first()


def sse_events(text: str) -> list[Any]:
    lines = [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [orjson.loads(line) for line in lines[:-1]]


def test_plain_answer_is_logged_and_rateable(client: TestClient, settings: Settings) -> None:
    r = client.post("/v1/chat/completions", headers=H, json={"model": "active", "messages": ASK, "max_tokens": 9,
                                                             "user": "u-7"})
    assert r.status_code == 200, r.text
    body = r.json()
    meta = body["ratingloop"]
    assert body["object"] == "chat.completion" and body["model"] == "base" == meta["version"]
    assert r.headers["X-Interaction-Id"] == meta["interaction_id"]
    assert r.headers["X-Feedback-Token"] == meta["feedback_token"]
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    assert 1 <= body["usage"]["completion_tokens"] <= 9 and body["usage"]["prompt_tokens"] > 5

    row = stored(open_engine(settings.url), meta["interaction_id"])
    assert row["response"] == choice["message"]["content"] and row["user_id"] == "u-7" and row["model"] == "base"
    assert row["messages"] == ASK and row["completion_tokens"] == body["usage"]["completion_tokens"]
    assert row["prompt_tokens"] == body["usage"]["prompt_tokens"] and row["latency_ms"] > 0

    rated = client.post("/v1/feedback", headers={"Authorization": f"Bearer {meta['feedback_token']}"},
                        json={"interaction_id": meta["interaction_id"], "kind": "thumbs", "value": -1})
    assert rated.status_code == 201, rated.text
    assert rated.json()["rater_id"] == "u-7"


def test_stream_matches_what_is_logged(client: TestClient, settings: Settings) -> None:
    r = client.post("/v1/chat/completions", headers=H, json={"messages": ASK, "max_tokens": 12, "stream": True,
                                                             "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["delta"].get("content", "") for e in events for c in e["choices"])
    finish = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
    last = events[-1]
    assert last["ratingloop"]["interaction_id"] == r.headers["X-Interaction-Id"] and last["choices"] == []
    assert last["usage"]["completion_tokens"] <= 12 and len(finish) == 1
    assert stored(open_engine(settings.url), r.headers["X-Interaction-Id"])["response"] == text
    plain = client.post("/v1/chat/completions", headers=H, json={"messages": ASK, "max_tokens": 12}).json()
    assert plain["choices"][0]["message"]["content"] == text  # greedy: streamed and plain agree


def test_n_choices_each_logged_with_their_own_token(client: TestClient, settings: Settings) -> None:
    body = client.post("/v1/chat/completions", headers=H, json={"messages": ASK, "max_tokens": 6, "n": 3,
                                                                "temperature": 1.0, "seed": 3}).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    ids = [c["interaction_id"] for c in body["ratingloop"]["choices"]]
    assert len(set(ids)) == 3 and ids[0] == body["ratingloop"]["interaction_id"]
    engine = open_engine(settings.url)
    for choice, iid in zip(body["choices"], ids, strict=True):
        assert stored(engine, iid)["response"] == choice["message"]["content"]
    again = client.post("/v1/chat/completions", headers=H, json={"messages": ASK, "max_tokens": 6, "n": 3,
                                                                 "temperature": 1.0, "seed": 3}).json()
    assert [c["message"] for c in again["choices"]] == [c["message"] for c in body["choices"]]  # seeded


def test_stop_and_max_tokens(client: TestClient) -> None:
    free = client.post("/v1/chat/completions", headers=H, json={"messages": ASK, "max_tokens": 20}).json()
    text = free["choices"][0]["message"]["content"]
    assert free["choices"][0]["finish_reason"] == "length" and free["usage"]["completion_tokens"] == 20
    stop = text[len(text) // 2:len(text) // 2 + 2]
    cut = client.post("/v1/chat/completions", headers=H, json={"messages": ASK, "max_tokens": 20, "stop": [stop]})
    choice = cut.json()["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["content"] == text[:text.index(stop)]
    streamed = sse_events(client.post("/v1/chat/completions", headers=H, json={
        "messages": ASK, "max_tokens": 20, "stop": stop, "stream": True}).text)
    assert "".join(c["delta"].get("content", "") for e in streamed for c in e["choices"]) == text[:text.index(stop)]


def test_bad_requests_answer_openai_errors_and_store_nothing(client: TestClient, settings: Settings) -> None:
    bad: list[tuple[Any, int, str]] = [
        ({"model": "active"}, 400, "messages"),
        ({"messages": []}, 400, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
        ({"messages": ASK, "max_tokens": -1}, 400, "max_tokens"),
        ({"messages": ASK, "temperature": 7}, 400, "temperature"),
        ({"messages": ASK, "n": 99}, 400, "n"),
        ({"messages": ASK, "tools": [{"type": "function"}]}, 400, "tools"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "messages[0].content"),
        ({"messages": ASK, "model": "no-such-version"}, 404, "model"),
        ({"messages": [{"role": "user", "content": "word " * 3000}]}, 400, "messages"),
        ({"messages": ASK, "max_tokens": 5000}, 400, "max_tokens"),
        ({"messages": ASK, "user": "bad\x00user"}, 400, "user"),
    ]
    for body, status, param in bad:
        r = client.post("/v1/chat/completions", headers=H, json=body)
        assert r.status_code == status, (body, r.text)
        error = r.json()["error"]
        assert error["param"] == param and error["message"] and error["type"] == "invalid_request_error", error
    assert client.post("/v1/chat/completions", headers=H, json={"messages": ASK, "model": "x"}).json()[
        "error"]["code"] == "model_not_found"
    long = client.post("/v1/chat/completions", headers=H,
                       json={"messages": [{"role": "user", "content": "word " * 3000}]}).json()
    assert "context is 1024 tokens" in long["error"]["message"]
    assert client.post("/v1/chat/completions", headers={**H, "Content-Type": "application/json"},
                       content=b"{not json").status_code == 400
    assert client.post("/v1/chat/completions", headers=H, content=b"{}").status_code == 415
    assert client.post("/v1/chat/completions", json={"messages": ASK}).status_code == 401
    token = client.post("/v1/chat/completions", headers=H, json={"messages": ASK, "max_tokens": 2}).json()[
        "ratingloop"]["feedback_token"]
    assert client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {token}"},
                       json={"messages": ASK}).status_code == 403
    assert client.get("/v1/stats", headers=H).json()["interactions"] == 1  # only the good request
    ok = client.post("/v1/chat/completions", headers=H, json={"messages": ASK, "max_tokens": 3})
    assert ok.status_code == 200  # the server took every bad request and answers the next good one


def test_models_and_hot_swap_from_another_process(settings: Settings, base: Path, adapters: list[Path]) -> None:
    engine = open_engine(settings.url)
    first, second = (register(engine, a, base) for a in adapters)
    with chat_app(settings, base) as client:
        ids = [m["id"] for m in client.get("/v1/models", headers=H).json()["data"]]
        assert ids[:2] == ["active", "base"] and {first, second} <= set(ids)

        def answer(model: str = "active") -> dict[str, Any]:
            r = client.post("/v1/chat/completions", headers=H, json={"model": model, "messages": ASK,
                                                                     "max_tokens": 8})
            assert r.status_code == 200, r.text
            return r.json()

        assert answer()["model"] == "base"
        by_version = {v: answer(v)["choices"][0]["message"]["content"] for v in ("base", first, second)}
        assert len(set(by_version.values())) == 3  # the adapters really answer differently

        for version in (first, second):
            subprocess.run([sys.executable, "-m", "ratingloop.cli", "versions", "promote", version, "--yes",
                            "--db", settings.url], check=True, capture_output=True)
            deadline = time.monotonic() + 10
            while (now := answer())["model"] != version:
                assert time.monotonic() < deadline, "the promotion was not served within 10 s"
                time.sleep(0.1)
            assert now["choices"][0]["message"]["content"] == by_version[version]
            assert stored(engine, now["ratingloop"]["interaction_id"])["model"] == version
        subprocess.run([sys.executable, "-m", "ratingloop.cli", "versions", "rollback", "--yes", "--db",
                        settings.url], check=True, capture_output=True)
        deadline = time.monotonic() + 10
        while answer()["model"] != first:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_traffic_split_is_stable_per_user(settings: Settings, base: Path, adapters: list[Path]) -> None:
    engine = open_engine(settings.url)
    first, second = (register(engine, a, base) for a in adapters)
    promote(engine, first, actor="test")
    set_traffic_share(engine, second, 0.3, actor="test")
    with chat_app(settings, base) as client:
        def served(user: str) -> str:
            r = client.post("/v1/chat/completions", headers=H, json={"messages": ASK, "max_tokens": 1, "user": user})
            return str(r.json()["model"])

        users = [f"user-{i}" for i in range(120)]
        first_pass = {u: served(u) for u in users}
        share = sum(v == second for v in first_pass.values()) / len(users)
        assert 0.18 <= share <= 0.42, share
        assert set(first_pass.values()) == {first, second}
        assert all(served(u) == first_pass[u] for u in users[:30])  # a user keeps their version
        assert served_without_user(client) == first
        set_traffic_share(engine, second, 0.0, actor="test")
        deadline = time.monotonic() + 10
        while any(served(u) != first for u in users[:20] if first_pass[u] == second):
            assert time.monotonic() < deadline
            time.sleep(0.2)


def served_without_user(client: TestClient) -> str:
    return str(client.post("/v1/chat/completions", headers=H, json={"messages": ASK, "max_tokens": 1}).json()["model"])


def test_concurrent_requests_share_generate_calls(settings: Settings, base: Path) -> None:
    with chat_app(settings, base, serve_batch_window_ms=50.0) as client:
        backend = client.app.state.backend  # type: ignore[attr-defined]
        before = backend.batcher.calls
        results: list[int] = []

        def one(i: int) -> None:
            r = client.post("/v1/chat/completions", headers=H, json={
                "messages": [{"role": "user", "content": f"Hello there {i}"}], "max_tokens": 16})
            results.append(r.status_code)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [200] * 8
        assert backend.batcher.calls - before <= 3, backend.batcher.calls - before


def test_real_server_openai_client_and_a_client_that_leaves(sqlite_url: str, tmp_path: Path, base: Path) -> None:
    import httpx
    import openai

    backend = ("--backend", "transformers", "--model", str(base))
    with running_server_at(sqlite_url, tmp_path, backend=backend, env={"RATINGLOOP_SERVE_MAX_TOKENS": "2000"}) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=ADMIN_KEY)
        plain = client.chat.completions.with_raw_response.create(model="active", messages=ASK, max_tokens=8,
                                                                 user="u1")
        completion = plain.parse()
        assert completion.choices[0].message.content and completion.model == "base"
        iid = plain.headers["x-interaction-id"]
        stream = client.chat.completions.create(model="active", messages=ASK, max_tokens=8, stream=True)
        chunks = list(stream)
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == completion.choices[0].message.content
        assert chunks[-1].model_extra["ratingloop"]["version"] == "base"  # type: ignore[index]

        with pytest.raises(openai.NotFoundError) as e:
            client.chat.completions.create(model="missing", messages=ASK)
        assert e.value.code == "model_not_found"
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="active", messages=[], max_tokens=3)

        with httpx.stream("POST", f"{url}/v1/chat/completions", headers=H, timeout=30, json={
                "messages": ASK, "max_tokens": 900, "stream": True}) as r:
            left_id = r.headers["x-interaction-id"]
            for _ in zip(range(3), r.iter_lines(), strict=False):
                pass
        time.sleep(1.0)
        after = client.chat.completions.create(model="active", messages=ASK, max_tokens=4)
        assert after.choices[0].message.content is not None
        engine = open_engine(sqlite_url)
        assert stored(engine, iid) is not None and stored(engine, left_id) is None  # nothing half-logged


def test_a_cancelled_row_stops_generating(base: Path) -> None:
    import asyncio

    from ratingloop.serve.local import Batcher, Job, ModelPool, Row, Sampling
    from ratingloop.serve.routing import Target

    async def run() -> tuple[int, int]:
        pool = ModelPool(1)
        batcher = Batcher(pool, window_s=0.0, max_rows=4)
        batcher.start()
        target = Target("base", str(base))
        _, tokenizer = await pool.get(target)
        ids = tokenizer("hello there", add_special_tokens=False)["input_ids"]
        left = Job(target, Sampling(), [Row(0, ids, 600, ())], asyncio.Queue(), asyncio.get_running_loop())
        stays = Job(target, Sampling(), [Row(0, ids, 40, ())], asyncio.Queue(), asyncio.get_running_loop())
        batcher.submit(left)
        batcher.submit(stays)
        while (await left.events.get())[0] != "delta":
            pass
        left.cancel()
        while (await stays.events.get())[0] != "done":
            pass
        await asyncio.sleep(0.5)
        await batcher.stop()
        return len(left.rows[0].ids), len(stays.rows[0].ids)

    generated, other = asyncio.run(run())
    assert other == 40  # the row sharing the batch finished
    assert generated < 100  # the cancelled one stopped at the next token, not at its 600
