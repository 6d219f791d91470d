"""Stage 2, serving: the vLLM backend - the base model in vLLM on a GPU, each version's LoRA adapter
loaded at run time (multi-LoRA), routed like the transformers backend (serve/routing.py).

    pip install 'ratingloop[vllm]'   # on a machine with a CUDA GPU
    ratingloop serve --backend vllm

Every version must be an adapter of the one base vLLM loaded (a merged model folder cannot be an
adapter; it is refused with the reason). vLLM batches continuously by itself, so there is no batcher
here. Without vLLM or a GPU, `check_vllm` says so before anything starts.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, AsyncIterator

from sqlalchemy import Engine

from ratingloop.config import Settings
from ratingloop.errors import FieldError, InvalidInput, RatingloopError
from ratingloop.serve.chat import ChatRequest, Generation, ModelNotFound, Unavailable
from ratingloop.serve.routing import ACTIVE, BASE, Router, Target, UnknownModel
from ratingloop.store.writes import new_id


def check_vllm() -> None:
    """RatingloopError unless vLLM is installed and a CUDA GPU is visible."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise RatingloopError("--backend vllm: vLLM is not installed; on a machine with a CUDA GPU run "
                              "`pip install 'ratingloop[vllm]'`, or serve with --backend transformers") from None
    import torch

    if not torch.cuda.is_available():
        raise RatingloopError("--backend vllm: no CUDA GPU is visible here; vLLM needs one. Serve with "
                              "--backend transformers (CPU), or --backend proxy in front of a vLLM server")


class VllmBackend:
    def __init__(self, engine: Engine, settings: Settings, *, base: str | None = None):
        check_vllm()
        self.router = Router(engine, base=base, poll_s=settings.serve_registry_poll_s)
        self._settings = settings
        self._default_max_tokens = settings.serve_max_tokens
        self._lora_ids: dict[str, int] = {}
        self._llm: Any = None
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        from ratingloop.models import resolve_model

        base = resolve_model(self.router.routes.base.ref, data_dir=self._settings.resolved_data_dir)
        args = AsyncEngineArgs(model=str(base.weights_path), enable_lora=True,
                               max_loras=self._settings.serve_max_loaded_models, max_lora_rank=64)
        self._llm = AsyncLLMEngine.from_engine_args(args)
        self._watch = asyncio.get_running_loop().create_task(self.router.watch())

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self._llm is not None:
            self._llm.shutdown()

    async def models(self) -> list[dict[str, Any]]:
        routes = self.router.routes
        names = {ACTIVE: routes.active, BASE: routes.base, **routes.versions}
        return [{"id": name, "object": "model", "created": 0, "owned_by": "ratingloop",
                 "ratingloop": {"version": target.version}} for name, target in names.items()]

    def _lora(self, target: Target) -> Any:
        from vllm.lora.request import LoRARequest

        if target.version == BASE:
            return None
        folder = Path(target.ref)
        if not (folder / "adapter_config.json").is_file():
            raise Unavailable(f"model: {target.version} is a whole model folder, not a LoRA adapter; vLLM serves "
                              "adapters of one base (serve it with --backend transformers)")
        base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
        lora_id = self._lora_ids.setdefault(target.version, len(self._lora_ids) + 1)
        return LoRARequest(target.version, lora_id, str(folder), base_model_name=base)

    async def generate(self, req: ChatRequest, messages: list[dict[str, str]], user: str | None) -> Generation:
        from vllm import SamplingParams

        try:
            target = self.router.routes.pick(req.model, user)
        except UnknownModel:
            raise ModelNotFound(req.model) from None
        tokenizer = await self._llm.get_tokenizer()
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        context = (await self._llm.get_model_config()).max_model_len
        room = context - len(prompt_ids)
        if room <= 0 or (req.token_limit or 0) > room:
            field = "messages" if room <= 0 else "max_tokens"
            raise InvalidInput([FieldError(field, f"the prompt is {len(prompt_ids)} tokens of the model's "
                                                  f"{context}; at most {max(room, 0)} are left to answer", 400)])
        params = SamplingParams(n=req.n, temperature=req.temperature if req.temperature is not None else 0.0,
                                top_p=req.top_p or 1.0, max_tokens=req.token_limit or min(self._default_max_tokens,
                                                                                          room),
                                stop=list(req.stops) or None, seed=req.seed)
        request_id = new_id()
        stream = self._llm.generate({"prompt_token_ids": prompt_ids}, params, request_id,
                                    lora_request=self._lora(target))

        async def events() -> AsyncIterator[tuple[Any, ...]]:
            sent = [0] * req.n
            async for output in stream:
                for choice in output.outputs:
                    if len(choice.text) > sent[choice.index]:
                        yield ("delta", choice.index, choice.text[sent[choice.index]:])
                        sent[choice.index] = len(choice.text)
                if output.finished:
                    for choice in output.outputs:
                        yield ("done", choice.index, choice.finish_reason or "stop", len(choice.token_ids))

        def cancel() -> None:
            asyncio.get_running_loop().create_task(self._llm.abort(request_id))

        return Generation(target.version, len(prompt_ids), events(), cancel)
