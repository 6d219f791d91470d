"""Stage 2, serving: every error answers in one shape that names the field and the reason.

    {"error": {"message": "value: 7 is outside the scale [1, 5]", "type": "invalid_request_error",
               "param": "value", "code": "invalid_value"},
     "errors": [{"field": "value", "reason": "7 is outside the scale [1, 5]"}]}

`error` is OpenAI's envelope (what their clients parse); `errors` lists every problem.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ratingloop.errors import FieldError, InvalidInput, RatingloopError
from ratingloop.store.records import pydantic_errors

log = logging.getLogger(__name__)

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          409: "conflict", 410: "gone", 413: "request_too_large", 415: "unsupported_media_type",
          422: "invalid_value", 429: "rate_limit_exceeded", 500: "internal_error", 503: "unavailable"}
_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 409: "conflict_error",
          429: "rate_limit_error", 500: "server_error", 503: "server_error"}


def error_response(status: int, errors: list[FieldError] | None = None, message: str | None = None,
                   param: str | None = None, headers: dict[str, str] | None = None,
                   code: str | None = None, error_type: str | None = None) -> Response:
    errors = errors or []
    if not errors and param and message:
        errors = [FieldError(param, message.split(": ", 1)[1] if message.startswith(param + ": ") else message)]
    message = message or "; ".join(str(e) for e in errors) or _CODES.get(status, "error")
    body = {
        "error": {"message": message, "type": error_type or _TYPES.get(status, "invalid_request_error"),
                  "param": param or (errors[0].field if errors else None),
                  "code": code or _CODES.get(status, str(status))},
        "errors": [{"field": e.field, "reason": e.reason} for e in errors],
    }
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json", headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> Response:
        errors = []
        for e in exc.errors():
            if e.get("type") == "json_invalid":
                errors.append(FieldError("body", f"not valid JSON: {e.get('ctx', {}).get('error', e['msg'])}"))
            else:
                errors.extend(pydantic_errors(_AsValidationError([e])))
        return error_response(422, errors)

    @app.exception_handler(InvalidInput)
    async def _input(_request: Request, exc: InvalidInput) -> Response:
        return error_response(exc.status, exc.errors)

    @app.exception_handler(RatingloopError)
    async def _ours(_request: Request, exc: RatingloopError) -> Response:
        message = str(exc)
        field, _, _ = message.partition(":")
        param = getattr(exc, "param", None) or (field if " " not in field and field != message else None)
        retry = getattr(exc, "retry_after", None)
        return error_response(exc.status, message=message, param=param, code=getattr(exc, "code", None),
                              error_type=getattr(exc, "error_type", None),
                              headers={"Retry-After": str(retry)} if retry else None)

    @app.exception_handler(HTTPException)
    async def _http(_request: Request, exc: HTTPException) -> Response:
        param = "body" if exc.status_code == 413 else None
        return error_response(exc.status_code, message=str(exc.detail), param=param)


def crash_response(exc: BaseException) -> Response:
    log.error("unhandled error: %s", type(exc).__name__, exc_info=exc)
    return error_response(500, message=f"internal error ({type(exc).__name__}); nothing was stored "
                                       "unless a 2xx said so - retry with the same idempotency_key")


class CatchAll:
    """ASGI middleware: an exception no handler took becomes a 500 in our shape, and the connection stays
    up (Starlette's own last resort answers, then re-raises, and uvicorn drops the connection)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started:  # too late to answer; let the server close the connection
                raise
            await crash_response(exc)(scope, receive, send)


class _AsValidationError:
    """Adapts FastAPI's list of error dicts to the `.errors()` that pydantic_errors reads."""

    def __init__(self, errors: list[Any]):
        self._errors = errors

    def errors(self, include_url: bool = False) -> list[Any]:
        return self._errors


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` answers 413 before the app reads it all."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                return await self._too_large(scope, receive, send, int(value))
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413, f"request body over the limit of {self.max_bytes} bytes")
            return message

        await self.app(scope, counted, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, size: int) -> None:
        response = error_response(413, message=f"request body is {size} bytes; the limit is {self.max_bytes} "
                                               "(RATINGLOOP_MAX_REQUEST_BYTES); split a batch into smaller ones",
                                  param="body")
        await response(scope, receive, send)
