"""`ratingloop label` and `ratingloop ask`: a trained reward model scores what nobody has rated.

The example store plus a few interactions nobody rated - support answers like the reward model's
training answers, and two unlike anything it saw (German and French small talk) - on a real SQLite
store. The reward model is the fast one (embed backbone, one BayesianRidge fit) on synthetic support
answers whose reward depends on the text (an apology opens the good ones), trained once per module and
registered in the store that every test gets a copy of. `label` stores judge ratings
through the store's write path (idempotent, append-only), the signals stage reads them as rewards, and
`ask` ranks the interactions without a human rating by the model's predictive sd.
"""

from __future__ import annotations

import json
import random
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from ratingloop.errors import RatingloopError
from ratingloop.store import open_engine, write_units
from ratingloop.store import tables as t
from ratingloop.train import TrainConfig, train
from ratingloop.train.label import (
    MIN_CONFIDENCE,
    SD_UNINFORMED,
    ask,
    confidence,
    judge_unit,
    label,
    priority,
    rating_key,
    reward_model_dir,
    unrated_count,
)
from ratingloop.train.scoring import load_scorer
from train_support import EXAMPLE, save_tiny_base, store

KEY = b"test-user-key"  # the server's secret, which tombstones are keyed with (store.writes.user_hash)

SYSTEM = {"role": "system", "content": "You are the support assistant for Acme."}
UNRATED = [  # (id, question, answer); created in this order, so the last is the newest
    ("new-refund", "A question about my refund", "Sorry! Your refund request is being processed."),
    ("new-order", "A question about my order", "Let me check. Your order is on its way."),
    ("new-invoice", "A question about my invoice", "Sorry! Open settings to manage your invoice."),
    ("new-account", "A question about my account", "Sure. We have updated your account details."),
    ("far-german", "Wie spät ist es in Berlin?", "Der Zug nach Hamburg fährt um sieben Uhr ab, Gleis drei."),
    ("far-french", "Quelle est la capitale du Burkina Faso ?", "Ouagadougou, une ville de deux millions d'habitants."),
]
FAR = {"far-german", "far-french"}
TOPICS = ["refund", "delivery", "password", "invoice", "account", "order", "shipping", "subscription"]
OPENERS = ["Thanks for asking.", "Sure.", "Here is what I found.", "Let me check.", "Hi there."]
BODIES = ["Your {t} request is being processed.", "I can help with your {t}.", "Open settings to manage your {t}.",
          "We have updated your {t} details.", "Your {t} is on its way.", "The {t} team replies in two days."]


def reward_rows(n: int, seed: int) -> list[dict]:
    """Support answers scored by the text: one that opens with an apology is good (0.8), else bad (-0.6)."""
    rng, out = random.Random(seed), []
    for i in range(n):
        topic = rng.choice(TOPICS)
        text = f"{rng.choice(OPENERS)} {rng.choice(BODIES).format(t=topic)}"
        out.append({"prompt": [SYSTEM, {"role": "user", "content": f"A question about my {topic}"}],
                    "completion": [{"role": "assistant", "content": f"Sorry! {text}" if i % 2 == 0 else text}],
                    "score": 0.8 if i % 2 == 0 else -0.6})
    return out


def unrated_lines() -> list[bytes]:
    return [json.dumps({"id": iid, "messages": [SYSTEM, {"role": "user", "content": q}], "response": a,
                        "created_at": f"2026-12-0{k + 1}T10:00:00Z"}).encode()
            for k, (iid, q, a) in enumerate(UNRATED)]


@dataclass(frozen=True)
class Trained:
    db: Path  # a store with the example, the unrated interactions and a registered reward model
    reward_model: Path
    version_id: str


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    from datasets import Dataset

    root = tmp_path_factory.mktemp("label")
    engine = store(root, EXAMPLE.read_bytes().splitlines() + unrated_lines())
    for split, rows in (("train", reward_rows(48, 0)), ("eval", reward_rows(16, 1))):
        Dataset.from_list(rows).save_to_disk(str(root / "scored" / split))
    (root / "scored" / "manifest.json").write_text(json.dumps({"format": "reward"}))
    rm = train(engine, "reward", out_dir=root / "rm", data_dir=root / "scored",
               base=save_tiny_base(root / "base"),  # the embed head does not read the base
               cfg=TrainConfig.for_method("reward", reward_backbone="embed"), progress=False)
    return Trained(root / "store.db", rm.out_dir, rm.version_id)


@pytest.fixture
def engine(trained: Trained, tmp_path: Path) -> Engine:
    """A copy of the trained store (SQLite's backup API: WAL contents included) for this test alone."""
    with sqlite3.connect(trained.db) as src, sqlite3.connect(tmp_path / "store.db") as dst:
        src.backup(dst)
    return open_engine(f"sqlite:///{tmp_path / 'store.db'}")


def judge_rows(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(t.ratings).where(t.ratings.c.source == "judge")).mappings()]


def score(folder: Path, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    by_id = {iid: (q, a) for iid, q, a in UNRATED}
    prompts = [[SYSTEM, {"role": "user", "content": by_id[i][0]}] for i in ids]
    return load_scorer(folder).score(prompts, [by_id[i][1] for i in ids])


# --- label -------------------------------------------------------------------------------------------

def test_label_stores_a_judge_rating_per_unrated_interaction_once(engine: Engine, trained: Trained) -> None:
    assert unrated_count(engine) == len(UNRATED)
    report = label(engine, user_key=KEY)  # the newest registered reward model, at the default MIN_CONFIDENCE
    assert report.reward_model == str(trained.reward_model)
    # the model knows the support answers; the small talk it never saw is too uncertain to store (it waits)
    near = {iid for iid, _, _ in UNRATED} - FAR
    assert (report.scored, report.written, report.existing, report.skipped_unsure) == (len(UNRATED), len(near), 0, 2)
    rows = {r["interaction_id"]: r for r in judge_rows(engine)}
    assert set(rows) == near  # and the human-rated interactions are left alone
    ids = sorted(rows)
    mean, sd = score(trained.reward_model, ids)
    for iid, m, s in zip(ids, mean, sd, strict=True):
        r = rows[iid]
        assert (r["rater_id"], r["source"], r["kind"], r["aspect"]) == (f"judge:{trained.version_id}", "judge",
                                                                       "scale", "overall")
        assert (r["scale_min"], r["scale_max"]) == (-1.0, 1.0) and r["value"] == pytest.approx(m, abs=1e-4)
        note = json.loads(r["text"])
        assert note == {"sd": pytest.approx(s, abs=1e-4), "reward_model": str(trained.reward_model.resolve())}
        assert r["idempotency_key"] == rating_key(trained.version_id, iid)

    assert confidence(sd).min() >= MIN_CONFIDENCE > confidence(score(trained.reward_model, sorted(FAR))[1]).max()

    # a re-run adds nothing (only the skipped are scored again); a replay of a stored score is known by its key
    again = label(engine, user_key=KEY)
    assert (again.scored, again.written, again.skipped_unsure, unrated_count(engine)) == (2, 0, 2, 2)
    replay = judge_unit(ids[0], float(mean[0]), float(sd[0]), f"judge:{trained.version_id}", trained.version_id,
                        trained.reward_model)
    [result] = write_units(engine, [replay], user_key=KEY)
    assert [status for _, status in result.ratings] == [200]
    assert len(judge_rows(engine)) == len(near)


def test_limit_takes_the_newest_and_min_confidence_skips_unsure_scores(engine: Engine, trained: Trained) -> None:
    report = label(engine, trained.reward_model, user_key=KEY, limit=2, min_confidence=0.0)
    assert (report.scored, report.written) == (2, 2)
    assert {r["interaction_id"] for r in judge_rows(engine)} == {"far-french", "far-german"}  # newest first

    ids = [iid for iid, _, _ in UNRATED[:4]]
    _, sd = score(trained.reward_model, ids)
    conf = confidence(sd)
    assert np.all((conf > 0) & (conf < 1)) and np.allclose(conf, 1 - sd / SD_UNINFORMED)
    cut = float(np.median(conf))
    report = label(engine, trained.reward_model, user_key=KEY, min_confidence=cut)
    assert report.scored == 4 and report.written == int((conf >= cut).sum()) and report.skipped_unsure == int(
        (conf < cut).sum()) > 0
    # the skipped ones stay unrated: a later run without the threshold labels them
    assert label(engine, trained.reward_model, user_key=KEY, min_confidence=0.0).written == report.skipped_unsure


def test_signals_read_judge_ratings_as_rewards(engine: Engine) -> None:
    from ratingloop.signals.report import compute_signals

    label(engine, user_key=KEY, min_confidence=0.0)
    values = {r["interaction_id"]: r["value"] for r in judge_rows(engine)}
    result = compute_signals(engine)
    by_id = {s.interaction_id: s for s in result.interactions}
    judged = sorted(values)
    assert all(by_id[i].n_ratings == 1 for i in judged)
    # a judge-only interaction's reward follows the judge's score, pulled towards what the content prior expects
    # of that text (which content model judges it depends on the judge's fold, i.e. on its version id): two close
    # scores may swap (seen in CI: 0.30 and 0.67), the order as a whole follows the judge
    r = np.corrcoef([values[i] for i in judged], [by_id[i].reward for i in judged])[0, 1]
    assert r > 0.8, r
    [judge] = [r for r in result.raters if r.rater_id.startswith("judge:")]
    assert judge.n == len(UNRATED) and not judge.flagged


def test_without_a_reward_model_label_names_the_command(tmp_path: Path) -> None:
    engine = store(tmp_path, unrated_lines())
    with pytest.raises(RatingloopError, match=r"no reward model.*ratingloop train --method reward --out DIR.*--model"):
        label(engine, user_key=KEY)
    with pytest.raises(RatingloopError, match=r"not a reward model"):
        label(engine, tmp_path, user_key=KEY)  # a folder, but no reward_model.json
    with pytest.raises(RatingloopError, match=r"--limit 0"):
        label(engine, tmp_path, user_key=KEY, limit=0)


def test_the_newest_registered_reward_model_whose_folder_still_holds_it(engine: Engine, trained: Trained,
                                                                        tmp_path: Path) -> None:
    from ratingloop.models.registry import finish_run, start_run

    assert reward_model_dir(engine, None) == trained.reward_model
    gone = start_run(engine, method="reward", config={}, base_model="x")  # newer, but its folder was deleted
    finish_run(engine, gone, adapter_path=tmp_path / "deleted", metrics={})
    policy = start_run(engine, method="sft", config={}, base_model="x")  # newer still, but not a reward model
    finish_run(engine, policy, adapter_path=trained.reward_model, metrics={})
    assert reward_model_dir(engine, None) == trained.reward_model
    assert reward_model_dir(engine, tmp_path) == tmp_path  # a given folder wins


# --- ask ---------------------------------------------------------------------------------------------

def test_ask_puts_interactions_unlike_anything_rated_first(engine: Engine, trained: Trained) -> None:
    rows = ask(engine, n=len(UNRATED) + 5)
    assert {q.interaction_id for q in rows} == {iid for iid, _, _ in UNRATED}  # only those without a human rating
    assert {q.interaction_id for q in rows[:2]} == FAR
    assert [q.sd for q in rows] == sorted((q.sd for q in rows), reverse=True)
    assert [q.priority for q in rows] == [q.sd for q in rows]
    ids = [q.interaction_id for q in rows]
    mean, sd = score(trained.reward_model, ids)
    assert np.allclose([q.reward for q in rows], mean) and np.allclose([q.sd for q in rows], sd)
    assert rows[0].prompt in ("Wie spät ist es in Berlin?", "Quelle est la capitale du Burkina Faso ?")
    assert not any(q.judged for q in rows)

    top = ask(engine, n=2)
    assert [q.interaction_id for q in top] == ids[:2]
    assert {q.interaction_id for q in ask(engine, n=5, pool=3)} == {"far-french", "far-german", "new-account"}
    # a judge rating does not take an interaction out of the queue: only a human rating does
    label(engine, user_key=KEY, min_confidence=0.0)
    assert all(q.judged for q in ask(engine, n=3))

    near = ask(engine, n=len(UNRATED), boundary=True)
    assert [q.priority for q in near] == sorted((q.priority for q in near), reverse=True)
    for q in near:
        assert q.priority == pytest.approx(float(priority(np.asarray([q.reward]), np.asarray([q.sd]), True)[0]))


def test_priority_prefers_uncertain_answers_near_the_boundary() -> None:
    mean, sd = np.asarray([0.0, 0.8, 0.0, 0.8]), np.asarray([0.2, 0.2, 0.4, 0.4])
    assert list(priority(mean, sd, False)) == [0.2, 0.2, 0.4, 0.4]
    p = priority(mean, sd, True)
    assert p[2] > p[0] > p[3] > p[1]  # sd first at the boundary; far from it a larger sd still counts more
    assert p[0] == pytest.approx(0.2) and p[1] == pytest.approx(0.2 * np.exp(-8))


# --- the CLI (runs once `label` and `ask` are in cli.py) ---------------------------------------------

def _has(command: str) -> bool:
    from ratingloop.cli import app

    return any((c.name or getattr(c.callback, "__name__", "")) == command for c in app.registered_commands)


@pytest.mark.skipif(not (_has("label") and _has("ask")), reason="the label and ask commands are not in cli.py yet")
def test_cli_label_then_ask(engine: Engine, tmp_path: Path) -> None:
    from ratingloop.cli import app

    url = str(engine.url)
    runner = CliRunner()
    result = runner.invoke(app, ["ask", "--n", "2", "--json", "--db", url])
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in result.stdout.splitlines()]
    assert {x["interaction_id"] for x in lines} == FAR
    assert {"interaction_id", "prompt", "reward", "sd"} <= set(lines[0])

    result = runner.invoke(app, ["label", "--limit", "3", "--min-confidence", "0", "--json", "--db", url])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["written"] == 3
    result = runner.invoke(app, ["label", "--db", url])
    assert result.exit_code == 0 and "3 judge ratings" in result.stdout, result.output

    result = runner.invoke(app, ["ask", "--db", url])
    assert result.exit_code == 0 and "far-" in result.stdout, result.output
