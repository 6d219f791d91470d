"""Resolve a `--model` reference to local files, and load it for generation.

A reference is one of:

- ``None`` or ``"default"``: the converted default model (pulled and converted on first use);
- a local Hugging Face model folder (``config.json`` and weights);
- a PEFT adapter folder (``adapter_config.json``): its base is resolved the same way, then the
  adapter is applied and merged for fast generation;
- a hub id such as ``HuggingFaceTB/SmolLM2-360M-Instruct``, only when it is already in the local
  Hugging Face cache. ``HF_HUB_OFFLINE=1`` is set unless the user set it: nothing downloads here.

``active``, ``base`` and registry version ids are turned into one of the above by
models/versions.py's `choose_model` (the store is needed for those; this module never opens it).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from ratingloop.errors import RatingloopError
from ratingloop.models.pull import DEFAULT_MODEL_NAME, default_model_dir, is_pulled, pull_default_model

ModelKind = Literal["default", "folder", "adapter", "hub"]


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX or AVX512-BF16); elsewhere torch emulates bf16.

    Measured (bench/results-models.md, bench/results.md "Faster rounds"): on an AMX Xeon bf16 weights gave
    1.4x fp32's batched greedy tokens/s; on an AVX2-only EPYC they gave 0.38x at a batch of 32.
    """
    import torch

    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


class ModelLoadError(RatingloopError):
    """A model reference cannot be resolved or loaded; the message says what was tried and the fix."""


@contextmanager
def quiet_checkpointing_deprecation() -> Iterator[None]:
    """PEFT and TRL still read `is_gradient_checkpointing`, which transformers 5 deprecates: a FutureWarning about
    their code, not the caller's, on every adapter load and training run. Silenced inside the block only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        yield


@dataclass(frozen=True)
class ResolvedModel:
    """A model reference turned into local files.

    `path` is the folder to load (for an adapter, the adapter folder); `base` is the adapter's
    resolved base model (None otherwise).
    """

    kind: ModelKind
    path: Path
    base: ResolvedModel | None = None

    @property
    def weights_path(self) -> Path:
        """The folder holding the full model weights (the base, for an adapter)."""
        return self.base.weights_path if self.base is not None else self.path


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def resolve_model(name_or_path: str | Path | None = None, *, data_dir: Path | None = None, pull: bool = True,
                  console: Console | None = None) -> ResolvedModel:
    """Turn a model reference into local files (see the module docstring); raise ModelLoadError if none fit."""
    _offline()
    ref = "default" if name_or_path is None or str(name_or_path).strip() in ("", "default") else str(name_or_path)
    if ref in ("default", DEFAULT_MODEL_NAME, f"HuggingFaceTB/{DEFAULT_MODEL_NAME}"):
        target = default_model_dir(data_dir)
        if not is_pulled(target):
            if not pull:
                raise ModelLoadError(f"the default model is not pulled yet ({target}); run `ratingloop model pull`")
            console = console or Console(stderr=True)
            console.print(f"The default model {DEFAULT_MODEL_NAME} is not converted yet; pulling it once ...")
            pull_default_model(data_dir, console=console)
        return ResolvedModel("default", target)

    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"--model {ref}: is a file; give a model or adapter folder")
        if (path / "adapter_config.json").is_file():
            return _resolve_adapter(path, data_dir=data_dir, pull=pull, console=console)
        if (path / "config.json").is_file():
            return ResolvedModel("folder", path.resolve())
        raise ModelLoadError(f"--model {ref}: folder has neither config.json (a model) nor adapter_config.json "
                             "(a PEFT adapter)")
    if _looks_like_path(ref):
        raise ModelLoadError(f"--model {ref}: no such folder")
    return ResolvedModel("hub", _from_hf_cache(ref))


def _looks_like_path(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or ref.count("/") != 1 or os.sep in ref.split("/", 1)[-1]


def _from_hf_cache(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as e:  # noqa: BLE001 - every failure here means "not available offline"
        raise ModelLoadError(
            f"--model {repo_id}: not a local folder, and not in the local Hugging Face cache "
            f"({type(e).__name__}). ratingloop never downloads at run time: fetch it where you have network "
            f"(`hf download {repo_id}`), or pass a local folder, or use the default model (`ratingloop model pull`)."
        ) from e


def _resolve_adapter(path: Path, *, data_dir: Path | None, pull: bool, console: Console | None) -> ResolvedModel:
    try:
        config = json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"--model {path}: adapter_config.json is unreadable: {e}") from e
    base_ref = config.get("base_model_name_or_path")
    if not base_ref:
        raise ModelLoadError(f"--model {path}: adapter_config.json names no base_model_name_or_path")
    base_path = Path(str(base_ref)).expanduser()
    if not base_path.exists() and DEFAULT_MODEL_NAME in str(base_ref):
        base_ref = "default"  # trained on the default model in another data dir: use this one's copy
    base = resolve_model(base_ref, data_dir=data_dir, pull=pull, console=console)
    if base.kind == "adapter":
        raise ModelLoadError(f"--model {path}: its base {base_ref} is itself an adapter; merge it first")
    return ResolvedModel("adapter", path.resolve(), base)


def resolve_dtype(dtype: Any = "auto", device: str = "cpu") -> Any:
    """A torch dtype: "auto" is bf16 on CUDA (fp16 if unsupported) and on a CPU with native bf16, else fp32.

    Pass dtype="fp32" for bit-stable batched == one-at-a-time output on any machine.
    """
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    names = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
             "fp16": "float16", "float16": "float16"}
    if str(dtype) not in names:
        raise ModelLoadError(f"dtype {dtype!r}: use auto, fp32, bf16 or fp16")
    return getattr(torch, names[str(dtype)])


def default_device() -> str:
    """"cuda" when a GPU is visible, else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(resolved: ResolvedModel) -> Any:
    """The tokenizer for generation: the adapter's own when it saved one, else the base's; left padding."""
    from transformers import AutoTokenizer

    source = resolved.path if (resolved.path / "tokenizer_config.json").is_file() else resolved.weights_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as e:  # noqa: BLE001 - any loader failure is reported with the folder
        raise ModelLoadError(f"cannot load a tokenizer from {source}: {e}") from e
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        raise ModelLoadError(f"the tokenizer in {source} has no chat template; give an instruct/chat model")
    return tokenizer


def load_for_generation(name_or_path: str | Path | ResolvedModel | None = None, *, dtype: Any = "auto",
                        device: str | None = None, data_dir: Path | None = None,
                        console: Console | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) ready to generate: eval mode, on `device`, in `dtype`, adapter merged, left padding."""
    from transformers import AutoModelForCausalLM

    resolved = name_or_path if isinstance(name_or_path, ResolvedModel) else resolve_model(
        name_or_path, data_dir=data_dir, console=console)
    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, device)
    model: Any
    try:
        model = AutoModelForCausalLM.from_pretrained(resolved.weights_path, dtype=torch_dtype)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"cannot load a causal LM from {resolved.weights_path}: {e}") from e
    if resolved.kind == "adapter":
        from peft import PeftModel

        try:
            with quiet_checkpointing_deprecation():
                model = PeftModel.from_pretrained(model, resolved.path).merge_and_unload()
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"cannot apply the adapter {resolved.path} to {resolved.weights_path}: {e}") from e
    model.to(device)
    model.eval()
    tokenizer = load_tokenizer(resolved)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
