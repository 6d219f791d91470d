"""Benchmark what a gate spends its time on, on the default model: greedy answers to held-out prompts, and the
fp32 likelihood passes (each answer's log-probability, the token KL between two versions).

    .venv/bin/python bench/gate.py [--prompts 32] [--max-tokens 64] [--repeats 3] [--json OUT]

Prompts are real OASST questions (../shared/data/oasst_en_100_tree.jsonl). Each repeat times, in the same
process and on the same prompts:

- generation: `ratingloop.models.generate` as the gate ran it before (bf16 weights, batches of 8), in fp32 at 8,
  and as it runs now (dtype "auto": bf16 only where the CPU has native bf16; `EvalConfig.batch_size`);
  tokens/s counts answer tokens actually produced; `--brief` asks for short answers (a system prompt);
- likelihoods: `answer_logprobs` and `token_kl` through the path that computes the LM head at every position
  (the reference, kept here as `_full_vocab_*`) and through the shipped path (only where the answer is).

Prints medians over the repeats and the ratios; the figures go to bench/results.md by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

OASST = Path(__file__).resolve().parents[2] / "shared" / "data" / "oasst_en_100_tree.jsonl"


def questions(n: int) -> list[list[dict[str, str]]]:
    found = []
    for line in OASST.read_text().splitlines():
        text = json.loads(line)["prompt"]["text"].strip()
        if len(text.split()) <= 60:
            found.append([{"role": "user", "content": text}])
    return found[:n]


def _full_vocab_logprobs(model: Any, tok: Any, prompts: Any, answers: Any) -> Any:
    """The former path: log-softmax over the vocabulary at every position, then pick the answer's."""
    import numpy as np
    import torch

    from ratingloop.evaluate.likelihood import encode

    seqs = encode(tok, prompts, answers, 1024)
    total = np.zeros(len(seqs))
    with torch.inference_mode():
        for start in range(0, len(seqs), 4):
            idx = list(range(start, min(start + 4, len(seqs))))
            width = max(len(seqs[i][0]) for i in idx)
            ids = torch.full((len(idx), width), tok.eos_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, i in enumerate(idx):
                ids[row, :len(seqs[i][0])] = torch.tensor(seqs[i][0])
                mask[row, :len(seqs[i][0])] = 1
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
            for row, i in enumerate(idx):
                s, st = seqs[i]
                total[i] = float(logp[row, st - 1:len(s) - 1].gather(-1, torch.tensor(s[st:])[:, None]).sum())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--brief", action="store_true", help="a system prompt asking for one or two sentences")
    parser.add_argument("--generation-only", action="store_true", help="skip the likelihood passes")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch

    from ratingloop.evaluate.config import EvalConfig
    from ratingloop.evaluate.likelihood import answer_logprobs, token_kl
    from ratingloop.models.generate import generate
    from ratingloop.models.load import cpu_has_fast_bf16, load_for_generation
    from ratingloop.models.pull import pull_default_model

    folder = Path(pull_default_model(Path.home() / ".ratingloop").path)
    prompts = questions(args.prompts)
    if args.brief:
        prompts = [[{"role": "system", "content": "Answer in one or two short sentences."}, *m] for m in prompts]
    rows = [{"id": i, "messages": m} for i, m in enumerate(prompts)]
    bf16 = load_for_generation(str(folder), dtype="bf16")
    fp32 = load_for_generation(str(folder), dtype="fp32")
    auto = load_for_generation(str(folder), dtype="auto")
    auto_name = str(auto[0].dtype).removeprefix("torch.")
    tok = bf16[1]
    shipped = EvalConfig().batch_size
    figures: dict[str, list[float]] = {}

    def timed(name: str, fn: Any) -> Any:
        start = time.perf_counter()
        out = fn()
        figures.setdefault(name, []).append(time.perf_counter() - start)
        return out

    arms = {"bf16, batch 8 (before)": (bf16, 8),
            **({} if cpu_has_fast_bf16() else {"fp32, batch 8": (fp32, 8)}),  # where bf16 is emulated
            f"auto ({auto_name}), batch {shipped} (now)": (auto, shipped)}
    for model, _ in arms.values():
        generate(model, rows[:2], max_tokens=8, progress=False)  # warm up
    answers: list[str] = []
    for _ in range(args.repeats):
        for name, (model, batch) in arms.items():
            out = timed(name, lambda m=model, b=batch: generate(m, rows, max_tokens=args.max_tokens, batch_size=b,
                                                                  progress=False))
            answers = [a["response"] for a in out]
            figures.setdefault(f"tokens {name}", []).append(
                sum(len(tok(a, add_special_tokens=False)["input_ids"]) + 1 for a in answers))
        if args.generation_only:
            print("repeat:", {k: round(v[-1], 2) for k, v in figures.items()}, flush=True)
            continue
        ref = timed("logprobs, every position", lambda a=answers: _full_vocab_logprobs(fp32[0], tok, prompts, a))
        new, _ = timed("logprobs, answer positions", lambda a=answers: answer_logprobs(fp32[0], tok, prompts, a))
        figures.setdefault("max |logprob difference|", []).append(float(np.abs(ref - new).max()))
        timed("token KL (two passes)", lambda a=answers: token_kl(fp32[0], fp32[0], tok, prompts, a))
        print("repeat:", {k: round(v[-1], 2) for k, v in figures.items()}, flush=True)  # a partial run still says

    med = {k: statistics.median(v) for k, v in figures.items()}
    print(f"# bench/gate.py, {platform.node()}, {os.cpu_count()} CPUs ({torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16: {cpu_has_fast_bf16()}), torch {torch.__version__}, {args.prompts} prompts, "
          f"max {args.max_tokens} tokens{', brief' if args.brief else ''}, medians of {args.repeats}")
    rate = {name: med[f"tokens {name}"] / med[name] for name in arms}
    first = next(iter(arms))
    for name in arms:
        print(f"generate, {name}: {med[name]:.1f} s, {med[f'tokens {name}']:.0f} tokens, {rate[name]:.1f} tokens/s, "
              f"{rate[name] / rate[first]:.2f}x the first")
    if not args.generation_only:
        for k in ("logprobs, every position", "logprobs, answer positions", "token KL (two passes)"):
            print(f"{k}: {med[k]:.2f} s")
        print(f"  speed-up: {med['logprobs, every position'] / med['logprobs, answer positions']:.2f}x; "
              f"max |difference| {med['max |logprob difference|']:.2e} nats")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
