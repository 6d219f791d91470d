"""Stage 5, train: `ratingloop train --method M`, the run around any recipe, top to bottom.

    result = train(engine, "kto", out_dir=Path("runs/kto-1"), data_dir=Path("data/kto"),
                   cfg=TrainConfig(max_steps=50))
    generate(str(result.out_dir), prompts)  # the adapter loads like any model reference

Reads the method's built dataset (`--data DIR`: a `ratingloop build` folder of the format
`dataset_format(method)`; `ratingloop.loop.train_from_store` records signals and builds it first), the base model
(`--base`: a model folder, a cached hub id, or the default model), asks the method's recipe
(RECIPES: one module per method) for its trainer, trains, and writes to OUT:

    adapter_config.json, adapter_model.safetensors   the LoRA adapter (names its base's folder), or with
                                                     train.lora=false the whole fine-tuned model
    tokenizer files                                  so the adapter generates with its own template
    run.json                                         resolved config, versions, git revision, seed, metrics
    log.jsonl                                        the trainer's log history, one line per logging step
    checkpoints/checkpoint-N/                        every train.save_steps: weights, optimizer, RNG state;
                                                     `train --resume RUN` continues from the newest

and one `training_runs` row (running -> succeeded | failed with the reason) plus, on success, a
`candidate` model version with its lineage. Bad input (an empty or wrong-format dataset, DPO without
pairs, a base that cannot be loaded) stops before the first step, with a message naming what is
missing and the fix.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
from dataclasses import dataclass, replace
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

from sqlalchemy import Engine

import ratingloop
from ratingloop.dataset import purged_at
from ratingloop.errors import ConfigError, RatingloopError
from ratingloop.models import ModelLoadError, quiet_checkpointing_deprecation, resolve_model
from ratingloop.models.registry import fail_run, finish_run, get_run, reopen_run, snapshot_exists, start_run, update_run
from ratingloop.train.common import load_base, save_model, warm_start
from ratingloop.train.config import TrainConfig
from ratingloop.train.data import TrainData, dataset_format, load_train_data

log = logging.getLogger(__name__)

# method -> its recipe, a module in this package with
#   make_trainer(model, tokenizer, data, cfg, out_dir, progress) -> a ready transformers/TRL Trainer, with
#       `peft_config=lora_config(cfg)` (None under train.lora=false, and under train.init_adapter, where `model`
#       is already that adapter on the base: common.warm_start) and `trainer_args(...)`
#   load_model(resolved, cfg) -> (model, tokenizer)   optional; default: the causal LM in fp32 (common.load_base)
#   metrics(trainer) -> dict                          optional; the method's own figures for the registry
#   prepare(engine, cfg) -> cfg                       optional; settings the store decides, before the run is recorded
# Recipes import lazily, so `ratingloop --help` does not pay for torch.
RECIPES: dict[str, str] = {"sft": "sft", "wsft": "wsft", "kto": "kto", "dro": "dro", "dpo": "dpo",
                           "reward": "reward", "grpo": "grpo"}
METHODS = tuple(RECIPES)
# the methods whose model is the causal LM itself, so train.init_adapter (a policy's adapter) can start it
WARM_STARTS = ("sft", "wsft", "kto", "dro", "dpo", "grpo")


@dataclass(frozen=True)
class TrainResult:
    method: str
    run_id: str
    version_id: str
    out_dir: Path  # the adapter folder: `ratingloop generate --model OUT` loads it
    base_model: str  # the base's resolved folder
    dataset_snapshot_id: str | None
    metrics: dict[str, Any]


def recipe(method: str) -> ModuleType:
    if method not in RECIPES:
        raise ConfigError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    return import_module(f"ratingloop.train.{RECIPES[method]}")


def train(engine: Engine, method: str = "sft", *, out_dir: Path, data_dir: Path, base: str | Path | None = None,
          cfg: TrainConfig | None = None, parent_version_id: str | None = None, round_id: str | None = None,
          progress: bool = True, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Train `method` on the dataset in `data_dir` and `base` (LoRA unless cfg.lora is false) and register the
    result as a candidate. `round_id`: the loop round that asked for it, recorded with the run.

    `callbacks` are transformers TrainerCallbacks added to the method's trainer (the loop's progress,
    tests' fault injection). Under `accelerate launch` every process trains its shard; only the main
    process writes the registry and saves, and the others return a result without run or version ids.
    """
    rec = recipe(method)
    cfg = cfg or TrainConfig.for_method(method)
    cfg.validate()
    if cfg.init_adapter and method not in WARM_STARTS:
        raise ConfigError(f"train.init_adapter={cfg.init_adapter}: --method {method} cannot start from a policy's "
                          "LoRA adapter (a reward model is a sequence classifier: a new score head on the base); "
                          "leave train.init_adapter empty")
    if cfg.init_adapter:  # recorded as an absolute folder, so `train --resume` finds it from anywhere
        cfg = replace(cfg, init_adapter=str(Path(cfg.init_adapter).expanduser().resolve()))
    if hasattr(rec, "prepare"):  # settings the store decides (grpo: the newest reward model), recorded with the run
        cfg = rec.prepare(engine, cfg)
    out_dir = Path(out_dir)
    if not is_main_process():
        return _train(engine, "", method, out_dir, Path(data_dir), base, cfg, progress, callbacks, resume=False,
                      main=False)
    check_out_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_id = start_run(engine, method=method, config=cfg.as_dict(), base_model=str(base or "default"),
                       parent_version_id=parent_version_id, log_path=out_dir / "log.jsonl", round_id=round_id)
    return _guarded(engine, run_id, method, out_dir, data_dir, base, cfg, progress, callbacks, resume=False)


def check_out_dir(out_dir: Path) -> None:
    """Refuse a folder that already holds a model (a registered version may point at it)."""
    for name in ("adapter_config.json", "config.json"):
        if (Path(out_dir) / name).exists():
            raise RatingloopError(f"--out {out_dir} already holds a model ({name}; a registered version may point "
                                  "at it); choose a new folder, or `train --resume RUN` to continue a crashed run")


def resume(engine: Engine, run_id: str, *, progress: bool = True, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Continue run `run_id` (failed, or left `running` by a killed process) from its newest checkpoint.

    The run keeps its id, folder, config, data and base; the trainer restores weights, optimizer,
    scheduler, RNG state and the data position, so the result matches an uninterrupted run.
    """
    run = get_run(engine, run_id)
    if run.status == "succeeded":
        raise RatingloopError(f"--resume {run_id}: the run already succeeded; its version is in "
                              "`ratingloop versions list`")
    if not run.log_path:
        raise RatingloopError(f"--resume {run_id}: the run records no output folder; start a new run")
    out_dir = Path(run.log_path).parent
    if _latest_checkpoint(out_dir) is None:
        raise RatingloopError(f"--resume {run_id}: {out_dir / 'checkpoints'} holds no checkpoint (the run stopped "
                              f"before its first, every train.save_steps={run.config.get('save_steps')} steps); "
                              "start the run again")
    recorded = _read_run_json(out_dir)
    cfg = TrainConfig(**run.config)
    data_dir = Path(recorded["data_dir"]) if recorded.get("data_dir") else out_dir / "data"
    if not is_main_process():
        return _train(engine, "", run.method, out_dir, data_dir, run.base_model, cfg, progress, callbacks,
                      resume=True, main=False)
    reopen_run(engine, run_id)
    return _guarded(engine, run_id, run.method, out_dir, data_dir, run.base_model, cfg, progress, callbacks,
                    resume=True)


def _guarded(engine: Engine, run_id: str, method: str, out_dir: Path, data_dir: Path,
             base: str | Path | None, cfg: TrainConfig, progress: bool, callbacks: Sequence[Any],
             resume: bool) -> TrainResult:
    try:
        return _train(engine, run_id, method, out_dir, data_dir, base, cfg, progress, callbacks, resume)
    except BaseException as e:  # KeyboardInterrupt too: a run never stays "running" after we return
        fail_run(engine, run_id, f"{type(e).__name__}: {e}")
        log.error("train %s: run %s failed: %s", method, run_id, e)
        raise


def _train(engine: Engine, run_id: str, method: str, out_dir: Path, data_dir: Path,
           base: str | Path | None, cfg: TrainConfig, progress: bool, callbacks: Sequence[Any],
           resume: bool, main: bool = True) -> TrainResult:
    rec = recipe(method)
    # --- inputs, all checked before the first step; other processes wait for the main one's dataset -----
    data = _data(engine, method, data_dir) if main else load_train_data(Path(data_dir), method)
    resolved = resolve_model(base)
    if resolved.kind == "adapter":
        raise ModelLoadError(f"--base {base}: is a LoRA adapter; train on a full model (its base is "
                             f"{resolved.weights_path}; with --set train.init_adapter={base} the run goes on "
                             "training the adapter), or merge the adapter into a model folder first")
    model, tokenizer = rec.load_model(resolved, cfg) if hasattr(rec, "load_model") else load_base(resolved)
    if method in WARM_STARTS:  # train.init_adapter: the model the trainer gets is that adapter, trainable
        model = warm_start(model, cfg, resolved.weights_path)
    base_model = str(resolved.weights_path)
    if main:
        update_run(engine, run_id, base_model=base_model, dataset_snapshot_id=data.snapshot_id)
        _write_run_json(out_dir, run_id, method, cfg, base_model, data, metrics=None)

    # --- train -------------------------------------------------------------------------------------
    with quiet_checkpointing_deprecation():
        trainer = rec.make_trainer(model, tokenizer, data, cfg, out_dir, progress)
    if progress:
        from ratingloop.train.progress import TrainProgress

        trainer.add_callback(TrainProgress(f"training {method}"))
    for callback in callbacks:
        trainer.add_callback(callback)
    checkpoint = _latest_checkpoint(out_dir) if resume else None
    with quiet_checkpointing_deprecation():
        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    metrics = _metrics(trainer, output, data)
    if hasattr(rec, "metrics"):
        metrics |= rec.metrics(trainer)
    if data.eval is not None and cfg.eval_after_training:
        with quiet_checkpointing_deprecation():
            evaluated = trainer.evaluate()
        metrics |= {k: float(v) for k, v in evaluated.items()
                    if k.startswith("eval_") and isinstance(v, (int, float)) and k != "eval_runtime"}
    if not main:
        return TrainResult(method, "", "", out_dir, base_model, data.snapshot_id, metrics)

    # --- save, then register: a version never points at a folder that was not written --------------
    save_model(trainer.model, out_dir)
    tokenizer.save_pretrained(str(out_dir))
    _pin_base(out_dir, base_model)
    (out_dir / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in trainer.state.log_history))
    version_id = finish_run(engine, run_id, adapter_path=out_dir.resolve(), metrics=metrics)
    _write_run_json(out_dir, run_id, method, cfg, base_model, data, metrics=metrics, version_id=version_id)
    log.info("train %s: %d train / %d eval rows, %d steps, loss %.4f -> %.4f; run %s -> candidate %s in %s",
             method, len(data.train), len(data.eval) if data.eval is not None else 0, metrics["steps"],
             metrics["first_loss"], metrics["last_loss"], run_id, version_id, out_dir)
    return TrainResult(method, run_id, version_id, out_dir, base_model, data.snapshot_id, metrics)


def _data(engine: Engine, method: str, data_dir: Path) -> TrainData:
    """The built dataset in `data_dir`, checked against the method; its snapshot id kept if this store has it."""
    data = load_train_data(Path(data_dir), method)
    purged = purged_at(engine, data.snapshot_id) if data.snapshot_id is not None else None
    if purged is not None:  # a copy of a purged folder: it holds a deleted user's data
        raise RatingloopError(f"--data {data_dir}: dataset snapshot {data.snapshot_id} was purged at "
                              f"{purged.isoformat()} (it held data of a user who was deleted); build a new one "
                              f"with `ratingloop build --format {dataset_format(method)}`, or train without --data")
    if data.snapshot_id is not None and not snapshot_exists(engine, data.snapshot_id):
        log.warning("--data %s: its snapshot %s is not in this store; the run records no dataset snapshot",
                    data_dir, data.snapshot_id)
        data.snapshot_id = None
    return data


def _metrics(trainer: Any, output: Any, data: TrainData) -> dict[str, Any]:
    losses = [float(x["loss"]) for x in trainer.state.log_history if "loss" in x]
    runtime = float(output.metrics.get("train_runtime", 0.0))
    tokens = int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0)
    last: dict[str, Any] = next((x for x in reversed(trainer.state.log_history) if "loss" in x), {})
    extra = {k: float(v) for k, v in last.items() if k.startswith(("rewards/", "kl"))}  # kto/dpo's own figures
    for key in ("desirable_weight", "undesirable_weight", "beta"):
        if hasattr(trainer.args, key):
            extra[key] = float(getattr(trainer.args, key))
    return extra | {"train_loss": float(output.training_loss), "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None, "steps": int(trainer.state.global_step),
            "train_rows": len(data.train), "eval_rows": len(data.eval) if data.eval is not None else 0,
            "tokens": tokens, "processes": int(getattr(trainer.args, "world_size", 1)), "train_runtime_s": runtime,
            "tokens_per_s": tokens / runtime if runtime else None}


def is_main_process() -> bool:
    """False in the non-zero ranks of `accelerate launch` / torchrun (which set RANK)."""
    return os.environ.get("RANK", "0") in ("", "0")


def main_process_first() -> Any:
    """accelerate's main-process-first barrier when distributed, else nothing."""
    if "RANK" not in os.environ:
        return contextlib.nullcontext()
    import torch
    from accelerate import PartialState

    # without cpu=True accelerate does not set up a CPU process group (torchrun on a CPU-only machine)
    return PartialState(cpu=not torch.cuda.is_available()).main_process_first()


def _latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint (HF Trainer writes trainer_state.json last)."""
    found = [p for p in (out_dir / "checkpoints").glob("checkpoint-*")
             if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
    return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)


def _read_run_json(out_dir: Path) -> dict[str, Any]:
    try:
        doc = json.loads((out_dir / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _pin_base(out_dir: Path, base_model: str) -> None:
    """The adapter names its base by the folder we loaded, so `resolve_model(out_dir)` finds it again."""
    path = out_dir / "adapter_config.json"
    if not path.is_file():  # a full fine-tune is a model folder of its own
        return
    config = json.loads(path.read_text())
    if config.get("base_model_name_or_path") != base_model:
        config["base_model_name_or_path"] = base_model
        path.write_text(json.dumps(config, indent=2) + "\n")


def _write_run_json(out_dir: Path, run_id: str, method: str, cfg: TrainConfig, base_model: str, data: TrainData,
                    metrics: dict[str, Any] | None, version_id: str | None = None) -> None:
    """What reproduces this run: resolved config, seed, inputs, package versions, git revision."""
    from importlib.metadata import version

    from ratingloop.provenance import git_revision

    doc = {"run_id": run_id, "version_id": version_id, "method": method, "config": cfg.as_dict(), "seed": cfg.seed,
           "base_model": base_model, "data_dir": str(data.data_dir.resolve()), "dataset_snapshot_id": data.snapshot_id,
           "data_content_hash": data.manifest.get("content_hash"), "ratingloop_version": ratingloop.__version__,
           "git_revision": git_revision(), "python": platform.python_version(),
           "packages": {p: version(p) for p in ("torch", "transformers", "trl", "peft", "datasets")},
           "metrics": metrics}
    (out_dir / "run.json").write_text(json.dumps(doc, indent=2) + "\n")
