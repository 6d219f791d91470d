"""Stage 5, train: checkpoints, `--resume RUN` after a killed process, full fine-tuning, config files.

The crash is real: a child process trains with a callback that SIGKILLs it right after a checkpoint,
so nothing in the process gets to clean up - the run stays `running` in the registry, as after a power cut.
Resuming it must end where an uninterrupted run with the same seed ends.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from sqlalchemy import Engine
from transformers import TrainerCallback

from ratingloop.dataset import BuildConfig, build_dataset
from ratingloop.errors import ConfigError, RatingloopError
from ratingloop.models import generate, load_for_generation
from ratingloop.models.registry import get_run, list_versions
from ratingloop.pipeline_config import load_section
from ratingloop.signals import record_signals
from ratingloop.train import TrainConfig, resume, train
from ratingloop.train.config import METHOD_DEFAULTS

CFG = TrainConfig(lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=2e-2, max_steps=6, batch_size=2,
                  max_length=128, logging_steps=1, save_steps=2)

CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from transformers import TrainerCallback
    from ratingloop.store import open_engine
    from ratingloop.train import TrainConfig, train

    db, out, data, base, kill_at, cfg = sys.argv[1:7]

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == int(kill_at):
                os.kill(os.getpid(), signal.SIGKILL)

    train(open_engine(db), "sft", out_dir=Path(out), data_dir=Path(data), base=base,
          cfg=TrainConfig(**eval(cfg)), progress=False, callbacks=[KillAfterSave()])
""")



@pytest.fixture
def sft_data(engine: Engine, tmp_path: Path) -> Path:
    build_dataset(engine, "sft", tmp_path / "sft", BuildConfig(), record_signals(engine))
    return tmp_path / "sft"


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_a_killed_run_resumes_to_the_same_result(engine: Engine, sft_data: Path, tiny_base: Path,
                                                  tmp_path: Path) -> None:
    reference = train(engine, "sft", out_dir=tmp_path / "whole", data_dir=sft_data, base=tiny_base, cfg=CFG,
                      progress=False)

    out = tmp_path / "killed"
    child = subprocess.run([sys.executable, "-c", CHILD, str(engine.url), str(out), str(sft_data), str(tiny_base),
                            "4", repr(CFG.as_dict())], capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert (out / "checkpoints" / "checkpoint-4" / "trainer_state.json").is_file()
    assert not (out / "adapter_model.safetensors").exists()
    [orphan] = [r for r in _runs(engine) if r.id != reference.run_id]
    assert orphan.status == "running"  # killed: nothing marked it failed

    steps = StepCounter()
    resumed = resume(engine, orphan.id, progress=False, callbacks=[steps])
    assert steps.n == CFG.max_steps - 4  # it continued from step 4; it did not start over
    assert resumed.run_id == orphan.id and resumed.out_dir == out
    run = get_run(engine, orphan.id)
    assert run.status == "succeeded" and run.error is None and run.metrics["steps"] == CFG.max_steps
    # the log holds the whole history: steps 1-4 restored from the checkpoint, then 5-6
    logged = [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()]
    assert max(logged) == CFG.max_steps

    want, got = _weights(reference.out_dir), _weights(out)
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)
    assert {v.training_run_id for v in list_versions(engine)} == {reference.run_id, orphan.id}

    with pytest.raises(RatingloopError, match="already succeeded"):
        resume(engine, orphan.id, progress=False)


def test_resume_without_a_checkpoint_says_so(engine: Engine, sft_data: Path, tmp_path: Path) -> None:
    with pytest.raises(RatingloopError):
        train(engine, "sft", out_dir=tmp_path / "bad", data_dir=sft_data, base=tmp_path / "no-such-model",
              cfg=CFG, progress=False)
    [failed] = _runs(engine)
    assert failed.status == "failed"
    with pytest.raises(RatingloopError, match="holds no checkpoint"):
        resume(engine, failed.id, progress=False)
    with pytest.raises(RatingloopError, match="not in the registry"):
        resume(engine, "01NOSUCHRUN", progress=False)


def test_full_fine_tuning_saves_a_whole_model(engine: Engine, sft_data: Path, tiny_base: Path,
                                              tmp_path: Path) -> None:
    out = tmp_path / "full"
    cfg = replace(CFG, lora=False, learning_rate=1e-3, save_steps=0)
    result = train(engine, "sft", out_dir=out, data_dir=sft_data, base=tiny_base, cfg=cfg, progress=False)
    assert result.metrics["last_loss"] < result.metrics["first_loss"]
    assert (out / "config.json").is_file() and not (out / "adapter_config.json").exists()
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())

    # every weight moved, and the folder is a model of its own that generates
    model, tok = load_for_generation(str(out), dtype="fp32", device="cpu")
    base, _ = load_for_generation(str(tiny_base), dtype="fp32", device="cpu")
    trained = dict(model.named_parameters())
    moved = [n for n, p in base.named_parameters() if not torch.equal(p, trained[n])]
    assert len(moved) == len(trained)
    answers = generate((model, tok), [{"id": "a", "messages": [{"role": "user", "content": "Refund?"}]}],
                       max_tokens=3, progress=False)
    assert answers[0]["id"] == "a"


def test_train_config_from_yaml_with_method_defaults(tmp_path: Path) -> None:
    yaml_file = tmp_path / "cfg.yaml"
    yaml_file.write_text("train:\n  lora_r: 8\n  save_steps: 10\n")
    cfg = load_section(TrainConfig, "train", yaml_file, ["train.beta=0.2"], defaults=METHOD_DEFAULTS["dpo"])
    assert (cfg.lora_r, cfg.save_steps, cfg.beta) == (8, 10, 0.2)
    assert cfg.learning_rate == METHOD_DEFAULTS["dpo"]["learning_rate"] != TrainConfig().learning_rate
    assert TrainConfig.for_method("dpo", learning_rate=1e-3).learning_rate == 1e-3  # the user's value wins

    yaml_file.write_text("train: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"\[train\] must be a table"):
        load_section(TrainConfig, "train", yaml_file)
    yaml_file.write_text("train:\n  lora_r: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_section(TrainConfig, "train", yaml_file)
    with pytest.raises(ConfigError, match="save_steps=-1"):
        replace(TrainConfig(), save_steps=-1).validate()


class StepCounter(TrainerCallback):
    def __init__(self) -> None:
        self.n = 0

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        self.n += 1


def _runs(engine: Engine) -> list:  # type: ignore[type-arg]
    from ratingloop.models.registry import list_runs

    return list_runs(engine)


def test_the_shipped_gpu_config_is_valid_for_every_method() -> None:
    from ratingloop.train.run import METHODS

    gpu = Path(__file__).resolve().parents[1] / "examples" / "train-gpu.yaml"
    for method in METHODS:
        cfg = load_section(TrainConfig, "train", gpu, defaults=METHOD_DEFAULTS.get(method))
        cfg.validate()
        assert (cfg.batch_size, cfg.max_length) == (32, 1024)
        assert cfg.learning_rate == TrainConfig.for_method(method).learning_rate  # the method's own rate stays
        assert cfg.batch_size % cfg.num_generations == 0  # grpo's groups fit a batch
