"""`ratingloop demo` interrupted with Ctrl-C (issue 12): the terminal's SIGINT to the whole foreground process
group, while the demo's server is up and its users chat. The demo must stop its server, remove its temporary
store and exit 130 with one line, no traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from servers import healthy

# `ratingloop demo` as a terminal's foreground job starts it: SIGINT at Python's default. A child inherits an ignored
# SIGINT from its parent, and in full suite runs the test worker's was (some earlier test in the worker had
# left it so; the Ctrl-C then never arrived and the demo ran on into its first round)
FOREGROUND_DEMO = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                   "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); sys.argv = ['ratingloop', 'demo']; "
                   "from ratingloop.cli import main; main()")


def _demo_server(tmp: Path) -> tuple[int, int] | None:
    """(pid, port) of the `ratingloop serve` the demo started on a store under `tmp`, if it runs."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if "serve" in args and "--port" in args and any(str(tmp) in a for a in args):
            return int(proc.name), int(args[args.index("--port") + 1])
    return None


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_ctrl_c_stops_the_server_and_removes_the_temporary_store(default_model: Path, tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    with open(tmp_path / "stderr", "wb") as stderr:
        demo = subprocess.Popen([sys.executable, "-c", FOREGROUND_DEMO], cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        try:
            deadline, server = time.monotonic() + 300, None
            while time.monotonic() < deadline and demo.poll() is None:
                server = _demo_server(tmp)
                if server and healthy(f"http://127.0.0.1:{server[1]}"):
                    break
                time.sleep(0.5)
            assert server is not None and demo.poll() is None, (tmp_path / "stderr").read_text()[-2000:]
            assert list(tmp.glob("ratingloop-demo-*/demo.db")), "the demo's store is in its temporary folder"
            time.sleep(3)  # the users are chatting
            os.killpg(demo.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
            try:
                assert demo.wait(timeout=180) == 130
            except subprocess.TimeoutExpired:  # where it hangs: the CLI dumps every thread's stack on SIGUSR1
                os.kill(demo.pid, signal.SIGUSR1)
                time.sleep(2)
                pytest.fail("the demo did not stop within 180 s of Ctrl-C:\n"
                            + (tmp_path / "stderr").read_text()[-6000:])
        finally:
            if demo.poll() is None:
                os.killpg(demo.pid, signal.SIGKILL)
    said = (tmp_path / "stderr").read_text()
    assert "interrupted: the demo's server is stopped and its temporary store removed" in said
    assert "Traceback" not in said, said[-3000:]
    deadline = time.monotonic() + 20
    while _alive(server[0]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(server[0])
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{server[1]}/healthz", timeout=1)
    assert not list(tmp.glob("ratingloop-demo-*"))  # (torch may leave its own compile cache in TMPDIR)
    assert not (tmp_path / "ratingloop-demo").exists()  # no report from an interrupted run
