"""Benchmark training: tokens/s, peak memory, final loss and MFU of each method, ratingloop vs plain TRL defaults.

    .venv/bin/python bench/train.py                      # every method whose recipe exists; ~20 min on 2 idle cores
    .venv/bin/python bench/train.py --quick              # smoke run: sft only, 1 repeat, 2 measured steps
    .venv/bin/python bench/train.py --methods sft,kto --repeats 3 --steps 6
    .venv/bin/python bench/train.py --explore            # sft under each speed setting, one at a time

Data: the ranked assistant replies of /work/shared/data/oasst_en_100_tree.jsonl (real OASST conversations),
kept when prompt + reply fit --max-tokens under the default model's chat template; rank 0 is the good
answer (sft, kto desirable, dpo chosen), the last rank the bad one, and 1 - 2*rank/(n-1) the score/weight.
Eight rows (whole prompts, held out) are the fixed eval batch.

Each run is a fresh process (so its peak RSS is its own) that trains the default model for --warmup +
--steps optimizer steps with either arm, then evaluates the eval batch:

    ours   the method's recipe as `ratingloop train` runs it (recipe.load_model, recipe.make_trainer, TrainConfig
           defaults for the method), save_steps=0
    trl    the method's plain TRL trainer and config with TRL's defaults (bf16 autocast, activation checkpointing,
           random batches padded to the longest), except output_dir, max_steps, report_to, use_cpu (which TRL's
           bf16 default requires on a CPU) and - so that the two final losses can be compared - learning_rate,
           seed and (kto) the desirable/undesirable weights set to ours; the same LoRA shape (rank, alpha,
           target modules; PEFT's other defaults). wsft has no TRL trainer: its trl arm is SFTTrainer on the
           same rows. dro and reward have none: ours only.

tokens/s = non-pad tokens in the measured steps' batches (attention_mask sums) / their wall time. MFU =
model FLOPs/s / the measured bf16 matmul peak (2048^2, same threads, max of before and after). Model FLOPs
with LoRA, per sequence of s tokens: forward F(s) = 2*N*s + 2*L*d*s^2 (N = matmul weights incl. the LM
head, L layers, d = attention width; causal attention), forward+backward 2*(2*N*s) + 3*(2*L*d*s^2) (the frozen
weights need input gradients only; attention's backward is twice its forward), plus 6*N_lora*s; the method's
extra no-grad forwards are added (dpo, wsft, dro: one reference pass; kto: reference on batch and KL batch and
the policy's KL pass). Recomputation by activation checkpointing is not counted (it is not model work).
Arms alternate within each repeat; the tables give medians over repeats. Output: Markdown on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# before torch loads: OpenMP threads that wait passively at each op's barrier. Spinning (the default) on a
# shared 2-core machine made a step 4-10x slower (bench/results-train.md); both arms get the same setting.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

OASST = Path("/work/shared/data/oasst_en_100_tree.jsonl")
METHODS = ("sft", "kto", "dpo", "wsft", "dro", "reward")
EVAL_ROWS = 8
# (forward+backward passes, extra no-grad forward passes) per batch, for the model FLOPs
PASSES = {"sft": (1, 0), "wsft": (1, 1), "kto": (1, 3), "dpo": (1, 1), "dro": (1, 1), "reward": (1, 0)}
# --explore: sft under one changed setting each (TrainConfig overrides, or a loader/trainer switch)
VARIANTS = {
    "ours": {},
    "ours, fp32": {"bf16": False},
    "ours, bf16 autocast on fp32 weights": {"_weights": "fp32"},
    "ours, random batches (no grouping)": {"group_by_length": False},
    "ours, lora_dropout=0.05": {"lora_dropout": 0.05},
    "ours, activation checkpointing": {"activation_checkpointing": True},
    "ours, TRL padding_free (no grouping)": {"_padding_free": True, "group_by_length": False},
    # kto: each row's KL answer from its dataset neighbour, as TRL prepares it, not from its own batch (KLFromBatch)
    "ours with KL answers by dataset order": {"_kl_by_dataset_order": True},
    # every method: TRL's CPU tile folds for the LM head instead of train.lm_head's lean ones
    "ours with TRL's tile folds": {"_trl_folds": True},
    "trl": None,
}


# --- data ----------------------------------------------------------------------------------------------------
def oasst_replies(tokenizer: Any, max_tokens: int) -> list[dict[str, Any]]:
    """Every ranked, undeleted assistant reply with its conversation so far, if it fits `max_tokens`."""
    out: list[dict[str, Any]] = []

    def walk(msg: dict[str, Any], path: list[dict[str, str]]) -> None:
        here = path + [{"role": "user" if msg["role"] == "prompter" else "assistant", "content": msg["text"]}]
        ranked = [r for r in msg.get("replies", []) if r.get("rank") is not None and not r.get("deleted")]
        for r in ranked if msg["role"] == "prompter" else []:
            completion = [{"role": "assistant", "content": r["text"]}]
            n = len(tokenizer.apply_chat_template(here + completion, tokenize=True, return_dict=True)["input_ids"])
            if n <= max_tokens:
                out.append({"key": msg["message_id"], "prompt": here, "completion": completion,
                            "rank": r["rank"], "n": len(ranked)})
        for r in msg.get("replies", []):
            walk(r, here)

    for line in OASST.read_text().splitlines():
        walk(json.loads(line)["prompt"], [])
    return out


def method_rows(method: str, replies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The replies in `method`'s build format (each row keeps its prompt's key for the split)."""
    def score(r: dict[str, Any]) -> float:
        return round(1 - 2 * r["rank"] / (r["n"] - 1), 4)

    base = [r for r in replies if r["n"] >= 2]
    if method == "sft":
        return [{"key": r["key"], "prompt": r["prompt"], "completion": r["completion"]} for r in base if r["rank"] == 0]
    if method == "kto":
        return [{"key": r["key"], "prompt": r["prompt"], "completion": r["completion"], "label": r["rank"] == 0}
                for r in base if r["rank"] in (0, r["n"] - 1)]
    if method == "dpo":
        best = {r["key"]: r for r in base if r["rank"] == 0}
        worst = {r["key"]: r for r in base if r["rank"] == r["n"] - 1}
        return [{"key": k, "prompt": best[k]["prompt"], "chosen": best[k]["completion"],
                 "rejected": worst[k]["completion"]} for k in best if k in worst]
    column = "weight" if method == "wsft" else "score"
    return [{"key": r["key"], "prompt": r["prompt"], "completion": r["completion"], column: score(r)} for r in base]


def split(rows: list[dict[str, Any]]) -> tuple[Any, Any]:
    """Train and the fixed eval batch: EVAL_ROWS rows of whole prompts drawn with a fixed seed."""
    from datasets import Dataset

    keys = sorted({r["key"] for r in rows})
    random.Random(0).shuffle(keys)
    held: set[str] = set()
    for k in keys:
        if sum(r["key"] in held for r in rows) >= EVAL_ROWS:
            break
        held.add(k)
    eval_rows = [r for r in rows if r["key"] in held][:EVAL_ROWS]
    train_rows = [r for r in rows if r["key"] not in held]

    def dataset(xs: list[dict[str, Any]]) -> Any:
        return Dataset.from_list([{k: v for k, v in x.items() if k != "key"} for x in xs])

    return dataset(train_rows), dataset(eval_rows)


# --- one run (a child process) ------------------------------------------------------------------------------
def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Train `spec["method"]` with one arm for warmup + steps steps; figures for the measured steps."""
    import torch
    from transformers import TrainerCallback

    torch.set_num_threads(spec["threads"])
    out_dir = Path(tempfile.mkdtemp(prefix="bench-train-"))
    trainer = (trl_trainer if spec["arm"] == "trl" else ours_trainer)(spec, out_dir)
    marks: list[tuple[float, float, dict[str, float]]] = []
    seen = {"tokens": 0.0, "padded": 0.0, "sq": 0.0, "kl_tokens": 0.0, "kl_padded": 0.0}

    class Clock(TrainerCallback):
        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            marks.append((time.perf_counter(), time.process_time(), dict(seen)))

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            marks.append((time.perf_counter(), time.process_time(), dict(seen)))

    inner = trainer.training_step

    def counted(model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        for key, value in count_tokens(inputs).items():
            seen[key] += value
        return inner(model, inputs, *args, **kwargs)

    trainer.training_step = counted
    trainer.add_callback(Clock())
    before = float(trainer.evaluate()["eval_loss"])  # the base (LoRA B is zero): shows the eval's own precision
    trainer.train()
    evaluated = trainer.evaluate()
    rss = peak_rss_mib()
    (w0, c0, s0), (w1, c1, s1) = marks[spec["warmup"]], marks[-1]
    return {"wall_s": w1 - w0, "cpu_s": c1 - c0, "tokens": s1["tokens"] - s0["tokens"],
            "padded": s1["padded"] - s0["padded"], "sq": s1["sq"] - s0["sq"],
            "kl_tokens": s1["kl_tokens"] - s0["kl_tokens"], "kl_padded": s1["kl_padded"] - s0["kl_padded"],
            "steps": len(marks) - 1 - spec["warmup"],
            "eval_loss": float(evaluated["eval_loss"]), "eval_loss_before": before, "peak_rss_mib": rss,
            "eval_loss_fp32": fp32_loss(spec["method"], trainer, out_dir),
            "lora_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)}


def fp32_loss(method: str, trainer: Any, out_dir: Path) -> float | None:
    """The trained adapter's eval loss by the same TRL loss with weights and compute in fp32 (sft, kto, dpo).

    bf16 rounding moves a DPO margin by ~1 nat on these answers (both bf16 settings, against fp32), i.e. the
    DPO/KTO eval loss by a few hundredths: more than a few steps move it, so losses compare in fp32."""
    if method not in ("sft", "kto", "dpo"):
        return None
    import torch
    import trl
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ratingloop.models.pull import default_model_dir

    trainer.model.save_pretrained(str(out_dir / "adapter"))
    base = AutoModelForCausalLM.from_pretrained(default_model_dir(), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(out_dir / "adapter"), is_trainable=True)
    kind = method.upper()
    same = {k: getattr(trainer.args, k) for k in ("desirable_weight", "undesirable_weight", "beta")
            if hasattr(trainer.args, k)}
    args = getattr(trl, f"{kind}Config")(output_dir=str(out_dir / "fp32"), report_to="none", bf16=False,
                                         use_cpu=True, per_device_eval_batch_size=EVAL_ROWS, **same)
    # the reference is the base, as in training (a fresh LoRA's reference is the model with it disabled). With
    # ref_model=None, TRL 1.16 copies a loaded adapter into a "ref" adapter: the reference was the trained policy
    # itself, and every kto/dpo fp32 loss came out as the untrained one (dpo: ln 2) until 2026-12-02.
    extra = {"ref_model": AutoModelForCausalLM.from_pretrained(default_model_dir(), dtype=torch.float32)
             } if kind in ("KTO", "DPO") else {}
    data = trainer.eval_dataset
    ev = getattr(trl, f"{kind}Trainer")(model=model, args=args, train_dataset=data, eval_dataset=data,
                                        processing_class=trainer.processing_class, **extra)
    return float(ev.evaluate()["eval_loss"])


def count_tokens(inputs: dict[str, Any]) -> dict[str, float]:
    """Non-pad tokens, padded positions and the sum of squared sequence lengths of one batch."""
    masks = [v for k, v in inputs.items() if k.endswith("attention_mask") and not k.startswith("KL_")]
    kl = inputs.get("KL_attention_mask")  # kto's KL batch: forwarded twice (policy, reference), not counted as tokens
    also = {"kl_tokens": float(kl.sum()), "kl_padded": float(kl.numel())} if kl is not None else {}
    if masks:
        lengths = [n for m in masks for n in m.sum(dim=1).tolist()]
        return {"tokens": sum(lengths), "padded": sum(m.numel() for m in masks),
                "sq": sum(n * n for n in lengths)} | also
    positions = inputs["position_ids"][0]  # padding-free: one flat row, sequences start at position 0
    starts = (positions == 0).nonzero().flatten().tolist() + [positions.numel()]
    lengths = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    return {"tokens": sum(lengths), "padded": positions.numel(), "sq": sum(n * n for n in lengths)}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def ours_trainer(spec: dict[str, Any], out_dir: Path) -> Any:
    from ratingloop.models.load import resolve_model
    from ratingloop.train.common import load_base
    from ratingloop.train.config import TrainConfig
    from ratingloop.train.data import TrainData
    from ratingloop.train.run import recipe

    method, overrides = spec["method"], dict(spec.get("overrides") or {})
    weights, padding_free = overrides.pop("_weights", None), overrides.pop("_padding_free", False)
    kl_by_dataset_order = overrides.pop("_kl_by_dataset_order", False)
    trl_folds = overrides.pop("_trl_folds", False)
    cfg = TrainConfig.for_method(method, max_steps=spec["warmup"] + spec["steps"], save_steps=0, logging_steps=1,
                                 **overrides)
    rec = recipe(method)
    resolved = resolve_model(None)
    loads = weights != "fp32" and hasattr(rec, "load_model")
    model, tokenizer = rec.load_model(resolved, cfg) if loads else load_base(resolved)
    train, eval_ = split(method_rows(method, oasst_replies(tokenizer, spec["max_tokens"])))
    data = TrainData(train, eval_, None, {}, out_dir)
    if padding_free:  # TRL's own switch; the recipe has none, so its trainer is built here the recipe's way
        from trl import SFTConfig, SFTTrainer

        from ratingloop.train.common import fast, lora_config, quiet, trainer_args

        args = SFTConfig(**(trainer_args(cfg, out_dir, False) | {"padding_free": True, "max_length": None}))
        return fast(quiet(SFTTrainer(model=model, args=args, train_dataset=train, eval_dataset=eval_,
                                     processing_class=tokenizer, peft_config=lora_config(cfg))), cfg)
    trainer = rec.make_trainer(model, tokenizer, data, cfg, out_dir, False)
    if kl_by_dataset_order:
        trainer.data_collator = trainer.data_collator.collator  # TRL's own, without KLFromBatch
    if trl_folds:
        import trl.kernels.chunked_logprob as kernels

        kernels._forward_tile = kernels._forward_tile.original
        kernels._backward_tile = kernels._backward_tile.original
    return trainer


def trl_trainer(spec: dict[str, Any], out_dir: Path) -> Any:
    import torch
    import trl
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ratingloop.models.pull import default_model_dir
    from ratingloop.train.config import TrainConfig

    method = spec["method"]
    ours = TrainConfig.for_method(method)
    path = default_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    train, eval_ = split(method_rows(method, oasst_replies(tokenizer, spec["max_tokens"])))
    kind = {"sft": "SFT", "wsft": "SFT", "kto": "KTO", "dpo": "DPO"}[method]
    if method == "wsft":
        train, eval_ = train.remove_columns("weight"), eval_.remove_columns("weight")
    same = {}  # KTO's class weights scale its loss: ours, so that the two losses compare
    if method == "kto":
        from ratingloop.train.data import TrainData
        from ratingloop.train.kto import kto_weights

        weights = kto_weights(TrainData(train, eval_, None, {}, out_dir))
        same = {k: weights[k] for k in ("desirable_weight", "undesirable_weight")}
    args = getattr(trl, f"{kind}Config")(output_dir=str(out_dir), max_steps=spec["warmup"] + spec["steps"],
                                         report_to="none", learning_rate=ours.learning_rate, seed=ours.seed,
                                         use_cpu=not torch.cuda.is_available(),  # TRL's bf16 default needs it
                                         **same)
    lora = LoraConfig(r=ours.lora_r, lora_alpha=ours.lora_alpha, target_modules=ours.modules(), task_type="CAUSAL_LM")
    extra = {"ref_model": None} if kind in ("KTO", "DPO") else {}
    return getattr(trl, f"{kind}Trainer")(model=model, args=args, train_dataset=train, eval_dataset=eval_,
                                          processing_class=tokenizer, peft_config=lora, **extra)


# --- the schedule, in the parent ----------------------------------------------------------------------------
def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one spec in a fresh interpreter; its last stdout line is the JSON result."""
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"run {spec} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def matmul_peak(threads: int) -> dict[str, float]:
    """GFLOP/s of a 2048^2 matmul in fp32 and bf16, best of 5 timings of 10."""
    import torch

    torch.set_num_threads(threads)
    from ratingloop.models import cpu_has_fast_bf16

    found = {}
    kinds = (("fp32", torch.float32), ("bf16", torch.bfloat16))
    # where bf16 is emulated (an AVX2-only CPU), 50 of its 2048^2 matmuls took over ten minutes, and training runs
    # in fp32 there anyway (train.common.use_bf16): its peak is fp32's
    for name, dtype in kinds if torch.cuda.is_available() or cpu_has_fast_bf16() else kinds[:1]:
        a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
        for _ in range(3):
            a @ b
        best = 0.0
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(10):
                a @ b
            best = max(best, 10 * 2 * 2048**3 / (time.perf_counter() - start) / 1e9)
        found[name] = best
    found.setdefault("bf16", found["fp32"])
    return found


def model_flops(method: str, r: dict[str, Any]) -> float:
    """The measured steps' model FLOPs (see the module docstring), from the default model's config."""
    from transformers import AutoConfig

    from ratingloop.models.pull import default_model_dir

    c = AutoConfig.from_pretrained(default_model_dir())
    head = c.head_dim * c.num_attention_heads
    kv = c.head_dim * c.num_key_value_heads
    n = c.num_hidden_layers * (2 * c.hidden_size * head + 2 * c.hidden_size * kv + 3 * c.hidden_size
                               * c.intermediate_size) + c.vocab_size * c.hidden_size
    linear, attention = 2 * n * r["tokens"], 2 * c.num_hidden_layers * head * r["sq"]
    fb, fwd = PASSES[method]
    return fb * (2 * linear + 3 * attention + 6 * r["lora_params"] * r["tokens"]) + fwd * (linear + attention)


def summary(method: str, runs: list[dict[str, Any]], peak: float) -> dict[str, Any]:
    tps = [r["tokens"] / r["wall_s"] for r in runs]
    return {"tps": statistics.median(tps), "tps_cpu": statistics.median(r["tokens"] / r["cpu_s"] for r in runs),
            "rss": statistics.median(r["peak_rss_mib"] for r in runs),
            "loss": statistics.median(r["eval_loss"] for r in runs),
            "before": statistics.median(r["eval_loss_before"] for r in runs),
            "fp32": statistics.median(r["eval_loss_fp32"] for r in runs) if runs[0]["eval_loss_fp32"] else None,
            "pad": statistics.median(1 - r["tokens"] / r["padded"] for r in runs),
            "kl_pad": statistics.median(1 - r["kl_tokens"] / r["kl_padded"] for r in runs) if runs[0].get("kl_padded")
            else None,
            "mfu": statistics.median(model_flops(method, r) / r["wall_s"] / 1e9 / peak for r in runs),
            "spread": (max(tps) - min(tps)) / statistics.median(tps) if len(tps) > 1 else 0.0}


def compare(methods: list[str], arms: list[tuple[str, Any]], base: dict[str, Any],
            repeats: int) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every (method, arm) `repeats` times, arms in alternating order: method -> arm -> runs."""
    found: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for method in methods:
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in arms}
        for rep in range(repeats):
            order = arms if rep % 2 == 0 else arms[::-1]
            for name, overrides in order:
                if name == "trl" and method not in ("sft", "wsft", "kto", "dpo"):
                    continue
                spec = base | {"method": method, "arm": "trl" if name == "trl" else "ours", "overrides": overrides}
                runs[name].append(child(spec))
                r = runs[name][-1]
                print(f"{method} {name} #{rep}: {r['tokens'] / r['wall_s']:.0f} tok/s, loss {r['eval_loss']:.4f}, "
                      f"load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
        found[method] = {k: v for k, v in runs.items() if v}
    return found


def table(method: str, rows: dict[str, dict[str, Any]]) -> list[str]:
    ref = rows.get("trl")
    out = [f"\n### {method}\n", "| arm | tokens/s | x TRL | tokens/CPU-s | x TRL | padding | peak RSS MiB "
           "| eval loss: before -> after | after, fp32 eval | MFU (bf16 peak) | tokens/s spread |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in rows.items():
        fp32 = f"{s['fp32']:.5f}" if s["fp32"] is not None else "-"
        ratio = f"{s['tps'] / ref['tps']:.2f}" if ref else "-"
        ratio_cpu = f"{s['tps_cpu'] / ref['tps_cpu']:.2f}" if ref else "-"
        pad = f"{s['pad']:.0%}" + (f" (KL batch {s['kl_pad']:.0%})" if s["kl_pad"] is not None else "")
        out.append(f"| {name} | {s['tps']:.0f} | {ratio} | {s['tps_cpu']:.0f} | {ratio_cpu} | {pad} | "
                   f"{s['rss']:.0f} | {s['before']:.4f} -> {s['loss']:.4f} | {fp32} | {s['mfu']:.1%} | "
                   f"{s['spread']:.0%} |")
    if ref is None and method in ("dro", "reward"):
        out.append(f"\n{method} has no plain TRL trainer: ours only.")
    return out


# --levers: (weights, autocast, PEFT input cast, lora_dropout, activation checkpointing, batches)
LEVERS = {
    "ours: bf16 weights, autocast, no input cast, grouped": ("bf16", True, False, 0.0, False, "grouped"),
    "fp32": ("fp32", False, True, 0.0, False, "grouped"),
    "bf16 autocast on fp32 weights": ("fp32", True, False, 0.0, False, "grouped"),
    "bf16 weights, PEFT casts LoRA input to fp32": ("bf16", True, True, 0.0, False, "grouped"),
    "ours + lora_dropout 0.05": ("bf16", True, False, 0.05, False, "grouped"),
    "ours + random batches": ("bf16", True, False, 0.0, False, "random"),
    "ours + activation checkpointing": ("bf16", True, False, 0.0, True, "grouped"),
    "TRL default: autocast fp32 weights, checkpointing, random batches": ("fp32", True, True, 0.0, True, "random"),
}


def levers(max_tokens: int, threads: int, rounds: int, n_rows: int = 16) -> list[str]:
    """Forward+backward of the same sft rows under each LEVERS setting, the settings interleaved in every round
    so that each round's ratios to `ours` are paired in time (the machine's load drifts between rounds)."""
    import torch
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer
    from torch import nn
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ratingloop.models.pull import default_model_dir
    from ratingloop.train.common import lora_config
    from ratingloop.train.config import TrainConfig

    torch.set_num_threads(threads)
    path = default_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = method_rows("sft", oasst_replies(tokenizer, max_tokens))
    rows = random.Random(0).sample(rows, n_rows)
    seqs = []
    for r in rows:  # completion-only labels, as TRL's SFTTrainer trains prompt/completion rows
        ids = tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=True, return_dict=True)["input_ids"]
        n_prompt = len(tokenizer.apply_chat_template(r["prompt"], tokenize=True, return_dict=True,
                                                     add_generation_prompt=True)["input_ids"])
        seqs.append((ids, [-100] * n_prompt + ids[n_prompt:]))

    def batches(order: list[int]) -> list[dict[str, Any]]:
        out = []
        for i in range(0, len(order), 8):
            chunk = [seqs[j] for j in order[i:i + 8]]
            width = max(len(ids) for ids, _ in chunk)
            padded = [(ids, lab, width - len(ids)) for ids, lab in chunk]
            out.append({"input_ids": torch.tensor([ids + [tokenizer.pad_token_id] * p for ids, _, p in padded]),
                        "attention_mask": torch.tensor([[1] * len(ids) + [0] * p for ids, _, p in padded]),
                        "labels": torch.tensor([lab + [-100] * p for _, lab, p in padded])})
        return out

    by_kind = {"random": batches(list(range(n_rows))),
               "grouped": batches(sorted(range(n_rows), key=lambda j: len(seqs[j][0])))}
    cfg = TrainConfig()
    models = {}
    for dtype in ("fp32", "bf16"):
        base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        models[dtype] = get_peft_model(base.to(torch.bfloat16) if dtype == "bf16" else base, lora_config(cfg)).train()

    def one(setting: tuple[Any, ...]) -> tuple[float, float]:
        weights, autocast, cast, dropout, checkpointing, kind = setting
        model = models[weights]
        for m in model.modules():
            if isinstance(m, LoraLayer):
                m.cast_input_dtype_enabled = cast
                m.lora_dropout["default"] = nn.Dropout(dropout) if dropout else nn.Identity()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_disable()
        wall, cpu = time.perf_counter(), time.process_time()
        for batch in by_kind[kind]:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = model(**batch).loss
            loss.backward()
            model.zero_grad(set_to_none=True)
        return time.perf_counter() - wall, time.process_time() - cpu

    one(LEVERS[next(iter(LEVERS))])  # warm-up
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in LEVERS}
    for _ in range(rounds):
        for name, setting in LEVERS.items():
            times[name].append(one(setting))
            print(f"levers {name}: {times[name][-1][0]:.1f} s, load {os.getloadavg()[0]:.1f}", file=sys.stderr,
                  flush=True)
    ours = times[next(iter(LEVERS))]
    tokens = sum(len(ids) for ids, _ in seqs)
    padded = {k: sum(b["input_ids"].numel() for b in v) for k, v in by_kind.items()}
    out = [f"\n### levers: sft forward+backward of the same {n_rows} rows ({tokens} tokens), {rounds} interleaved "
           "rounds\n", "| setting | wall s (median) | time / ours (median of paired rounds) | CPU s (median) "
           "| CPU time / ours | padded positions |", "|---|---:|---:|---:|---:|---:|"]
    for name, ts in times.items():
        ratio = statistics.median(t[0] / o[0] for t, o in zip(ts, ours, strict=True))
        ratio_cpu = statistics.median(t[1] / o[1] for t, o in zip(ts, ours, strict=True))
        out.append(f"| {name} | {statistics.median(t[0] for t in ts):.1f} | {ratio:.2f} | "
                   f"{statistics.median(t[1] for t in ts):.1f} | {ratio_cpu:.2f} | {padded[LEVERS[name][5]]} |")
    return out


def padding_free_check() -> str:
    """Does this model's attention keep packed sequences apart? Max |logit difference| packed vs one by one (fp32)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ratingloop.models.pull import default_model_dir

    model = AutoModelForCausalLM.from_pretrained(default_model_dir(), dtype=torch.float32).eval()
    torch.manual_seed(0)
    seqs = [torch.randint(100, 40000, (n,)) for n in (37, 90, 15)]
    with torch.no_grad():
        alone = torch.cat([model(input_ids=s[None]).logits[0] for s in seqs])
        flat, positions = torch.cat(seqs)[None], torch.cat([torch.arange(len(s)) for s in seqs])[None]
        # transformers builds the block-diagonal mask from position_ids only without a KV cache; TRL's SFTTrainer
        # passes use_cache=False, a plain forward (use_cache from the config) does not
        packed = model(input_ids=flat, position_ids=positions, use_cache=False).logits[0]
        cached = model(input_ids=flat, position_ids=positions).logits[0]
    return (f"padding-free check ({model.config._attn_implementation} attention, fp32), 3 sequences packed in one row "
            f"vs one by one, max |logit difference|: with position_ids and use_cache=False (as TRL's SFTTrainer "
            f"runs it) {(packed - alone).abs().max():.1e}; with position_ids and the default cache "
            f"{(cached - alone).abs().max():.1e} (the sequences see each other)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated; missing recipes are skipped")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="measured optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="optimizer steps before the measured ones")
    parser.add_argument("--max-tokens", type=int, default=256, help="longest prompt + reply kept, in tokens")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--arms", default="ours,trl", help="ours, trl, or both (ignored with --explore)")
    parser.add_argument("--quick", action="store_true", help="sft only, 1 repeat, 2 measured steps")
    parser.add_argument("--explore", action="store_true", help="sft under each speed setting (VARIANTS)")
    parser.add_argument("--levers", action="store_true", help="only the paired forward+backward timings (LEVERS)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(json.loads(args.child))))
        return
    if args.quick:
        args.methods, args.repeats, args.steps = "sft", 1, 2
    import importlib.util

    import torch

    start = time.perf_counter()
    base = {"steps": args.steps, "warmup": args.warmup, "max_tokens": args.max_tokens, "threads": args.threads}
    methods, skipped = [], []
    for m in args.methods.split(","):
        (methods if importlib.util.find_spec(f"ratingloop.train.{m}") else skipped).append(m)
    peak_before = matmul_peak(args.threads)
    if args.levers:
        print(f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {args.threads} threads; command: "
              f"`.venv/bin/python bench/train.py {' '.join(sys.argv[1:])}`")
        print("\n".join(levers(args.max_tokens, args.threads, args.repeats)))
        return
    arms = list(VARIANTS.items()) if args.explore else [(a, VARIANTS[a]) for a in args.arms.split(",")]
    found = compare(["sft"] if args.explore else methods, arms, base, args.repeats)
    peak_after = matmul_peak(args.threads)
    peak = {k: max(peak_before[k], peak_after[k]) for k in peak_before}
    cpu = next((x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                if x.startswith("model name")), "unknown CPU")
    print(f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {cpu}, {os.cpu_count()} CPUs; torch {torch.__version__}, "
          f"{args.threads} threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}; command: "
          f"`.venv/bin/python bench/train.py {' '.join(sys.argv[1:])}`")
    print(f"\nmatmul 2048^2 peak: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s "
          f"{'' if peak['bf16'] != peak['fp32'] else '(emulated here: fp32 taken, as training runs in fp32) '}"
          f"(before {peak_before['bf16']:.0f}, after {peak_after['bf16']:.0f}); load average now "
          f"{os.getloadavg()[0]:.1f}; {args.warmup} warm-up + {args.steps} measured steps, medians of "
          f"{args.repeats}; wall time {time.perf_counter() - start:.0f} s")
    if skipped:
        print(f"\nskipped (no recipe module yet): {', '.join(skipped)}")
    if args.explore:
        print("\n" + padding_free_check())
    for method, runs in found.items():
        print("\n".join(table(method, {k: summary(method, v, peak["bf16"]) for k, v in runs.items()})))


if __name__ == "__main__":
    main()
