"""`ratingloop demo` (and `make demo`): an honest walk-through of what ratingloop does today.

It starts a real `ratingloop serve --backend none` on a fresh SQLite store in a temporary folder,
logs an interaction and rates it the way a product's server and an end user's browser would, shows
how bad input is refused, imports the example file, prints the store's stats and the rater model,
then runs one round of the loop on the default model - signals, build, KTO training, the evaluation
against the base on held-out questions (a fast reward model beside it as a judge), and the gate's
verdict - and shows the base's and the candidate's answers to held-out questions side by side.
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
        _train_and_compare(db, Path(tmp), out, err)


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
    from ratingloop.signals import record_signals
    from ratingloop.store import open_engine

    result = record_signals(open_engine(db))  # recorded: the build and training below read this run
    raters = Table("rater", "ratings", "bias", "scale", "reliability", "flagged")
    for rater in sorted(result.raters, key=lambda x: -x.n)[:6]:
        raters.add_row(rater.rater_id, str(rater.n), f"{rater.bias:+.2f}", f"{rater.scale:.2f}",
                       f"{rater.reliability:.2f}", "; ".join(rater.reasons) if rater.flagged else "")
    out.print(raters)
    rewards = Table("interaction", "reward", "confidence", "ratings")
    for s in sorted(result.interactions, key=lambda s: -s.confidence)[:4]:
        rewards.add_row(s.interaction_id, f"{s.reward:+.2f}", f"{s.confidence:.2f}", str(s.n_ratings))
    out.print(rewards)


DEMO_STEPS = 8  # a taste, not a schedule: 8 KTO steps on ~40 answers, a minute or two on a laptop CPU
DEMO_LR = 5e-4  # the kto default (5e-5) suits a full epoch over real data; a taste of 8 steps needs larger ones
DEMO_SETTINGS = (f"train.max_steps={DEMO_STEPS}", f"train.learning_rate={DEMO_LR}", "train.logging_steps=1",
                 "train.save_steps=0", "eval.max_prompts=16", "eval.max_tokens=64")
SHOWN = 3  # held-out questions shown side by side


def _train_and_compare(db: str, tmp: Path, out: Console, err: Console) -> None:
    from ratingloop.config import Settings
    from ratingloop.loop import RoundSpec, run_loop, train_from_store
    from ratingloop.models import pull_default_model
    from ratingloop.models.registry import get_version, latest_evaluation
    from ratingloop.rounds import list_rounds
    from ratingloop.store import open_engine
    from ratingloop.train import TrainConfig

    step = _Steps(out, start=9)
    engine = open_engine(db)
    step("The offline default model, SmolLM2-135M-Instruct (ratingloop model pull; converted once, then cached)")
    base = pull_default_model(console=err).path
    out.print(f"{base}")

    step("A reward model on the debiased rewards, on frozen sentence embeddings - one of the gate's judges "
         "(ratingloop train --method reward --set train.reward_backbone=embed)")
    rm = train_from_store(engine, "reward", out_dir=tmp / "rm-1",
                          cfg=TrainConfig.for_method("reward", reward_backbone="embed"), progress=False)
    out.print(f"reward model {rm.version_id}: " + ", ".join(
        f"{k} {v:.2f}" for k, v in rm.metrics.items() if k.startswith("eval_") and isinstance(v, float)))

    step(f"One round of the loop: signals -> build -> train KTO ({DEMO_STEPS} steps) -> eval -> gate "
         f"(ratingloop loop --once --method kto {' '.join('--set ' + x for x in DEMO_SETTINGS)})")
    spec = RoundSpec(method="kto", overrides=DEMO_SETTINGS, out_root=str(tmp / "loop"))
    with err.status("running the round (training, then both versions answer the held-out questions) ..."):
        [outcome] = run_loop(engine, spec, user_key=Settings(data_dir=tmp).feedback_secret(), once=True,
                             say=lambda line: err.print(line, highlight=False))
    [round_] = list_rounds(engine, limit=1)
    steps = Table("step", "status", "seconds", "what it did")
    for s in round_.steps:
        steps.add_row(s.name, s.status, f"{s.duration_s or 0:.0f}", _step_summary(s.name, s.detail))
    out.print(steps)
    if outcome["outcome"] == "failed":
        out.print(f"[red]the round failed[/]: {outcome['error']}")
        return

    step("The gate's evidence (ratingloop eval --candidate V --json): held-out prompts, judges, guards, verdict")
    version = get_version(engine, outcome["version_id"])
    report = (latest_evaluation(engine, version.id) or {}).get("report") or {}
    _show_report(report, out)
    out.print(f"candidate {version.id} is now [bold]{version.status}[/]: the "
              + ("base model keeps serving" if version.status != "active" else "version that serves"))

    step("Held-out questions (never trained on): what the base and the candidate answered in the evaluation")
    _side_by_side(report, out)
    out.print(f"\n[bold]Honestly[/]: {DEMO_STEPS} steps on a few dozen rated answers change how a 135M model answers, "
              "but seldom by enough that the judges can tell on a handful of held-out questions, so the gate usually "
              "keeps the base serving - which is its job: a candidate serves only when the evidence says it is "
              "better. `ratingloop loop` repeats this round as ratings arrive; `bench/results.md` shows what a "
              "default round achieves on a few hundred ratings.")


def _step_summary(name: str, detail: dict[str, Any]) -> str:
    if name == "train" and detail.get("metrics"):
        m = detail["metrics"]
        return (f"candidate {detail.get('version_id')}: {m.get('train_rows')} rows, {m.get('steps')} steps, "
                f"loss {m.get('first_loss') or 0:.3f} -> {m.get('last_loss') or 0:.3f}")
    if name == "eval" and "win_rate" in detail:
        return f"{detail.get('n_prompts')} held-out prompts, win rate {_pct(detail.get('win_rate'))}"
    if name == "gate":
        return f"{detail.get('outcome')}: " + "; ".join(detail.get("reasons") or [])
    return str(detail.get("reason") or detail.get("error") or "")


def _show_report(report: dict[str, Any], out: Console) -> None:
    out.print(f"{report.get('n_prompts')} held-out prompts; win rate {_pct(report.get('win_rate'))} "
              f"(95% CI {_pct(report.get('ci_low'))} - {_pct(report.get('ci_high'))}), length-controlled "
              f"{_pct(report.get('lc_win_rate'))}; verdict [bold]{report.get('verdict')}[/]", highlight=False)
    judges = Table("judge", "prompts / answers", "win rate", "95% CI")
    for j in report.get("judges") or []:
        judges.add_row(j["name"], str(j.get("n")), _pct(j.get("win_rate")),
                       f"{_pct(j.get('ci_low'))} - {_pct(j.get('ci_high'))}")
    out.print(judges)
    guards = Table("guard", "value", "limit", "ok")
    for name, g in (report.get("guards") or {}).items():
        guards.add_row(name, f"{g['value']:.3f}", f"{g['limit']:.3f}", "yes" if g["ok"] else "[red]no[/]")
    out.print(guards)
    for reason in report.get("reasons") or []:
        out.print(f"  - {reason}", highlight=False)


def _side_by_side(report: dict[str, Any], out: Console) -> None:
    table = Table("question", f"{report.get('against')} answer", "candidate answer", "judges: candidate",
                  show_lines=True)
    for ex in (report.get("examples") or [])[:SHOWN]:
        verdict = "better" if ex["outcome"] > 0.5 else "worse" if ex["outcome"] < 0.5 else "tie"
        table.add_row(ex["messages"][-1]["content"], _clip(ex["against"]), _clip(ex["candidate"]),
                      f"{verdict} ({ex['outcome']:.2f})")
    out.print(table)


def _pct(x: Any) -> str:
    return f"{x:.2f}" if isinstance(x, (int, float)) else "-"


def _clip(text: str, n: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


class _Steps:
    def __init__(self, out: Console, start: int = 0):
        self.out, self.n = out, start

    def __call__(self, title: str) -> None:
        self.n += 1
        self.out.print(f"\n[bold cyan]{self.n}. {title}[/]")

    def show(self, r: httpx.Response) -> None:
        self.out.print(f"{r.request.method} {r.request.url.path} -> [bold]{r.status_code}[/]")
        self.out.print_json(r.text)
