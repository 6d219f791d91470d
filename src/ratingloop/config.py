"""Deployment settings: database URL, keys, paths and input limits, from RATINGLOOP_* env and `.env`.

Read once in the CLI entry or the app factory (never at import time) and passed down. Pipeline
settings (thresholds, LoRA rank) live in each stage's frozen dataclasses, not here.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_ASPECTS = ("overall", "relevance", "accuracy", "helpfulness")
DEFAULT_IMPLICIT_SIGNALS = ("copy", "regenerate", "edit", "share", "abandon")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RATINGLOOP_", env_file=".env", extra="ignore", frozen=True)

    data_dir: Path = Field(default=Path("~/.ratingloop"), description="where the SQLite store and secret live")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite in data_dir")
    admin_key: str | None = Field(default=None, description="Bearer key for servers and admin endpoints")
    secret: str | None = Field(default=None, description="HMAC secret for feedback tokens")
    aspects: Annotated[tuple[str, ...], NoDecode] = DEFAULT_ASPECTS
    implicit_signals: Annotated[tuple[str, ...], NoDecode] = DEFAULT_IMPLICIT_SIGNALS
    max_comment_chars: int = 10_000
    max_request_bytes: int = 8 * 1024 * 1024
    max_batch_items: int = 10_000
    # abuse limits (serve/limits.py): per second, and the burst a bucket holds; 0 turns a limit off
    token_ratings_per_s: float = Field(default=1.0, ge=0, description="ratings per feedback token")
    token_ratings_burst: float = Field(default=60, ge=1)
    address_requests_per_s: float = Field(default=20.0, ge=0, description="requests per client address "
                                          "without the admin key (checked before the body is read)")
    address_requests_burst: float = Field(default=200, ge=1)
    admin_ratings_per_s: float = Field(default=0.0, ge=0, description="ratings per admin key (0: no limit)")
    admin_ratings_burst: float = Field(default=20_000, ge=1)
    max_ratings_per_rater_interaction: int = Field(default=100, ge=1, description="ratings one feedback "
                                                   "token may store on its interaction, ever")
    max_anonymous_request_bytes: int = Field(default=64 * 1024, ge=1024, description="body limit for requests "
                                             "without an Authorization header (a feedback token in the body)")
    min_free_disk_bytes: int = Field(default=64 * 1024 * 1024, ge=0, description="/healthz is 503 below this "
                                     "much free space beside a SQLite store")
    # serving chat (serve/chat.py, serve/local.py, serve/page.py)
    serve_max_tokens: int = Field(default=256, ge=1, description="max_tokens of a chat request that sets none")
    serve_batch_window_ms: float = Field(default=25.0, ge=0, description="chat requests arriving within this "
                                         "many ms of each other share one generate call")
    serve_max_batch: int = Field(default=16, ge=1, description="rows (requests x n) in one generate call")
    serve_max_loaded_models: int = Field(default=4, ge=1, description="versions kept loaded at once")
    serve_registry_poll_s: float = Field(default=1.0, gt=0, description="how often a server looks for a "
                                         "promotion, rollback or traffic change made by another process")
    public_chat: bool = Field(default=False, description="anyone may chat on the web page, under a "
                              "pseudonymous user id kept in a signed cookie")
    public_chat_requests_per_min: float = Field(default=20.0, ge=0, description="chat requests per page user "
                                                "(public chat; 0: no limit)")

    @field_validator("aspects", "implicit_signals", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("aspects")
    @classmethod
    def _has_overall(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if "overall" not in value:
            return ("overall", *value)
        return value

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser()

    @property
    def url(self) -> str:
        """The database URL: RATINGLOOP_DATABASE_URL / --db, else SQLite under the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_data_dir / 'ratingloop.db'}"

    def feedback_secret(self) -> bytes:
        """RATINGLOOP_SECRET, else a secret generated once and kept in the data directory (mode 600)."""
        if self.secret:
            return self.secret.encode()
        path = self.resolved_data_dir / "secret"
        if not path.exists():
            # Write a private temp file, then link it into place: two processes starting at once
            # agree on whichever secret was linked first, and nobody reads a half-written file.
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".secret.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32))
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return path.read_text().strip().encode()


def load_settings(db: str | None = None) -> Settings:
    """Settings from the environment, with a `--db` flag taking precedence over the env."""
    if db:
        return Settings(database_url=db)
    return Settings()
