"""Benchmark for stage 3 (signals) on real annotators: PandaLM's test set (999 response pairs, each
labelled by the same three human annotators), with synthetic trolls injected.

    .venv/bin/python bench/pandalm.py [--data /work/shared/data/pandalm_testset-v1.json]

Reads the JSON from ../shared/data (never copied into the repo). Each pair becomes two interactions;
an annotator's label becomes a thumbs up for the better response and a thumbs down for the other
(ties carry no thumbs). Synthetic trolls rate every pair: an inverter flips the majority label, a
random troll picks a side at random, a position troll always prefers response 1. For each scenario
we report how often the pair's order by reward agrees with the three annotators' majority
(pairs with a 2-of-3 majority for one side), for ratingloop and for the naive mean of thumbs
(a tie in the score counts as a miss), and which raters were flagged.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ratingloop.signals.normalise import KIND_CODE
from ratingloop.signals.observations import RawRatings, observations
from ratingloop.signals.trolls import fit_excluding_trolls

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pandalm_testset-v1.json"
SCENARIOS: dict[str, tuple[str, ...]] = {
    "3 annotators": (),
    "+ 2 inverters": ("inverter", "inverter"),
    "+ 2 random": ("random", "random"),
    "+ inverter, random, position": ("inverter", "random", "position"),
    "+ 3 inverters (trolls = honest)": ("inverter",) * 3,
}


def load_labels(path: Path = DATA) -> np.ndarray:
    """(n_pairs, 3) int labels: 0 tie, 1 response1 better, 2 response2 better."""
    rows = json.loads(path.read_text())
    return np.asarray([[row[f"annotator{k}"] for k in (1, 2, 3)] for row in rows], int)


def majority(labels: np.ndarray) -> np.ndarray:
    """Per pair the label at least two annotators gave, or -1."""
    out = np.full(len(labels), -1)
    for lab in (0, 1, 2):
        out[(labels == lab).sum(axis=1) >= 2] = lab
    return out


def with_trolls(labels: np.ndarray, trolls: tuple[str, ...], rng: np.random.Generator) -> np.ndarray:
    maj = majority(labels)
    cols = [labels]
    for kind in trolls:
        if kind == "inverter":
            col = np.where(maj == 1, 2, np.where(maj == 2, 1, 0))
        elif kind == "random":
            col = rng.integers(1, 3, len(labels))
        else:  # position: always response 1
            col = np.ones(len(labels), int)
        cols.append(col[:, None])
    return np.hstack(cols)


def to_raw(labels: np.ndarray) -> RawRatings:
    """Pair p -> interactions 2p (response1) and 2p+1 (response2); each non-tie label -> two thumbs."""
    pair, rater = np.nonzero(labels > 0)
    first_better = labels[pair, rater] == 1
    item = np.concatenate([2 * pair, 2 * pair + 1])
    value = np.concatenate([np.where(first_better, 1.0, -1.0), np.where(first_better, -1.0, 1.0)])
    n = len(item)
    return RawRatings(rater=np.concatenate([rater, rater]), item=item, kind=np.full(n, KIND_CODE["thumbs"]),
                      aspect=np.zeros(n, int), value=value, scale_min=np.full(n, -1.0), scale_max=np.ones(n),
                      n_raters=labels.shape[1], n_items=2 * len(labels))


def agreement(score: np.ndarray, maj: np.ndarray) -> float:
    """Share of pairs with a 1/2 majority whose score order matches it (equal scores miss)."""
    diff = score[0::2] - score[1::2]
    pred = np.where(diff > 1e-9, 1, np.where(diff < -1e-9, 2, 0))
    decided = maj > 0
    return float((pred[decided] == maj[decided]).mean())


def run(labels: np.ndarray, trolls: tuple[str, ...], seed: int = 0) -> dict[str, object]:
    all_labels = with_trolls(labels, trolls, np.random.default_rng(seed))
    obs = observations(to_raw(all_labels))
    fit, flags = fit_excluding_trolls(obs)
    cnt = np.bincount(obs.item, minlength=obs.n_items)
    naive = np.bincount(obs.item, obs.value, obs.n_items) / np.maximum(cnt, 1)
    maj = majority(labels)
    names = ["annotator1", "annotator2", "annotator3"] + [f"{k} troll" for k in trolls]
    return {"ratingloop": agreement(fit.reward(), maj), "naive": agreement(naive, maj),
            "flagged": [f"{names[f.rater]} ({f.kind})" for f in flags]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    labels = load_labels(args.data)
    maj = majority(labels)
    lines = ["## Signals on real annotators: PandaLM test set with synthetic trolls", "",
             f"2026-11-29 · `.venv/bin/python bench/pandalm.py` · {len(labels)} pairs, "
             f"{int((maj > 0).sum())} with a 2-of-3 majority for one response (the reference). "
             "Agreement of the pair order by score with that majority:", "",
             "| raters | ratingloop | naive mean of thumbs | flagged by ratingloop |", "|---|---:|---:|---|"]
    for name, trolls in SCENARIOS.items():
        res = run(labels, trolls)
        flagged = ", ".join(res["flagged"]) or "none"  # type: ignore[arg-type]
        lines.append(f"| {name} | {res['ratingloop']:.3f} | {res['naive']:.3f} | {flagged} |")
    lines += ["", "The first row is a sanity check (the reference is these raters' own majority). In the last, the "
              "trolls are as many as the annotators and agree with each other exactly: nothing in the labels says "
              "which side is honest, and both methods follow the more self-consistent one."]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
