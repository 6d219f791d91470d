"""Stage 2, serving: who may write what.

Servers hold the admin key (RATINGLOOP_ADMIN_KEY, sent as a Bearer key). End users' browsers hold a
feedback token per interaction: an HMAC of the interaction id, so a token rates that interaction and
no other, and the server keeps no token table. A token of another interaction answers 403; a token
that does not verify, 401.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from ratingloop.errors import FieldError, Forbidden, Unauthorized
from ratingloop.serve.errors import error_response

TOKEN_PREFIX = "fbt1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    def __init__(self, secret: bytes):
        self._secret = secret

    def _mac(self, interaction_id: str) -> bytes:
        return hmac.new(self._secret, f"{TOKEN_PREFIX}:{interaction_id}".encode(), hashlib.sha256).digest()[:18]

    def sign(self, interaction_id: str) -> str:
        return f"{TOKEN_PREFIX}.{_b64(interaction_id.encode())}.{_b64(self._mac(interaction_id))}"

    def verify(self, token: str) -> str:
        """The interaction id a valid token was issued for; Unauthorized if it does not verify."""
        try:
            prefix, iid_part, mac_part = token.split(".")
            iid = _unb64(iid_part).decode()
            mac = _unb64(mac_part)
        except ValueError:
            raise Unauthorized("feedback token is malformed") from None
        if prefix != TOKEN_PREFIX or not hmac.compare_digest(mac, self._mac(iid)):
            raise Unauthorized("feedback token does not verify (signed with another secret?)")
        return iid


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: the admin (a server), or a browser holding one interaction's token."""

    admin: bool
    token_interaction: str | None = None

    def require_admin(self) -> None:
        if not self.admin:
            raise Forbidden("this endpoint needs the admin key; a feedback token only rates its interaction")

    def may_rate(self, interaction_id: str, source: str | None = None, field: str = "") -> None:
        if self.admin:
            return
        at = f"{field}." if field else ""
        if self.token_interaction != interaction_id:
            raise Forbidden(f"{at}interaction_id: this feedback token is for another interaction, "
                            f"not {interaction_id!r}")
        if source not in (None, "end_user"):
            raise Forbidden(f"{at}source: a feedback token rates as the interaction's end user; only the admin "
                            f"key may send source {source!r}")


def authenticate(authorization: str | None, body_token: str | None, *, admin_key: str | None,
                 signer: TokenSigner, open_admin: bool) -> Caller:
    """The caller behind an `Authorization: Bearer ...` header or a `feedback_token` body field."""
    bearer = None
    if authorization:
        scheme, _, bearer = authorization.partition(" ")
        if scheme.lower() != "bearer" or not bearer.strip():
            raise Unauthorized("Authorization: use 'Bearer <admin key or feedback token>'")
        bearer = bearer.strip()
    if bearer and admin_key and hmac.compare_digest(bearer.encode(), admin_key.encode()):
        return Caller(admin=True)
    token = bearer or body_token
    if token:
        if not token.startswith(TOKEN_PREFIX + "."):
            raise Unauthorized("Authorization: not the admin key and not a feedback token")
        return Caller(admin=False, token_interaction=signer.verify(token))
    if open_admin:
        return Caller(admin=True)
    raise Unauthorized("Authorization: missing; send 'Bearer <admin key>' or the interaction's feedback token")


LOOPBACK_NAMES = {"localhost", "127.0.0.1", "[::1]", "::1"}


def _host_name(host: str) -> str:
    """'127.0.0.1:8000' -> '127.0.0.1', '[::1]:8000' -> '[::1]'."""
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class LoopbackOnly:
    """ASGI middleware for open-admin mode (no admin key, serving on a loopback address), where every
    caller is admin: it refuses what a web page on another site can make this machine's browser send -
    a Host that is not this machine (DNS rebinding) and cross-site requests (CSRF)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = _host_name(headers.get(b"host", ""))
        origin = headers.get(b"origin")
        problem = None
        if host.lower() not in LOOPBACK_NAMES:
            problem = (400, "Host", f"{host!r} is not this machine; without an admin key the server answers "
                                    "only requests addressed to localhost")
        elif origin is not None and _host_name(urlsplit(origin).netloc).lower() not in LOOPBACK_NAMES:
            problem = (403, "Origin", f"{origin!r}: requests from web pages of other sites are refused while no "
                                      "admin key is set (RATINGLOOP_ADMIN_KEY)")
        elif headers.get(b"sec-fetch-site") == "cross-site":
            problem = (403, "Sec-Fetch-Site", "cross-site requests are refused while no admin key is set")
        if problem is None:
            return await self.app(scope, receive, send)
        status, field, reason = problem
        await error_response(status, [FieldError(field, reason, status)])(scope, receive, send)
