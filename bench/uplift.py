"""Benchmark: how much each pipeline lifts the hidden score, with one simulated population and one rating
budget, side by side (issue 12, item 4): the naive pipeline most teams write, ratingloop's default loop
round, and an oracle, at 0% and 20% trolls and at two rating budgets, over several seeds.

    nice -n 5 .venv/bin/python bench/uplift.py                                     # the whole grid (hours)
    nice -n 5 .venv/bin/python bench/uplift.py --trolls 0.2 --rated 0.8 --arms default,oracle --seeds 2
    .venv/bin/python bench/uplift.py --report bench/out/uplift-*.json --plot bench/uplift.png   # no training

Arms (bench/loop.py runs them; its docstring has the world and the details):
    naive    thumbs up or >= 4 stars = good, everything else bad; TRL's KTOTrainer with KTOConfig's defaults
    default  ratingloop's loop round: signals -> build -> train with the loop's settings for the data size
    oracle   the same method and settings as the default, on every rated answer labelled by the hidden truth
A condition is a share of inverting askers (--trolls) and a rating budget (--rated: the share of answers
that get their one rating). Every run writes its rows as JSON (--json, default bench/out/uplift-<time>.json),
so a grid can be run in pieces on a shared machine and reported together with --report; the report is a
Markdown table on stdout (median uplift over the base per arm and condition, the spread over seeds, the
default's ratio to the oracle's and to the naive pipeline's) and, with --plot, a PNG of the same.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loop as world_loop  # noqa: E402  (bench/loop.py: the world, the arms, the scoring)

ARMS = ("naive", "default", "oracle")


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from ratingloop.models.pull import pull_default_model

    base = Path(pull_default_model(Path.home() / ".ratingloop").path)
    train_q, held_q = world_loop.split_questions(world_loop.oasst_questions(), args.held_out)
    held = [{"id": f"held-{i}", "messages": [{"role": "user", "content": q}]} for i, (q, _) in enumerate(held_q)]
    key = f"{args.held_out}-{args.max_tokens}"
    cached = json.loads(args.base_cache.read_text()) if args.base_cache.is_file() else {}
    base_scored = cached.get(key) or world_loop.held_out_scores(base, held, args.max_tokens)
    args.base_cache.parent.mkdir(parents=True, exist_ok=True)
    args.base_cache.write_text(json.dumps(cached | {key: base_scored}))
    rows = []
    for trolls in args.trolls:
        for rated in args.rated:
            cond = argparse.Namespace(variants=args.variants, trolls=trolls, unrated=round(1 - rated, 6),
                                      max_tokens=args.max_tokens, naive_max_steps=args.naive_max_steps)
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                for row in world_loop.run_seed(seed, cond, train_q, held, base, args.arms, [{}]):
                    rows.append(row | {"trolls": trolls, "rated_share": rated, "base_score": base_scored["score"],
                                       "uplift": row["score"] - base_scored["score"]})
                args.json.write_text(json.dumps({"base": base_scored, "rows": rows}, indent=1))  # after each seed
    return rows


def report(rows: list[dict[str, Any]]) -> str:
    conds = sorted({(r["trolls"], r["rated_share"]) for r in rows})
    lines = ["| trolls | rated | arm | uplift, median | per seed | rated answers | default / oracle | "
             "default / naive |", "|---:|---:|---|---:|---|---:|---:|---:|"]
    for trolls, rated in conds:
        here = [r for r in rows if (r["trolls"], r["rated_share"]) == (trolls, rated)]
        med = {arm: statistics.median(r["uplift"] for r in here if r["arm"] == arm)
               for arm in ARMS if any(r["arm"] == arm for r in here)}
        for arm in ARMS:
            mine = sorted((r for r in here if r["arm"] == arm), key=lambda r: r["seed"])
            if not mine:
                continue
            ratio_o = f"{med['default'] / med['oracle']:.2f}" if arm == "default" and med.get("oracle") else ""
            ratio_n = (f"{med['default'] / med['naive']:.1f}" if arm == "default" and "naive" in med
                       and med["naive"] > 1e-9 else ("naive <= 0" if arm == "default" and "naive" in med else ""))
            per_seed = ", ".join(f"{r['uplift']:+.3f} (s{r['seed']})" for r in mine)
            lines.append(f"| {trolls:.0%} | {rated:.0%} | {arm} | {med[arm]:+.3f} | {per_seed} | "
                         f"{statistics.median(r['n_rated'] for r in mine):.0f} | {ratio_o} | {ratio_n} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conds = sorted({(r["trolls"], r["rated_share"]) for r in rows})
    fig, ax = plt.subplots(figsize=(max(5.0, 2.2 + 1.9 * len(conds)), 3.6))
    width = 0.26
    colours = {"naive": "#9e9e9e", "default": "#1f77b4", "oracle": "#2ca02c"}
    for a, arm in enumerate(ARMS):
        labelled = False  # an arm is in the legend once, whichever condition it was first run in
        for c, cond in enumerate(conds):
            ups = [r["uplift"] for r in rows if r["arm"] == arm and (r["trolls"], r["rated_share"]) == cond]
            if not ups:
                continue
            x = c + (a - 1) * width
            ax.bar(x, statistics.median(ups), width, color=colours[arm], label=None if labelled else arm, alpha=0.85)
            labelled = True
            ax.scatter([x] * len(ups), ups, s=12, color="black", zorder=3)
            ax.vlines(x, min(ups), max(ups), color="black", lw=1, zorder=3)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(range(len(conds)), [f"{t:.0%} trolls\n{r:.0%} rated" for t, r in conds])
    ax.set_ylabel("hidden score uplift over the base")
    ax.set_title("Uplift per pipeline (bars: median over seeds; dots: each seed)", fontsize=10)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trolls", type=lambda s: [float(x) for x in s.split(",")], default=[0.0, 0.2])
    ap.add_argument("--rated", type=lambda s: [float(x) for x in s.split(",")], default=[0.8, 0.4],
                    help="rating budgets: the share of answers rated (each once, by its asker)")
    ap.add_argument("--arms", type=lambda s: s.split(","), default=list(ARMS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--held-out", type=int, default=24)
    ap.add_argument("--variants", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--naive-max-steps", type=int, default=-1, help="-1: TRL's 3 epochs")
    ap.add_argument("--base-cache", type=Path, default=Path("bench/out/base-scores.json"))
    ap.add_argument("--json", type=Path, default=Path(f"bench/out/uplift-{time.strftime('%Y%m%d-%H%M%S')}.json"))
    ap.add_argument("--report", type=Path, nargs="*", default=None, help="JSON files of earlier runs: report only")
    ap.add_argument("--plot", type=Path, default=None)
    args = ap.parse_args()
    if args.report is not None:
        rows = [r for f in args.report for r in json.loads(f.read_text())["rows"]]
    else:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        rows = run(args)
    print(report(rows))
    if args.plot:
        plot(rows, args.plot)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
