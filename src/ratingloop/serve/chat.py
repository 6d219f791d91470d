"""Stage 2, serving: OpenAI's chat completions, answered by a backend and logged as interactions.

    POST /v1/chat/completions   admin (the product's server), or a page user when public chat is on
    GET  /v1/models             active, base, and each version that can answer

The request and response are OpenAI's (the official `openai` client works unchanged), plain or
streamed (SSE, ending with `data: [DONE]`). Every answer (each of `n` choices) is stored as an
Interaction with the version that produced it, the request's `user` as user_id, latency and token
counts - once it is complete: a failed or cancelled generation stores nothing. The response adds

    "ratingloop": {"interaction_id", "feedback_token", "version"}   (+ "choices" when n > 1)

in the body (the last chunk, when streaming) and the headers X-Interaction-Id and X-Feedback-Token
(sent before the first chunk). Malformed requests answer 400 in OpenAI's error shape naming the field;
an unknown model 404 `model_not_found`.

A backend turns a checked request into a `Generation` (serve/local.py's batching transformers backend,
serve/proxy.py's upstream); this module owns the request, the response, and the logging.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Literal, Protocol

import anyio
import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import Response, StreamingResponse

from ratingloop.errors import FieldError, InvalidInput, RatingloopError
from ratingloop.serve.errors import json_response
from ratingloop.store.records import InteractionIn, Message, text_problem
from ratingloop.store.writes import new_id

MAX_N = 8
MAX_STOPS = 4
UNSUPPORTED = {  # OpenAI request fields this server cannot honour: refused, never silently ignored
    "tools": "tool calls are not supported",
    "functions": "function calls are not supported",
    "tool_choice": "tool calls are not supported",
    "logprobs": "log probabilities are not returned",
    "top_logprobs": "log probabilities are not returned",
    "logit_bias": "logit_bias is not supported",
    "audio": "audio is not supported",
    "modalities": "only text is supported",
    "prediction": "predicted outputs are not supported",
}


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str = Field(default="active", min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = Field(default=None, min_length=1, max_length=200)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)

    @field_validator("user")
    @classmethod
    def _user(cls, value: str | None) -> str | None:
        problem = text_problem(value, is_id=True) if value is not None else None
        if problem:
            raise ValueError(problem)
        return value

    @property
    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


def check_request(req: ChatRequest) -> list[dict[str, str]]:
    """The conversation as plain {"role", "content"} messages, or InvalidInput (400) naming the field."""
    errors: list[FieldError] = []
    for name, why in UNSUPPORTED.items():
        if (req.model_extra or {}).get(name) not in (None, False, [], {}):
            errors.append(FieldError(name, why, 400))
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name):
            errors.append(FieldError(name, "only 0 is supported", 400))
    if len(req.stops) > MAX_STOPS or any(not s for s in req.stops):
        errors.append(FieldError("stop", f"at most {MAX_STOPS} non-empty strings", 400))
    messages = []
    for i, m in enumerate(req.messages):
        text = _text(m.content)
        if text is None:
            errors.append(FieldError(f"messages[{i}].content", "must be a string or a list of text parts", 400))
            continue
        problem = text_problem(text)
        if problem:
            errors.append(FieldError(f"messages[{i}].content", problem, 400))
            continue
        messages.append({"role": "system" if m.role == "developer" else m.role, "content": text})
    if messages and messages[-1]["role"] == "assistant":
        errors.append(FieldError(f"messages[{len(messages) - 1}].role", "the last message must not be the "
                                 "assistant's: there is nothing to answer", 400))
    if errors:
        raise InvalidInput(errors)
    return messages


def _text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    return None


def as_400(e: InvalidInput) -> InvalidInput:
    """A malformed chat request is OpenAI's 400, not the feedback API's 422."""
    return InvalidInput([FieldError(x.field, x.reason, 400 if x.status == 422 else x.status) for x in e.errors])


class ModelNotFound(RatingloopError):
    status, param, code, error_type = 404, "model", "model_not_found", "invalid_request_error"  # as OpenAI

    def __init__(self, model: str):
        super().__init__(f"model: {model!r} does not exist; GET /v1/models lists the models that answer")


class Unavailable(RatingloopError):
    """The model cannot answer now (it failed to load); retry later or name another."""

    status, retry_after = 503, 5


@dataclass
class Generation:
    """A backend's answer in the making. `events` yields ("delta", index, text), ("done", index,
    finish_reason, completion_tokens); a failure raises from it. `cancel` stops the rest."""

    version: str
    prompt_tokens: int
    events: AsyncIterator[tuple[Any, ...]]
    cancel: Callable[[], None] = lambda: None


class Backend(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def models(self) -> list[dict[str, Any]]: ...

    async def generate(self, req: ChatRequest, messages: list[dict[str, str]], user: str | None) -> Generation: ...


@dataclass
class _Choice:
    index: int
    interaction_id: str
    text: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    tokens: int = 0
    done_at: float = 0.0


Admit = Callable[[Request], Awaitable[tuple[str | None, ChatRequest]]]
Log = Callable[[list[InteractionIn]], Awaitable[None]]


def chat_router(backend: Backend, *, admit: Admit, log_interactions: Log, sign: Callable[[str], str],
                models_auth: Callable[[Request], None], openapi_body: dict[str, Any] | None = None) -> APIRouter:
    """The two endpoints. `admit(request)` authenticates and parses (raising 401/403/400/429), answering
    the user to force (a page user) or None; `log_interactions` stores finished answers."""
    router = APIRouter()

    @router.post("/v1/chat/completions", summary="OpenAI chat completions; every answer is logged and rateable",
                 openapi_extra=openapi_body)
    async def completions(request: Request) -> Response:
        started = time.monotonic()
        forced_user, req = await admit(request)
        user = forced_user or req.user
        messages = check_request(req)
        gen = await backend.generate(req, messages, user)
        choices = [_Choice(i, new_id()) for i in range(req.n)]
        meta = _Meta(gen.version, choices, sign, int(time.time()))
        headers = {"X-Interaction-Id": choices[0].interaction_id,
                   "X-Feedback-Token": sign(choices[0].interaction_id), "X-Ratingloop-Version": gen.version}

        async def log() -> None:
            await log_interactions([InteractionIn(
                id=c.interaction_id, messages=[Message.model_validate(m) for m in messages],
                response="".join(c.text), user_id=user, model=gen.version,
                latency_ms=round((c.done_at - started) * 1000, 1), prompt_tokens=gen.prompt_tokens,
                completion_tokens=c.tokens, tags={"finish_reason": c.finish_reason}) for c in choices])

        if not req.stream:
            try:
                async for event in gen.events:
                    _apply(choices, event)
            finally:
                await _close(gen)
            generated = time.monotonic()
            await log()
            logged = time.monotonic()
            timing = f"generate;dur={(generated - started) * 1000:.1f}, log;dur={(logged - generated) * 1000:.1f}"
            return json_response(meta.completion(gen.prompt_tokens), headers={**headers, "Server-Timing": timing})

        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def sse() -> AsyncIterator[bytes]:
            try:
                yield meta.chunk([{"index": c.index, "delta": {"role": "assistant", "content": ""},
                                   "finish_reason": None} for c in choices])
                async for event in gen.events:
                    choice = _apply(choices, event)
                    if event[0] == "delta":
                        yield meta.chunk([{"index": choice.index, "delta": {"content": event[2]},
                                           "finish_reason": None}])
                    else:
                        yield meta.chunk([{"index": choice.index, "delta": {}, "finish_reason": event[2]}])
                await log()
                last: dict[str, Any] = {"ratingloop": meta.ratingloop()}
                if include_usage:
                    last["usage"] = meta.usage(gen.prompt_tokens)
                yield meta.chunk([], **last)
                yield b"data: [DONE]\n\n"
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - headers are sent: the stream ends with OpenAI's error event
                yield _sse({"error": _error_body(e)})
            finally:
                await _close(gen)  # the client went away, or we failed: no further tokens for this request

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @router.get("/v1/models", summary="The models a chat request may name")
    async def models(request: Request) -> Response:
        models_auth(request)
        return json_response({"object": "list", "data": await backend.models()})

    return router


async def _close(gen: Generation) -> None:
    """Stop what is left of a generation, even while the request is being cancelled."""
    gen.cancel()
    aclose = getattr(gen.events, "aclose", None)
    if aclose is not None:
        with anyio.CancelScope(shield=True):
            await aclose()


def _apply(choices: list[_Choice], event: tuple[Any, ...]) -> _Choice:
    choice = choices[event[1]]
    if event[0] == "delta":
        choice.text.append(event[2])
    else:
        choice.finish_reason, choice.tokens, choice.done_at = event[2], event[3], time.monotonic()
    return choice


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _error_body(e: Exception) -> dict[str, Any]:
    status = getattr(e, "status", 500)
    return {"message": str(e) or type(e).__name__, "type": "server_error" if status >= 500 else
            "invalid_request_error", "param": None, "code": "generation_failed"}


@dataclass
class _Meta:
    version: str
    choices: list[_Choice]
    sign: Callable[[str], str]
    created: int

    @property
    def id(self) -> str:
        return f"chatcmpl-{self.choices[0].interaction_id}"

    def ratingloop(self) -> dict[str, Any]:
        first = self.choices[0].interaction_id
        out: dict[str, Any] = {"interaction_id": first, "feedback_token": self.sign(first), "version": self.version}
        if len(self.choices) > 1:
            out["choices"] = [{"index": c.index, "interaction_id": c.interaction_id,
                               "feedback_token": self.sign(c.interaction_id)} for c in self.choices]
        return out

    def usage(self, prompt_tokens: int) -> dict[str, int]:
        completion = sum(c.tokens for c in self.choices)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion}

    def completion(self, prompt_tokens: int) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.version,
                "system_fingerprint": None,
                "choices": [{"index": c.index, "message": {"role": "assistant", "content": "".join(c.text)},
                             "logprobs": None, "finish_reason": c.finish_reason} for c in self.choices],
                "usage": self.usage(prompt_tokens), "ratingloop": self.ratingloop()}

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return _sse({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                     "model": self.version, "system_fingerprint": None, "choices": choices, **extra})
