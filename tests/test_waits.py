"""Ctrl-C reaches a main thread that waits on other threads' work (ratingloop.waits), wherever the kernel
delivers it: `simulate` against a server that never answers, with the SIGINT sent to one of its other threads
(under load the demo's Ctrl-C test hung for minutes this way: the main thread sat in Future.result())."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from ratingloop import waits

SCRIPT = """
import signal, sys, threading, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal's foreground job has it (see conftest)
from ratingloop.simulate.http import simulate_http
from ratingloop.simulate.users import PopulationConfig
# a SIGINT delivered to a thread other than the main one, as the kernel may do with a terminal's Ctrl-C
threading.Timer(1.0, lambda: signal.pthread_kill(threading.get_ident(), signal.SIGINT)).start()
started = time.monotonic()
try:
    simulate_http(sys.argv[1], None, PopulationConfig(users=8, seed=0), turns=2)
except KeyboardInterrupt:
    print(f"interrupted after {time.monotonic() - started:.2f} s", flush=True)
    import os; os._exit(130)
"""


def test_simulate_stops_on_ctrl_c_delivered_to_another_thread() -> None:
    with socket.socket() as server:  # accepts connections and never answers: every chat waits
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        proc = subprocess.run([sys.executable, "-c", SCRIPT, url], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130, proc.stdout + proc.stderr
    seconds = float(proc.stdout.split()[2])
    assert 0.9 < seconds < 5, proc.stdout  # the Timer fires at 1 s; the next slice sees the interrupt


def test_result_returns_the_value_and_raises_the_error_of_the_work() -> None:
    with ThreadPoolExecutor(1) as pool:
        assert waits.result(pool.submit(lambda: (time.sleep(0.6), 7)[1])) == 7

        def fails() -> None:
            raise TimeoutError("the work's own timeout")

        with pytest.raises(TimeoutError, match="the work's own timeout"):
            waits.result(pool.submit(fails))
