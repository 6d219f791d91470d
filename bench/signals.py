"""Benchmark for stage 3 (signals): how well rewards recover known quality, how well trolls are found,
and what fitting 1M ratings costs. Writes bench/results-signals.md.

    .venv/bin/python bench/signals.py                # all figures, 3 repetitions (medians)
    .venv/bin/python bench/signals.py --reps 1 --no-scale

Quality: on simulated data with known truth (ratingloop.simulate), the Spearman correlation with the
true quality of: ratingloop's reward; the naive mean of normalised ratings; the mean of per-rater
z-scores; crowd-kit's Dawid-Skene and MACE on binarised labels (reward > 0). Scenarios: honest-only,
20% trolls (inverting, random, constant floods, topic-targeted inverters in equal shares), and
single-rated sparse (every interaction rated once, by its asker). Scale: 1,000,000 ratings from
100,000 raters on 300,000 interactions, 20% trolls, timed in a fresh subprocess (wall time of
normalise + fit + troll flagging + refit; peak RSS of that process, data generation included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from ratingloop.signals.observations import Observations, observations
from ratingloop.signals.trolls import fit_excluding_trolls
from ratingloop.simulate import SimConfig, simulate
from ratingloop.simulate.ratings import to_raw

SCENARIOS = {
    "honest-only": SimConfig(n_items=5000, n_raters=500, n_ratings=40_000),
    "20% trolls": SimConfig(n_items=5000, n_raters=500, n_ratings=40_000, troll_frac=0.2),
    "single-rated sparse": SimConfig(n_items=20_000, n_raters=1000, single_rated=True),
}
SCALE = SimConfig(n_items=300_000, n_raters=100_000, n_ratings=1_000_000, troll_frac=0.2)
METHODS = ("ratingloop", "naive mean", "per-rater z-score", "Dawid-Skene (crowd-kit)", "MACE (crowd-kit)")


def naive_mean(obs: Observations) -> np.ndarray:
    cnt = np.bincount(obs.item, minlength=obs.n_items)
    return np.bincount(obs.item, obs.value, obs.n_items) / np.maximum(cnt, 1)


def zscore_mean(obs: Observations) -> np.ndarray:
    """Each rater's ratings standardised by their own mean and sd (population sd below 2 ratings)."""
    R, r, x = obs.n_raters, obs.rater, obs.value
    n = np.bincount(r, minlength=R)
    mean = np.bincount(r, x, R) / np.maximum(n, 1)
    sd = np.sqrt(np.maximum(np.bincount(r, x * x, R) / np.maximum(n, 1) - mean**2, 0))
    sd = np.where((n >= 2) & (sd > 1e-6), sd, x.std())
    z = (x - mean[r]) / sd[r]
    cnt = np.bincount(obs.item, minlength=obs.n_items)
    return np.bincount(obs.item, z, obs.n_items) / np.maximum(cnt, 1)


def crowdkit(obs: Observations, method: str) -> np.ndarray:
    from crowdkit.aggregation import MACE, DawidSkene

    df = pd.DataFrame({"worker": obs.rater, "task": obs.item, "label": (obs.value > 0).astype(int)})
    model = DawidSkene(n_iter=100) if method == "ds" else MACE(n_restarts=3, n_iter=50, random_state=0)
    proba = model.fit_predict_proba(df)
    out = np.full(obs.n_items, 0.5)
    out[proba.index.to_numpy()] = proba[1].to_numpy() if 1 in proba.columns else 0.0
    return out


def quality_run(cfg: SimConfig) -> dict[str, float]:
    sim = simulate(cfg)
    obs = observations(to_raw(sim))
    rated = np.bincount(obs.item, minlength=obs.n_items) > 0
    truth = sim.truth.quality[rated]
    fit, flags = fit_excluding_trolls(obs, topic=sim.truth.topic)
    scores = {"ratingloop": fit.reward(), "naive mean": naive_mean(obs), "per-rater z-score": zscore_mean(obs),
              "Dawid-Skene (crowd-kit)": crowdkit(obs, "ds"), "MACE (crowd-kit)": crowdkit(obs, "mace")}
    out = {k: float(spearmanr(v[rated], truth)[0]) for k, v in scores.items()}
    flagged = np.zeros(sim.n_raters, bool)
    flagged[[f.rater for f in flags]] = True
    troll, judged = sim.truth.is_troll, fit.n >= 8
    out["flagged"] = float(flagged.sum())
    out["n_p25"], out["n_p50"], out["n_p75"] = (float(v) for v in np.percentile(fit.n, [25, 50, 75]))
    out.update(recall_curve(flagged, troll, fit.n))
    if troll.any():
        out["precision"] = float((flagged & troll).sum() / max(flagged.sum(), 1))
        out["recall"] = float((flagged & troll).sum() / troll.sum())
        out["recall_judged"] = float((flagged & troll & judged).sum() / max((troll & judged).sum(), 1))
        out["trolls_judged"] = float((troll & judged).sum() / troll.sum())
    return out


BINS = ((1, 4), (5, 7), (8, 15), (16, 31), (32, 63), (64, 10**9))  # ratings per troll


def recall_curve(flagged: np.ndarray, troll: np.ndarray, n: np.ndarray) -> dict[str, float]:
    """Recall among trolls with lo..hi ratings, and how many trolls fall in each bin."""
    out = {}
    for lo, hi in BINS:
        sel = troll & (n >= lo) & (n <= hi)
        out[f"rec_{lo}"] = float((flagged & sel).sum() / sel.sum()) if sel.any() else float("nan")
        out[f"cnt_{lo}"] = float(sel.sum())
    return out


def curve_rows(runs: list[dict[str, float]]) -> list[str]:
    head = "| ratings per troll | " + " | ".join(f"{lo}-{hi}" if hi < 10**9 else f">= {lo}" for lo, hi in BINS) + " |"
    rows = [head, "|---|" + "---:|" * len(BINS),
            "| trolls (median count) | " + " | ".join(f"{med(runs, f'cnt_{lo}'):.0f}" for lo, _ in BINS) + " |",
            "| recall (median) | " + " | ".join(f"{np.nanmedian([r[f'rec_{lo}'] for r in runs]):.2f}"
                                                for lo, _ in BINS) + " |"]
    return rows


def scale_child(seed: int) -> None:
    """Runs in a fresh process: simulate, then time the signals stage; prints one JSON line."""
    sim = simulate(replace(SCALE, seed=seed))
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    obs = observations(to_raw(sim))
    fit, flags = fit_excluding_trolls(obs, topic=sim.truth.topic)
    seconds = time.perf_counter() - t0
    flagged = np.zeros(sim.n_raters, bool)
    flagged[[f.rater for f in flags]] = True
    troll, judged = sim.truth.is_troll, fit.n >= 8
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "seconds": seconds, "peak_rss_mb": peak_mb, "rss_after_data_mb": rss_data / 1024,
        "iterations": fit.iterations,
        "precision": float((flagged & troll).sum() / max(flagged.sum(), 1)),
        "recall": float((flagged & troll).sum() / troll.sum()),
        "recall_judged": float((flagged & troll & judged).sum() / max((troll & judged).sum(), 1)),
        "trolls_judged": float((troll & judged).sum() / troll.sum()),
        "honest_flagged": float((flagged & ~troll).sum() / (~troll).sum()),
        **recall_curve(flagged, troll, fit.n),
    }))


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu}, {os.cpu_count()} cores, {system}, Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-scale", action="store_true")
    ap.add_argument("--scale-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(Path(__file__).with_name("results-signals.md")))
    args = ap.parse_args()
    if args.scale_child is not None:
        scale_child(args.scale_child)
        return
    quality = {name: [quality_run(replace(cfg, seed=s)) for s in range(args.reps)] for name, cfg in SCENARIOS.items()}
    scale = [] if args.no_scale else [
        json.loads(subprocess.run([sys.executable, __file__, "--scale-child", str(s)], check=True, capture_output=True,
                                  text=True).stdout.strip().splitlines()[-1]) for s in range(args.reps)]
    text = render(quality, scale, args.reps)
    Path(args.out).write_text(text)
    print(text)


def med(runs: list[dict[str, float]], key: str) -> float:
    return float(np.median([r[key] for r in runs]))


def render(quality: dict[str, list[dict[str, float]]], scale: list[dict[str, float]], reps: int) -> str:
    lines = ["## Signals: rewards vs known truth, trolls, 1M-rating fit", "",
             f"2026-11-29 · {machine()} · `.venv/bin/python bench/signals.py --reps {reps}` · medians of {reps} seeds "
             f"· 1-min load average at start {os.getloadavg()[0]:.1f} (other jobs shared the machine).",
             "", "Spearman correlation of each method's per-interaction score with the true quality:", "",
             "| method | " + " | ".join(quality) + " |", "|---|" + "---:|" * len(quality)]
    for m in METHODS:
        lines.append(f"| {m} | " + " | ".join(f"{med(runs, m):.3f}" for runs in quality.values()) + " |")
    lines += ["", "Scenarios: " + "; ".join(
        f"{n}: {c.n_items:,} interactions, {c.n_raters:,} raters, "
        + ("one rating each" if c.single_rated else f"{c.n_ratings:,} ratings") for n, c in SCENARIOS.items()) + "."]
    t = quality["20% trolls"]
    lines += ["", "Trolls (20% of raters: inverters, random raters, constant floods, topic-targeted inverters in "
              f"equal shares; raters' activity is log-normal, median {med(t, 'n_p50'):.0f} ratings per rater, "
              f"quartiles {med(t, 'n_p25'):.0f}-{med(t, 'n_p75'):.0f}): precision {med(t, 'precision'):.2f}, recall "
              f"{med(t, 'recall'):.2f} of all trolls; recall {med(t, 'recall_judged'):.2f} among the "
              f"{med(t, 'trolls_judged'):.0%} of trolls with >= 8 ratings. Honest-only: "
              f"{med(quality['honest-only'], 'flagged'):.0f} of 500 honest raters flagged.", "",
              "Recall by how many ratings a troll gave (20% trolls scenario). A troll with 1-4 ratings is never "
              "flagged (below `min_ratings`; a handful of ratings cannot outweigh an honest rater's ordinary noise); "
              "a random thumbs rater needs dozens of coin flips before they differ from a noisy honest one:", ""]
    lines += curve_rows(t)
    if scale:
        runs = ", ".join(f"{r['seconds']:.1f}" for r in scale)
        lines += ["", f"1M-rating fit ({SCALE.n_ratings:,} ratings, {SCALE.n_raters:,} raters, {SCALE.n_items:,} "
                  "interactions, 20% trolls; normalise + fit + flag + refit, in a fresh process):",
                  f"wall time {med(scale, 'seconds'):.1f} s (runs: {runs}), "
                  f"peak RSS {med(scale, 'peak_rss_mb'):.0f} MB of which {med(scale, 'rss_after_data_mb'):.0f} MB was "
                  f"the process and simulated data before fitting; troll precision {med(scale, 'precision'):.2f}, "
                  f"recall {med(scale, 'recall'):.2f} of all trolls, {med(scale, 'recall_judged'):.2f} of the "
                  f"{med(scale, 'trolls_judged'):.0%} with >= 8 ratings ({med(scale, 'honest_flagged'):.2%} of honest "
                  "raters flagged). Recall by ratings per troll at this scale (most raters give ~10):", ""]
        lines += curve_rows(scale)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
