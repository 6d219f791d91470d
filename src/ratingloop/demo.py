"""`ratingloop demo` (and `make demo`): an honest walk-through of what ratingloop does today.

It starts a real `ratingloop serve --backend none` on a fresh SQLite store in a temporary folder,
logs an interaction and rates it the way a product's server and an end user's browser would, shows
how bad input is refused, imports the example file and prints the store's stats. Later stages
(signals, build, train, evaluate, loop) extend this walk-through as they land.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

ADMIN_KEY = "demo-admin-key"


def find_examples() -> Path:
    """examples/support-chat.jsonl from the working directory or the source checkout."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        path = root / "examples" / "support-chat.jsonl"
        if path.exists():
            return path
    raise FileNotFoundError("examples/support-chat.jsonl not found; run the demo from the repository root")


def run_demo(out: Console, err: Console, db: str | None = None) -> None:
    """The walk-through on `db`, or on a fresh SQLite store in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="ratingloop-demo-") as tmp:
        db = db or f"sqlite:///{tmp}/demo.db"
        with _server(db, tmp, err) as base:
            _walk_through(base, db, out)


class _server:
    """A real `ratingloop serve` subprocess for the length of a `with` block."""

    def __init__(self, db: str, data_dir: str, err: Console):
        self.db, self.data_dir, self.err = db, data_dir, err

    def __enter__(self) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "RATINGLOOP_ADMIN_KEY": ADMIN_KEY, "RATINGLOOP_DATA_DIR": self.data_dir}
        self.log = open(Path(self.data_dir) / "server.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ratingloop.cli", "serve", "--backend", "none", "--port", str(port),
             "--db", self.db],
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        with self.err.status("starting ratingloop serve --backend none ..."):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        return base
                except httpx.HTTPError:
                    time.sleep(0.1)
        self.__exit__()
        raise RuntimeError("the demo server did not start:\n" + (Path(self.data_dir) / "server.log").read_text())

    def __exit__(self, *_: Any) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=15)
        self.log.close()


def _walk_through(base: str, db: str, out: Console) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    client = httpx.Client(base_url=base, timeout=10)
    step = _Steps(out)

    step("Your product's server logs an interaction its own LLM produced (admin key)")
    r = client.post("/v1/interactions", headers=admin, json={
        "messages": [{"role": "user", "content": "How do I reset my password?"}],
        "response": "Click 'Forgot password' on the sign-in page and follow the emailed link.",
        "user_id": "demo-user", "tags": {"area": "account"},
    })
    step.show(r)
    iid, token = r.json()["id"], r.json()["feedback_token"]

    step("The end user's browser rates it with the interaction's feedback token")
    rating = {"interaction_id": iid, "kind": "thumbs", "value": "up", "idempotency_key": "demo-1"}
    step.show(client.post("/v1/feedback", json=rating, headers={"Authorization": f"Bearer {token}"}))
    step("A network retry of the same request is answered 200 and stored once")
    step.show(client.post("/v1/feedback", json=rating, headers={"Authorization": f"Bearer {token}"}))
    step("Bad input is refused with the field and the reason, and nothing is stored")
    step.show(client.post("/v1/feedback", headers=admin, json={"interaction_id": iid, "kind": "stars", "value": 9}))
    step("A token rates only its own interaction")
    other = client.post("/v1/interactions", headers=admin, json={
        "messages": [{"role": "user", "content": "hi"}], "response": "Hello!", "user_id": "someone-else"}).json()
    step.show(client.post("/v1/feedback", json={"interaction_id": other["id"], "kind": "thumbs", "value": -1},
                          headers={"Authorization": f"Bearer {token}"}))

    examples = find_examples()
    step(f"Bulk import of {examples.relative_to(examples.parents[1])} (ratingloop import)")
    subprocess.run([sys.executable, "-m", "ratingloop.cli", "import", str(examples), "--db", db], check=True)

    step("The store now holds (GET /v1/stats)")
    stats = client.get("/v1/stats", headers=admin).json()
    table = Table(show_header=False, box=None)
    for key in ("interactions", "ratings", "raters", "rated_interactions"):
        table.add_row(key, str(stats[key]))
    for kind, n in stats["ratings_by_kind"].items():
        table.add_row(f"  {kind}", str(n))
    out.print(table)

    step("The rater model: one debiased reward per interaction (ratingloop signals / raters)")
    from ratingloop.signals.report import compute_signals
    from ratingloop.store import open_engine

    result = compute_signals(open_engine(db))
    raters = Table("rater", "ratings", "bias", "scale", "reliability", "flagged")
    for rater in sorted(result.raters, key=lambda x: -x.n)[:6]:
        raters.add_row(rater.rater_id, str(rater.n), f"{rater.bias:+.2f}", f"{rater.scale:.2f}",
                       f"{rater.reliability:.2f}", "; ".join(rater.reasons) if rater.flagged else "")
    out.print(raters)
    rewards = Table("interaction", "reward", "confidence", "ratings")
    for s in sorted(result.interactions, key=lambda s: -s.confidence)[:4]:
        rewards.add_row(s.interaction_id, f"{s.reward:+.2f}", f"{s.confidence:.2f}", str(s.n_ratings))
    out.print(rewards)
    out.print("\n[bold]Next[/]: training sets from these rewards, fine-tuning and the evaluation gate arrive "
              "in the next issues; this demo grows with them.")


class _Steps:
    def __init__(self, out: Console):
        self.out, self.n = out, 0

    def __call__(self, title: str) -> None:
        self.n += 1
        self.out.print(f"\n[bold cyan]{self.n}. {title}[/]")

    def show(self, r: httpx.Response) -> None:
        self.out.print(f"{r.request.method} {r.request.url.path} -> [bold]{r.status_code}[/]")
        self.out.print_json(r.text)
