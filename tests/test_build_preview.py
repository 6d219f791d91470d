"""`ratingloop build ... --preview N`: the first rows of the set just built, readable - texts cut to a line,
the label or score, the signals run's rewards and the interactions each answer came from - and exactly the
rows the build wrote (train first, then eval)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from build_store import line, store_with
from ratingloop.cli import app
from ratingloop.dataset import BuildConfig, build_dataset, preview
from ratingloop.dataset.preview import cut
from ratingloop.signals import load_signals

runner = CliRunner()
LONG = "Open Settings, then Billing, then Invoices; every invoice since you signed up is listed there " * 3


def rows(out: Path, split: str) -> list[dict]:
    return [json.loads(x) for x in (out / f"{split}.jsonl").read_text().splitlines()]


def test_preview_is_the_built_rows_cut_to_a_line(sqlite_url: str, tmp_path: Path) -> None:
    engine = store_with(sqlite_url, [line("long-good", "Where is my invoice?", LONG, 5),
                                     line("short-bad", "Where is my invoice?", "No idea.", 1),
                                     line("good-2", "Do you ship to Canada?", "Yes, in 5-8 business days.", 5),
                                     line("bad-2", "Do you ship to Canada?", "Maybe.", 1)])
    run = load_signals(engine)
    rewards = {s.interaction_id: s.reward for s in run.interactions}
    out = tmp_path / "kto"
    result = build_dataset(engine, "kto", out, BuildConfig(eval_fraction=0.5), run)
    built = [("train", r) for r in rows(out, "train")] + [("eval", r) for r in rows(out, "eval")]
    assert result.n_train + result.n_eval == len(built) == 4

    shown = preview(out, 10, rewards, width=40)
    assert len(shown) == 4 and [r.split for r in shown] == [s for s, _ in built]
    for r, (_, data) in zip(shown, built, strict=True):
        assert r.prompt == data["prompt"][-1]["content"]
        assert r.answers == [("completion", cut(data["completion"][0]["content"], 40))]
        assert r.label == ("desirable" if data["label"] else "undesirable")
        assert r.interaction_ids == [data["interaction_ids"]]
        assert r.reward == f"{rewards[data['interaction_ids'][0]]:+.2f}"
    long = next(r for r in shown if r.interaction_ids == [["long-good"]])
    assert len(long.answers[0][1]) <= 40 and long.answers[0][1].endswith("...") and "\n" not in long.answers[0][1]
    assert long.answers[0][1].startswith("Open Settings, then Billing")
    assert [r.split for r in preview(out, 1, rewards)] == ["train"]  # N rows, train first


def test_build_preview_through_the_cli_names_rows_labels_rewards_and_interactions(sqlite_url: str,
                                                                                   tmp_path: Path) -> None:
    engine = store_with(sqlite_url)
    run = load_signals(engine)
    rewards = {s.interaction_id: s.reward for s in run.interactions}
    out = tmp_path / "dpo"
    result = runner.invoke(app, ["build", "--format", "dpo", "--out", str(out), "--preview", "2", "--db", sqlite_url,
                                 "--set", "build.eval_fraction=0.0"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "the first 2 row(s)" in text and text.count("[train]") == 2
    for data in rows(out, "train")[:2]:  # each shown row is a built one: its answers, interactions and rewards
        assert f"chosen: {cut(data['chosen'][0]['content'], 70)}  ({', '.join(data['chosen_interaction_ids'])})" in text
        assert f"rejected: {cut(data['rejected'][0]['content'], 70)}" in text
        chosen = ", ".join(f"{rewards[i]:+.2f}" for i in data["chosen_interaction_ids"][:4])
        assert f"reward {chosen} vs " in text
    kto = runner.invoke(app, ["build", "--format", "kto", "--out", str(tmp_path / "kto"), "--preview", "3", "--db",
                              sqlite_url])
    assert kto.exit_code == 0 and kto.stdout.count("completion: ") == 3
    assert kto.stdout.count("desirable") == 3  # "undesirable" contains it too: one label a row
    plain = runner.invoke(app, ["build", "--format", "sft", "--out", str(tmp_path / "sft"), "--db", sqlite_url])
    assert plain.exit_code == 0 and "row(s)" not in plain.stdout  # no preview unless asked
