"""Serving (issue 11): chat through `ratingloop serve --backend transformers` against the same model's
bare `model.generate`, in the same run, on the default model (SmolLM2-135M-Instruct, bf16, CPU).

Per repetition, on the same prompts, greedy, the same max_tokens:
  * bare: `model.generate` on one prompt at a time, in this process, while the server idles;
  * 1 client: the server, one request at a time (tokens/s, p50/p99 latency; overhead = 1 - its
    tokens/s over bare's);
  * 8 clients: the server, 8 concurrent clients (aggregate tokens/s; ratio over 1 client);
  * the logging overhead: the server's own Server-Timing header splits each answer into generating
    and logging (the interaction's write, committed before the answer is sent).

    .venv/bin/python bench/serve.py               # 3 repetitions
    .venv/bin/python bench/serve.py --reps 1 --max-tokens 32
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from ingest import ADMIN_KEY, Server, free_port  # noqa: E402

PROMPTS = [
    "What is the capital of France?", "How do I reset my password?", "Explain what a hash table is.",
    "Give me three tips for writing a cover letter.", "Why is the sky blue?", "What does HTTP 404 mean?",
    "How do I make a cup of green tea?", "Summarise the plot of Romeo and Juliet.",
    "What is the difference between a list and a tuple in Python?", "How many legs does a spider have?",
    "Suggest a name for a bakery.", "What causes the seasons on Earth?", "How do I undo a git commit?",
    "What is a healthy breakfast?", "Translate 'good morning' into Spanish.", "What is photosynthesis?",
]


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def bare(prompts: list[str], max_tokens: int) -> dict[str, float]:
    import torch

    from ratingloop.models.generate import generation_kwargs
    from ratingloop.models.load import load_for_generation

    model, tok = load_for_generation("default")
    kwargs = generation_kwargs(model, tok, max_tokens, 0.0, 1.0)
    for _ in ("warm-up (kernels for each shape)", "timed"):
        tokens, latencies = 0, []
        for p in prompts:
            text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True)
            enc = tok(text, return_tensors="pt", add_special_tokens=False)
            t = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(**enc, **kwargs)
            latencies.append(time.perf_counter() - t)
            new = out[0, enc["input_ids"].shape[1]:]
            tokens += int((~torch.isin(new, torch.tensor(kwargs["generation_config"].eos_token_id))).sum())
    return {"tokens_s": tokens / sum(latencies), "p50_s": percentile(latencies, 0.5),
            "p99_s": percentile(latencies, 0.99), "tokens": tokens}


def served(base: str, prompts: list[str], max_tokens: int, clients: int) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    latencies: list[float] = []
    log_ms: list[float] = []
    tokens = [0]
    lock = threading.Lock()
    queue = list(enumerate(prompts))

    def client() -> None:
        with httpx.Client(timeout=600) as http:
            while True:
                with lock:
                    if not queue:
                        return
                    i, p = queue.pop(0)
                t = time.perf_counter()
                r = http.post(f"{base}/v1/chat/completions", headers=headers, json={
                    "model": "active", "messages": [{"role": "user", "content": p}], "max_tokens": max_tokens,
                    "temperature": 0, "user": f"bench-{i}"})
                elapsed = time.perf_counter() - t
                r.raise_for_status()
                timing = dict(part.strip().split(";dur=") for part in r.headers["server-timing"].split(","))
                with lock:
                    latencies.append(elapsed)
                    tokens[0] += r.json()["usage"]["completion_tokens"]
                    log_ms.append(float(timing["log"]))

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {"tokens_s": tokens[0] / wall, "p50_s": percentile(latencies, 0.5), "p99_s": percentile(latencies, 0.99),
            "log_ms_p50": percentile(log_ms, 0.5), "tokens": tokens[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--prompts", type=int, default=8, help="prompts per measurement (8 clients get 2x)")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    prompts = PROMPTS[:args.prompts]
    rows: list[dict[str, Any]] = []
    from ratingloop.models.load import resolve_model

    model = resolve_model("default").path  # pulled and converted once, here; the server loads the same folder
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server = Server(f"sqlite:///{workdir / 'serve.db'}", workdir, 1, free_port(),
                        backend=("--backend", "transformers", "--model", str(model)))
        server.start()
        base = f"http://127.0.0.1:{server.port}"
        try:
            served(base, prompts, args.max_tokens, 1)  # warm up, as bare() does: one-off costs are not serving
            for rep in range(args.reps):
                row = {"bare": bare(prompts, args.max_tokens),
                       "one": served(base, prompts, args.max_tokens, 1),
                       "eight": served(base, prompts * 2, args.max_tokens, 8)}
                rows.append(row)
                print(f"rep {rep}: bare {row['bare']['tokens_s']:.1f} tok/s, 1 client {row['one']['tokens_s']:.1f}, "
                      f"8 clients {row['eight']['tokens_s']:.1f}; log p50 {row['one']['log_ms_p50']:.1f} ms",
                      flush=True)
        finally:
            server.stop()

    def med(path: tuple[str, str]) -> float:
        return statistics.median(r[path[0]][path[1]] for r in rows)

    overhead = statistics.median(1 - r["one"]["tokens_s"] / r["bare"]["tokens_s"] for r in rows)
    scaling = statistics.median(r["eight"]["tokens_s"] / r["one"]["tokens_s"] for r in rows)
    print(f"\n## Serving (bench/serve.py), {date.today()}, {platform.machine()} {os.cpu_count()} cores, "
          f"`.venv/bin/python bench/serve.py --reps {args.reps} --max-tokens {args.max_tokens}`\n")
    print("| | tokens/s | p50 latency | p99 latency |\n|---|---|---|---|")
    for name, key in (("bare model.generate, 1 at a time", "bare"), ("server, 1 client", "one"),
                      ("server, 8 concurrent clients", "eight")):
        print(f"| {name} | {med((key, 'tokens_s')):.1f} | {med((key, 'p50_s')):.2f} s | {med((key, 'p99_s')):.2f} s |")
    print(f"\nmedians of {len(rows)} repetitions; overhead at 1 client {overhead:.1%} (target <= 15%); "
          f"8 clients / 1 client {scaling:.2f}x (target >= 3x); logging (the interaction's commit) "
          f"p50 {med(('one', 'log_ms_p50')):.1f} ms per answer.")


if __name__ == "__main__":
    main()
