"""Stage 2, serving: the HTTP app. `ratingloop serve --backend none` runs it for products that bring
their own LLM: they log interactions and their users' ratings here.

Endpoints (OpenAPI at /docs):
    POST   /v1/interactions       admin   log an interaction; answers its id and a feedback token
    POST   /v1/feedback           admin or the interaction's feedback token; 201 new, 200 replay
    POST   /v1/feedback/batch     the same for many ratings, all or nothing
    GET    /v1/stats              admin   the store's counts
    DELETE /v1/users/{user_id}    admin   remove a user's data and keep it out of later imports
    GET    /healthz

Every request is admitted in the same order, cheapest refusal first: the caller from the
Authorization header (401 before any body is read), the per-address rate limit for callers without
the admin key, the body's size (a request without an Authorization header, whose feedback token rides
in the body, may send at most RATINGLOOP_MAX_ANONYMOUS_REQUEST_BYTES), its Content-Type (JSON only: a
web page on another site cannot send that without the browser asking first), then the body itself -
parsed off the event loop when it is large, with duplicate keys refused - and the ratings-per-second
limit of the token or admin key. A database that cannot be used answers 503 with Retry-After.
"""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Mapping, TypeVar
from urllib.parse import quote

from fastapi import FastAPI, Header, Request
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

import ratingloop
from ratingloop.config import Settings, load_settings
from ratingloop.errors import FieldError, Forbidden, InvalidInput, Unauthorized
from ratingloop.privacy import forget_user
from ratingloop.serve.auth import Caller, LoopbackOnly, TokenSigner, authenticate
from ratingloop.serve.chat import Backend, ChatRequest, as_400, chat_router
from ratingloop.serve.errors import (
    BodyLimit,
    CatchAll,
    crash_response,
    error_response,
    install_error_handlers,
    json_response,
)
from ratingloop.serve.health import RETRY_AFTER_S, Outage, StoreHealth
from ratingloop.serve.limits import Buckets, Rate
from ratingloop.serve.page import PageSessions, page_router
from ratingloop.serve.writer import GroupWriter
from ratingloop.store import (
    InteractionIn,
    Limits,
    RatingIn,
    UnitResult,
    WriteUnit,
    export_rating,
    open_engine,
    store_stats,
)
from ratingloop.store.db import unavailable
from ratingloop.store.records import clean_interaction, clean_rating, pydantic_errors, text_problem
from ratingloop.store.writes import new_id

log = logging.getLogger(__name__)

INLINE_PARSE_BYTES = 16 * 1024  # larger bodies are parsed on a worker thread, not the event loop


class FeedbackBatch(BaseModel):
    items: list[RatingIn] = Field(min_length=1, description="ratings; stored all together or not at all")


def public_rating(row: dict[str, Any]) -> dict[str, Any]:
    """A stored rating as the API shows it: the export's shape plus its interaction id."""
    return {"interaction_id": row["interaction_id"], **export_rating(row)}


def header_id(iid: str) -> str:
    """An id as an HTTP header value: headers are Latin-1, so anything beyond ASCII is percent-encoded."""
    return iid if iid.isascii() and iid.isprintable() else quote(iid, safe="")


# The POST endpoints read their body themselves: pydantic-core parses and validates the JSON in one
# pass, skipping FastAPI's generic body handling (measured: a third of the per-request CPU), and only
# after the caller is known. The schema is declared for /docs all the same.
Body = TypeVar("Body", bound=BaseModel)


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def parse_json(body: bytes, model: type[Body]) -> Body:
    """The body as `model`; a key sent twice in one object is refused rather than silently resolved."""
    try:
        json.loads(body, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as e:
        raise InvalidInput([FieldError(str(e), "sent twice in one JSON object; send each key once")]) from None
    except ValueError:
        pass  # not JSON: pydantic says where, below
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise InvalidInput(pydantic_errors(e)) from None


SCHEMA_REF = "#/components/schemas/{model}"


def json_body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The request body of an endpoint that reads its own; the models it refers to are added to the
    document's components by `_with_body_models`."""
    schema = model.model_json_schema(ref_template=SCHEMA_REF)
    schema.pop("$defs", None)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _with_body_models(app: FastAPI) -> None:
    """Make app.openapi() also list the models that `json_body_schema` bodies refer to."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (InteractionIn, RatingIn, FeedbackBatch, ChatRequest):
                model_schema = model.model_json_schema(ref_template=SCHEMA_REF)
                components.update(model_schema.pop("$defs", {}))
                components.setdefault(model.__name__, model_schema)
        return app.openapi_schema or generate()

    app.openapi = openapi  # type: ignore[method-assign]


class _Limits:
    """The three rate limits of serve/limits.py, from Settings."""

    def __init__(self, s: Settings):
        self.token = Buckets(Rate(s.token_ratings_per_s, s.token_ratings_burst), "ratings per feedback token")
        self.admin = Buckets(Rate(s.admin_ratings_per_s, s.admin_ratings_burst), "ratings per admin key")
        self.address = Buckets(Rate(s.address_requests_per_s, s.address_requests_burst), "requests per address")

    def ratings(self, who: Caller, n: int) -> None:
        if who.admin:
            self.admin.take("admin", n)
        else:
            self.token.take(who.token_interaction or "", n)


BackendFactory = Callable[[Engine, Settings], Backend]


def create_app(settings: Settings | None = None, *, open_admin: bool = False,
               backend_factory: BackendFactory | None = None) -> FastAPI:
    """The feedback API over the store at `settings.url`, and chat when a backend answers (serve/chat.py).
    `open_admin` lets callers without a key act as admin; `ratingloop serve` allows it only on a loopback
    address when no admin key is set, and it is ignored when one is."""
    settings = settings or load_settings()
    if open_admin and settings.admin_key:
        log.warning("RATINGLOOP_OPEN_ADMIN is ignored: an admin key is set, so admin endpoints need it")
        open_admin = False
    engine = open_engine(settings.url)
    limits = Limits(settings.aspects, settings.implicit_signals, settings.max_comment_chars)
    secret = settings.feedback_secret()  # signs tokens and keys tombstones; read once, not per request
    signer = TokenSigner(secret)
    writer = GroupWriter(engine, user_key=secret)
    rate = _Limits(settings)
    backend = backend_factory(engine, settings) if backend_factory is not None else None
    outage = Outage()
    health = StoreHealth(engine, outage, settings.min_free_disk_bytes)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        writer.start()
        if backend is not None:
            await backend.start()
        yield
        if backend is not None:
            await backend.stop()
        writer.stop()
        health.close()

    app = FastAPI(title="ratingloop", version=ratingloop.__version__, lifespan=lifespan,
                  description="Log interactions and the ratings users give them.")
    app.state.backend = backend
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    if open_admin:
        app.add_middleware(LoopbackOnly)
    app.add_middleware(CatchAll)
    install_error_handlers(app)
    _with_body_models(app)

    @app.exception_handler(DBAPIError)
    @app.exception_handler(PoolTimeout)
    async def _database(_request: Request, exc: Exception) -> Response:
        if not unavailable(exc):
            return crash_response(exc)
        outage.failed(exc)
        return error_response(503, message=f"the store is unavailable right now; nothing was stored - retry in "
                                           f"{RETRY_AFTER_S} s with the same idempotency_key",
                              headers={"Retry-After": str(RETRY_AFTER_S)})

    def caller(authorization: str | None, body_token: str | None = None) -> Caller:
        return authenticate(authorization, body_token, admin_key=settings.admin_key, signer=signer,
                            open_admin=open_admin)

    def charge_address(request: Request) -> None:
        rate.address.take(request.client.host if request.client else "unknown")

    async def admit(request: Request, model: type[Body], *, admin_only: bool = False) -> tuple[Caller, Body]:
        """The caller and the request's body, in the order of the module's docstring."""
        header = request.headers.get("authorization")
        who = caller(header) if header is not None or open_admin else None
        if who is None or not who.admin:
            charge_address(request)
            if who is None and admin_only:
                raise Unauthorized("Authorization: missing; send 'Bearer <admin key>'")
        if who is None:
            size = request.headers.get("content-length", "")
            cap = settings.max_anonymous_request_bytes
            if not size.isdigit() or int(size) > cap:
                return_413 = f"without an Authorization header a body may be at most {cap} bytes " \
                             f"(got {size or 'no Content-Length'}); send the feedback token as 'Bearer <token>'"
                raise InvalidInput([FieldError("body", return_413, 413)])
        body = await read_json(request, model)
        if who is None:
            tokens = {item.feedback_token for item in getattr(body, "items", [body])} - {None}
            who = caller(None, tokens.pop() if len(tokens) == 1 else None)
        return who, body

    async def read_json(request: Request, model: type[Body]) -> Body:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
            raise InvalidInput([FieldError("Content-Type", f"{media or 'missing'}; send application/json", 415)])
        raw = await request.body()
        return parse_json(raw, model) if len(raw) <= INLINE_PARSE_BYTES else \
            await run_in_threadpool(parse_json, raw, model)

    def anchor(who: Caller, rating: RatingIn) -> str | None:
        """The interaction a rank sent with a feedback token and no interaction_id is stored under: the token's."""
        return who.token_interaction if rating.kind == "rank" else None

    def cap(who: Caller) -> int | None:
        return None if who.admin else settings.max_ratings_per_rater_interaction

    async def write(unit: WriteUnit) -> UnitResult:
        result = await writer.write(unit)
        outage.ok()
        if result.errors:
            raise InvalidInput(result.errors)
        return result

    @app.post("/v1/interactions", status_code=201, summary="Log an interaction produced elsewhere",
              openapi_extra=json_body_schema(InteractionIn))
    async def log_interaction(request: Request) -> Response:
        who, body = await admit(request, InteractionIn, admin_only=True)
        who.require_admin()
        inter, errors = clean_interaction(body, limits, lambda _h: new_id())
        if inter is None:
            raise InvalidInput(errors)
        rate.ratings(who, 1 + len(inter.ratings))
        result = await write(WriteUnit(interactions=[inter], live=True))
        status = result.interactions[0][1]
        content = {"id": inter.id, "feedback_token": signer.sign(inter.id),
                   "ratings": [public_rating(row) for row, _ in result.ratings]}
        return json_response(content, status, headers={"X-Interaction-Id": header_id(inter.id)})

    @app.post("/v1/feedback", status_code=201, summary="Rate an interaction (201 new, 200 replayed key)",
              openapi_extra=json_body_schema(RatingIn))
    async def feedback(request: Request) -> Response:
        who, body = await admit(request, RatingIn)
        rating, errors = clean_rating(body, limits, interaction_id=anchor(who, body))
        if rating is None:
            raise InvalidInput(errors)
        who.may_rate(rating.interaction_id, rating.source)
        rate.ratings(who, 1)
        result = await write(WriteUnit(ratings=[rating], vouched=who.admin, live=True, max_per_rater=cap(who)))
        row, status = result.ratings[0]
        return json_response(public_rating(row), status)

    @app.post("/v1/feedback/batch", status_code=201, summary="Many ratings, stored all together or not at all",
              openapi_extra=json_body_schema(FeedbackBatch))
    async def feedback_batch(request: Request) -> Response:
        who, body = await admit(request, FeedbackBatch)
        if len(body.items) > settings.max_batch_items:
            return error_response(422, [FieldError("items", f"{len(body.items)} items; the limit is "
                                                   f"{settings.max_batch_items} (RATINGLOOP_MAX_BATCH_ITEMS)")])
        ratings, errors = [], []
        for i, item in enumerate(body.items):
            rating, errs = clean_rating(item, limits, f"items[{i}]", interaction_id=anchor(who, item))
            errors += errs
            if rating is not None:
                ratings.append(rating)
        if errors:
            raise InvalidInput(errors)
        for i, rating in enumerate(ratings):
            who.may_rate(rating.interaction_id, rating.source, f"items[{i}]")
        rate.ratings(who, len(ratings))
        result = await write(WriteUnit(ratings=ratings, vouched=who.admin, live=True, max_per_rater=cap(who)))
        created = sum(1 for _, status in result.ratings if status == 201)
        content = {"created": created, "replayed": len(result.ratings) - created,
                   "items": [{"id": row["id"], "status": status} for row, status in result.ratings]}
        return json_response(content, 201 if created else 200)

    @app.get("/v1/stats", summary="Counts of interactions, ratings, raters and versions")
    async def stats(request: Request, authorization: str | None = Header(None)) -> Response:
        who = caller(authorization)
        if not who.admin:
            charge_address(request)
        who.require_admin()
        return json_response(await run_in_threadpool(store_stats, engine))

    # {user_id:path}: an id may contain "/" (sent as %2F, which the server decodes before routing)
    @app.delete("/v1/users/{user_id:path}", summary="Delete a user's data and what was derived from it, for good")
    async def delete(user_id: str, authorization: str | None = Header(None)) -> Response:
        caller(authorization).require_admin()
        problem = text_problem(user_id, is_id=True)
        if problem:
            raise InvalidInput([FieldError("user_id", problem)])
        gone = await run_in_threadpool(forget_user, engine, user_id, user_key=secret,
                                       data_dir=settings.resolved_data_dir)
        return json_response({"user_id": user_id, "interactions_deleted": gone.interactions,
                              "ratings_deleted": gone.ratings})

    def require_chat_models(request: Request) -> None:
        """GET /v1/models: whoever may chat."""
        if request.headers.get("authorization") is None and settings.public_chat:
            return
        require_admin(request)

    def require_admin(request: Request) -> None:
        """For routers of other serve modules: Unauthorized/Forbidden unless the caller holds the admin key."""
        who = caller(request.headers.get("authorization"))
        if not who.admin:
            charge_address(request)
        who.require_admin()

    # --- routers of the other serve modules (each adds its own include line here) ---
    from ratingloop.serve.dashboard import dashboard_router  # matplotlib loads on the first /v1/dashboard
    app.include_router(dashboard_router(engine, require_admin))
    sessions = PageSessions(secret)  # the web page's signed cookie; public chat reads its user from it
    app.include_router(page_router(settings, engine, sessions, require_admin))

    if backend is not None:
        per_min = settings.public_chat_requests_per_min
        chat_limit = Buckets(Rate(per_min / 60, max(1.0, per_min)), "chat requests per page user")

        async def admit_chat(request: Request) -> tuple[str | None, ChatRequest]:
            """The admin (the product's server, which names the user) or, with public chat, the page's
            user, whose pseudonymous id the request's `user` becomes."""
            header = request.headers.get("authorization")
            page_user = None
            if header is not None or open_admin:
                who = caller(header)
                if not who.admin:
                    charge_address(request)
                    raise Forbidden("chat needs the admin key: the product's server calls it; a feedback token "
                                    "only rates its interaction")
            else:
                charge_address(request)
                page_user = page_user_of(request)
                if page_user is None:
                    raise Unauthorized("Authorization: missing; chat needs 'Bearer <admin key>'"
                                       + (" or the web page's session cookie" if settings.public_chat else ""))
                chat_limit.take(page_user)
            try:
                return page_user, await read_json(request, ChatRequest)
            except InvalidInput as e:
                raise as_400(e) from None

        async def log_interactions(items: list[InteractionIn]) -> None:
            cleaned = []
            for item in items:
                inter, errors = clean_interaction(item, limits, lambda _h: new_id())
                if inter is None:
                    raise InvalidInput(errors)
                cleaned.append(inter)
            await write(WriteUnit(interactions=cleaned, live=True))

        def page_user_of(request: Request) -> str | None:
            return sessions.user_of(request) if settings.public_chat else None

        app.include_router(chat_router(backend, admit=admit_chat, log_interactions=log_interactions,
                                       sign=signer.sign, models_auth=require_chat_models,
                                       openapi_body=json_body_schema(ChatRequest)))


    @app.get("/healthz", summary="Whether the store can take writes: 200, or 503 saying why not")
    async def healthz() -> Response:
        state = await health.check()
        if not state["ok"]:
            return json_response({"status": "error", "problem": state["problem"]}, 503,
                                 headers={"Retry-After": str(RETRY_AFTER_S)})
        return json_response({"status": "ok", "version": ratingloop.__version__,
                              "database": engine.dialect.name})

    return app


def app_from_env() -> FastAPI:
    """The factory `ratingloop serve` hands to uvicorn (each worker builds its own app); the CLI passes
    its options in RATINGLOOP_SERVE_* variables."""
    import os

    return create_app(load_settings(), open_admin=os.environ.get("RATINGLOOP_OPEN_ADMIN") == "1",
                      backend_factory=backend_from_env(os.environ))


def backend_from_env(env: Mapping[str, str]) -> BackendFactory | None:
    """The backend `serve --backend` named: none, transformers, proxy or vllm."""
    kind = env.get("RATINGLOOP_SERVE_BACKEND", "none")
    model = env.get("RATINGLOOP_SERVE_MODEL") or None
    if kind == "none":
        return None
    if kind == "transformers":
        from ratingloop.serve.local import LocalBackend

        return lambda engine, settings: LocalBackend(engine, settings, base=model)
    if kind == "proxy":
        from ratingloop.serve.proxy import ProxyBackend

        url, key = env.get("RATINGLOOP_SERVE_UPSTREAM", ""), env.get("RATINGLOOP_SERVE_UPSTREAM_KEY") or None
        return lambda engine, settings: ProxyBackend(url, key=key, model=model)
    if kind == "vllm":
        from ratingloop.serve.vllm import VllmBackend

        return lambda engine, settings: VllmBackend(engine, settings, base=model)
    raise ValueError(f"--backend {kind}: one of transformers, proxy, vllm, none")
