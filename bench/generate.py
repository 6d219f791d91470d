"""Benchmark the default model: GGUF conversion, load time, and greedy generation speed, fp32 vs bf16.

    .venv/bin/python bench/generate.py [--data-dir DIR] [--max-tokens 64] [--skip-convert]

Conversion runs into a fresh temporary data dir (unless --skip-convert), then every measurement
loads the converted folder. Tokens/s counts generated (new) tokens, summed over the batch, divided
by the wall time of `generate` (tokenisation, chat template and decoding included). Prints a
Markdown table to stdout.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

PROMPTS = [
    "What is the capital of France?",
    "Give me three tips for sleeping better.",
    "Explain what a hash table is in two sentences.",
    "Write a haiku about autumn rain.",
    "How do I reverse a list in Python?",
    "What causes the seasons on Earth?",
    "Suggest a name for a small bakery.",
    "Summarise the plot of Romeo and Juliet in one sentence.",
]


def _tokens_per_second(model: Any, tok: Any, prompts: list[str], max_tokens: int, batch_size: int) -> tuple[float, int]:
    from ratingloop.models.generate import generate

    rows = [{"id": i, "messages": [{"role": "user", "content": p}]} for i, p in enumerate(prompts)]
    start = time.perf_counter()
    answers = generate((model, tok), rows, max_tokens=max_tokens, batch_size=batch_size, progress=False)
    seconds = time.perf_counter() - start
    n = sum(len(tok(a["response"], add_special_tokens=False)["input_ids"]) + 1 for a in answers)
    return n / seconds, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="reuse this data dir's converted model")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--skip-convert", action="store_true", help="do not time a fresh conversion")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from ratingloop.models.load import load_for_generation
    from ratingloop.models.pull import pull_default_model

    rows: list[tuple[str, str]] = []
    if not args.skip_convert:
        with tempfile.TemporaryDirectory() as tmp:
            result = pull_default_model(Path(tmp))
            rows.append(("GGUF -> safetensors conversion (once)", f"{result.convert_seconds:.1f} s"))
    data_dir = args.data_dir or Path(tempfile.mkdtemp())
    path = pull_default_model(data_dir).path

    start = time.perf_counter()
    import transformers  # noqa: F401 - time the import apart from the load

    rows.append(("import transformers (first time in a process)", f"{time.perf_counter() - start:.2f} s"))
    start = time.perf_counter()
    load_for_generation(path, dtype="fp32", device="cpu")  # cold: first read of the weights, lazy imports
    rows.append(("load converted folder, cold (first in process)", f"{time.perf_counter() - start:.2f} s"))
    for dtype in ("fp32", "bf16"):
        start = time.perf_counter()
        model, tok = load_for_generation(path, dtype=dtype, device="cpu")
        rows.append((f"load converted folder, warm, {dtype}", f"{time.perf_counter() - start:.2f} s"))
        _tokens_per_second(model, tok, PROMPTS[:1], 8, 1)  # warm-up
        tps1, n1 = _tokens_per_second(model, tok, PROMPTS[1:2], args.max_tokens, 1)
        rows.append((f"greedy, 1 prompt, {dtype}", f"{tps1:.1f} tokens/s ({n1} tokens)"))
        tps8, n8 = _tokens_per_second(model, tok, PROMPTS, args.max_tokens, 8)
        rows.append((f"greedy, batch of 8, {dtype}", f"{tps8:.1f} tokens/s ({n8} tokens)"))
        del model

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; max_tokens={args.max_tokens}\n")
    print("| measurement | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
