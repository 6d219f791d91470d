"""Benchmark for stage 5 (train --method reward): pairwise accuracy of reward models on held-out human
preferences that no one on this project wrote.

    .venv/bin/python bench/reward.py [--quick] [--sets hh,pandalm] [--base-pairs 128] [--base-test 100]
                                     [--max-length 256] [--bf16]

Reads two public sets in place from ../shared/data (never copied into the repo; see its README):

- Anthropic HH harmless-base test split: 2,312 dialogues whose chosen and rejected versions differ only
  in the last assistant turn. The prompt is the dialogue before that turn (as chat messages). A random
  80/20 split of the pairs; the reward model trains on the 80 and is judged on the 20.
- PandaLM test set: 999 response pairs, each labelled by the same three annotators. The label is the
  2-of-3 majority (pairs where it is a tie, or no majority, are left out). The split is 80/20 by
  instruction, so no held-out prompt was seen in training.

On the held-out pairs, for each set: baselines (the longer answer wins; for PandaLM also the position
that won most often in training), the embed backbone (a Bradley-Terry head on frozen MiniLM embeddings,
on every train pair and on the base's subset), and the base backbone (LoRA + score head on the default
model, the `reward` recipe as run.py drives it, on a capped subset: a CPU cannot train the 135M model
on thousands of pairs in minutes). The base is judged on at most
--base-test held-out pairs; every other row is given on the same subset too, so the rows compare.
Prints a markdown section for bench/results-reward.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HH = DATA / "hh-rlhf_harmless-base_test.jsonl.gz"
PANDALM = DATA / "pandalm_testset-v1.json"
TURN = re.compile(r"\n\n(Human|Assistant): ")


@dataclass
class Pair:
    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    group: str  # pairs of one group stay on one side of the split
    chosen_first: bool = True  # PandaLM: the chosen answer was response1


# --- the sets ------------------------------------------------------------------------------------

def dialogue(text: str) -> list[dict[str, str]]:
    parts = TURN.split(text)[1:]  # "", role, content, role, content, ...
    return [{"role": "user" if role == "Human" else "assistant", "content": content.strip()}
            for role, content in zip(parts[0::2], parts[1::2], strict=True)]


def hh_pairs(path: Path = HH) -> tuple[list[Pair], int]:
    """The pairs, and how many were left out (their dialogues differ before the last turn, or not at all)."""
    out, dropped = [], 0
    with gzip.open(path, "rt") as f:
        for line in f:
            x = json.loads(line)
            chosen, rejected = dialogue(x["chosen"]), dialogue(x["rejected"])
            if (chosen[:-1] != rejected[:-1] or chosen[-1]["role"] != "assistant"
                    or chosen[-1]["content"] == rejected[-1]["content"]):
                dropped += 1
                continue
            out.append(Pair(chosen[:-1], chosen[-1]["content"], rejected[-1]["content"], x["chosen"][:200]))
    return out, dropped


def pandalm_pairs(path: Path = PANDALM) -> tuple[list[Pair], int]:
    out, dropped = [], 0
    for row in json.loads(path.read_text()):
        labels = [row[f"annotator{k}"] for k in (1, 2, 3)]
        winner = next((lab for lab in (1, 2) if labels.count(lab) >= 2), None)
        if winner is None:
            dropped += 1
            continue
        prompt = row["instruction"] + (f"\n\n{row['input']}" if row["input"] else "")
        first, second = str(row["response1"]), str(row["response2"])  # six responses are JSON `true`
        chosen, rejected = (first, second) if winner == 1 else (second, first)
        out.append(Pair([{"role": "user", "content": prompt}], chosen, rejected, row["instruction"], winner == 1))
    return out, dropped


def split(pairs: list[Pair], test_share: float = 0.2, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    groups = sorted({p.group for p in pairs})
    rng = np.random.default_rng(seed)
    test_groups = set(rng.permutation(groups)[: round(len(groups) * test_share)])
    return [p for p in pairs if p.group not in test_groups], [p for p in pairs if p.group in test_groups]


# --- the contenders --------------------------------------------------------------------------------

def accuracy(chosen: np.ndarray, rejected: np.ndarray) -> float:
    from ratingloop.train.scoring import pair_accuracy

    return float(pair_accuracy(chosen, rejected) or 0.0)


def longer_wins(test: list[Pair]) -> float:
    return accuracy(np.array([len(p.chosen) for p in test]), np.array([len(p.rejected) for p in test]))


def position_majority(train: list[Pair], test: list[Pair]) -> float:
    """Always pick the response position that won most often in training (PandaLM)."""
    first = np.mean([p.chosen_first for p in train]) >= 0.5
    return float(np.mean([p.chosen_first == first for p in test]))


def embed_features(pairs: list[Pair]) -> tuple[np.ndarray, np.ndarray]:
    from ratingloop.models.embed import embed_pairs, encoder

    x = embed_pairs(encoder(), [p.prompt for p in pairs] * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs])
    return x[: len(pairs)], x[len(pairs):]


def embed_bt(train_x: tuple[np.ndarray, np.ndarray], test_x: tuple[np.ndarray, np.ndarray]) -> float:
    from ratingloop.train.embed_reward import fit_pairs

    model = fit_pairs(*train_x)
    (chosen, _), (rejected, _) = model.score_x(test_x[0]), model.score_x(test_x[1])
    return accuracy(chosen, rejected)


def base_bt(train: list[Pair], test: list[Pair], max_length: int, bf16: bool) -> dict[str, Any]:
    """LoRA + score head on the default model, the `reward` recipe driven as run.py drives it (without the
    registry, and without the Trainer's own second pass over the eval split): held-out accuracy and times."""
    from datasets import Dataset

    from ratingloop.models.load import resolve_model
    from ratingloop.train import TrainConfig
    from ratingloop.train import reward as recipe
    from ratingloop.train.data import load_train_data

    def rows(pairs: list[Pair]) -> list[dict[str, Any]]:
        return [{"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
                 "rejected": [{"role": "assistant", "content": p.rejected}]} for p in pairs]

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pairs"
        for name, pairs in (("train", train), ("eval", test)):
            Dataset.from_list(rows(pairs)).save_to_disk(str(folder / name))
        (folder / "manifest.json").write_text(json.dumps({"format": "dpo"}))
        # batches of 8 pairs as 2 x 4: the same update, half the activation memory (~10 GB at 8 x 2 x 256 fp32)
        cfg = TrainConfig.for_method("reward", max_length=max_length, bf16=bf16, save_steps=0, batch_size=4,
                                     grad_accum=2)
        model, tokenizer = recipe.load_model(resolve_model(None), cfg)
        trainer = recipe.make_trainer(model, tokenizer, load_train_data(folder, "reward"), cfg, Path(tmp), False)
        start = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - start
        figures = recipe.metrics(trainer)  # scores the held-out pairs (and 128 train answers to centre the scale)
        eval_s = time.perf_counter() - start - train_s
    return {"accuracy": figures["eval_pair_accuracy"], "train_s": train_s, "eval_s": eval_s,
            "steps": trainer.state.global_step}


# --- the report ------------------------------------------------------------------------------------

def run_set(name: str, load: Callable[[], tuple[list[Pair], int]], args: argparse.Namespace) -> list[str]:
    pairs, dropped = load()
    if args.quick:
        pairs = [pairs[i] for i in np.random.default_rng(1).permutation(len(pairs))[:200]]
    train, test = split(pairs)
    rng = np.random.default_rng(2)
    few = sorted(rng.permutation(len(train))[: args.base_pairs])
    sub = sorted(rng.permutation(len(test))[: args.base_test])
    small, test_sub = [train[i] for i in few], [test[i] for i in sub]

    start = time.perf_counter()
    train_x, test_x = embed_features(train), embed_features(test)
    embed_s = time.perf_counter() - start
    small_x, sub_x = (train_x[0][few], train_x[1][few]), (test_x[0][sub], test_x[1][sub])
    start = time.perf_counter()
    embed_all = (embed_bt(train_x, test_x), embed_bt(train_x, sub_x))
    fit_s = time.perf_counter() - start
    embed_small = (embed_bt(small_x, test_x), embed_bt(small_x, sub_x))
    base = base_bt(small, test_sub, args.max_length, args.bf16)

    lines = [f"### {name}", "",
             f"{len(pairs)} pairs used ({dropped} left out), {len(train)} train / {len(test)} held out; the base "
             f"trains on {len(small)} of the train pairs and is judged on {len(test_sub)} held-out pairs.", "",
             f"| model | train pairs | held-out accuracy (all {len(test)}) | held-out accuracy (base's "
             f"{len(test_sub)}) | time |", "|---|---:|---:|---:|---|",
             f"| baseline: longer answer wins | – | {longer_wins(test):.3f} | {longer_wins(test_sub):.3f} | – |"]
    if name.startswith("PandaLM"):
        lines.append(f"| baseline: train-majority position | – | {position_majority(train, test):.3f} | "
                     f"{position_majority(train, test_sub):.3f} | – |")
    lines += [f"| embed: BT head on MiniLM | {len(train)} | {embed_all[0]:.3f} | {embed_all[1]:.3f} | "
              f"embed {embed_s:.0f} s, fit {fit_s:.1f} s |",
              f"| embed: BT head on MiniLM | {len(small)} | {embed_small[0]:.3f} | {embed_small[1]:.3f} | |",
              f"| base: LoRA seq-cls, SmolLM2-135M, {'bf16' if args.bf16 else 'fp32'}, max_length {args.max_length}"
              f" | {len(small)} | – | {base['accuracy']:.3f} | train {base['train_s']:.0f} s ({base['steps']} steps), "
              f"scoring {base['eval_s']:.0f} s |", ""]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="200 pairs per set, a few base steps: a smoke run")
    # sized so the two base runs take about 15 minutes on an idle 2-core machine (~200 training tokens/s)
    ap.add_argument("--base-pairs", type=int, default=128, help="train pairs for the base backbone")
    ap.add_argument("--base-test", type=int, default=100, help="held-out pairs the base backbone is judged on")
    ap.add_argument("--max-length", type=int, default=256)
    # fp32: bf16 autocast was not faster for this model on this CPU (results-reward.md)
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=False)
    ap.add_argument("--sets", default="hh,pandalm", help="comma-separated: hh, pandalm")
    args = ap.parse_args()
    if args.quick:
        args = replace_args(args, base_pairs=16, base_test=16, max_length=128)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    load = os.getloadavg()[0]
    start = time.perf_counter()
    lines = [f"## Reward model: held-out pairwise accuracy{' (--quick)' if args.quick else ''}", "",
             f"{time.strftime('%Y-%m-%d')} · `.venv/bin/python bench/reward.py{' --quick' if args.quick else ''}"
             f"{' --bf16' if args.bf16 else ''} --sets {args.sets}` · {os.cpu_count()} cores, {cpu_name()}, "
             f"load average {load:.1f} at the start", ""]
    sets = {"hh": ("Anthropic HH harmless-base (test split)", hh_pairs),
            "pandalm": ("PandaLM test set (2-of-3 majority)", pandalm_pairs)}
    print("\n".join(lines), flush=True)
    for key in args.sets.split(","):
        print("\n".join(run_set(*sets[key.strip()], args)), flush=True)  # each set as soon as it is done
    print(f"Whole benchmark: {time.perf_counter() - start:.0f} s; load average {os.getloadavg()[0]:.1f} at the end.")


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return "cpu"


def replace_args(args: argparse.Namespace, **values: Any) -> argparse.Namespace:
    return argparse.Namespace(**(vars(args) | values))


if __name__ == "__main__":
    main()
