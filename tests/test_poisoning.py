"""A poisoned round: a burst of new accounts, created together, rating every answer against what everyone
else says. The rater model must flag them, and the training sets built after the burst must be the ones
built before it, so no worse model can come of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from build_store import line, store_with
from ratingloop.dataset import BuildConfig, build_dataset
from ratingloop.signals import load_signals

QUESTIONS = [f"How do I fix problem number {i}?" for i in range(12)]
BURST = [f"new-account-{k}" for k in range(4)]  # against 5 honest raters on every answer


def history() -> list[dict[str, Any]]:
    out = []
    for i, q in enumerate(QUESTIONS):
        out.append(line(f"good-{i}", q, f"Open settings, choose repair {i}, and restart.", 5))
        out.append(line(f"bad-{i}", q, f"No idea about {i}.", 1))
    return out


def poisoned() -> list[dict[str, Any]]:
    lines = history()
    for x in lines:  # every answer, the opposite mark, all within one minute
        stars = 1 if x["id"].startswith("good") else 5
        x["ratings"] = x["ratings"] + [{"rater_id": r, "kind": "stars", "value": stars, "scale": [1, 5],
                                        "created_at": f"2026-11-02T09:00:{k:02d}Z"} for k, r in enumerate(BURST)]
    return lines


def rows(folder: Path) -> list[tuple[str, str, Any]]:
    import datasets

    data = datasets.load_from_disk(str(folder / "train"))
    return sorted((r["prompt"][-1]["content"], (r.get("completion") or r["chosen"])[0]["content"],
                   r.get("label", (r.get("rejected") or [{}])[0].get("content"))) for r in data)


def test_a_burst_of_new_accounts_is_flagged_and_changes_no_training_set(tmp_path: Path) -> None:
    clean = store_with(f"sqlite:///{tmp_path / 'clean.db'}", history())
    attacked = store_with(f"sqlite:///{tmp_path / 'attacked.db'}", poisoned())
    run = load_signals(attacked)
    assert set(BURST) <= run.flagged and not {f"r{k}" for k in range(1, 6)} & run.flagged
    rewards = {s.interaction_id: s.reward for s in run.interactions}
    assert all(rewards[f"good-{i}"] > 0.3 > -0.3 > rewards[f"bad-{i}"] for i in range(len(QUESTIONS)))
    for fmt in ("kto", "dpo"):
        cfg = BuildConfig(eval_fraction=0)
        build_dataset(clean, fmt, tmp_path / f"clean-{fmt}", cfg)
        build_dataset(attacked, fmt, tmp_path / f"attacked-{fmt}", cfg)
        assert rows(tmp_path / f"attacked-{fmt}") == rows(tmp_path / f"clean-{fmt}"), fmt
