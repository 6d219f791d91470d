"""Benchmark for stage 3's content prior (signals/content.py): single-rated data, where one rating per
answer cannot tell quality from its rater. Writes bench/results-content.md.

    .venv/bin/python bench/content.py                  # 2 seeds, 3,000 interactions each
    .venv/bin/python bench/content.py --seeds 1 --items 1500

Per seed, simulated interactions get text that carries their hidden quality (simulate/texts.py) and
are embedded once with the packaged all-MiniLM-L6-v2; every scenario reuses those texts (quality and
topic depend only on the seed and the number of interactions). A fifth of the interactions are
imported without ratings (held out). Each scenario goes through the store the way users' data
does: `import_lines`, `record_signals` with the content prior on and off, `build_dataset` for sft
and kto. Figures: troll precision/recall; Spearman of rewards with the true quality (rated, and
unrated from the prior alone); the share of truly good answers (quality > 0) in the SFT set and the
KTO label accuracy; and a reward model (BayesianRidge on the embeddings) fitted on the cleaned
rewards vs on the raw normalised ratings, ranked against the truth on the held-out interactions.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import orjson
from scipy.stats import spearmanr

from ratingloop.dataset import BuildConfig, build_dataset
from ratingloop.models.embed import embed_pairs, encoder, prompt_text
from ratingloop.signals import SignalsConfig, StoredSignals, record_signals
from ratingloop.signals.content import ContentConfig, decide, project
from ratingloop.signals.load import load_ratings
from ratingloop.signals.normalise import rewards
from ratingloop.simulate import SimConfig, simulate
from ratingloop.simulate.texts import SimTexts, import_lines_for, rater_id, sim_texts
from ratingloop.store import open_engine
from ratingloop.store.jsonl import import_lines
from ratingloop.store.records import Limits

INVERTERS = {"inverter": 1.0}
SCENARIOS: dict[str, dict[str, Any]] = {
    "single-rated, 20% inverters": {"single_rated": True, "troll_frac": 0.2, "troll_mix": INVERTERS},
    "single-rated, 20% mixed trolls": {"single_rated": True, "troll_frac": 0.2},
    "single-rated, honest": {"single_rated": True},
    "multi-rated (4 per answer), 20% mixed trolls": {"ratings_per_item": 4, "troll_frac": 0.2},
}
HELD_OUT = 0.2


def scenario_config(kw: dict[str, Any], items: int, seed: int) -> SimConfig:
    kw = dict(kw)
    per_item = kw.pop("ratings_per_item", 0)
    return SimConfig(n_items=items, n_raters=items // 15, n_ratings=per_item * items, seed=seed, **kw)


def cached_embedder(texts: SimTexts, x: np.ndarray) -> Any:
    index = {(p, a): k for k, (p, a) in enumerate(zip(texts.prompts, texts.answers, strict=True))}

    def embed(prompts: Sequence[Any], answers: Sequence[str]) -> np.ndarray:
        return x[[index[(prompt_text(p), a)] for p, a in zip(prompts, answers, strict=True)]]

    return embed


def item_of(iid: str) -> int:
    return int(iid.split("-")[1])


def troll_figures(res: StoredSignals, troll: np.ndarray, n: np.ndarray) -> dict[str, float]:
    flagged = np.zeros(len(troll), bool)
    index = {rater_id(k): k for k in range(len(troll))}
    flagged[[index[r.rater_id] for r in res.raters if r.flagged]] = True
    seen = n > 0
    t, judged = troll & seen, troll & (n >= 8)
    return {"flagged": float(flagged.sum()), "honest_flagged": float((flagged & ~troll).sum()),
            "precision": float((flagged & troll).sum() / max(flagged.sum(), 1)),
            "recall": float((flagged & t).sum() / max(t.sum(), 1)),
            "recall_judged": float((flagged & judged).sum() / max(judged.sum(), 1)),
            "trolls_judged": float(judged.sum() / max(t.sum(), 1))}


def build_figures(engine: Any, res: StoredSignals, quality: np.ndarray, answers: dict[str, int], out: Path
                  ) -> dict[str, float]:
    figs: dict[str, float] = {}
    for fmt in ("sft", "kto"):
        build_dataset(engine, fmt, out / fmt, BuildConfig(), signals=res)
        rows = [orjson.loads(x) for split in ("train", "eval") for x in (out / fmt / f"{split}.jsonl").read_bytes()
                .splitlines()]
        q = np.asarray([quality[answers[r["completion"][0]["content"]]] for r in rows])
        figs[f"{fmt}_rows"] = float(len(rows))
        if fmt == "sft":
            figs["sft_good"] = float((q > 0).mean()) if len(q) else float("nan")
        else:
            label = np.asarray([r["label"] for r in rows])
            figs["kto_acc"] = float((label == (q > 0)).mean()) if len(q) else float("nan")
    return figs


def reward_model(x: np.ndarray, train: np.ndarray, y: np.ndarray, test: np.ndarray, truth: np.ndarray) -> float:
    """Spearman with the truth on `test` of a BayesianRidge head fitted on (x[train], y)."""
    from sklearn.linear_model import BayesianRidge

    model = BayesianRidge().fit(x[train], y)
    return float(spearmanr(model.predict(x[test]), truth[test])[0])


def run_scenario(kw: dict[str, Any], items: int, seed: int, texts: SimTexts, x: np.ndarray, z: np.ndarray
                 ) -> dict[str, float]:
    sim = simulate(scenario_config(kw, items, seed))
    q = sim.truth.quality
    held = np.random.default_rng(seed).random(items) < HELD_OUT
    rated_items = np.flatnonzero(~held)
    keep = np.isin(sim.item, rated_items)
    # held-out interactions go in unrated: the content prior must give them a reward too
    lines = import_lines_for(replace(sim, rater=sim.rater[keep], item=sim.item[keep], kind=sim.kind[keep],
                                     value=sim.value[keep], scale_min=sim.scale_min[keep],
                                     scale_max=sim.scale_max[keep]), texts)
    figs: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        engine = open_engine(f"sqlite:///{Path(tmp) / 'store.db'}")
        import_lines(engine, lines, Limits(), user_key=b"bench")  # a fresh store: any key (no deletions)
        figs["auto_on"] = float(decide(load_ratings(engine), ContentConfig())[0])
        t0 = time.perf_counter()
        on = record_signals(engine, SignalsConfig(content=ContentConfig(mode="on")), embed=cached_embedder(texts, x))
        figs["seconds_on"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        off = record_signals(engine, SignalsConfig(content=ContentConfig(mode="off")))
        figs["seconds_off"] = time.perf_counter() - t0
        n = np.bincount(sim.rater[keep], minlength=sim.n_raters)
        answers = {a: k for k, a in enumerate(texts.answers)}
        for name, res in (("on", on), ("off", off)):
            figs.update({f"{k}_{name}": v for k, v in troll_figures(res, sim.truth.is_troll, n).items()})
            ids = np.asarray([item_of(s.interaction_id) for s in res.interactions])
            figs[f"spearman_{name}"] = float(spearmanr([s.reward for s in res.interactions], q[ids])[0])
            figs.update({f"{k}_{name}": v for k, v in build_figures(engine, res, q, answers, Path(tmp) / name).items()})
        unrated = np.asarray([item_of(s.interaction_id) for s in on.unrated])
        figs["spearman_unrated"] = float(spearmanr([s.reward for s in on.unrated], q[unrated])[0])
        figs["quality_corr"] = float((on.content or {}).get("quality_corr", float("nan")))
        engine.dispose()
    # reward models on the held-out interactions: cleaned rewards (unflagged ratings only) vs raw ratings
    clean = [s for s in on.interactions if s.n_ratings > 0]
    test = np.flatnonzero(held)
    raw = rewards(sim.kind[keep].astype(np.int64), sim.value[keep], sim.scale_min[keep], sim.scale_max[keep])
    raw_mean = np.bincount(sim.item[keep], raw, items) / np.maximum(np.bincount(sim.item[keep], minlength=items), 1)
    figs["rm_clean"] = reward_model(z, np.asarray([item_of(s.interaction_id) for s in clean]),
                                    np.asarray([s.reward for s in clean]), test, q)
    figs["rm_raw"] = reward_model(z, rated_items, raw_mean[rated_items], test, q)
    figs["rm_off"] = reward_model(z, np.asarray([item_of(s.interaction_id) for s in off.interactions]),
                                  np.asarray([s.reward for s in off.interactions]), test, q)
    return figs


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu}, {os.cpu_count()} cores, {system}, Python {platform.python_version()}"


def med(runs: list[dict[str, float]], key: str) -> float:
    return float(np.nanmedian([r[key] for r in runs]))


ROWS = [  # (label, key, format)
    ("content prior on under `auto`", "auto_on", "{:.0f}"),
    ("content model: corr with quality (its own estimate)", "quality_corr", "{:.2f}"),
    ("raters flagged, content prior on / off", ("flagged_on", "flagged_off"), "{:.0f} / {:.0f}"),
    ("of which honest, on / off", ("honest_flagged_on", "honest_flagged_off"), "{:.0f} / {:.0f}"),
    ("troll precision, on / off", ("precision_on", "precision_off"), "{:.2f} / {:.2f}"),
    ("troll recall, on / off", ("recall_on", "recall_off"), "{:.2f} / {:.2f}"),
    ("troll recall (>= 8 ratings), on / off", ("recall_judged_on", "recall_judged_off"), "{:.2f} / {:.2f}"),
    ("share of trolls with >= 8 ratings", "trolls_judged_on", "{:.2f}"),
    ("Spearman reward vs truth, rated, on / off", ("spearman_on", "spearman_off"), "{:.3f} / {:.3f}"),
    ("Spearman reward vs truth, unrated (prior only)", "spearman_unrated", "{:.3f}"),
    ("SFT rows, on / off", ("sft_rows_on", "sft_rows_off"), "{:.0f} / {:.0f}"),
    ("SFT share truly good, on / off", ("sft_good_on", "sft_good_off"), "{:.3f} / {:.3f}"),
    ("KTO rows, on / off", ("kto_rows_on", "kto_rows_off"), "{:.0f} / {:.0f}"),
    ("KTO label accuracy, on / off", ("kto_acc_on", "kto_acc_off"), "{:.3f} / {:.3f}"),
    ("reward model Spearman (held out): cleaned / raw ratings / flat rewards", ("rm_clean", "rm_raw", "rm_off"),
     "{:.3f} / {:.3f} / {:.3f}"),
    ("signals seconds, on (embedding cached) / off", ("seconds_on", "seconds_off"), "{:.1f} / {:.1f}"),
]


NOTES = [
    "How to read it:",
    "- Troll precision and recall count every flagged rater; the honest ones flagged with the prior on are "
    "mostly raters who gave one value to every answer (a harsh thumbs-only asker's 5-30 thumbs down) or star raters "
    "who use only 3-5 stars and so barely move with quality: their ratings say little about quality either way.",
    "- Recall is bounded by activity: a rater judged only by their answers' content needs ~8+ ratings before "
    "their slope can be told from an honest rater's, and with log-normal activity many trolls give fewer.",
    "- 'SFT share truly good' and 'KTO label accuracy' judge each built row by the simulator's hidden quality "
    "(good: quality > 0). The reward model is sklearn's BayesianRidge on the answers' embeddings (top 128 "
    "principal components), fitted on the build's rated interactions and ranked against the truth on the "
    "held-out ones; 'raw ratings' are the normalised ratings themselves.",
    "- The content prior's scale rests on one assumption where every answer is rated once, the inter-rater "
    "correlation `content.rating_reliability` = 0.5 (the simulator's is 0.41-0.47); a higher assumed value "
    "makes the prior weaker (towards the flat prior): one above the store's real value errs that way, one "
    "below it makes the prior surer than it should be.",
    "- Cost: the signals fit itself takes seconds; embedding every stored interaction dominates (see above), "
    "which is why `auto` stays off above `content.auto_max_interactions` (50,000) unless asked for.",
]


def render(results: dict[str, list[dict[str, float]]], args: argparse.Namespace, embed_s: list[float]) -> str:
    names = list(results)
    lines = ["## Content prior: single-rated data, cross-fitted content model, user-level troll flags", "",
             f"{date.today().isoformat()} · {machine()} · `.venv/bin/python bench/content.py --seeds {args.seeds} "
             f"--items {args.items}` · medians of {args.seeds} seed(s) · 1-min load average at start "
             f"{args.load:.1f} (other jobs shared the machine).", "",
             f"Each scenario: {args.items:,} simulated interactions with text (simulate/texts.py), "
             f"{args.items // 15} raters (log-normal activity), {HELD_OUT:.0%} of interactions imported unrated "
             "(held out); the rest rated as the scenario says. Trolls: 'inverters' only, or inverters, random "
             "raters, constant floods and topic-targeted inverters in equal shares. 'on' forces the content prior "
             "(`content.mode=on`); 'off' is the flat prior. Embedding all interactions with all-MiniLM-L6-v2 took "
             f"{np.median(embed_s):.0f} s per seed on this machine (done once and shared by the scenarios).", "",
             "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, key, fmt in ROWS:
        keys = key if isinstance(key, tuple) else (key,)
        cells = [fmt.format(*(med(results[n], k) for k in keys)) for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", *NOTES]) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--items", type=int, default=3000)
    ap.add_argument("--out", default=str(Path(__file__).with_name("results-content.md")))
    args = ap.parse_args()
    args.load = os.getloadavg()[0]
    results: dict[str, list[dict[str, float]]] = {name: [] for name in SCENARIOS}
    embed_s = []
    for seed in range(args.seeds):
        texts = sim_texts(simulate(SimConfig(n_items=args.items, single_rated=True, seed=seed)).truth, seed)
        t0 = time.perf_counter()
        x = embed_pairs(encoder(), texts.prompts, texts.answers)
        embed_s.append(time.perf_counter() - t0)
        z = project(x, 128)
        for name, kw in SCENARIOS.items():
            results[name].append(run_scenario(kw, args.items, seed, texts, x, z))
            print(name, seed, {k: round(v, 3) for k, v in results[name][-1].items()}, file=sys.stderr)
    text = render(results, args, embed_s)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
