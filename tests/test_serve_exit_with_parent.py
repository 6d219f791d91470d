"""A server started for another process (RATINGLOOP_EXIT_WITH_PARENT, as the demo starts its own) stops when
that process dies, even killed outright: before, a demo killed with SIGKILL left its server running for good, in a
session of its own that no Ctrl-C reached."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from servers import free_port, healthy

PARENT = """
import os, subprocess, sys, time
port, db, data = sys.argv[1:4]
env = {**os.environ, "RATINGLOOP_EXIT_WITH_PARENT": str(os.getpid()), "RATINGLOOP_DATA_DIR": data}
server = subprocess.Popen([sys.executable, "-m", "ratingloop.cli", "serve", "--backend", "none", "--port", port,
                           "--db", db, "--no-access-log"], env=env, start_new_session=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(server.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_the_server_stops_when_the_process_that_started_it_is_killed(tmp_path: Path) -> None:
    port = free_port()
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(port), f"sqlite:///{tmp_path / 'store.db'}",
                               str(tmp_path / "data")], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    server = int(parent.stdout.readline())
    try:
        deadline = time.monotonic() + 60
        while not healthy(f"http://127.0.0.1:{port}"):
            assert time.monotonic() < deadline and _alive(server), "the server did not start"
            time.sleep(0.2)
        parent.kill()  # SIGKILL: the parent cleans up nothing
        parent.wait()
        deadline = time.monotonic() + 20
        while _alive(server) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(server), "the server outlived the process that started it"
        assert not healthy(f"http://127.0.0.1:{port}")
    finally:
        if _alive(server):
            os.kill(server, signal.SIGKILL)
