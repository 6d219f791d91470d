"""The proxy backend against a real OpenAI-compatible upstream on loopback: our own `ratingloop serve
--backend transformers` on a tiny model, in its own process and store. The proxy logs and returns the
upstream's answers like its own, plain and streamed, and passes the upstream's errors on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import openai
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from ratingloop.config import Settings
from ratingloop.serve.app import backend_from_env, create_app
from ratingloop.store import open_engine
from ratingloop.store.tables import Interaction
from servers import ADMIN_KEY, free_port, running_server_at
from tiny import save_varied_base

H = {"Authorization": f"Bearer {ADMIN_KEY}"}
ASK = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("upstream")
    base = save_varied_base(tmp / "base")
    with running_server_at(f"sqlite:///{tmp / 'up.db'}", tmp,
                           backend=("--backend", "transformers", "--model", str(base))) as url:
        yield f"{url}/v1"


def proxy(settings: Settings, url: str, **env: str) -> TestClient:
    factory = backend_from_env({"RATINGLOOP_SERVE_BACKEND": "proxy", "RATINGLOOP_SERVE_UPSTREAM": url,
                                "RATINGLOOP_SERVE_UPSTREAM_KEY": ADMIN_KEY, **env})
    return TestClient(create_app(settings.model_copy(update={"admin_key": ADMIN_KEY}), backend_factory=factory))


def logged(settings: Settings) -> list[Any]:
    with open_engine(settings.url).connect() as conn:
        return list(conn.execute(select(Interaction.__table__)).mappings())


def test_proxy_logs_and_returns_upstream_answers(settings: Settings, upstream: str) -> None:
    with proxy(settings, upstream) as client:
        direct = openai.OpenAI(base_url=upstream, api_key=ADMIN_KEY).chat.completions.create(
            model="active", messages=ASK, max_tokens=10)  # type: ignore[arg-type]
        via = openai.OpenAI(base_url="http://testserver/v1", api_key=ADMIN_KEY, http_client=client)
        plain = via.chat.completions.with_raw_response.create(model="active", messages=ASK, max_tokens=10,  # type: ignore[arg-type]
                                                               user="u-9")
        answer = plain.parse()
        assert answer.choices[0].message.content == direct.choices[0].message.content  # greedy upstream
        assert answer.model == "base" and answer.usage is not None
        assert answer.usage.completion_tokens == direct.usage.completion_tokens  # type: ignore[union-attr]
        chunks = list(via.chat.completions.create(model="active", messages=ASK, max_tokens=10,  # type: ignore[arg-type]
                                                  stream=True))
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == answer.choices[0].message.content
        meta = chunks[-1].model_extra["ratingloop"]  # type: ignore[index]

        rows = {r["id"]: r for r in logged(settings)}
        first = rows[plain.headers["x-interaction-id"]]
        assert first["response"] == streamed and first["user_id"] == "u-9" and first["model"] == "base"
        assert first["prompt_tokens"] == direct.usage.prompt_tokens  # type: ignore[union-attr]
        assert rows[meta["interaction_id"]]["response"] == streamed
        rated = client.post("/v1/feedback", headers={"Authorization": f"Bearer {meta['feedback_token']}"},
                            json={"interaction_id": meta["interaction_id"], "kind": "stars", "value": 4,
                                  "scale": [1, 5]})
        assert rated.status_code == 201

        two = client.post("/v1/chat/completions", headers=H, json={"messages": ASK, "max_tokens": 4, "n": 2}).json()
        assert len(two["choices"]) == 2 and len(two["ratingloop"]["choices"]) == 2
        assert [m["id"] for m in client.get("/v1/models", headers=H).json()["data"]][:2] == ["active", "base"]


def test_upstream_errors_pass_through_and_store_nothing(settings: Settings, upstream: str) -> None:
    with proxy(settings, upstream) as client:
        missing = client.post("/v1/chat/completions", headers=H, json={"model": "nope", "messages": ASK})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
        too_long = client.post("/v1/chat/completions", headers=H, json={"messages": ASK, "max_tokens": 99999})
        assert too_long.status_code == 400 and "max_tokens" in too_long.json()["error"]["message"]
        assert client.post("/v1/chat/completions", headers=H, json={"messages": []}).status_code == 400
        assert logged(settings) == []
    with proxy(settings, f"http://127.0.0.1:{free_port()}/v1") as client:  # nobody listens there
        down = client.post("/v1/chat/completions", headers=H, json={"messages": ASK})
        assert down.status_code == 502 and "upstream" in down.json()["error"]["message"]
    with proxy(settings, upstream, RATINGLOOP_SERVE_MODEL="no-such-upstream-model") as client:
        assert client.post("/v1/chat/completions", headers=H, json={"messages": ASK}).status_code == 404
    assert logged(settings) == []


def test_serve_proxy_needs_an_upstream(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "ratingloop.cli", "serve", "--backend", "proxy", "--db",
                          f"sqlite:///{tmp_path / 'x.db'}"], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "--upstream" in run.stderr


def test_serve_vllm_without_vllm_or_a_gpu_says_so(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "ratingloop.cli", "serve", "--backend", "vllm", "--db",
                          f"sqlite:///{tmp_path / 'x.db'}"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "pip install 'ratingloop[vllm]'" in run.stderr or "no CUDA GPU" in run.stderr, run.stderr
