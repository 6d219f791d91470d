"""`ratingloop demo` (and `make demo`): the whole loop on the offline default model, with simulated users.

On a fresh SQLite store in a temporary folder:

1. history: support-desk answers of 1-7 sentences, each asked and rated once (or never) by one of 40
   simulated askers who want short, complete answers - some rate upside down (`ratingloop import`);
2. a real `ratingloop serve` answers on the default model (SmolLM2-135M-Instruct, CPU);
3. simulated users who want the same chat with it over the OpenAI API and rate what they were served
   with each answer's token; a fifth of them troll (`ratingloop simulate`);
4. rounds of the loop - signals -> build -> train (KTO) -> eval -> gate -> promote - each followed by
   the same users asking the same questions again, served by whatever the server now serves (it
   hot-swaps a promoted version without a restart);
5. a report: ratingloop-demo/report.html (the hidden score per round and version, the live ratings
   per version, the rater model's flags against the true trolls, what each round did and why), and a
   summary here.

Ctrl-C stops the server and removes the temporary store, at any point.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

ADMIN_KEY = "demo-admin-key"
SECRET = "demo-secret"  # the server's and the loop's: tokens and tombstones keyed alike


@dataclass(frozen=True)
class DemoConfig:
    history: int = 300  # answers already in the store, single-rated
    invert_frac: float = 0.15  # of the history's askers
    users: int = 12  # simulated users chatting over HTTP
    turns: int = 3
    trolls: float = 0.25
    rate: float = 0.6
    rounds: int = 2
    max_tokens: int = 96
    seed: int = 0
    preferences: tuple[tuple[str, float], ...] = (("concise", 0.8), ("direct", 0.1), ("helpful", 0.1))


def run_demo(out: Console, err: Console, db: str | None = None, cfg: DemoConfig = DemoConfig(),
             report_dir: Path = Path("ratingloop-demo")) -> Path:
    """The demo on `db`, or on a fresh SQLite store in a temporary folder; returns the report's path."""
    from ratingloop.models import pull_default_model
    from ratingloop.store import open_engine

    started = time.monotonic()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="ratingloop-demo-") as tmp:
        db = db or f"sqlite:///{tmp}/demo.db"
        engine = open_engine(db)
        step = _Steps(out)
        step("The offline default model, SmolLM2-135M-Instruct (converted once, then cached)")
        model = pull_default_model(console=err).path
        step(f"History: {cfg.history} support answers, each rated once or never by the user who asked "
             f"({cfg.invert_frac:.0%} of them rate upside down)")
        inverting = _history(engine, cfg)
        with _Server(db, Path(tmp), model, err) as url:
            step(f"ratingloop serve on the default model; {cfg.users} simulated users chat through the OpenAI "
                 f"API and rate with each answer's token ({cfg.trolls:.0%} trolls)")
            phases = [_chat(url, cfg, "before any round", err)]
            _show_phase(out, phases[-1])
            rounds = []
            for n in range(1, cfg.rounds + 1):
                step(f"Round {n} of the loop: signals -> build -> train KTO -> eval -> gate; the server "
                     "serves what the gate promotes")
                rounds.append(_round(engine, url, Path(tmp), n, out, err))
                phases.append(_chat(url, cfg, f"after round {n}", err))
                _show_phase(out, phases[-1])
        data = _collect(engine, cfg, phases, rounds, inverting, started)
    from ratingloop.demo_report import write_report

    path = write_report(report_dir, data)
    _summary(out, data, path)
    return path


def _history(engine: Any, cfg: DemoConfig) -> list[str]:
    from ratingloop.simulate import AskerConfig, single_rated, support_answers
    from ratingloop.store import Limits
    from ratingloop.store.jsonl import import_lines

    prompts, answers = support_answers(cfg.history, seed=cfg.seed)
    world = single_rated(prompts, answers, AskerConfig(invert_frac=cfg.invert_frac, unrated_frac=0.3,
                                                       grader="concise", seed=cfg.seed))
    report = import_lines(engine, world.lines, Limits(), user_key=SECRET.encode())
    assert not report.bad, report.bad
    return [f"u{int(i):05d}" for i in np.flatnonzero(world.inverting)]


def _chat(url: str, cfg: DemoConfig, label: str, err: Console) -> dict[str, Any]:
    from ratingloop.simulate.bank import bank
    from ratingloop.simulate.http import simulate_http
    from ratingloop.simulate.users import PopulationConfig

    population = PopulationConfig(users=cfg.users, trolls=cfg.trolls, rate=cfg.rate, seed=cfg.seed,
                                  preferences=dict(cfg.preferences))
    prompts = [p for p in bank(90, cfg.seed) if p.kind == "support"]  # what the history's askers asked about
    with Progress(f"{label}: users chatting", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task("chat", total=cfg.users * cfg.turns)
        report = simulate_http(url, ADMIN_KEY, population, turns=cfg.turns, max_tokens=cfg.max_tokens,
                               prompts=prompts, progress=lambda k: bar.advance(task, k))
    return {"label": label, "versions": report.as_dict()["versions"], "trolls": report.troll_ids}


def _round(engine: Any, url: str, tmp: Path, n: int, out: Console, err: Console) -> dict[str, Any]:
    from ratingloop.loop import RoundSpec, run_loop
    from ratingloop.rounds import list_rounds

    # One population, one model: a cohort adapter would add a training and a gate per cohort to each round, and the
    # demo's 15 minutes on 2 cores hold two global rounds; bench/personal.py shows cohorts on a split population.
    spec = RoundSpec(method="kto", out_root=str(tmp / "loop"), overrides=("personal.cohort_adapters=false",))
    t0 = time.monotonic()
    err.print(f"round {n}: training on the default model, then both versions answer held-out questions",
              highlight=False)
    [outcome] = run_loop(engine, spec, user_key=SECRET.encode(), once=True,
                         say=lambda line: err.print(line, highlight=False), progress=True)
    [row] = list_rounds(engine, limit=1)
    evaluation = next((s.detail for s in row.steps if s.name == "eval"), {})
    gate = next((s.detail for s in row.steps if s.name == "gate"), {})
    result: dict[str, Any] = {"round": n, "outcome": outcome.get("outcome") or row.outcome or "failed",
              "version_id": row.version_id, "reasons": gate.get("reasons") or ([row.error] if row.error else []),
              "win_rate": evaluation.get("win_rate"), "ci_low": evaluation.get("ci_low"),
              "ci_high": evaluation.get("ci_high"), "n_prompts": evaluation.get("n_prompts"),
              "seconds": time.monotonic() - t0}
    if result["outcome"] == "promoted" and row.version_id:
        _wait_served(url, row.version_id)
    verdict = "[green]promoted[/]" if result["outcome"] == "promoted" else f"[red]{result['outcome']}[/]"
    out.print(f"round {n}: {verdict} {row.version_id or ''} in {result['seconds']:.0f} s"
              + "".join(f"\n  - {r}" for r in result["reasons"]))
    return result


def _wait_served(url: str, version: str, timeout_s: float = 60) -> None:
    """Until the running server answers `active` with `version` (it polls the registry every second)."""
    deadline = time.monotonic() + timeout_s
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    while time.monotonic() < deadline:
        models = httpx.get(f"{url}/v1/models", headers=headers, timeout=10).json()["data"]
        if models[0]["ratingloop"]["version"] == version:
            return
        time.sleep(0.5)
    raise RuntimeError(f"the server did not start serving {version} within {timeout_s:.0f} s")


def _collect(engine: Any, cfg: DemoConfig, phases: list[dict[str, Any]], rounds: list[dict[str, Any]],
             inverting: list[str], started: float) -> Any:
    from ratingloop.demo_report import DemoData
    from ratingloop.evaluate.live import live_rewards
    from ratingloop.signals import load_signals
    from ratingloop.simulate.users import PopulationConfig, make_users

    live = {}
    for version in sorted({v for p in phases for v in p["versions"]}, key=lambda v: (v != "base", v)):
        r = live_rewards(engine, version)
        if len(r):
            half = 1.96 * r.std(ddof=1) / np.sqrt(len(r)) if len(r) > 1 else 0.0
            live[version] = {"n": len(r), "mean": float(r.mean()), "ci_low": float(r.mean() - half),
                             "ci_high": float(r.mean() + half)}
    users = make_users(PopulationConfig(users=cfg.users, trolls=cfg.trolls, rate=cfg.rate, seed=cfg.seed,
                                        preferences=dict(cfg.preferences)))
    run = load_signals(engine)  # the newest signals run: its raters and their flags
    rated = {r.rater_id for r in run.raters}
    groups = {"honest history askers": sorted(r for r in rated if r.startswith("u") and r not in inverting),
              "inverting askers": inverting}
    for u in users:
        groups.setdefault("honest chat users" if u.troll == "none" else f"chat {u.troll}", []).append(u.id)
    flags = [{"group": g, "n": len([r for r in ids if r in rated]), "flagged": len(set(ids) & run.flagged)}
             for g, ids in groups.items()]
    setup = (f"{cfg.history} single-rated support answers in the store ({cfg.invert_frac:.0%} of askers invert); "
             f"{cfg.users} simulated users ({cfg.trolls:.0%} trolls) asking {cfg.turns} questions per phase, who "
             "want short, complete answers; the default model SmolLM2-135M-Instruct on CPU; the loop's defaults "
             "(KTO).")
    return DemoData(phases=phases, rounds=rounds, live=live, flags=flags,
                    minutes=(time.monotonic() - started) / 60, setup=setup)


def _show_phase(out: Console, phase: dict[str, Any]) -> None:
    for version, v in phase["versions"].items():
        out.print(f"{phase['label']}: {version} answered {v['answers']}, hidden score {v['hidden_mean']:+.3f} "
                  f"[{v['ci_low']:+.3f}, {v['ci_high']:+.3f}], {v['ratings']} ratings", highlight=False)


def _summary(out: Console, data: Any, path: Path) -> None:
    table = Table("phase", "version", "hidden score (95% CI)")
    for p in data.phases:
        for version, v in p["versions"].items():
            table.add_row(p["label"], version, f"{v['hidden_mean']:+.3f} [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}]")
    out.print()
    out.print(table)
    first, last = data.phases[0]["versions"], data.phases[-1]["versions"]
    before = np.mean([v["hidden_mean"] for v in first.values()])
    after = np.mean([v["hidden_mean"] for v in last.values()])
    promoted = sum(r["outcome"] == "promoted" for r in data.rounds)
    out.print(f"{len(data.rounds)} rounds, {promoted} promoted; the hidden score of what users got went from "
              f"{before:+.3f} to {after:+.3f} in {data.minutes:.1f} minutes. Report: [bold]{path}[/]",
              highlight=False)


class _Server:
    """A real `ratingloop serve` (transformers backend) subprocess for the length of a `with` block; stopped
    on any way out, Ctrl-C included."""

    def __init__(self, db: str, tmp: Path, model: Path, err: Console):
        self.db, self.tmp, self.model, self.err = db, tmp, model, err

    def __enter__(self) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "RATINGLOOP_ADMIN_KEY": ADMIN_KEY, "RATINGLOOP_SECRET": SECRET,
               "RATINGLOOP_DATA_DIR": str(self.tmp / "data"), "RATINGLOOP_TOKEN_RATINGS_PER_S": "0",
               "RATINGLOOP_EXIT_WITH_PARENT": str(os.getpid())}  # should the demo be killed outright
        self.log = open(self.tmp / "server.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ratingloop.cli", "serve", "--model", str(self.model), "--port", str(port),
             "--db", self.db, "--no-access-log"], env=env, stdout=self.log, stderr=subprocess.STDOUT,
            # its own process group: a terminal's Ctrl-C reaches the demo alone, which stops the server itself
            # (had both seen it, the users' chats could fail on the vanished server before the demo's main thread
            # handled the interrupt, and the demo then ended with that error instead of its own exit)
            start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            with self.err.status("starting ratingloop serve (loading the model) ..."):
                deadline = time.monotonic() + 180
                while time.monotonic() < deadline and self.proc.poll() is None:
                    try:
                        if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                            return base
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.2)
        except BaseException:
            self.__exit__()
            raise
        self.__exit__()
        raise RuntimeError("the demo server did not start:\n" + (self.tmp / "server.log").read_text()[-3000:])

    def __exit__(self, *_: Any) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class _Steps:
    def __init__(self, out: Console):
        self.out, self.n = out, 0

    def __call__(self, title: str) -> None:
        self.n += 1
        self.out.print(f"\n[bold cyan]{self.n}. {title}[/]")
