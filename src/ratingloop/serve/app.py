"""Stage 2, serving: the HTTP app. `ratingloop serve --backend none` runs it for products that bring
their own LLM: they log interactions and their users' ratings here.

Endpoints (OpenAPI at /docs):
    POST   /v1/interactions       admin   log an interaction; answers its id and a feedback token
    POST   /v1/feedback           admin or the interaction's feedback token; 201 new, 200 replay
    POST   /v1/feedback/batch     the same for many ratings, all or nothing
    GET    /v1/stats              admin   the store's counts
    DELETE /v1/users/{user_id}    admin   remove a user's data and keep it out of later imports
    GET    /healthz
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, TypeVar

from fastapi import FastAPI, Header, Request
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

import ratingloop
from ratingloop.config import Settings, load_settings
from ratingloop.errors import FieldError, InvalidInput
from ratingloop.serve.auth import Caller, TokenSigner, authenticate
from ratingloop.serve.errors import BodyLimit, error_response, install_error_handlers, json_response
from ratingloop.serve.writer import GroupWriter
from ratingloop.store import (
    InteractionIn,
    Limits,
    RatingIn,
    UnitResult,
    WriteUnit,
    delete_user,
    export_rating,
    open_engine,
    store_stats,
)
from ratingloop.store.records import clean_interaction, clean_rating, pydantic_errors
from ratingloop.store.writes import new_id

log = logging.getLogger(__name__)

class FeedbackBatch(BaseModel):
    items: list[RatingIn] = Field(min_length=1, description="ratings; stored all together or not at all")


def public_rating(row: dict[str, Any]) -> dict[str, Any]:
    """A stored rating as the API shows it: the export's shape plus its interaction id."""
    return {"interaction_id": row["interaction_id"], **export_rating(row)}


# The feedback endpoints (the hot ones) read their body themselves: pydantic-core parses and validates
# the JSON in one pass, skipping FastAPI's generic body handling (measured: a third of the per-request
# CPU). The schema is declared for /docs all the same.
Body = TypeVar("Body", bound=BaseModel)


async def parse_body(request: Request, model: type[Body]) -> Body:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as e:
        raise InvalidInput(pydantic_errors(e)) from None


def json_body_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def create_app(settings: Settings | None = None, *, open_admin: bool = False) -> FastAPI:
    """The feedback API over the store at `settings.url`. `open_admin` lets callers without a key act
    as admin; `ratingloop serve` allows it only on a loopback address when no admin key is set."""
    settings = settings or load_settings()
    engine = open_engine(settings.url)
    limits = Limits(settings.aspects, settings.implicit_signals, settings.max_comment_chars)
    signer = TokenSigner(settings.feedback_secret())
    writer = GroupWriter(engine)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        writer.start()
        yield
        writer.stop()

    app = FastAPI(title="ratingloop", version=ratingloop.__version__, lifespan=lifespan,
                  description="Log interactions and the ratings users give them.")
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    install_error_handlers(app)

    def caller(authorization: str | None, body_token: str | None = None) -> Caller:
        return authenticate(authorization, body_token, admin_key=settings.admin_key, signer=signer,
                            open_admin=open_admin)

    async def write(unit: WriteUnit) -> UnitResult:
        result = await writer.write(unit)
        if result.errors:
            raise InvalidInput(result.errors)
        return result

    @app.post("/v1/interactions", status_code=201, summary="Log an interaction produced elsewhere")
    async def log_interaction(body: InteractionIn, authorization: str | None = Header(None)) -> Response:
        caller(authorization).require_admin()
        inter, errors = clean_interaction(body, limits, lambda _h: new_id())
        if inter is None:
            raise InvalidInput(errors)
        result = await write(WriteUnit(interactions=[inter], live=True))
        status = result.interactions[0][1]
        content = {"id": inter.id, "feedback_token": signer.sign(inter.id),
                   "ratings": [public_rating(row) for row, _ in result.ratings]}
        return json_response(content, status, headers={"X-Interaction-Id": inter.id})

    @app.post("/v1/feedback", status_code=201, summary="Rate an interaction (201 new, 200 replayed key)",
              openapi_extra=json_body_schema(RatingIn))
    async def feedback(request: Request) -> Response:
        body = await parse_body(request, RatingIn)
        who = caller(request.headers.get("authorization"), body.feedback_token)
        rating, errors = clean_rating(body, limits)
        if rating is None:
            raise InvalidInput(errors)
        who.may_rate(rating.interaction_id)
        result = await write(WriteUnit(ratings=[rating], vouched=who.admin, live=True))
        row, status = result.ratings[0]
        return json_response(public_rating(row), status)

    @app.post("/v1/feedback/batch", status_code=201, summary="Many ratings, stored all together or not at all",
              openapi_extra=json_body_schema(FeedbackBatch))
    async def feedback_batch(request: Request) -> Response:
        body = await parse_body(request, FeedbackBatch)
        tokens = {item.feedback_token for item in body.items} - {None}
        who = caller(request.headers.get("authorization"), tokens.pop() if len(tokens) == 1 else None)
        if len(body.items) > settings.max_batch_items:
            return error_response(422, [FieldError("items", f"{len(body.items)} items; the limit is "
                                                   f"{settings.max_batch_items} (RATINGLOOP_MAX_BATCH_ITEMS)")])
        ratings, errors = [], []
        for i, item in enumerate(body.items):
            rating, errs = clean_rating(item, limits, f"items[{i}]")
            errors += errs
            if rating is not None:
                ratings.append(rating)
        if errors:
            raise InvalidInput(errors)
        for rating in ratings:
            who.may_rate(rating.interaction_id)
        result = await write(WriteUnit(ratings=ratings, vouched=who.admin, live=True))
        created = sum(1 for _, status in result.ratings if status == 201)
        content = {"created": created, "replayed": len(result.ratings) - created,
                   "items": [{"id": row["id"], "status": status} for row, status in result.ratings]}
        return json_response(content, 201 if created else 200)

    @app.get("/v1/stats", summary="Counts of interactions, ratings, raters and versions")
    async def stats(authorization: str | None = Header(None)) -> Response:
        caller(authorization).require_admin()
        return json_response(await run_in_threadpool(store_stats, engine))

    @app.delete("/v1/users/{user_id}", summary="Delete a user's interactions and ratings, for good")
    async def delete(user_id: str, authorization: str | None = Header(None)) -> Response:
        caller(authorization).require_admin()
        n_inter, n_ratings = await run_in_threadpool(delete_user, engine, user_id)
        log.info("deleted user: %d interactions, %d ratings", n_inter, n_ratings)
        return json_response({"user_id": user_id, "interactions_deleted": n_inter, "ratings_deleted": n_ratings})

    @app.get("/healthz", summary="Liveness and database reachability")
    async def healthz() -> Response:
        def ping() -> None:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))

        try:
            await run_in_threadpool(ping)
        except Exception as e:
            return json_response({"status": "error", "database": str(e)}, 503)
        return json_response({"status": "ok", "version": ratingloop.__version__,
                              "database": engine.dialect.name})

    return app


def app_from_env() -> FastAPI:
    """The factory `ratingloop serve` hands to uvicorn (each worker builds its own app)."""
    import os

    return create_app(load_settings(), open_admin=os.environ.get("RATINGLOOP_OPEN_ADMIN") == "1")
