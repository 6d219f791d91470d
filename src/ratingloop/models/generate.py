"""Batched answers for chat prompts: `generate` and the JSONL helper behind `ratingloop generate`.

Prompts are ``{"id", "messages"}`` (and an optional ``"user"``: the end user it is for, who may be served
by their cohort's version); answers are ``{"id", "response"}`` in the prompts' order. The
chat template is applied with ``add_generation_prompt``, batches are LEFT-padded (so every row's
new tokens start at the same column) and sorted by length to waste little padding; temperature 0
is greedy and deterministic, above 0 samples (seeded).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, NotRequired, Sequence, TypedDict

import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ratingloop.errors import FieldError, InvalidInput, RatingloopError

ROLES = ("system", "user", "assistant")
DEFAULT_MAX_TOKENS = 256
DEFAULT_BATCH_SIZE = 32  # 2 AVX2 cores, fp32: 1.6-2.5x the tokens/s of 8 (bench/gate.py); 64 is no faster


class Prompt(TypedDict):
    id: str | int
    messages: list[dict[str, str]]
    user: NotRequired[str]


class Answer(TypedDict):
    id: str | int
    response: str
    version: NotRequired[str]  # which version answered, when prompts were routed by user


def generate(model_ref: Any, prompts: Sequence[Prompt], *, max_tokens: int = DEFAULT_MAX_TOKENS,
             temperature: float = 0.0, top_p: float = 1.0, batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0,
             dtype: Any = "auto", progress: bool = True, console: Console | None = None) -> list[Answer]:
    """Answer every prompt; returns ``[{"id", "response"}]`` in the order of `prompts`.

    `model_ref` is anything `resolve_model` takes (None/"default", a folder, an adapter folder, a
    cached hub id), or an already loaded ``(model, tokenizer)`` pair.
    """
    import torch

    from ratingloop.models.load import load_for_generation

    if max_tokens < 1:
        raise RatingloopError(f"max_tokens {max_tokens}: must be at least 1")
    if temperature < 0:
        raise RatingloopError(f"temperature {temperature}: must be 0 (greedy) or more")
    if batch_size < 1:
        raise RatingloopError(f"batch_size {batch_size}: must be at least 1")
    if not prompts:
        return []
    console = console or Console(stderr=True)
    if isinstance(model_ref, tuple):
        model, tokenizer = model_ref
    else:
        model, tokenizer = load_for_generation(model_ref, dtype=dtype, console=console)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    texts = [tokenizer.apply_chat_template(p["messages"], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])  # longest first: OOM shows early
    responses: list[str] = [""] * len(texts)
    gen_kwargs = generation_kwargs(model, tokenizer, max_tokens, temperature, top_p)
    if temperature > 0:
        torch.manual_seed(seed)
    device = next(model.parameters()).device

    with _progress(console, progress) as bar:
        task = bar.add_task("generating", total=len(texts))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(device) for k, v in enc.items()}
            with torch.inference_mode():
                out = model.generate(**enc, **gen_kwargs)
            new_tokens = out[:, enc["input_ids"].shape[1]:]
            for row, i in enumerate(idx):
                responses[i] = tokenizer.decode(new_tokens[row], skip_special_tokens=True).strip()
            bar.advance(task, len(idx))
    return [{"id": p["id"], "response": r} for p, r in zip(prompts, responses, strict=True)]


def generation_kwargs(model: Any, tokenizer: Any, max_tokens: int, temperature: float,
                       top_p: float) -> dict[str, Any]:
    """A fresh GenerationConfig, so a model's own sampling defaults never leak into greedy decoding."""
    from transformers import GenerationConfig

    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        eos_ids.add(tokenizer.eos_token_id)
    config = GenerationConfig(max_new_tokens=max_tokens, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=sorted(eos_ids) or None, do_sample=temperature > 0)
    if temperature > 0:
        config.temperature = temperature
        config.top_p = top_p
        config.top_k = 0
    return {"generation_config": config}


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def advance(self, *args: Any, **kwargs: Any) -> None:
        return None


def _progress(console: Console, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False)


def read_prompts(path: Path) -> list[Prompt]:
    """Read and validate a prompts JSONL; every problem is reported with its line number and field."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise RatingloopError(f"--prompts {path}: cannot read: {e.strerror or e}") from e
    errors: list[FieldError] = []
    prompts: list[Prompt] = []
    seen: dict[str | int, int] = {}
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            errors.append(FieldError(where, f"not valid JSON ({e})"))
            continue
        problems = _check_prompt(row)
        if problems:
            errors.extend(FieldError(f"{where}.{field}" if field else where, reason) for field, reason in problems)
            continue
        if row["id"] in seen:
            errors.append(FieldError(f"{where}.id", f"{row['id']!r} repeats line {seen[row['id']]}"))
            continue
        seen[row["id"]] = number
        prompt: Prompt = {"id": row["id"], "messages": [{"role": m["role"], "content": m["content"]}
                                                        for m in row["messages"]]}
        if row.get("user") is not None:
            prompt["user"] = row["user"]
        prompts.append(prompt)
        if len(errors) >= 20:
            break
    if errors:
        raise InvalidInput(errors[:20])
    if not prompts:
        raise RatingloopError(f"--prompts {path}: no prompts; each line is {{\"id\": ..., \"messages\": [...]}}")
    return prompts


def _check_prompt(row: Any) -> list[tuple[str, str]]:
    if not isinstance(row, dict):
        return [("", 'must be a JSON object {"id": ..., "messages": [...]}')]
    problems: list[tuple[str, str]] = []
    if "id" not in row:
        problems.append(("id", "missing"))
    elif isinstance(row["id"], bool) or not isinstance(row["id"], (str, int)) or row["id"] == "":
        problems.append(("id", f"must be a non-empty string or an integer, got {row['id']!r}"))
    user = row.get("user")
    if user is not None and (not isinstance(user, str) or not user.strip() or len(user) > 200):
        problems.append(("user", f"must be a non-empty string of at most 200 characters (the end user's id), "
                                 f"got {user!r}"))
    messages = row.get("messages")
    if messages is None:
        problems.append(("messages", 'missing; a list of {"role", "content"}'))
    elif not isinstance(messages, list) or not messages:
        problems.append(("messages", 'must be a non-empty list of {"role", "content"}'))
    else:
        for j, m in enumerate(messages):
            if not isinstance(m, dict):
                problems.append((f"messages[{j}]", 'must be an object {"role", "content"}'))
                continue
            if m.get("role") not in ROLES:
                problems.append((f"messages[{j}].role", f"must be one of {', '.join(ROLES)}, got {m.get('role')!r}"))
            if not isinstance(m.get("content"), str):
                problems.append((f"messages[{j}].content", "must be a string"))
        if not problems and messages[-1]["role"] == "assistant":
            problems.append((f"messages[{len(messages) - 1}].role", "the last message must not be the assistant's"))
    return problems


def write_answers(path: Path, answers: Sequence[Answer]) -> None:
    """Write answers as JSONL atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        for a in answers:
            row = {"id": a["id"], "response": a["response"]} | ({"version": a["version"]} if "version" in a else {})
            f.write(orjson.dumps(row) + b"\n")
    os.replace(tmp, path)


Route = Callable[[str | None], tuple[str, str]]  # a prompt's user -> (model to load, the version's name)


def cli_generate(model: str | None, prompts_path: Path, out_path: Path, max_tokens: int = DEFAULT_MAX_TOKENS,
                 temperature: float = 0.0, batch_size: int = DEFAULT_BATCH_SIZE,
                 console: Console | None = None, route: Route | None = None) -> int:
    """`ratingloop generate`: read and validate prompts, answer them, write the answers; returns the count.
    With `route`, each prompt is answered by the model `route(its user)` names (one batched pass per model),
    and each answer says which version answered; `model` is then unused."""
    if not math.isfinite(temperature):
        raise RatingloopError(f"--temperature {temperature}: must be a finite number >= 0")
    prompts = read_prompts(prompts_path)  # validate before loading any model
    kw: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature, "batch_size": batch_size,
                          "console": console}
    if route is None:
        answers = generate(model, prompts, **kw)
    else:
        groups: dict[tuple[str, str], list[int]] = {}
        for k, p in enumerate(prompts):
            groups.setdefault(route(p.get("user")), []).append(k)
        by_index: dict[int, Answer] = {}
        for (ref, version), indices in groups.items():
            for k, answer in zip(indices, generate(ref, [prompts[k] for k in indices], **kw), strict=True):
                by_index[k] = {"id": answer["id"], "response": answer["response"], "version": version}
        answers = [by_index[k] for k in range(len(prompts))]
    write_answers(out_path, answers)
    return len(answers)
