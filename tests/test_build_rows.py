"""Build stage, table tests: rows in -> rows kept, dropped, and the filter that dropped them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from build_store import line, store_with
from ratingloop.dataset import BuildConfig, build_dataset
from ratingloop.errors import RatingloopError
from ratingloop.signals import load_signals
from ratingloop.store import tables as t


def rows_of(out: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for split in ("train", "eval") for x in (out / f"{split}.jsonl").read_text().splitlines()]


def answers(rows: list[dict[str, Any]], key: str = "completion") -> set[str]:
    return {r[key][0]["content"] for r in rows}


def removed(result: Any) -> dict[str, int]:
    return {f["filter"]: f["removed"] for f in result.manifest["filters"]}


@pytest.fixture
def engine(sqlite_url: str) -> Any:
    return store_with(sqlite_url)


def test_sft_keeps_confidently_good_answers_and_corrections(engine: Any, tmp_path: Path) -> None:
    result = build_dataset(engine, "sft", tmp_path / "sft", BuildConfig())
    rows = rows_of(tmp_path / "sft")
    assert answers(rows) == {"Click 'Forgot password' on the sign-in page.", "Yes, in 5-8 business days.",
                             "Each seat is for one person; add a teammate instead.", "Settings -> Billing -> Invoices.",
                             "Use 'Forgot password' on the sign-in page; the link is valid for one hour."}
    assert removed(result)["duplicate_answers"] == 1  # good-1 and good-1-again: one answer
    assert removed(result)["not_confidently_good"] == 5  # bad x3, middling x2
    assert rows[0]["prompt"][0] == {"role": "system", "content": "You are the support assistant."}
    assert all(r["completion"][0]["role"] == "assistant" and set(r) == {"prompt", "completion", "interaction_ids"}
               for r in rows)


def test_kto_labels_only_clear_answers(engine: Any, tmp_path: Path) -> None:
    result = build_dataset(engine, "kto", tmp_path / "kto", BuildConfig())
    label = {r["completion"][0]["content"]: r["label"] for r in rows_of(tmp_path / "kto")}
    assert label["Contact support."] is False and label["No idea."] is False
    assert label["Click 'Forgot password' on the sign-in page."] is True
    assert label["Use 'Forgot password' on the sign-in page; the link is valid for one hour."] is True  # correction
    assert {"Sometimes.", "It depends on the plan."}.isdisjoint(label)
    assert removed(result)["uncertain_label"] == 2
    w = result.manifest["kto"]
    ratio = w["desirable_weight"] * w["n_desirable"] / (w["undesirable_weight"] * w["n_undesirable"])
    assert 1.0 <= ratio <= 4 / 3 and 1.0 in (w["desirable_weight"], w["undesirable_weight"])


def test_dpo_pairs_need_a_supported_gap(engine: Any, tmp_path: Path) -> None:
    result = build_dataset(engine, "dpo", tmp_path / "dpo", BuildConfig())
    pairs = {(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows_of(tmp_path / "dpo")}
    assert pairs == {
        ("Click 'Forgot password' on the sign-in page.", "Contact support."),
        ("Use 'Forgot password' on the sign-in page; the link is valid for one hour.", "Contact support."),
        ("Each seat is for one person; add a teammate instead.", "Sure, share the password."),
        ("Settings -> Billing -> Invoices.", "No idea."),
    }
    assert removed(result)["single_answer_prompts"] == 1  # shipping
    assert removed(result)["gap_within_margin"] == 1  # the two middling invoice answers


def test_uncertainty_sets_the_bar(engine: Any, tmp_path: Path) -> None:
    """The same rewards with a 40x wider prior sd: no answer is confidently good any more, and no
    pair is supported; only the correction (a rater's own answer) is left."""
    result = build_dataset(engine, "sft", tmp_path / "sft", BuildConfig(reward_prior_sd=40.0))
    assert answers(rows_of(tmp_path / "sft")) == {
        "Use 'Forgot password' on the sign-in page; the link is valid for one hour."}
    assert removed(result)["not_confidently_good"] == 9
    result = build_dataset(engine, "dpo", tmp_path / "dpo", BuildConfig(reward_prior_sd=40.0))
    assert removed(result)["gap_within_margin"] == 1 + 1 + 1 + 1 and result.n_train + result.n_eval == 1


def test_dpo_margin_is_configurable(engine: Any, tmp_path: Path) -> None:
    # an absurd margin leaves only the correction pair, which needs no margin
    build_dataset(engine, "dpo", tmp_path / "dpo", BuildConfig(pair_min_gap=2.5))
    assert len(rows_of(tmp_path / "dpo")) == 1


def test_reward_and_weighted_carry_the_number(engine: Any, tmp_path: Path) -> None:
    result = build_dataset(engine, "reward", tmp_path / "reward", BuildConfig())
    score = {r["completion"][0]["content"]: r["score"] for r in rows_of(tmp_path / "reward")}
    assert len(score) == 9 and score["Contact support."] < -0.9 < 0.9 < score["Yes, in 5-8 business days."]
    assert removed(result)["corrections_unscored"] == 1
    result = build_dataset(engine, "weighted", tmp_path / "weighted", BuildConfig())
    weight = {r["completion"][0]["content"]: r["weight"] for r in rows_of(tmp_path / "weighted")}
    assert weight["Contact support."] < -0.9 and weight["Settings -> Billing -> Invoices."] > 0.4
    assert weight["Use 'Forgot password' on the sign-in page; the link is valid for one hour."] == 1.0
    assert removed(result)["near_zero_weight"] >= 2 and "Sometimes." not in weight


def test_flagged_raters_leave_no_trace(engine: Any, tmp_path: Path) -> None:
    """r1 wrote the correction; in a run that flagged r1 (so did not count r1's ratings), neither the
    correction nor r1's ratings are used: the build takes the run's counted ratings as they are."""
    signals = load_signals(engine)
    with engine.connect() as conn:
        theirs = set(conn.execute(select(t.ratings.c.id).where(t.ratings.c.rater_id == "r1")).scalars())
    raters = [dataclasses.replace(r, flagged=r.rater_id == "r1") for r in signals.raters]
    counted = {iid: [rid for rid in ids if rid not in theirs] for iid, ids in signals.counted.items()}
    flagged = dataclasses.replace(signals, raters=raters, counted=counted)
    result = build_dataset(engine, "sft", tmp_path / "sft", BuildConfig(), signals=flagged)
    assert "Use 'Forgot password' on the sign-in page; the link is valid for one hour." not in answers(
        rows_of(tmp_path / "sft"))
    assert result.manifest["inputs"]["flagged_raters"] == ["r1"]
    assert not theirs & set(result.manifest["rating_ids"])
    clean = build_dataset(engine, "sft", tmp_path / "clean", BuildConfig(), signals=signals)
    assert set(result.manifest["rating_ids"]) < set(clean.manifest["rating_ids"])


def test_zero_rows_names_the_filter(sqlite_url: str, tmp_path: Path) -> None:
    lines = [line(f"q{k}", f"Question {k}?", f"Answer {k}.", 5) for k in range(4)]
    engine = store_with(sqlite_url, lines)
    with pytest.raises(RatingloopError, match=r"0 pairs .*4 prompts have one answer only; DPO needs two answers"):
        build_dataset(engine, "dpo", tmp_path / "dpo", BuildConfig())
    assert not (tmp_path / "dpo").exists()
    with pytest.raises(RatingloopError, match=r"0 rows .*not confidently good"):
        build_dataset(engine, "sft", tmp_path / "sft", BuildConfig(sft_min_reward=1.0))


def test_small_sets_warn(engine: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    result = build_dataset(engine, "sft", tmp_path / "sft", BuildConfig())
    assert any("only" in w and "in train" in w for w in result.warnings)
    assert result.manifest["warnings"] == result.warnings
    assert "in train after cleaning" in caplog.text


def test_bad_config_is_refused(engine: Any, tmp_path: Path) -> None:
    with pytest.raises(RatingloopError, match=r"sft_min_reward=2 .*eval_fraction=1.5"):
        build_dataset(engine, "sft", tmp_path, BuildConfig(eval_fraction=1.5, sft_min_reward=2))
    with pytest.raises(RatingloopError, match="--format 'ppo'"):
        build_dataset(engine, "ppo", tmp_path, BuildConfig())



def test_judge_only_answers_count_less_and_never_train_a_reward_model(sqlite_url: str, tmp_path: Path) -> None:
    from build_store import CASES

    judge = {"rater_id": "judge:rm-1", "source": "judge", "kind": "scale", "value": 0.9, "scale": [-1, 1]}
    judged = line("judged-1", "How do I export my data?", "Settings -> Privacy -> Export; a link arrives by email.",
                  extra=[judge])
    engine = store_with(sqlite_url, [*CASES, judged])
    text = "Settings -> Privacy -> Export; a link arrives by email."

    result = build_dataset(engine, "reward", tmp_path / "reward", BuildConfig())
    assert text not in answers(rows_of(tmp_path / "reward")) and removed(result)["judged_only"] == 1

    signals = load_signals(engine)
    full = {s.interaction_id: s.confidence for s in signals.interactions}["judged-1"]
    build_dataset(engine, "weighted", tmp_path / "half", BuildConfig(min_confidence=0.0, weighted_min_abs=0.0),
                  signals=signals)
    weight = {r["completion"][0]["content"]: r["weight"] for r in rows_of(tmp_path / "half")}
    reward = {s.interaction_id: s.reward for s in signals.interactions}["judged-1"]
    assert weight[text] == pytest.approx(reward * full * 0.5, abs=1e-3)  # confidence times judge_weight

    result = build_dataset(engine, "weighted", tmp_path / "none", BuildConfig(judge_weight=0.0, min_confidence=0.0,
                                                                              weighted_min_abs=0.0), signals=signals)
    assert text not in answers(rows_of(tmp_path / "none")) and removed(result)["judge_only"] == 1
    with pytest.raises(Exception, match="judge_weight=2"):
        BuildConfig(judge_weight=2).validate()


def test_kto_fills_a_missing_class_from_its_side_of_neutral(sqlite_url: str, tmp_path: Path) -> None:
    good = [line(f"g{i}", f"Question {i}?", f"A clear, complete answer number {i}.", 5) for i in range(10)]
    doubted = [line(f"d{i}", f"Question {i}?", f"Not sure {i}.", thumbs=-1, user=f"asker{i}") for i in range(3)]
    engine = store_with(sqlite_url, good + doubted)
    strict = build_dataset(engine, "kto", tmp_path / "strict", BuildConfig(kto_min_class=0, eval_fraction=0))
    strict_labels = {r["completion"][0]["content"]: r["label"] for r in rows_of(tmp_path / "strict")}
    assert set(strict_labels.values()) == {True} and removed(strict)["uncertain_label"] == 3  # one-sided: no KTO

    result = build_dataset(engine, "kto", tmp_path / "kto", BuildConfig(eval_fraction=0))
    labels = {r["completion"][0]["content"]: r["label"] for r in rows_of(tmp_path / "kto")}
    assert [labels[f"Not sure {i}."] for i in range(3)] == [False] * 3
    assert sum(labels.values()) == 10 and removed(result)["uncertain_label"] == 0
    assert "kto_min_class=8" in " ".join(f["why"] for f in result.manifest["filters"])
    assert result.manifest["kto"]["n_undesirable"] == 3
