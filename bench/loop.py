"""Benchmark a default round of the loop against an oracle and a naive pipeline, on simulated single ratings.

    nice -n 10 .venv/bin/python bench/loop.py                          # 3 seeds, every arm (hours on 2 cores)
    nice -n 10 .venv/bin/python bench/loop.py --seeds 1 --arms default,oracle --naive-max-steps 12
    nice -n 10 .venv/bin/python bench/loop.py --seeds 1 --arms today,default --lr 5e-4,1e-3 --json bench/loop.json

The world (ratingloop.simulate.single): real questions (the first turn of each OASST tree in
/work/shared/data/oasst_en_100_tree.jsonl), each human reply cut at sentence ends into --variants answers
of 6-120 words; every answer is asked by one of 40 askers (busier askers ask more), who rates it once with
thumbs or 1-5 stars by their own offset and noise; --trolls of the askers invert, --unrated of the answers
are never rated. What the askers want is the `concise` grader (simulate.graders): +1 up to ~25 words,
falling to -1 at 100. --held-out questions (fixed across seeds) are never imported; every arm's model
answers them greedily (--max-tokens) and the grader scores the answers. Uplift = the arm's mean score
minus the base model's, on the same prompts.

Arms, each from the same simulated store of a seed:
    default  the loop's round: signals -> build (the loop's LOOP_BUILD_DEFAULTS: at least 24 held-out prompts)
             -> train with the loop's settings for the data size (ratingloop.train.config.loop_train_config).
             Its wall time is the round time.
    today    the same stages with the method's METHOD_DEFAULTS as they were before this issue
             (kto lr 5e-5, one epoch of batches of 8): what `train --method kto` did
    oracle   the same method and settings on every rated answer, labelled by the hidden truth
             (desirable iff the grader's score > 0)
    naive    every rated answer labelled as a naive pipeline reads it (thumbs up or >= 4 stars: desirable),
             TRL's KTOTrainer with KTOConfig's defaults (full fine-tuning, lr 1e-6, 3 epochs, batches of 8;
             --naive-max-steps caps it for smoke runs)
Several seeds (askers, cuts, training seed); medians and spreads per arm; Markdown on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
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
for _quiet in ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE"):
    os.environ.setdefault(_quiet, "1")  # as the CLI: no per-file library bars between the rows

import numpy as np  # noqa: E402

from ratingloop.simulate.graders import grader_for  # noqa: E402
from ratingloop.simulate.single import AskerConfig, SingleRatedWorld, cut_variants, single_rated  # noqa: E402

OASST = Path("/work/shared/data/oasst_en_100_tree.jsonl")
MAX_PROMPT_WORDS = 60
METHOD = "kto"
TODAY = {"learning_rate": 5e-5, "batch_size": 8, "epochs": 1.0}  # METHOD_DEFAULTS["kto"] before issue 9


# --- the world --------------------------------------------------------------------------------------------
def oasst_questions() -> list[tuple[str, list[str]]]:
    """(question, its undeleted first-level human replies) for each tree with a short question."""
    out = []
    for line in OASST.read_text().splitlines():
        prompt = json.loads(line)["prompt"]
        replies = [r["text"].strip() for r in prompt["replies"] if r["role"] == "assistant" and not r["deleted"]]
        if replies and len(prompt["text"].split()) <= MAX_PROMPT_WORDS:
            out.append((prompt["text"].strip(), replies))
    return out


def split_questions(questions: list[Any], held_out: int) -> tuple[list[Any], list[Any]]:
    order = list(range(len(questions)))
    random.Random(1234).shuffle(order)  # fixed across seeds: the base is scored once
    return [questions[i] for i in order[held_out:]], [questions[i] for i in order[:held_out]]


def make_world(train_q: list[tuple[str, list[str]]], args: argparse.Namespace, seed: int) -> SingleRatedWorld:
    rng = np.random.default_rng(seed)
    prompts, answers = [], []
    for question, replies in train_q:
        for reply in replies:
            for text in cut_variants(reply, rng, n=args.variants, max_words=120):
                prompts.append([{"role": "user", "content": question}])
                answers.append(text)
    cfg = AskerConfig(invert_frac=args.trolls, unrated_frac=args.unrated, seed=seed,
                      grader=getattr(args, "grader", "concise"))  # bench/content_small.py varies it
    return single_rated(prompts, answers, cfg)


# --- arms -------------------------------------------------------------------------------------------------
def default_round(engine: Any, out: Path, base: Path, seed: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """signals -> build -> train, the loop's way; returns the adapter folder and what the round saw."""
    from ratingloop.dataset import BuildConfig, build_dataset
    from ratingloop.train import train
    from ratingloop.train.config import loop_train_config

    try:
        from ratingloop.signals import record_signals  # helper A: signals runs in the store
    except ImportError:
        record_signals = None
    if record_signals is not None:
        record_signals(engine)
    from ratingloop.loop import LOOP_BUILD_DEFAULTS

    build = BuildConfig(**(LOOP_BUILD_DEFAULTS | overrides.get("build", {})))  # the loop's build, as it runs it
    built = build_dataset(engine, METHOD, out / "data", build)
    cfg = loop_train_config(METHOD, built.n_train, seed=seed, **overrides.get("train", {}))
    result = train(engine, METHOD, out_dir=out / "model", data_dir=out / "data", base=base, cfg=cfg, progress=False)
    return {"model": result.out_dir, "rows": built.n_train, "steps": result.metrics["steps"],
            "lr": cfg.learning_rate, "batch": cfg.batch_size}


def today_round(engine: Any, out: Path, base: Path, seed: int) -> dict[str, Any]:
    from ratingloop.dataset import BuildConfig, build_dataset
    from ratingloop.train import TrainConfig, train

    try:
        from ratingloop.signals import record_signals
    except ImportError:
        record_signals = None
    if record_signals is not None:
        record_signals(engine)
    built = build_dataset(engine, METHOD, out / "data", BuildConfig())
    cfg = TrainConfig(**(TODAY | {"seed": seed}))
    result = train(engine, METHOD, out_dir=out / "model", data_dir=out / "data", base=base, cfg=cfg, progress=False)
    return {"model": result.out_dir, "rows": built.n_train, "steps": result.metrics["steps"],
            "lr": cfg.learning_rate, "batch": cfg.batch_size}


def labelled_rows(world: SingleRatedWorld, prompts: list[Any], answers: list[str], labels: np.ndarray
                  ) -> list[dict[str, Any]]:
    return [{"prompt": prompts[i], "completion": [{"role": "assistant", "content": answers[i]}],
             "label": bool(labels[i])} for i in np.flatnonzero(world.rated)]


def write_kto(rows: list[dict[str, Any]], out: Path) -> None:
    from datasets import Dataset

    from ratingloop.dataset import kto_class_weights

    out.mkdir(parents=True, exist_ok=True)
    Dataset.from_list(rows).save_to_disk(str(out / "train"))
    weights = kto_class_weights([r["label"] for r in rows])
    (out / "manifest.json").write_text(json.dumps({"format": "kto", "kto": weights}))


def oracle_round(engine: Any, world: SingleRatedWorld, prompts: list[Any], answers: list[str], out: Path,
                 base: Path, seed: int, overrides: dict[str, Any]) -> dict[str, Any]:
    from ratingloop.train import train
    from ratingloop.train.config import loop_train_config

    rows = labelled_rows(world, prompts, answers, world.score > 0)
    write_kto(rows, out / "data")
    cfg = loop_train_config(METHOD, len(rows), seed=seed, **overrides.get("train", {}))
    result = train(engine, METHOD, out_dir=out / "model", data_dir=out / "data", base=base, cfg=cfg, progress=False)
    return {"model": result.out_dir, "rows": len(rows), "steps": result.metrics["steps"],
            "lr": cfg.learning_rate, "batch": cfg.batch_size}


def naive_round(world: SingleRatedWorld, prompts: list[Any], answers: list[str], out: Path, base: Path,
                max_steps: int) -> dict[str, Any]:
    """TRL KTOTrainer exactly as its docs start a user off: KTOConfig defaults, no LoRA, no class weights."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import KTOConfig, KTOTrainer

    rows = labelled_rows(world, prompts, answers, world.naive_label() == 1.0)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    args = KTOConfig(output_dir=str(out / "checkpoints"), use_cpu=True, report_to="none", save_strategy="no",
                     max_steps=max_steps, disable_tqdm=True)
    trainer = KTOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    trainer.train()
    trainer.save_model(str(out / "model"))
    tok.save_pretrained(str(out / "model"))
    return {"model": out / "model", "rows": len(rows), "steps": int(trainer.state.global_step),
            "lr": args.learning_rate, "batch": args.per_device_train_batch_size}


# --- scoring ----------------------------------------------------------------------------------------------
def held_out_scores(model: Path, held: list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
    from ratingloop.models import generate

    answers = generate(str(model), held, max_tokens=max_tokens, batch_size=8, dtype="bf16", progress=False)
    grader = grader_for({"simulated": {"grader": "concise"}})
    assert grader is not None
    scores = [grader.score(p["messages"], a["response"]) for p, a in zip(held, answers, strict=True)]
    words = [len(a["response"].split()) for a in answers]
    return {"score": statistics.mean(scores), "words": statistics.mean(words),
            "empty": sum(w < 3 for w in words) / len(words), "scores": scores}


def signal_quality(engine: Any, world: SingleRatedWorld) -> dict[str, Any]:
    """How well the round's rewards rank answers (Spearman with the hidden score) against the raw ratings,
    and how many inverting askers signals flagged."""
    from scipy.stats import spearmanr

    try:
        from ratingloop.signals import load_signals

        sig: Any = load_signals(engine)
    except ImportError:
        from ratingloop.signals.report import compute_signals

        sig = compute_signals(engine)
    index = {iid: i for i, iid in enumerate(world.ids)}
    rated = [(index[s.interaction_id], s.reward) for s in sig.interactions]
    idx = np.asarray([i for i, _ in rated])
    raw = np.where(world.thumbs[idx], world.value[idx], (world.value[idx] - 3) / 2)
    flagged = {r.rater_id for r in sig.raters if r.flagged}
    inverting = {f"u{a:05d}" for a in np.flatnonzero(world.inverting)}
    asked = {f"u{a:05d}" for a in set(world.asker[world.rated].tolist())}
    inv_rated = inverting & asked
    return {"spearman_rewards": float(spearmanr([r for _, r in rated], world.score[idx]).statistic),
            "spearman_raw": float(spearmanr(raw, world.score[idx]).statistic),
            "inverters_flagged": len(flagged & inv_rated), "inverters": len(inv_rated),
            "honest_flagged": len(flagged - inverting)}


# --- the run ----------------------------------------------------------------------------------------------
def run_seed(seed: int, args: argparse.Namespace, train_q: list[Any], held: list[dict[str, Any]], base: Path,
             arms: list[str], variants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from ratingloop.store import open_engine
    from ratingloop.store.jsonl import import_lines
    from ratingloop.store.records import Limits

    world = make_world(train_q, args, seed)
    prompts = [json.loads(line)["messages"] for line in world.lines]
    answers = [json.loads(line)["response"] for line in world.lines]
    out_rows = []
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        root = Path(tmp)
        for arm in arms:
            for v, overrides in enumerate(variants if arm == "default" else [{}]):
                name = arm if len(variants) == 1 or arm != "default" else f"default[{_label(overrides)}]"
                out = root / f"{arm}-{v}"
                engine = open_engine(f"sqlite:///{root / f'{arm}-{v}.db'}")
                assert not import_lines(engine, world.lines, Limits(), user_key=b"bench").bad  # fresh store: any key
                t0 = time.perf_counter()
                if arm == "default":
                    info = default_round(engine, out, base, seed, overrides)
                elif arm == "today":
                    info = today_round(engine, out, base, seed)
                elif arm == "oracle":
                    info = oracle_round(engine, world, prompts, answers, out, base, seed, overrides)
                else:
                    info = naive_round(world, prompts, answers, out, base, args.naive_max_steps)
                round_s = time.perf_counter() - t0
                quality = signal_quality(engine, world) if arm in ("default", "today") else {}
                scored = held_out_scores(info.pop("model"), held, args.max_tokens)
                row = {"seed": seed, "arm": name, "round_s": round(round_s, 1), "n_answers": len(world.ids),
                       "n_rated": int(world.rated.sum()), "trolls": args.trolls,
                       "rated_share": round(1 - args.unrated, 6)} | info | quality | scored
                out_rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "scores"}), file=sys.stderr, flush=True)
    return out_rows


def _label(overrides: dict[str, Any]) -> str:
    parts = [f"{k}={v}" for section in overrides.values() for k, v in section.items()]
    return ",".join(parts) or "defaults"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--arms", default="default,today,oracle,naive")
    ap.add_argument("--held-out", type=int, default=24, help="questions never imported, answered by every arm")
    ap.add_argument("--variants", type=int, default=2, help="answers cut from each human reply")
    ap.add_argument("--trolls", type=float, default=0.2)
    ap.add_argument("--unrated", type=float, default=0.2)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--naive-max-steps", type=int, default=-1, help="-1: TRL's 3 epochs")
    ap.add_argument("--grid", default="", help='default-arm variants, JSON list of {"train": {...}, "build": {...}}')
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--base-cache", type=Path, default=None, help="the base's scores: read if there, else written")
    args = ap.parse_args()

    from ratingloop.models.pull import pull_default_model

    base = Path(pull_default_model(Path.home() / ".ratingloop").path)
    train_q, held_q = split_questions(oasst_questions(), args.held_out)
    held = [{"id": f"held-{i}", "messages": [{"role": "user", "content": q}]} for i, (q, _) in enumerate(held_q)]
    arms = args.arms.split(",")
    variants = json.loads(args.grid) if args.grid else [{}]
    t0 = time.perf_counter()
    key = f"{args.held_out}-{args.max_tokens}"
    cached = json.loads(args.base_cache.read_text()) if args.base_cache and args.base_cache.is_file() else {}
    base_scored = cached.get(key) or held_out_scores(base, held, args.max_tokens)
    if args.base_cache:
        args.base_cache.write_text(json.dumps(cached | {key: base_scored}))
    print(json.dumps({"arm": "base"} | {k: v for k, v in base_scored.items() if k != "scores"}), file=sys.stderr)
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        rows += run_seed(seed, args, train_q, held, base, arms, variants)
    for row in rows:
        row["uplift"] = row["score"] - base_scored["score"]
    if args.json:
        args.json.write_text(json.dumps({"base": base_scored, "rows": rows}, indent=1))
    print(report(rows, base_scored, args, time.perf_counter() - t0))


def report(rows: list[dict[str, Any]], base: dict[str, Any], args: argparse.Namespace, wall: float) -> str:
    arms = list(dict.fromkeys(r["arm"] for r in rows))

    def med(arm: str, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["arm"] == arm)

    lines = [f"base: held-out score {base['score']:.3f}, {base['words']:.1f} words; {args.held_out} held-out "
             f"questions, greedy, {args.max_tokens} tokens; {args.seeds} seed(s); wall {wall / 60:.1f} min", "",
             "| arm | uplift (median) | uplift per seed | words | empty | rows | steps | lr | round s | "
             "vs oracle | vs naive |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    oracle = med("oracle", "uplift") if "oracle" in arms else None
    naive = med("naive", "uplift") if "naive" in arms else None
    for arm in arms:
        ups = [r["uplift"] for r in rows if r["arm"] == arm]
        vs_o = f"{med(arm, 'uplift') / oracle:.2f}" if oracle else "–"
        vs_n = f"{med(arm, 'uplift') / naive:.1f}" if naive and abs(naive) > 1e-9 else "–"
        lines.append(f"| {arm} | {med(arm, 'uplift'):+.3f} | {', '.join(f'{u:+.3f}' for u in ups)} | "
                     f"{med(arm, 'words'):.1f} | {med(arm, 'empty'):.2f} | {med(arm, 'rows'):.0f} | "
                     f"{med(arm, 'steps'):.0f} | {med(arm, 'lr'):g} | {med(arm, 'round_s'):.0f} | {vs_o} | {vs_n} |")
    quality = [r for r in rows if "spearman_rewards" in r]
    if quality:
        lines += ["", "| arm | Spearman(rewards, truth) | Spearman(raw ratings, truth) | inverters flagged | "
                  "honest flagged |", "|---|---:|---:|---:|---:|"]
        for r in quality:
            lines.append(f"| {r['arm']} seed {r['seed']} | {r['spearman_rewards']:.3f} | {r['spearman_raw']:.3f} | "
                         f"{r['inverters_flagged']}/{r['inverters']} | {r['honest_flagged']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
