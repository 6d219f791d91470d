"""Benchmark personalisation (issue 15): a population of two groups whose hidden preferences oppose, one loop
round on the default model, and each group's hidden score under the base, the single global version and its
own cohort's version.

    nice -n 10 .venv/bin/python bench/personal.py                        # seeds 0 and 1, 70/30 concise vs thorough
    nice -n 10 .venv/bin/python bench/personal.py --seeds 0 --users 40 --json bench/personal.json

The world (ratingloop.simulate.groups): --users users, --share of them want concise answers (the `concise`
grader: +1 up to ~25 words, falling to -1 at 100), the rest thorough ones (its mirror); each asks 10-20 support
questions, gets answers of 1-9 sentences and rates each once (thumbs or stars, their own leniency and noise,
a wrong fact counts against it for everyone). One `ratingloop loop --once` round with the defaults: the global
KTO candidate (judged with the MaxMin guard), then a personal run and, per cohort with enough ratings, a cohort
adapter on top of what the gate left serving, judged on that cohort's held-out prompts.

Then --held-out fresh support questions (a seed no user drew from) are answered greedily (--max-tokens) by the
base, the round's global candidate (promoted or not: "the single global version") and each cohort's candidate;
each group's grader scores them. A group's "own" version is the cohort version its users are routed to (the
cohort most of them are in); the report gives each group's mean score under each, the cohort-to-group match
(ARI), the gate's verdicts and the round's wall time. A second, homogeneous world (one group) checks that one
cohort is found and nothing more is trained. Markdown on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench/train.py: spinning OpenMP on shared cores
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from ratingloop.simulate.graders import GRADERS  # noqa: E402
from ratingloop.simulate.groups import GroupsConfig, fresh_questions, grouped_users  # noqa: E402

KEY = b"bench-personal-key"


def scores(ref: str, prompts: list[dict[str, Any]], groups: list[str], max_tokens: int) -> dict[str, Any]:
    from ratingloop.models import generate

    answers = generate(ref, prompts, max_tokens=max_tokens, progress=False)
    words = [len(a["response"].split()) for a in answers]
    out: dict[str, Any] = {"words": statistics.mean(words)}
    for g in groups:
        pairs = zip(prompts, answers, strict=True)
        out[g] = statistics.mean(GRADERS[g](p["messages"], a["response"]) for p, a in pairs)
    return out


def run_world(cfg: GroupsConfig, args: argparse.Namespace, held: list[dict[str, Any]]) -> dict[str, Any]:
    from sklearn.metrics import adjusted_rand_score

    from ratingloop.loop import RoundSpec, run_loop
    from ratingloop.models.registry import get_version, list_versions
    from ratingloop.personal import cohort_members, load_personal
    from ratingloop.store import Limits, open_engine
    from ratingloop.store.jsonl import import_lines

    groups = [name for name, _ in cfg.groups]
    with tempfile.TemporaryDirectory(prefix="bench-personal-") as tmp:
        engine = open_engine(f"sqlite:///{tmp}/store.db")
        world = grouped_users(cfg)
        report = import_lines(engine, world.lines, Limits(), user_key=KEY)
        assert not report.bad, report.bad
        t0 = time.monotonic()
        [outcome] = run_loop(engine, RoundSpec(method="kto", out_root=f"{tmp}/loop"), user_key=KEY, once=True)
        round_s = time.monotonic() - t0
        personal = load_personal(engine)
        row: dict[str, Any] = {"seed": cfg.seed, "users": cfg.n_users, "ratings": len(world.lines),
                               "round_s": round(round_s, 1), "global": {"outcome": outcome["outcome"],
                                                                        "reasons": outcome.get("reasons")},
                               "k": personal.k if personal else None, "cohorts": outcome.get("cohorts", [])}
        if personal is not None and personal.k >= 2:
            members = cohort_members(engine, personal.run_id)
            truth = world.group_of
            placed = [(u, c) for c, (users, _) in members.items() for u in users]
            row["ari"] = round(float(adjusted_rand_score([truth[u] for u, _ in placed], [c for _, c in placed])), 3)
            row["own"] = {}  # group -> the cohort most of its users are in
            for gi, g in enumerate(groups):
                counts = {c: sum(truth[u] == gi for u in users) for c, (users, _) in members.items()}
                row["own"][g] = max(counts, key=lambda c: counts[c])
        row["n_versions"] = len(list_versions(engine))
        if args.skip_scores:
            return row
        refs = {"base": "default", "global": str(get_version(engine, outcome["version_id"]).adapter_path)}
        for c in outcome.get("cohorts", []):
            if c.get("version_id"):
                refs[f"cohort-{c['cohort']}"] = str(get_version(engine, c["version_id"]).adapter_path)
        row["scores"] = {name: scores(ref, held, groups, args.max_tokens) for name, ref in refs.items()}
    return row


def served(r: dict[str, Any], group: str) -> str:
    """Which version the group's users get after the round: their cohort's if its gate promoted it, else the
    global candidate if promoted, else the base."""
    mine = next((c for c in r["cohorts"] if "own" in r and c["cohort"] == r["own"][group]), None)
    if mine is not None and mine["outcome"] == "promoted":
        return f"cohort-{mine['cohort']}"
    return "global" if r["global"]["outcome"] == "promoted" else "base"


def report(rows: list[dict[str, Any]], homogeneous: dict[str, Any], args: argparse.Namespace, wall: float) -> str:
    lines = [f"bench/personal.py: {args.users} users, {args.share:.0%} concise / {1 - args.share:.0%} thorough, "
             f"seeds {args.seeds}, {args.held_out} held-out questions, max {args.max_tokens} tokens; "
             f"{wall / 60:.1f} min", "",
             "| seed | K | ARI | global gate | cohort gates | round s | group | base | global | own cohort's "
             "candidate | served after the round | served - global |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    nan = float("nan")
    for r in rows:
        gates = ", ".join(f"{c['cohort']}: {c['outcome']}" for c in r["cohorts"]) or "none"
        for g in ("concise", "thorough"):
            by = {name: s[g] for name, s in r.get("scores", {}).items()}
            own = by.get(f"cohort-{r['own'][g]}", nan) if "own" in r else nan
            now_by = served(r, g)
            base, glob, now = by.get("base", nan), by.get("global", nan), by.get(now_by, nan)
            lines.append(f"| {r['seed']} | {r['k']} | {r.get('ari', '')} | {r['global']['outcome']} | {gates} | "
                         f"{r['round_s']} | {g} | {base:+.3f} | {glob:+.3f} | {own:+.3f} | {now:+.3f} "
                         f"({now_by}) | {now - glob:+.3f} |")
    lines += ["", f"homogeneous world (one group, seed {homogeneous['seed']}): K={homogeneous['k']}, "
              f"{homogeneous['n_versions']} version(s) trained, cohort steps {homogeneous['cohorts']}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--share", type=float, default=0.7, help="the concise group's share of users")
    parser.add_argument("--held-out", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--skip-scores", action="store_true", help="no hidden scores (the round only)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    t0 = time.monotonic()
    held = fresh_questions(args.held_out)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        cfg = GroupsConfig(groups=(("concise", args.share), ("thorough", 1 - args.share)), n_users=args.users,
                           seed=seed)
        rows.append(run_world(cfg, args, held))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    one = argparse.Namespace(**(vars(args) | {"skip_scores": True}))
    homogeneous = run_world(GroupsConfig(groups=(("concise", 1.0),), n_users=args.users, seed=0), one, held)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "homogeneous": homogeneous}, indent=1))
    print(report(rows, homogeneous, args, time.monotonic() - t0))


if __name__ == "__main__":
    main()
