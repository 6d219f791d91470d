"""Build stage -> TRL: each builder's output, loaded with `datasets.load_from_disk`, trains one step
under the matching TRL trainer on a tiny random Llama (tests/tiny.py), with no change to the data.

The example store (examples/support-chat.jsonl) is built once per module into every format.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from ratingloop.dataset import FORMATS, BuildConfig, build_dataset
from ratingloop.signals import record_signals
from ratingloop.store import open_engine
from ratingloop.store.db import dispose_engines
from ratingloop.store.jsonl import import_lines
from ratingloop.store.records import Limits
from tiny import texts_of, tiny_causal_lm, tiny_reward_model, tiny_tokenizer, trainer_args

KEY = b"test-user-key"  # the server's secret, which tombstones are keyed with (store.writes.user_hash)

EXAMPLE = Path(__file__).parent.parent / "examples" / "support-chat.jsonl"
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("built")
    engine = open_engine(f"sqlite:///{root / 'store.db'}")
    import_lines(engine, EXAMPLE.read_bytes().splitlines(), Limits(), user_key=KEY)
    record_signals(engine)  # every format built from this one run
    out = {fmt: root / fmt for fmt in FORMATS}
    for fmt, path in out.items():
        build_dataset(engine, fmt, path, BuildConfig())
    dispose_engines()
    return out


@pytest.fixture(scope="module")
def tok(built: dict[str, Path]) -> Any:
    rows = [json.loads(x) for p in built.values() for x in (p / "train.jsonl").read_text().splitlines()]
    return tiny_tokenizer(texts_of(rows))


def load(path: Path, split: str = "train") -> Any:
    from datasets import load_from_disk

    return load_from_disk(str(path / split))


def one_step(trainer: Any) -> float:
    loss = trainer.train().training_loss
    assert trainer.state.global_step == 1 and loss == loss  # one step, a finite (non-NaN) loss
    return float(loss)


def test_sft(built: dict[str, Path], tok: Any, tmp_path: Path) -> None:
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(tmp_path), max_length=128, **trainer_args())
    one_step(SFTTrainer(model=tiny_causal_lm(tok), args=args, train_dataset=load(built["sft"]),
                        eval_dataset=load(built["sft"], "eval"), processing_class=tok))


def test_weighted_loads_as_sft_plus_weight(built: dict[str, Path], tok: Any, tmp_path: Path) -> None:
    from trl import SFTConfig, SFTTrainer

    ds = load(built["weighted"])
    assert ds.column_names == ["prompt", "completion", "weight", "interaction_ids"]  # the ids: for tracing only
    assert all(-1.0 <= w <= 1.0 for w in ds["weight"]) and min(ds["weight"]) < 0 < max(ds["weight"])
    args = SFTConfig(output_dir=str(tmp_path), max_length=128, **trainer_args())
    one_step(SFTTrainer(model=tiny_causal_lm(tok), args=args, train_dataset=ds, processing_class=tok))


def test_kto_with_the_manifest_weights(built: dict[str, Path], tok: Any, tmp_path: Path) -> None:
    from trl import KTOConfig, KTOTrainer

    w = json.loads((built["kto"] / "manifest.json").read_text())["kto"]
    args = KTOConfig(output_dir=str(tmp_path), max_length=128, desirable_weight=w["desirable_weight"],
                     undesirable_weight=w["undesirable_weight"], **trainer_args())
    one_step(KTOTrainer(model=tiny_causal_lm(tok), ref_model=tiny_causal_lm(tok), args=args,
                        train_dataset=load(built["kto"]), processing_class=tok))


def test_dpo(built: dict[str, Path], tok: Any, tmp_path: Path) -> None:
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(tmp_path), max_length=128, **trainer_args())
    one_step(DPOTrainer(model=tiny_causal_lm(tok), ref_model=tiny_causal_lm(tok), args=args,
                        train_dataset=load(built["dpo"]), processing_class=tok))


def test_reward_trainer_on_the_preference_pairs(built: dict[str, Path], tok: Any, tmp_path: Path) -> None:
    """TRL's RewardTrainer learns from preferences only (prompt/chosen/rejected): the dpo output feeds it."""
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig(output_dir=str(tmp_path), max_length=128, **trainer_args())
    one_step(RewardTrainer(model=tiny_reward_model(tok), args=args, train_dataset=load(built["dpo"]),
                           processing_class=tok))


def test_reward_scores_train_a_regression_head(built: dict[str, Path], tok: Any, tmp_path: Path) -> None:
    """The pointwise reward set (prompt/completion/score) trains a num_labels=1 head on the score (MSE):
    the chat template renders each row, the score is the label."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    ds = load(built["reward"])
    assert ds.column_names == ["prompt", "completion", "score", "interaction_ids"]

    def encode(row: dict[str, Any]) -> dict[str, Any]:
        ids = tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=True, return_dict=True,
                                      truncation=True, max_length=128)
        return {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"], "labels": float(row["score"])}

    model = tiny_reward_model(tok)
    model.config.problem_type = "regression"
    args = TrainingArguments(output_dir=str(tmp_path), **trainer_args())
    one_step(Trainer(model=model, args=args, train_dataset=ds.map(encode, remove_columns=ds.column_names),
                     data_collator=DataCollatorWithPadding(tok)))
