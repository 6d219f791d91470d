"""Stage 5, train --method reward: both backbones, both objectives, the scorer, resume, and bad input.

The learning tests use synthetic support answers whose reward depends on the text: an answer that
opens with an apology ("Sorry!") is good, the same kind of answer without one is bad. A reward model
that reads the answer learns that in a few steps (base: a tiny random Llama with LoRA, tests/tiny.py)
or one fit (embed: the real all-MiniLM-L6-v2, which loads offline in about 2 s); held-out rows are
drawn with another seed, and chance is a pairwise accuracy of 0.5.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sqlalchemy import Engine
from transformers import TrainerCallback

from ratingloop.dataset import BuildConfig, build_dataset
from ratingloop.errors import RatingloopError
from ratingloop.loop import train_from_store
from ratingloop.models.registry import get_run, list_runs, list_versions
from ratingloop.signals import record_signals
from ratingloop.train import TrainConfig, resume, train
from ratingloop.train.scoring import CARD, load_scorer, pair_accuracy, regression_figures, thurstone_sd
from tiny import tiny_causal_lm, tiny_tokenizer
from train_support import sha256

# a rate and a step count at which the tiny model reliably learns the synthetic task (16 steps at 2e-2
# learn the pairs but leave the regression noisy); the defaults are for the real model
FAST = TrainConfig(lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=1e-2, max_steps=32, batch_size=8,
                   max_length=64, logging_steps=1, save_steps=0, bf16=False)
TOPICS = ["refund", "delivery", "password", "invoice", "account", "order", "shipping", "subscription"]
OPENERS = ["Thanks for asking.", "Sure.", "Here is what I found.", "Good question.", "Let me check.", "Hi there."]
BODIES = ["Your {t} request is being processed.", "I can help with your {t}.", "The {t} team replies in two days.",
          "Open settings to manage your {t}.", "We have updated your {t} details.", "Your {t} is on its way."]


def answer(rng: random.Random, topic: str, good: bool) -> str:
    text = f"{rng.choice(OPENERS)} {rng.choice(BODIES).format(t=topic)}"
    return f"Sorry! {text}" if good else text


def scored_rows(n: int, seed: int) -> list[dict[str, Any]]:
    rng, out = random.Random(seed), []
    for i in range(n):
        topic = rng.choice(TOPICS)
        out.append({"prompt": [{"role": "user", "content": f"A question about my {topic}"}],
                    "completion": [{"role": "assistant", "content": answer(rng, topic, i % 2 == 0)}],
                    "score": 0.8 if i % 2 == 0 else -0.6})
    return out


def pair_rows(n: int, seed: int) -> list[dict[str, Any]]:
    rng, out = random.Random(seed), []
    for _ in range(n):
        topic = rng.choice(TOPICS)
        out.append({"prompt": [{"role": "user", "content": f"A question about my {topic}"}],
                    "chosen": [{"role": "assistant", "content": answer(rng, topic, True)}],
                    "rejected": [{"role": "assistant", "content": answer(rng, topic, False)}]})
    return out


def save_rows(folder: Path, train_rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]],
              fmt: str | None) -> Path:
    """A dataset folder as `ratingloop build` writes it; fmt=None leaves out the manifest."""
    from datasets import Dataset

    features = Dataset.from_list(train_rows or scored_rows(1, 0)).features  # an empty split keeps the columns
    for name, rows in (("train", train_rows), ("eval", eval_rows)):
        ds = Dataset.from_list(rows, features=features) if rows else Dataset.from_dict(
            {k: [] for k in features}, features=features)
        ds.save_to_disk(str(folder / name))
    if fmt:
        (folder / "manifest.json").write_text(json.dumps({"format": fmt}))
    return folder


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The scored and the paired sets, and a tiny base whose tokenizer knows their texts."""
    root = tmp_path_factory.mktemp("synthetic")
    scored = save_rows(root / "scored", scored_rows(64, 0), scored_rows(32, 1), "reward")
    pairs = save_rows(root / "pairs", pair_rows(48, 2), pair_rows(24, 3), None)  # found by its columns
    texts = [m["content"] for x in scored_rows(64, 0) + pair_rows(48, 2)
             for k in ("prompt", "completion", "chosen", "rejected") for m in x.get(k, [])]
    tok = tiny_tokenizer(texts)
    tiny_causal_lm(tok).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    return {"scored": scored, "pairs": pairs, "base": root / "base"}



def held_out(rows: list[dict[str, Any]], key: str = "completion") -> tuple[list[Any], list[str]]:
    return [x["prompt"] for x in rows], [x[key][0]["content"] for x in rows]


# --- learning ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("backbone", ["base", "embed"])
def test_regression_learns_a_score_from_the_answer_text(backbone: str, synthetic: dict[str, Path], engine: Engine,
                                                        tmp_path: Path) -> None:
    out = tmp_path / "rm"
    result = train(engine, "reward", out_dir=out, data_dir=synthetic["scored"], base=synthetic["base"],
                   cfg=replace(FAST, reward_backbone=backbone), progress=False)
    m = result.metrics
    assert m["eval_pair_accuracy"] >= 0.9 and m["eval_spearman"] > 0.6, m  # chance: 0.5 and 0
    assert m["eval_mse"] < 0.25 and m["last_loss"] < m["first_loss"], m  # predicting the mean scores 0.49
    card = json.loads((out / CARD).read_text())
    assert (card["kind"], card["backbone"], card["objective"]) == ("reward_model", backbone, "regression")
    assert card["metrics"]["pair_accuracy"] == pytest.approx(m["eval_pair_accuracy"])

    # the scorer, loaded from the folder alone, gives back the held-out figures and ranks good over bad
    rows = scored_rows(32, 1)
    mean, sd = load_scorer(out).score(*held_out(rows))
    assert mean.shape == sd.shape == (32,) and np.all(np.abs(mean) <= 1) and np.all(sd > 0)
    again = regression_figures(mean, np.asarray([x["score"] for x in rows]))
    for key in ("mse", "pearson", "pair_accuracy"):
        assert again[key] == pytest.approx(card["metrics"][key], abs=1e-4), key
    assert mean[::2].mean() > mean[1::2].mean() + 0.5
    if backbone == "base":  # one honest number: the held-out RMSE
        assert np.all(sd == pytest.approx(m["eval_rmse"]))
    else:  # BayesianRidge's per-answer predictive sd: larger for an answer unlike any it was fitted on
        _, far = load_scorer(out).score(["Wie spät ist es?"], ["Der Zug fährt um 7 Uhr ab, Gleis drei."])
        assert far[0] > sd.mean()


@pytest.mark.parametrize("backbone", ["base", "embed"])
def test_bradley_terry_on_pairs(backbone: str, synthetic: dict[str, Path], engine: Engine, tmp_path: Path) -> None:
    out = tmp_path / "rm"
    result = train(engine, "reward", out_dir=out, data_dir=synthetic["pairs"], base=synthetic["base"],
                   cfg=replace(FAST, reward_backbone=backbone, learning_rate=2e-2, max_steps=16, batch_size=4),
                   progress=False)
    assert result.metrics["eval_pair_accuracy"] >= 0.9, result.metrics
    assert result.metrics["last_loss"] < result.metrics["first_loss"] <= 0.7  # from about ln 2
    card = json.loads((out / CARD).read_text())
    assert card["objective"] == "bradley_terry" and card["scale"]["map"] == "tanh"
    assert card["sd"]["kind"] == "heldout_thurstone" and 0 < card["sd"]["value"] < 1

    rows = pair_rows(24, 3)
    scorer = load_scorer(out)
    chosen, _ = scorer.score(*held_out(rows, "chosen"))
    rejected, sd = scorer.score(*held_out(rows, "rejected"))
    assert pair_accuracy(chosen, rejected) == pytest.approx(card["metrics"]["pair_accuracy"])
    assert np.all(np.abs(chosen) < 1) and chosen.mean() > 0 > rejected.mean()  # centred: an average answer is ~0
    assert np.all(sd == pytest.approx(card["sd"]["value"]))


def test_embed_backbone_honours_max_steps_as_solver_iterations(synthetic: dict[str, Path], engine: Engine,
                                                               tmp_path: Path) -> None:
    """train.max_steps caps the closed-form fit's solver iterations (issue 14), as it caps a Trainer's steps."""
    steps = {}
    for cap in (2, -1):
        result = train(engine, "reward", out_dir=tmp_path / f"rm{cap}", data_dir=synthetic["pairs"],
                       base=synthetic["base"], cfg=replace(FAST, reward_backbone="embed", max_steps=cap),
                       progress=False)
        steps[cap] = result.metrics["steps"]
    assert steps[2] == 2  # stopped at the cap, before converging
    assert steps[-1] > 2  # uncapped, the solver runs to convergence


# --- the run: store -> candidate, resume -------------------------------------------------------------

def test_from_the_example_store_registers_a_candidate_with_held_out_figures(engine: Engine, tiny_base: Path,
                                                                           tmp_path: Path) -> None:
    from safetensors.torch import load_file

    base_hash = sha256(tiny_base / "model.safetensors")
    out = tmp_path / "rm"
    # bf16 here (the default): the figures are measured, and the scorer scores, under bf16 autocast
    result = train_from_store(engine, "reward", out_dir=out, base=tiny_base,
                              cfg=replace(FAST, max_steps=3, bf16=True),
                              progress=False)

    figures = {"eval_mse", "eval_rmse", "eval_pearson", "eval_spearman", "eval_pair_accuracy", "reward_sd"}
    assert figures <= result.metrics.keys() and result.metrics["steps"] == 3
    [version] = list_versions(engine)
    assert version.id == result.version_id and version.status == "candidate"
    assert figures <= version.metrics.keys()
    assert get_run(engine, result.run_id).status == "succeeded"

    # LoRA on the base plus the whole new score head, saved with the adapter; the base folder untouched
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert any("lora_" in k for k in weights) and any(k.endswith("score.weight") for k in weights), list(weights)
    assert sha256(tiny_base / "model.safetensors") == base_hash

    # the scorer reproduces the recorded figures on the eval split the run held out
    from datasets import load_from_disk

    held = load_from_disk(str(out / "data" / "eval"))
    mean, sd = load_scorer(out).score(held["prompt"], [c[0]["content"] for c in held["completion"]])
    # (the scorer merges the adapter into the base, so bf16 rounds a little differently than in training)
    assert regression_figures(mean, np.asarray(held["score"]))["mse"] == pytest.approx(result.metrics["eval_mse"],
                                                                                       abs=1e-3)
    assert np.all(sd == pytest.approx(result.metrics["reward_sd"]))


class CrashAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if state.global_step == 2:
            raise RuntimeError("simulated crash after checkpoint 2")


class StepCounter(TrainerCallback):
    def __init__(self) -> None:
        self.n = 0

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        self.n += 1


def test_a_crashed_base_run_resumes_to_the_same_model(synthetic: dict[str, Path], engine: Engine,
                                                      tmp_path: Path) -> None:
    from safetensors.torch import load_file

    cfg = replace(FAST, max_steps=4, save_steps=2)
    whole = train(engine, "reward", out_dir=tmp_path / "whole", data_dir=synthetic["scored"], base=synthetic["base"],
                  cfg=cfg, progress=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(engine, "reward", out_dir=tmp_path / "crashed", data_dir=synthetic["scored"], base=synthetic["base"],
              cfg=cfg, progress=False, callbacks=[CrashAfterSave()])
    [crashed] = [r for r in list_runs(engine) if r.status == "failed"]
    steps = StepCounter()
    resumed = resume(engine, crashed.id, progress=False, callbacks=[steps])
    assert steps.n == 2  # it continued from checkpoint 2 (weights, head, optimizer); it did not start over

    want, got = load_file(str(whole.out_dir / "adapter_model.safetensors")), load_file(
        str(resumed.out_dir / "adapter_model.safetensors"))
    assert want.keys() == got.keys() and any(k.endswith("score.weight") for k in got)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)
    assert resumed.metrics["eval_mse"] == pytest.approx(whole.metrics["eval_mse"], abs=1e-5)
    assert (resumed.out_dir / CARD).is_file()


# --- bad input ---------------------------------------------------------------------------------------

def constant_scores(folder: Path) -> Path:
    rows = [x | {"score": 0.5} for x in scored_rows(8, 0)]
    return save_rows(folder, rows, [], "reward")


@pytest.mark.parametrize(("case", "message"), [
    ("sft", r"'sft' dataset, but --method reward needs 'reward' or 'dpo'.*ratingloop build --format reward"),
    ("empty", r"the train split is empty"),
    ("constant", r"every one of the 8 train scores is \+0.500.*answers whose rewards differ"),
])
@pytest.mark.parametrize("backbone", ["base", "embed"])
def test_bad_input_stops_before_training(case: str, message: str, backbone: str, engine: Engine, tiny_base: Path,
                                         tmp_path: Path) -> None:
    data = tmp_path / case
    if case == "sft":
        build_dataset(engine, "sft", data, BuildConfig(), record_signals(engine))
    elif case == "empty":
        save_rows(data, [], [], "reward")
    else:
        constant_scores(data)
    out = tmp_path / "rm"
    with pytest.raises(RatingloopError, match=message):
        train(engine, "reward", out_dir=out, data_dir=data, base=tiny_base,
              cfg=replace(FAST, reward_backbone=backbone), progress=False)
    [run] = list_runs(engine)
    assert run.status == "failed" and list_versions(engine) == []
    assert not (out / CARD).exists() and not (out / "adapter_model.safetensors").exists()
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())


def test_load_scorer_refuses_what_is_not_a_reward_model(tiny_base: Path, tmp_path: Path) -> None:
    with pytest.raises(RatingloopError, match=r"is a policy adapter or model, not a reward model.*--method reward"):
        load_scorer(tiny_base)
    with pytest.raises(RatingloopError, match="no such folder"):
        load_scorer(tmp_path / "nothing")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / CARD).write_text('{"kind": "reward_model", "backbone": "gpt"}')
    with pytest.raises(RatingloopError, match="known backbone"):
        load_scorer(tmp_path / "odd")


# --- the figures ---------------------------------------------------------------------------------------

def test_thurstone_sd_recovers_the_noise_that_flips_pairs() -> None:
    rng = np.random.default_rng(0)
    quality = rng.uniform(-0.8, 0.8, (4000, 2))
    chosen, rejected = quality.max(axis=1), quality.min(axis=1)  # the truth orders every pair
    noisy = [x + rng.normal(0, 0.2, len(x)) for x in (chosen, rejected)]  # the model's scores: sd 0.2 off
    assert thurstone_sd(*noisy) == pytest.approx(0.2, rel=0.1)
    assert thurstone_sd(chosen[:3], rejected[:3]) > 0.05  # three right pairs do not prove certainty


def test_pairwise_accuracy_counts_ties_half_and_skips_equal_targets() -> None:
    assert pair_accuracy(np.array([1.0, 0.0, 2.0]), np.array([0.0, 1.0, 2.0])) == pytest.approx(0.5)
    figures = regression_figures(np.array([0.1, 0.2, 0.2, 0.15]), np.array([-1.0, 0.0, 0.0, 1.0]))
    # 5 pairs have different targets, 3 of them ordered right; rows 2 and 3 tie in target and are not a pair
    assert figures["pair_accuracy"] == pytest.approx(3 / 5)
    assert regression_figures(np.zeros(3), np.array([0.0, 1.0, -1.0]))["pearson"] is None
