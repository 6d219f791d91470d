"""Stage 2, serving: the proxy backend - chat answered by any OpenAI-compatible server upstream (vLLM,
llama.cpp's server, a hosted API), logged and returned here like our own answers.

    ratingloop serve --backend proxy --upstream http://127.0.0.1:8001/v1 [--upstream-key K] [--model M]

Every request goes upstream streamed (so plain and streamed answers take one path, and a client that
goes away closes the upstream request too), with `stream_options.include_usage` for the token counts.
The upstream's first chunk is awaited before answering, so its errors keep their status (a 4xx passes
through with the upstream's message; an unreachable or failing upstream is 502) and the version logged
is the model the upstream says answered. `--model` names the upstream model that `active` and `base`
mean; without it they pass through unchanged.
"""

from __future__ import annotations

import logging
from typing import Any, AsyncGenerator, AsyncIterator

import httpx
import orjson

from ratingloop.errors import RatingloopError
from ratingloop.serve.chat import ChatRequest, Generation, ModelNotFound
from ratingloop.serve.routing import ACTIVE, BASE

log = logging.getLogger(__name__)


class UpstreamError(RatingloopError):
    """The upstream answered an error (its status, when a 4xx) or could not be reached (502)."""

    def __init__(self, message: str, status: int = 502):
        super().__init__(message)
        self.status = status


class ProxyBackend:
    def __init__(self, url: str, *, key: str | None = None, model: str | None = None, timeout_s: float = 600):
        if not url.startswith(("http://", "https://")):
            raise RatingloopError(f"--upstream {url!r}: an http(s) URL such as http://127.0.0.1:8001/v1")
        self._url, self._model = url.rstrip("/"), model
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(timeout_s, connect=10))

    async def start(self) -> None:
        try:
            await self._upstream_models()
        except RatingloopError as e:  # it may come up later; every request says so meanwhile
            log.warning("the upstream is not answering yet: %s", e)

    async def stop(self) -> None:
        await self._client.aclose()

    async def models(self) -> list[dict[str, Any]]:
        upstream = await self._upstream_models()
        aliases = [{"id": name, "object": "model", "created": 0, "owned_by": "ratingloop",
                    "ratingloop": {"upstream": self._model}} for name in (ACTIVE, BASE)] if self._model else []
        return aliases + upstream

    async def _upstream_models(self) -> list[dict[str, Any]]:
        try:
            r = await self._client.get(f"{self._url}/models")
        except httpx.HTTPError as e:
            raise UpstreamError(f"upstream {self._url}: {type(e).__name__}: {e}") from e
        if r.status_code != 200:
            raise UpstreamError(f"upstream {self._url}/models answered {r.status_code}: {r.text[:300]}")
        return list(r.json().get("data", []))

    async def generate(self, req: ChatRequest, messages: list[dict[str, str]], user: str | None) -> Generation:
        model = self._model if self._model and req.model in (ACTIVE, BASE) else req.model
        body = req.model_dump(exclude_none=True, exclude={"stream", "stream_options"})
        body.update(model=model, messages=messages, stream=True, stream_options={"include_usage": True})
        if user is not None:
            body["user"] = user
        request = self._client.build_request("POST", f"{self._url}/chat/completions", content=orjson.dumps(body),
                                             headers={"Content-Type": "application/json"})
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as e:
            raise UpstreamError(f"upstream {self._url}: {type(e).__name__}: {e}") from e
        if response.status_code != 200:
            await _raise_for(response, model)
        chunks = _chunks(response)
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            await response.aclose()
            raise UpstreamError(f"upstream {self._url}: the stream ended before any answer") from None
        except Exception:
            await response.aclose()
            raise
        gen = Generation(version=str(first.get("model") or model), prompt_tokens=0, events=_empty(),
                         cancel=lambda: None)
        gen.events = _events(first, chunks, gen, req.n)
        return gen


async def _raise_for(response: httpx.Response, model: str) -> None:
    raw = await response.aread()
    await response.aclose()
    try:
        error = orjson.loads(raw).get("error") or {}
    except (orjson.JSONDecodeError, AttributeError):
        error = {}
    message = error.get("message") if isinstance(error, dict) else None
    if response.status_code == 404 and isinstance(error, dict) and error.get("code") == "model_not_found":
        raise ModelNotFound(model)
    status = response.status_code if 400 <= response.status_code < 500 else 502
    raise UpstreamError(f"upstream answered {response.status_code}: {message or raw[:300].decode(errors='replace')}",
                        status)


async def _empty() -> AsyncIterator[tuple[Any, ...]]:
    return
    yield


async def _chunks(response: httpx.Response) -> AsyncGenerator[dict[str, Any], None]:
    """The upstream's SSE chunks as dicts, until [DONE]; the response is closed however this ends."""
    try:
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            chunk = orjson.loads(data)
            if isinstance(chunk, dict) and chunk.get("error"):
                error = chunk["error"]
                raise UpstreamError(f"upstream failed mid-answer: {error.get('message', error)}")
            yield chunk
    except httpx.HTTPError as e:
        raise UpstreamError(f"upstream connection failed mid-answer: {type(e).__name__}: {e}") from e
    finally:
        await response.aclose()


async def _events(first: dict[str, Any], chunks: AsyncGenerator[dict[str, Any], None], gen: Generation,
                  n: int) -> AsyncIterator[tuple[Any, ...]]:
    """Deltas as they come; each choice's "done" at the end, once the usage chunk gave the token counts."""
    finished: dict[int, str] = {}
    usage: dict[str, Any] = {}
    try:
        chunk: dict[str, Any] | None = first
        while chunk is not None:
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or []:
                index = int(choice.get("index", 0))
                content = (choice.get("delta") or {}).get("content")
                if content:
                    yield ("delta", index, content)
                if choice.get("finish_reason"):
                    finished[index] = choice["finish_reason"]
            chunk = await anext(chunks, None)
    finally:
        await chunks.aclose()  # a client that went away closes the upstream request now, not at GC
    gen.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    for index in range(n):
        # the upstream counts all choices together; with n > 1 each gets its share
        yield ("done", index, finished.get(index, "stop"), completion // n + (index < completion % n))
