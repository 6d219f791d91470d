"""Benchmark the embedding cache (models.embed.EmbeddingCache): a content-prior run over a store it has seen.

    .venv/bin/python bench/embed_cache.py [--repeats 3]

Texts: every (question, reply) of ../shared/data/oasst_en_100_tree.jsonl, read in place. Each repeat, in a
fresh cache file: embed_pairs cold (every text encoded and stored), then warm (every text read back), then
with 10% new answers (what a loop round adds). Prints medians and the warm/cold ratio, as Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
OASST = Path(__file__).resolve().parents[2] / "shared" / "data" / "oasst_en_100_tree.jsonl"


def pairs() -> tuple[list[str], list[str]]:
    prompts, answers = [], []

    def walk(node: dict, question: str) -> None:
        for reply in node.get("replies", []):
            if reply["role"] == "assistant":
                prompts.append(question)
                answers.append(reply["text"])
            walk(reply, reply["text"] if reply["role"] == "prompter" else question)

    for line in OASST.read_text().splitlines():
        root = json.loads(line)["prompt"]
        walk(root, root["text"])
    return prompts, answers


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from ratingloop.models.embed import EmbeddingCache, embed_pairs, encoder

    prompts, answers = pairs()
    enc = encoder()
    embed_pairs(enc, prompts[:8], answers[:8])  # warm the model up
    new = max(1, len(answers) // 10)
    times: dict[str, list[float]] = {"cold": [], "warm": [], "10% new": []}
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            cache = EmbeddingCache(Path(tmp) / "c.sqlite")
            for name, answers_now in (("cold", answers), ("warm", answers),
                                      ("10% new", answers[:-new] + [f"{a} ({r})" for a in answers[-new:]])):
                start = time.perf_counter()
                embed_pairs(enc, prompts, answers_now, cache=cache)
                times[name].append(time.perf_counter() - start)
    cold = statistics.median(times["cold"])
    print(f"{len(answers)} (prompt, answer) pairs, {len(set(prompts)) + len(set(answers))} distinct texts; "
          f"medians of {args.repeats}; load average {os.getloadavg()[0]:.1f}\n")
    print("| run | seconds | pairs/s | x cold |\n|---|---:|---:|---:|")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"| {name} | {t:.2f} | {len(answers) / t:.0f} | {cold / t:.1f} |")


if __name__ == "__main__":
    main()
