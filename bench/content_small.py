"""Benchmark: does the content prior help or hurt on small single-rated stores? The evidence behind
`ContentConfig.min_ratings`, the size from which `content.mode=auto` turns it on (issue 12).

    .venv/bin/python bench/content_small.py                       # 3 graders x 4 conditions x 3 seeds x off/on, ~3 min
    .venv/bin/python bench/content_small.py --graders concise --conditions 0.2/0.4 --seeds 5

The store is bench/loop.py's world (real OASST questions, replies cut into 2 answers each, asked and rated once
by 40 simulated askers; `--conditions` are TROLLS/RATED pairs: the share of inverting askers and of answers
rated). Per store, the signals run with the content prior off and on (`content.mode`), then the loop's KTO build;
no training. Two numbers say how good the labels are: the Spearman correlation of the rewards with the hidden
score (every rated answer), and the share of the built KTO rows whose label (desirable or not) agrees with the
hidden truth (score > 0). Medians over seeds; one Markdown row per grader and condition.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loop as world_loop  # noqa: E402  (bench/loop.py: the world and its signal_quality)


def one_store(train_q: list[Any], grader: str, trolls: float, rated: float, seed: int, mode: str) -> dict[str, Any]:
    from datasets import load_from_disk

    from ratingloop.dataset import BuildConfig, build_dataset
    from ratingloop.loop import LOOP_BUILD_DEFAULTS
    from ratingloop.signals import SignalsConfig, record_signals
    from ratingloop.signals.content import ContentConfig
    from ratingloop.store import open_engine
    from ratingloop.store.jsonl import import_lines
    from ratingloop.store.records import Limits

    world = world_loop.make_world(train_q, argparse.Namespace(variants=2, trolls=trolls, unrated=round(1 - rated, 6),
                                                              grader=grader), seed)
    index = {}
    for k, line in enumerate(world.lines):
        row = json.loads(line)
        index[(row["messages"][-1]["content"], row["response"])] = k
    with tempfile.TemporaryDirectory(prefix="bench-content-small-") as tmp:
        engine = open_engine(f"sqlite:///{tmp}/store.db")
        assert not import_lines(engine, world.lines, Limits(), user_key=b"bench").bad
        record_signals(engine, SignalsConfig(content=ContentConfig(mode=mode)))
        quality = world_loop.signal_quality(engine, world)
        build_dataset(engine, "kto", Path(tmp) / "data", BuildConfig(**LOOP_BUILD_DEFAULTS))
        rows = load_from_disk(f"{tmp}/data/train")
        at = np.asarray([index[(r["prompt"][-1]["content"], r["completion"][-1]["content"])] for r in rows])
        labels = np.asarray(rows["label"], bool)
        engine.dispose()
    truth = world.score[at] > 0
    return {"ratings": int(world.rated.sum()), "rows": len(labels), "label_right": float((labels == truth).mean()),
            "undesirable_right": float((~truth[~labels]).mean()) if (~labels).any() else float("nan"),
            "spearman": quality["spearman_rewards"], "spearman_raw": quality["spearman_raw"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--graders", default="concise,thorough,direct")
    ap.add_argument("--conditions", default="0/0.2,0.2/0.2,0/0.4,0.2/0.4", help="TROLLS/RATED,...")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    train_q, _ = world_loop.split_questions(world_loop.oasst_questions(), 24)
    out = []
    for grader in args.graders.split(","):
        for cond in args.conditions.split(","):
            trolls, rated = (float(x) for x in cond.split("/"))
            for seed in range(args.seeds):
                for mode in ("off", "on"):
                    row = {"grader": grader, "trolls": trolls, "rated": rated, "seed": seed, "mode": mode}
                    out.append(row | one_store(train_q, grader, trolls, rated, seed, mode))
                    print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))

    def med(rows: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    print("| grader | trolls | rated | ratings | Spearman(rewards, truth) off / on | KTO labels right off / on | "
          "undesirable labels right off / on |")
    print("|---|---:|---:|---:|---|---|---|")
    for grader in args.graders.split(","):
        for cond in args.conditions.split(","):
            trolls, rated = (float(x) for x in cond.split("/"))
            here = [r for r in out if (r["grader"], r["trolls"], r["rated"]) == (grader, trolls, rated)]
            off, on = [r for r in here if r["mode"] == "off"], [r for r in here if r["mode"] == "on"]
            undes = [_median_of_known([r["undesirable_right"] for r in rows]) for rows in (off, on)]
            print(f"| {grader} | {trolls:.0%} | {rated:.0%} | {med(here, 'ratings'):.0f} | "
                  f"{med(off, 'spearman'):.2f} / {med(on, 'spearman'):.2f} | "
                  f"{med(off, 'label_right'):.2f} / {med(on, 'label_right'):.2f} | "
                  f"{undes[0]} / {undes[1]} |")


def _median_of_known(values: list[float]) -> str:
    known = [v for v in values if v == v]  # NaN: a build with no undesirable row
    return f"{statistics.median(known):.2f}" if known else "-"


if __name__ == "__main__":
    main()
