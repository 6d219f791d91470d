"""A real `ratingloop serve --backend none` process for tests that need one (not the in-process TestClient)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

ADMIN_KEY = "test-admin-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(base: str) -> bool:
    """Whether a ratingloop server answers /healthz at `base` (a refused or slow connection: no)."""
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def running_server_at(db_url: str, tmp_path: Path, env: dict[str, str] | None = None,
                      access_log: bool = False, backend: tuple[str, ...] = ("--backend", "none"),
                      start_timeout_s: float = 30) -> Iterator[str]:
    """Serve `db_url` on a free port until the block ends; yields the base URL. The server's output goes to
    tmp_path/server.log. `env` adds RATINGLOOP_* settings (rate limits, say); `backend` the serve options
    that pick the backend, e.g. ("--backend", "transformers", "--model", str(folder))."""
    port = free_port()
    full_env = {**os.environ, "RATINGLOOP_ADMIN_KEY": ADMIN_KEY, "RATINGLOOP_DATA_DIR": str(tmp_path / "data"),
                **(env or {})}
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ratingloop.cli", "serve", *backend, "--port", str(port),
             "--db", db_url, "--access-log" if access_log else "--no-access-log"],
            env=full_env, stdout=log, stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + start_timeout_s
        while not healthy(base):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"server did not start:\n{log_path.read_text()}")
            time.sleep(0.1)
        try:
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
