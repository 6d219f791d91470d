"""Stage 5 under a distributed launcher: two real processes train one model with DDP (gloo, on the CPU).

`accelerate launch` on GPUs starts the same torchrun-style processes (RANK, WORLD_SIZE); here torchrun
starts two CPU processes. Only the main process may build the dataset, write the registry and save:
the store must end with one run and one candidate, trained by both processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ratingloop.models.registry import list_runs, list_versions
from train_support import EXAMPLE, save_tiny_base, store


@pytest.mark.slow
def test_two_processes_train_one_registered_model(tmp_path: Path) -> None:
    base = save_tiny_base(tmp_path / "base")
    engine = store(tmp_path, EXAMPLE.read_bytes().splitlines())
    out = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(
        [*torchrun, "-m", "ratingloop.cli", "train", "--method", "sft", "--base", str(base), "--out", str(out),
         "--db", str(engine.url), "--set", "train.max_steps=4", "--set", "train.batch_size=2",
         "--set", "train.lora_r=4", "--set", "train.save_steps=2"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("sft: candidate") == 1  # the main process reports; the other stays quiet

    [run] = list_runs(engine)
    [version] = list_versions(engine)
    assert run.status == "succeeded" and version.training_run_id == run.id
    assert run.metrics["processes"] == 2 and run.metrics["steps"] == 4
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "checkpoints" / "checkpoint-4" / "trainer_state.json").is_file()
    assert json.loads((out / "run.json").read_text())["version_id"] == version.id
