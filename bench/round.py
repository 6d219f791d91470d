"""Benchmark: loop rounds on ~500 rated answers, as a user runs them (issue 14, item 5) — `ratingloop import`
then `ratingloop loop --once` on a fresh SQLite store and the default model, each step's time from the round's
own records (`ratingloop loop status --json`); then more interactions and a second round, whose gate reads the
answers the first round's evaluation already generated instead of generating them again.

    nice -n 5 .venv/bin/python bench/round.py                      # ~800 answers, 80% rated; 3/4 before round 1
    nice -n 5 .venv/bin/python bench/round.py --rounds 1 --variants 3 --json bench/out/round.json

The store is bench/loop.py's world (real OASST questions, each human reply cut into --variants answers,
asked and rated once by 40 simulated askers, --trolls of them inverting, --unrated never rated). The round is
the loop's default one: signals -> build -> train (KTO, the loop's settings for the data size) -> eval (both
versions' answers to the held-out prompts) -> gate. Target (issue 14): <= 10 minutes on 2 idle cores.
The embedding cache lives in the data directory (~/.ratingloop), so a repeat embeds nothing new; the first
run's signals step includes embedding every answer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loop as world_loop  # noqa: E402  (bench/loop.py: the world)

CLI = str(Path(sys.executable).with_name("ratingloop"))


def rounds(args: argparse.Namespace, seed: int) -> list[dict]:
    """`args.rounds` rounds on one fresh store: the world's interactions arrive in that many consecutive parts
    (the first `args.first_share` of them before round 1, the rest spread over the others), one round after each."""
    train_q, _ = world_loop.split_questions(world_loop.oasst_questions(), args.held_out)
    world = world_loop.make_world(train_q, argparse.Namespace(variants=args.variants, trolls=args.trolls,
                                                              unrated=args.unrated), seed)
    n = len(world.lines)
    first = int(n * args.first_share) if args.rounds > 1 else n
    cuts = [0, first] + [first + (n - first) * k // (args.rounds - 1) for k in range(1, args.rounds)]
    out = []
    with tempfile.TemporaryDirectory(prefix="bench-round-") as tmp:
        root = Path(tmp)
        env = os.environ | {"RATINGLOOP_DATABASE_URL": f"sqlite:///{root / 'store.db'}"}

        def cli(*argv: str) -> str:
            done = subprocess.run([CLI, *argv], env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"ratingloop {' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
            return done.stdout

        for k in range(args.rounds):
            part = root / f"part-{k}.jsonl"
            part.write_bytes(b"\n".join(world.lines[cuts[k]:cuts[k + 1]]) + b"\n")
            cli("import", str(part))
            t0 = time.perf_counter()
            cli("loop", "--once", "--out", str(root / "runs"))
            wall = time.perf_counter() - t0
            found = json.loads(cli("loop", "status", "--json", "--n", "1"))[0]
            out.append(_row(found, seed, k + 1, int(world.rated[:cuts[k + 1]].sum()), wall))
            print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    return out


def _row(found: dict, seed: int, round_no: int, rated: int, wall: float) -> dict:
    def detail(name: str) -> dict:
        return next((s["detail"] for s in found["steps"] if s["name"] == name), {}) or {}

    train, evaluation = detail("train").get("metrics") or {}, detail("eval")
    return {"seed": seed, "round": round_no, "rated": rated, "wall_s": round(wall, 1),
            "steps_s": {s["name"]: s["duration_s"] for s in found["steps"]}, "outcome": found["outcome"],
            "train_rows": train.get("train_rows"), "train_steps": train.get("steps"),
            "train_runtime_s": train.get("train_runtime_s"),
            "eval": {k: evaluation.get(k) for k in ("n_prompts", "win_rate", "ci_low", "seconds", "reused_answers")},
            "reasons": detail("gate").get("reasons")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", type=int, default=4, help="answers cut from each human reply")
    ap.add_argument("--rounds", type=int, default=2, help="rounds on one store, new interactions before each")
    ap.add_argument("--first-share", type=float, default=0.75, help="share of the interactions before round 1")
    ap.add_argument("--unrated", type=float, default=0.2)
    ap.add_argument("--trolls", type=float, default=0.2)
    ap.add_argument("--held-out", type=int, default=24, help="questions left out of the store, as bench/loop.py")
    ap.add_argument("--repeats", type=int, default=1, help="fresh stores (seeds 0, 1, ...), each run through --rounds")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from ratingloop.models.pull import pull_default_model

    pull_default_model(Path.home() / ".ratingloop")  # converted once, before any timing
    rows = [row for seed in range(args.repeats) for row in rounds(args, seed)]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    names = list(dict.fromkeys(n for r in rows for n in r["steps_s"]))
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {args.repeats} store(s), medians")
    print("| round | rated answers | " + " | ".join(f"{n} s" for n in names)
          + " | answers read back (candidate / against) | round wall s | outcomes |")
    print("|---:|---:|" + "---:|" * len(names) + "---|---:|---|")
    for k in sorted({r["round"] for r in rows}):
        mine = [r for r in rows if r["round"] == k]
        reused = ", ".join(f"{u.get('candidate', 0)} / {u.get('against', 0)} of {r['eval'].get('n_prompts')}"
                           for r in mine for u in [r["eval"].get("reused_answers") or {}])
        steps = " | ".join(f"{statistics.median(r['steps_s'].get(n) or 0 for r in mine):.0f}" for n in names)
        print(f"| {k} | {statistics.median(r['rated'] for r in mine):.0f} | {steps} | {reused} | "
              f"{statistics.median(r['wall_s'] for r in mine):.0f} | {', '.join(r['outcome'] or '-' for r in mine)} |")


if __name__ == "__main__":
    main()
