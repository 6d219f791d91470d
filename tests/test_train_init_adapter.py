"""Stage 5, train: `train.init_adapter` - a LoRA run that starts from an existing adapter's weights (a warm start).

Run A trains a fresh adapter on the tiny base (tests/train_support.py); runs started from A's folder hold exactly
A's weights before their first step, their first loss is A's loss, their reference (kto, wsft) is A itself,
their output is a normal adapter folder, and `--resume` continues them. Bad settings stop before a run is recorded.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import Engine
from transformers import TrainerCallback

from ratingloop.dataset import BuildConfig, build_dataset
from ratingloop.errors import ConfigError, RatingloopError
from ratingloop.models import load_for_generation
from ratingloop.models.registry import get_run, list_runs, list_versions
from ratingloop.signals import record_signals
from ratingloop.store import open_engine
from ratingloop.train import TrainConfig, resume, train
from tiny import save_random_adapter
from train_support import EXAMPLE, pairs_folder, store

FAST = TrainConfig(lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=2e-2, max_steps=6, batch_size=4,
                   max_length=128, logging_steps=1, save_steps=0, eval_after_training=False)
STILL = 1e-9  # a learning rate that leaves the weights where they start (Adam's step is ~lr per weight)


@pytest.fixture(scope="module")
def start(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The example store with its sft and kto sets built, and run A: a fresh adapter trained 20 steps on sft."""
    root = tmp_path_factory.mktemp("init-adapter")
    engine = store(root, EXAMPLE.read_bytes().splitlines())
    signals = record_signals(engine)
    for fmt in ("sft", "kto"):
        build_dataset(engine, fmt, root / fmt, BuildConfig(), signals)
    train(engine, "sft", out_dir=root / "a", data_dir=root / "sft", base=tiny_base, cfg=replace(FAST, max_steps=20),
          progress=False)
    engine.dispose()
    return {"db": root / "store.db", "sft": root / "sft", "kto": root / "kto", "a": root / "a"}


@pytest.fixture
def copied(start: dict[str, Path], tmp_path: Path) -> Engine:
    """A copy of the module's store (run A registered), for a test's own runs."""
    shutil.copy(start["db"], tmp_path / "store.db")
    return open_engine(f"sqlite:///{tmp_path / 'store.db'}")


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def distance(x: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> float:
    assert x.keys() == y.keys()
    return float(sum(float((x[k].float() - y[k].float()).pow(2).sum()) for k in x) ** 0.5)


class AtStart(TrainerCallback):
    """What the trainer's model holds when training begins: its adapters' weights, dtypes and cast setting."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # type: ignore[no-untyped-def]
        from peft.tuners.lora import LoraLayer

        self.seen["adapters"] = sorted(model.peft_config)
        self.seen["lora"] = {k: v.detach().clone() for k, v in model.state_dict().items() if ".default." in k}
        self.seen["lora_dtypes"] = {p.dtype for n, p in model.named_parameters() if ".default." in n}
        self.seen["trainable"] = {n for n, p in model.named_parameters() if p.requires_grad}
        self.seen["base_dtypes"] = {p.dtype for n, p in model.named_parameters() if "lora_" not in n}
        self.seen["casts"] = {m.cast_input_dtype_enabled for m in model.modules() if isinstance(m, LoraLayer)}


def test_a_run_starts_from_the_adapter_and_saves_a_normal_one(copied: Engine, start: dict[str, Path],
                                                                 tiny_base: Path, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    from ratingloop.train.common import use_bf16

    a = weights(start["a"])
    # B: from A, lora_r/alpha as the defaults say (16/32): A's own r=4, alpha=8 win, with one line saying so
    at_start = AtStart()
    cfg = replace(FAST, lora_r=16, lora_alpha=32, init_adapter=str(start["a"]), learning_rate=STILL, max_steps=1,
                  bf16=True)
    with caplog.at_level(logging.WARNING, logger="ratingloop.train.common"):
        b = train(copied, "sft", out_dir=tmp_path / "b", data_dir=start["sft"], base=tiny_base, cfg=cfg,
                  progress=False, callbacks=[at_start])
    [line] = [r.getMessage() for r in caplog.records if "init_adapter" in r.getMessage()]
    assert "lora_r=4" in line and "lora_alpha=8" in line and "lora_r=16" in line, line
    # C: a fresh LoRA of A's shape, trained the same way
    c = train(copied, "sft", out_dir=tmp_path / "c", data_dir=start["sft"], base=tiny_base,
              cfg=replace(cfg, init_adapter="", lora_r=4, lora_alpha=8), progress=False)

    # before step 1, B's trainable LoRA weights are A's, bit for bit, in fp32 over a bf16 base where bf16 is fast
    seen = at_start.seen
    assert seen["adapters"] == ["default"]  # sft keeps no reference
    assert {k.replace(".default", "") for k in seen["lora"]} == set(a)
    for key, value in seen["lora"].items():
        torch.testing.assert_close(value, a[key.replace(".default", "")], rtol=0, atol=0, msg=key)
    assert seen["lora_dtypes"] == {torch.float32}
    assert all(".default." in n for n in seen["trainable"]) and len(seen["trainable"]) == len(a)
    if use_bf16(cfg):  # load_model's bf16 base and fast()'s cast tweak reach the loaded adapter too
        assert seen["base_dtypes"] == {torch.bfloat16} and seen["casts"] == {False}

    # after one still step, B's saved weights are A's to ~1e-9 per weight; C's are a fresh init, far from A
    b_w, c_w = weights(b.out_dir), weights(c.out_dir)
    near, far = distance(b_w, a), distance(c_w, a)
    assert near < 1e-6 and far > 1.0, (near, far)
    assert max(float(v.abs().max()) for k, v in c_w.items() if "lora_B" in k) < 1e-6  # a fresh B starts at 0

    # the folder is a normal adapter of the run's base (no "ref" copy, A's LoRA shape), and serves like any other
    config = json.loads((b.out_dir / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (4, 8)
    assert config["base_model_name_or_path"] == str(tiny_base.resolve())
    model, _ = load_for_generation(str(b.out_dir), dtype="fp32", device="cpu")
    merged_a, _ = load_for_generation(str(start["a"]), dtype="fp32", device="cpu")
    for (name, p), q in zip(model.named_parameters(), merged_a.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)

    # the registry: B's run records where it started; its version is a candidate like any other
    run = get_run(copied, b.run_id)
    assert run.status == "succeeded" and run.config["init_adapter"] == str(start["a"].resolve())
    assert {v.training_run_id for v in list_versions(copied)} >= {b.run_id, c.run_id}


def sft_loss(model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> float:
    """The mean completion-token NLL over `rows`, tokenised as SFTTrainer tokenises them (pointwise.py)."""
    from trl.data_utils import common_prefix_length

    total, tokens = 0.0, 0
    for row in rows:
        prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=True, return_dict=True,
                                               add_generation_prompt=True)["input_ids"]
        full = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True,
                                             return_dict=True)["input_ids"]
        start = common_prefix_length(prompt, full)
        ids = torch.tensor([full])
        with torch.no_grad():
            logps = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
        total -= float(logps.gather(1, ids[0, 1:, None])[start - 1:].sum())
        tokens += len(full) - start
    return total / tokens


def test_the_first_loss_is_the_start_adapters(copied: Engine, start: dict[str, Path], tiny_base: Path,
                                               tmp_path: Path) -> None:
    from datasets import load_from_disk

    rows = list(load_from_disk(str(start["sft"] / "train")))
    # one batch of every train row, in fp32: the first logged loss is the loss of the model the run starts as
    cfg = replace(FAST, batch_size=len(rows), max_steps=1, learning_rate=STILL, bf16=False, max_length=1024)
    warm = train(copied, "sft", out_dir=tmp_path / "warm", data_dir=start["sft"], base=tiny_base,
                 cfg=replace(cfg, init_adapter=str(start["a"])), progress=False)
    fresh = train(copied, "sft", out_dir=tmp_path / "fresh", data_dir=start["sft"], base=tiny_base, cfg=cfg,
                  progress=False)

    a_model, tok = load_for_generation(str(start["a"]), dtype="fp32", device="cpu")
    base_model, _ = load_for_generation(str(tiny_base), dtype="fp32", device="cpu")
    a_loss, base_loss = sft_loss(a_model, tok, rows), sft_loss(base_model, tok, rows)
    # measured: 6.0116 (the base) and 5.9286 (A); each run's first loss matched its start to 1e-7 relative
    assert base_loss - a_loss > 0.05, (base_loss, a_loss)  # A learnt these rows (a little: a hidden-32 model)
    assert warm.metrics["first_loss"] == pytest.approx(a_loss, rel=1e-5), (warm.metrics, a_loss)
    assert fresh.metrics["first_loss"] == pytest.approx(base_loss, rel=1e-5), (fresh.metrics, base_loss)


@pytest.mark.parametrize("method", ["kto", "wsft", "dro"])
def test_the_reference_is_the_start_adapter(method: str, copied: Engine, start: dict[str, Path], tiny_base: Path,
                                            tmp_path: Path) -> None:
    """TRL's KTO (and DPO, GRPO) keeps a frozen "ref" copy of a pretrained adapter; our wsft/dro trainer does the
    same. At the first step the policy is its reference, so every log-ratio is 0 (against the base it is not)."""
    column = {"wsft": "weight", "dro": "score"}.get(method)
    data = pairs_folder(tmp_path / "pairs", column, 1.0, -1.0) if column else start["kto"]
    cfg = replace(FAST, init_adapter=str(start["a"]), max_steps=1, learning_rate=STILL, batch_size=8)
    result = train(copied, method, out_dir=tmp_path / method, data_dir=data, base=tiny_base, cfg=cfg,
                   progress=False)
    first = next(x for x in map(json.loads, (result.out_dir / "log.jsonl").read_text().splitlines()) if "loss" in x)
    ratios = [k for k in first if k.startswith(("rewards/", "kl", f"{method}/log_ratio")) and "margin" not in k]
    assert ratios and all(abs(first[k]) < 1e-3 for k in ratios), first
    assert not (result.out_dir / "ref").exists()  # the frozen copy is not part of the output
    assert distance(weights(result.out_dir), weights(start["a"])) < 1e-6


class StopAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt("stopped after the first checkpoint")


def test_a_warm_run_resumes_to_the_same_result(copied: Engine, start: dict[str, Path], tiny_base: Path,
                                               tmp_path: Path) -> None:
    cfg = replace(FAST, init_adapter=str(start["a"]), max_steps=3, save_steps=1, learning_rate=1e-2)
    whole = train(copied, "kto", out_dir=tmp_path / "whole", data_dir=start["kto"], base=tiny_base, cfg=cfg,
                  progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(copied, "kto", out_dir=tmp_path / "cut", data_dir=start["kto"], base=tiny_base, cfg=cfg,
              progress=False, callbacks=[StopAfterSave()])
    [cut] = [r for r in list_runs(copied) if r.status == "failed"]
    resumed = resume(copied, cut.id, progress=False)
    assert get_run(copied, cut.id).status == "succeeded" and resumed.metrics["steps"] == 3
    want, got = weights(whole.out_dir), weights(resumed.out_dir)
    assert distance(want, weights(start["a"])) > 1e-3  # it trained on from A
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)


# --- settings that stop before a run is recorded ------------------------------------------------------

@pytest.mark.parametrize(("case", "method", "message"), [
    ("missing", "sft", r"train\.init_adapter=.*no such folder"),
    ("model folder", "sft", r"train\.init_adapter=.*no adapter_config\.json"),
    ("lora off", "kto", r"train\.init_adapter=.*needs train\.lora=true"),
    ("reward", "reward", r"train\.init_adapter=.*--method reward cannot start"),
])
def test_bad_settings_are_named_and_record_nothing(case: str, method: str, message: str, engine: Engine,
                                                   tiny_base: Path, tmp_path: Path) -> None:
    adapter = save_random_adapter(tiny_base, tmp_path / "adapter")
    folder = {"missing": tmp_path / "no-such", "model folder": tiny_base}.get(case, adapter)
    cfg = replace(FAST, init_adapter=str(folder), lora=case != "lora off")
    with pytest.raises(ConfigError, match=message):
        train(engine, method, out_dir=tmp_path / "run", data_dir=tmp_path / "no-data", base=tiny_base, cfg=cfg,
              progress=False)
    assert list_runs(engine) == [] and not (tmp_path / "run").exists()


def test_an_adapter_of_another_base_is_refused_naming_both(engine: Engine, start: dict[str, Path], tiny_base: Path,
                                                           tmp_path: Path) -> None:
    other = tmp_path / "other-base"
    shutil.copytree(tiny_base, other)
    adapter = save_random_adapter(other, tmp_path / "adapter")
    with pytest.raises(RatingloopError) as e:
        train(engine, "sft", out_dir=tmp_path / "run", data_dir=start["sft"], base=tiny_base,
              cfg=replace(FAST, init_adapter=str(adapter)), progress=False)
    assert all(s in str(e.value) for s in ("train.init_adapter", str(other), str(tiny_base)))
    [run] = list_runs(engine)
    assert run.status == "failed" and "train.init_adapter" in (run.error or "") and list_versions(engine) == []
