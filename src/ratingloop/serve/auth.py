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

from ratingloop.errors import Forbidden, Unauthorized

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

    def may_rate(self, interaction_id: str) -> None:
        if not self.admin and self.token_interaction != interaction_id:
            raise Forbidden(f"interaction_id: this feedback token is for another interaction, "
                            f"not {interaction_id!r}")


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
