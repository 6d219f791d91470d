"""Stage 2, serving: the rating web page at `/` and what it reads about its user.

The page (static/index.html, page.js, page.css: plain HTML/CSS/JS, nothing fetched from elsewhere) is a
chat that streams answers from `POST /v1/chat/completions`; under each finished answer the user rates it
with thumbs, 1-5 stars, per-aspect stars, reasons for a thumbs-down, a comment and a better answer (a
correction). Each rating is one `POST /v1/feedback` with that answer's feedback token, confirmed on the
page one by one. The reasons a thumbs-down offers become ratings like this (ratings carry no tags):

    incorrect  -> kind aspect, aspect accuracy,    value 1 on [1, 5]
    off-topic  -> kind aspect, aspect relevance,   value 1 on [1, 5]
    unhelpful  -> kind aspect, aspect helpfulness, value 1 on [1, 5]
    too long   -> kind comment, text "reason: too long"
    unsafe     -> kind comment, text "reason: unsafe"
    other      -> kind comment, text "reason: other"

(an aspect the server is not configured with, RATINGLOOP_ASPECTS, falls back to a comment as well).

Who may use it: by default whoever holds the admin key (the page asks for it and keeps it in
sessionStorage; it sends a `user` id it keeps in localStorage, so the ratings have a rater). With
`ratingloop serve --public-chat` anyone may chat: the page's first visit gets a pseudonymous user id
(`page-<random>`) in a signed, HttpOnly, SameSite=Strict cookie, which the chat endpoint reads with
`PageSessions.user_of` and limits per user.

    GET /                             the page (sets the cookie under public chat)
    GET /static/{page.js,page.css}
    GET /v1/page/config               {"public_chat", "needs_key", "user_id", "aspects"}
    GET /v1/users/{id}/feedback       admin, or the cookie of that user: how many ratings they gave and the
                                      versions trained on them (a dataset snapshot's manifest lists the
                                      rating ids behind its rows), whether those serve and since when
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from fastapi import APIRouter, Request
from sqlalchemy import Engine, distinct, func, or_, select
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse, Response

from ratingloop.config import Settings
from ratingloop.errors import FieldError, Forbidden, InvalidInput, Unauthorized
from ratingloop.models.registry import COHORT, EventRow, dataset_snapshots, list_events, model_versions, training_runs
from ratingloop.serve.errors import json_response
from ratingloop.serve.limits import Buckets, Rate
from ratingloop.serve.routing import ACTIVE, load_routes
from ratingloop.store import tables as t
from ratingloop.store.records import text_problem

STATIC = Path(__file__).parent / "static"
ASSETS = {"page.js": "text/javascript; charset=utf-8", "page.css": "text/css; charset=utf-8"}
COOKIE = "rl_session"
COOKIE_MAX_AGE_S = 365 * 24 * 3600  # the id is the user's rater id: their feedback history hangs on it
# The page loads only its own files and talks only to this server.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class PageSessions:
    """Pseudonymous page users: `page-<random>` ids in a cookie signed with the server's secret (an HMAC
    under its own label, so a session cookie can never pass for a feedback token or the reverse)."""

    def __init__(self, secret: bytes):
        self._secret = secret

    def _mac(self, user_id: str) -> str:
        return _b64(hmac.new(self._secret, f"{COOKIE}:{user_id}".encode(), hashlib.sha256).digest()[:18])

    def user_of(self, request: Request) -> str | None:
        """The user id of the request's valid session cookie; None without one or when it does not verify."""
        value = request.cookies.get(COOKIE, "")
        user_id, _, mac = value.rpartition(".")
        if not user_id.startswith("page-") or not hmac.compare_digest(mac.encode(), self._mac(user_id).encode()):
            return None
        return user_id

    def issue(self, response: Response, secure: bool = False) -> str:
        """Set a cookie with a new user id on `response`; the id."""
        user_id = f"page-{secrets.token_urlsafe(12)}"
        response.set_cookie(COOKIE, f"{user_id}.{self._mac(user_id)}", max_age=COOKIE_MAX_AGE_S, path="/",
                            httponly=True, samesite="strict", secure=secure)
        return user_id


def page_router(settings: Settings, engine: Engine, sessions: PageSessions,
                require_admin: Callable[[Request], None]) -> APIRouter:
    """The page, its files, its config and the per-user feedback summary (see the module docstring)."""
    router = APIRouter()
    page = (STATIC / "index.html").read_bytes()
    # reads of a user's summary by a cookie holder: limited like any caller without the admin key
    reads = Buckets(Rate(settings.address_requests_per_s, settings.address_requests_burst), "requests per address")

    def session(request: Request, response: Response) -> str | None:
        """The request's page user; under public chat a new one (cookie set on `response`) when it has none."""
        user_id = sessions.user_of(request)
        if user_id is None and settings.public_chat:
            user_id = sessions.issue(response, secure=request.url.scheme == "https")
        return user_id

    @router.get("/", include_in_schema=False)
    async def index(request: Request) -> Response:
        response = Response(page, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)
        session(request, response)
        return response

    @router.get("/static/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in ASSETS:
            return Response(status_code=404)
        return FileResponse(STATIC / name, media_type=ASSETS[name],
                            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    @router.get("/v1/page/config", summary="What the web page needs to know: public chat or the admin key")
    async def config(request: Request, response: Response) -> dict[str, Any]:
        user_id = session(request, response)  # FastAPI copies the cookie set on `response` into its answer
        return {"public_chat": settings.public_chat, "user_id": user_id if settings.public_chat else None,
                "needs_key": not settings.public_chat and bool(settings.admin_key),
                "aspects": [a for a in settings.aspects if a != "overall"]}

    @router.get("/v1/users/{user_id:path}/feedback",
                summary="How many ratings a user gave, and the versions trained on them (admin, or that user's page)")
    async def user_feedback(user_id: str, request: Request) -> Response:
        problem = text_problem(user_id, is_id=True)
        if problem:
            raise InvalidInput([FieldError("user_id", problem)])
        me = sessions.user_of(request) if "authorization" not in request.headers else None
        if me == user_id:
            reads.take(request.client.host if request.client else "unknown")
        else:
            try:
                require_admin(request)
            except Unauthorized:
                if me is not None:
                    raise Forbidden(f"user_id: this page's session is another user; it may see only its own "
                                    f"feedback ({me})") from None
                raise
        return json_response(await run_in_threadpool(feedback_summary, engine, user_id))

    return router


def feedback_summary(engine: Engine, user_id: str) -> dict[str, Any]:
    """How many ratings `user_id` gave (as rater), on how many interactions, the versions whose training set used
    any of them (a snapshot's manifest lists the ratings behind its rows, `rating_ids`) - a cohort version among
    them says its cohort - and which version answers them now (`served_by`: their cohort's, or the active one;
    `served_by_cohort`: the cohort it was made for, None for a global version or the base)."""
    r, v, s, sr, runs = t.ratings.c, model_versions.c, dataset_snapshots.c, t.signals_ratings.c, training_runs.c
    mine = select(r.id).where(r.rater_id == user_id)
    served_by = load_routes(engine).pick(ACTIVE, user_id).version
    with engine.connect() as conn:
        served_cohort = conn.execute(select(v.cohort).where(v.id == served_by)).scalar()
        n, interactions = conn.execute(select(func.count(), func.count(distinct(r.interaction_id)))
                                       .where(r.rater_id == user_id)).one()
        # only snapshots that trained a version, and were built from a signals run that counted one of the
        # user's ratings (or name no run), need their manifest read
        counted_in = select(sr.run_id).where(sr.rating_id.in_(mine)).distinct()
        snapshots = conn.execute(
            select(s.id, s.manifest).where(s.id.in_(select(v.dataset_snapshot_id)),
                                           or_(s.signals_run_id.is_(None), s.signals_run_id.in_(counted_in)))).all()
        rating_ids = set(conn.execute(mine).scalars()) if snapshots else set()
        trained = [row.id for row in snapshots if rating_ids.intersection((row.manifest or {}).get("rating_ids", ()))]
        versions = conn.execute(select(v.id, v.status, v.traffic_share, v.cohort, runs.method)
                                .join(training_runs, runs.id == v.training_run_id, isouter=True)
                                .where(v.dataset_snapshot_id.in_(trained)).order_by(v.id)).all() if trained else []
    events = list_events(engine) if versions else []
    return {"user_id": user_id, "ratings": n, "interactions_rated": interactions,
            "served_by": served_by, "served_by_cohort": served_cohort, "versions": [
                {"id": x.id, "status": x.status, "method": x.method, "cohort": x.cohort,
                 "serving": x.status in ("active", COHORT) or x.traffic_share > 0,
                 "went_live_at": _went_live(x.id, x.status, x.traffic_share, events)} for x in versions]}


def _went_live(version_id: str, status: str, share: float, events: list[EventRow]) -> str | None:
    """When the version last began to serve: its newest promotion or rollback to it (a traffic split for a
    version that serves only a share of users); None when it never served."""
    actions = ("traffic",) if status != "active" and share > 0 else ("promote", "rollback", "cohort")
    times: list[datetime] = [e.created_at for e in events if e.version_id == version_id and e.action in actions]
    return max(times).isoformat() if times else None
