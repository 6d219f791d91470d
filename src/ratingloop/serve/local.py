"""Stage 2, serving: the transformers backend - answers generated here, on this machine's CPU or GPU.

Models are loaded with the loader `ratingloop generate` uses (models/load.py: the default model, a
folder, a version's adapter merged into its base), at most `capacity` at once, least recently used
dropped first (a request that holds one keeps it until it finishes).

Requests are batched: a request's choices (`n`) become rows; rows that arrive within `window_s` of
each other and ask the same model with the same sampling share one `model.generate` call, left-padded,
each row with its own max_tokens and stop strings (a stopping criterion per row). While a batch
generates, new requests queue for the next one. Every row streams: each new token is decoded and the
new text handed to the request's asyncio queue from the generating thread. A cancelled row (its client
went away) stops at the next token; a batch whose rows are all cancelled stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

from sqlalchemy import Engine

from ratingloop.config import Settings
from ratingloop.errors import FieldError, InvalidInput, RatingloopError
from ratingloop.serve.chat import ChatRequest, Generation, ModelNotFound, Unavailable
from ratingloop.serve.routing import ACTIVE, BASE, Router, Target, UnknownModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sampling:
    """What rows must share to be generated together. None: the model's own generation config decides."""

    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None


@dataclass
class Row:
    """One choice being generated. Written by the generating thread, read by the request."""

    index: int
    prompt_ids: list[int]
    max_tokens: int
    stop: tuple[str, ...]
    ids: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the text already handed out
    text: str = ""
    done: bool = False
    finish_reason: str | None = None
    cancelled: bool = False


@dataclass
class Job:
    """One request: its rows and where their events go, ("delta", index, text), ("done", index, reason,
    completion_tokens) or ("error", None, exception)."""

    target: Target
    sampling: Sampling
    rows: list[Row]
    events: asyncio.Queue[tuple[Any, ...]]
    loop: asyncio.AbstractEventLoop

    def emit(self, *event: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def cancel(self) -> None:
        for row in self.rows:
            row.cancelled = True

    @property
    def cancelled(self) -> bool:
        return all(row.cancelled for row in self.rows)


class ModelPool:
    """Loaded (model, tokenizer) pairs by model reference; loads run on their own thread."""

    def __init__(self, capacity: int, *, data_dir: Path | None = None):
        self._capacity, self._data_dir = capacity, data_dir
        self._loaded: OrderedDict[str, tuple[Any, Any]] = OrderedDict()
        self._loading: dict[str, asyncio.Future[tuple[Any, Any]]] = {}
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="load")

    async def get(self, target: Target) -> tuple[Any, Any]:
        if target.ref in self._loaded:
            self._loaded.move_to_end(target.ref)
            return self._loaded[target.ref]
        if target.ref not in self._loading:
            loop = asyncio.get_running_loop()
            self._loading[target.ref] = loop.run_in_executor(self._executor, self._load, target.ref)
        future = self._loading[target.ref]
        try:
            pair = await asyncio.shield(future)
        finally:
            if future.done():
                self._loading.pop(target.ref, None)
        self._loaded[target.ref] = pair
        while len(self._loaded) > self._capacity:
            ref, _ = self._loaded.popitem(last=False)
            log.info("unloaded %s (RATINGLOOP_SERVE_MAX_LOADED_MODELS=%d)", ref, self._capacity)
        return pair

    def _load(self, ref: str) -> tuple[Any, Any]:
        import transformers

        from ratingloop.models import load_for_generation

        transformers.utils.logging.disable_progress_bar()  # a server's log has one line per load, not a bar
        model, tokenizer = load_for_generation(ref, data_dir=self._data_dir)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        log.info("loaded %s", ref)
        return model, tokenizer

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class Batcher:
    """Gathers jobs for `window_s`, then generates each group of compatible rows in one call, on one
    thread (torch uses every core for one call; two calls at once would only take turns)."""

    def __init__(self, pool: ModelPool, *, window_s: float, max_rows: int):
        self.pool, self._window_s, self._max_rows = pool, window_s, max_rows
        self.calls = 0  # generate calls so far (tests and the benchmark read it)
        self._pending: list[Job] = []
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="generate")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            for job in self._pending:
                job.emit("error", None, RuntimeError("the server is shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    def submit(self, job: Job) -> None:
        self._pending.append(job)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if self._window_s > 0 and sum(len(j.rows) for j in self._pending) < self._max_rows:
                await asyncio.sleep(self._window_s)
            jobs, self._pending = self._pending, []
            self._wake.clear()
            for group in self._groups(jobs):
                await self._generate(group)

    def _groups(self, jobs: list[Job]) -> list[list[Job]]:
        """Jobs of one target and one sampling, at most max_rows rows a group, in arrival order; a seeded
        sampling request goes alone, so that its seed means what it says."""
        groups: dict[Any, list[list[Job]]] = {}
        for i, job in enumerate(jobs):
            if job.cancelled:
                continue
            key = (job.target.ref, job.sampling) if job.sampling.seed is None else ("alone", i)
            chunks = groups.setdefault(key, [[]])
            if chunks[-1] and sum(len(j.rows) for j in chunks[-1]) + len(job.rows) > self._max_rows:
                chunks.append([])
            chunks[-1].append(job)
        return [chunk for chunks in groups.values() for chunk in chunks]

    async def _generate(self, jobs: list[Job]) -> None:
        try:
            model, tokenizer = await self.pool.get(jobs[0].target)
        except Exception as e:  # noqa: BLE001 - every job of the group hears why
            for job in jobs:
                job.emit("error", None, e)
            return
        self.calls += 1
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, generate_rows, model, tokenizer, jobs)


def generate_rows(model: Any, tokenizer: Any, jobs: list[Job]) -> None:
    """Generate every row of `jobs` in one batch (on the calling thread), streaming into the jobs."""
    import torch
    from transformers import StoppingCriteriaList

    from ratingloop.models import generation_kwargs

    pairs = [(job, row) for job in jobs for row in job.rows if not row.cancelled]
    if not pairs:
        return
    sampling = jobs[0].sampling
    defaults = model.generation_config
    greedy = sampling.temperature == 0 or (sampling.temperature is None and not defaults.do_sample)
    temperature = 0.0 if greedy else sampling.temperature or defaults.temperature or 1.0
    top_p = sampling.top_p if sampling.top_p is not None else (defaults.top_p or 1.0)
    kwargs = generation_kwargs(model, tokenizer, max(row.max_tokens for _, row in pairs), temperature, top_p)
    batch = tokenizer.pad({"input_ids": [row.prompt_ids for _, row in pairs]}, return_tensors="pt")
    device = next(model.parameters()).device
    criteria = _Rows(pairs, tokenizer, kwargs["generation_config"].eos_token_id or [])
    try:
        with _seeded(sampling.seed), torch.inference_mode():
            model.generate(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                           stopping_criteria=StoppingCriteriaList([criteria]), **kwargs)
    except Exception as e:  # noqa: BLE001 - the requests answer with it; the server goes on
        log.exception("generation failed")
        for job in jobs:
            job.emit("error", None, e)
        return
    for job, row in pairs:
        if not row.done:
            criteria.finish(job, row, "length")


class _seeded:
    """torch's global generator seeded for one call (only the generating thread samples)."""

    def __init__(self, seed: int | None):
        self._seed = seed

    def __enter__(self) -> None:
        if self._seed is not None:
            import torch

            torch.manual_seed(self._seed)

    def __exit__(self, *exc: object) -> None:
        return None


class _Rows:
    """A transformers StoppingCriteria that also streams: called after every generated token, it takes
    each live row's new token, hands out the new text, and says which rows are done (EOS, a stop string,
    their max_tokens, or cancelled)."""

    def __init__(self, pairs: list[tuple[Job, Row]], tokenizer: Any, eos: int | list[int]):
        self._pairs, self._tokenizer = pairs, tokenizer
        self._eos = set(eos if isinstance(eos, list) else [eos])

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = []
        last = input_ids[:, -1].tolist()
        for (job, row), token in zip(self._pairs, last, strict=True):
            if not row.done:
                if row.cancelled:
                    row.done = True
                elif token in self._eos:
                    self.finish(job, row, "stop")
                else:
                    self._take(job, row, token)
            done.append(row.done)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def _take(self, job: Job, row: Row, token: int) -> None:
        row.ids.append(token)
        # NUL is no text a store keeps (PostgreSQL refuses it); a byte-level model can still emit one
        text = self._tokenizer.decode(row.ids, skip_special_tokens=True).lstrip().replace("\x00", "\ufffd")
        row.text = text
        for stop in row.stop:
            at = text.find(stop)
            if at >= 0:
                row.text = text[:at]
                self.finish(job, row, "stop")
                return
        if len(row.ids) >= row.max_tokens:
            self.finish(job, row, "length")
            return
        # hold back what may still change: a partial UTF-8 character, or the start of a stop string
        safe = len(text.rstrip("\ufffd")) if text.endswith("\ufffd") else len(text)
        for stop in row.stop:
            for k in range(min(len(stop) - 1, safe), 0, -1):
                if text[:safe].endswith(stop[:k]):
                    safe -= k
                    break
        if safe > row.sent:
            job.emit("delta", row.index, text[row.sent:safe])
            row.sent = safe

    def finish(self, job: Job, row: Row, reason: str) -> None:
        row.done, row.finish_reason = True, reason
        row.text = row.text.rstrip("\ufffd")
        if len(row.text) > row.sent:
            job.emit("delta", row.index, row.text[row.sent:])
            row.sent = len(row.text)
        job.emit("done", row.index, reason, len(row.ids))


class LocalBackend:
    """`serve --backend transformers`: the registry's versions, generated here (see the module docstring)."""

    def __init__(self, engine: Engine, settings: Settings, *, base: str | None = None):
        self.router = Router(engine, base=base, poll_s=settings.serve_registry_poll_s)
        self.pool = ModelPool(settings.serve_max_loaded_models, data_dir=settings.resolved_data_dir)
        self.batcher = Batcher(self.pool, window_s=settings.serve_batch_window_ms / 1000,
                               max_rows=settings.serve_max_batch)
        self._default_max_tokens = settings.serve_max_tokens
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load what answers `active` before taking requests (a model that cannot load fails the start)."""
        for target in self.router.routes.live:
            await self.pool.get(target)
        self.batcher.start()
        self._watch = asyncio.get_running_loop().create_task(self.router.watch(self.pool.get))

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        await self.batcher.stop()
        self.pool.close()

    async def models(self) -> list[dict[str, Any]]:
        routes = self.router.routes

        def model(name: str, target: Target) -> dict[str, Any]:
            return {"id": name, "object": "model", "created": 0, "owned_by": "ratingloop",
                    "ratingloop": {"version": target.version, "ref": target.ref}}

        return [model(ACTIVE, routes.active), model(BASE, routes.base),
                *(model(vid, target) for vid, target in routes.versions.items())]

    async def generate(self, req: ChatRequest, messages: list[dict[str, str]], user: str | None) -> Generation:
        try:
            target = self.router.routes.pick(req.model, user)
        except UnknownModel:
            raise ModelNotFound(req.model) from None
        try:
            model, tokenizer = await self.pool.get(target)
        except Exception as e:  # noqa: BLE001
            raise Unavailable(f"model: {target.version} cannot be loaded now ({e})") from e
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        max_tokens = self._max_tokens(len(prompt_ids), req.token_limit, model)
        job = Job(target, Sampling(req.temperature, req.top_p, req.seed),
                  [Row(i, prompt_ids, max_tokens, req.stops) for i in range(req.n)],
                  asyncio.Queue(), asyncio.get_running_loop())
        self.batcher.submit(job)
        return Generation(target.version, len(prompt_ids), _events(job), job.cancel)

    def _max_tokens(self, prompt: int, asked: int | None, model: Any) -> int:
        context = int(getattr(model.config, "max_position_embeddings", 0) or 2**31)
        if prompt >= context:
            raise InvalidInput([FieldError("messages", f"the prompt is {prompt} tokens; the model's context is "
                                                       f"{context} tokens: shorten the conversation", 400)])
        room = context - prompt
        if asked is not None and asked > room:
            raise InvalidInput([FieldError("max_tokens", f"{asked}: the prompt takes {prompt} of the model's "
                                                         f"{context} tokens of context; at most {room} are left", 400)])
        return asked or min(self._default_max_tokens, room)


class GenerationFailed(RatingloopError):
    status = 500


async def _events(job: Job) -> AsyncIterator[tuple[Any, ...]]:
    remaining = len(job.rows)
    while remaining:
        event = await job.events.get()
        if event[0] == "error":
            error = event[2]
            if isinstance(error, RatingloopError):
                raise error
            raise GenerationFailed(f"generation failed ({type(error).__name__}: {error}); nothing was stored")
        remaining -= event[0] == "done"
        yield event
