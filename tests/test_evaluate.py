"""`ratingloop eval`: a candidate against the base or the active version, on a real SQLite store (and one
PostgreSQL run), with tiny random Llamas.

The store: 16 support questions, each answered twice (a short answer raters liked, a rambling one they
did not; three raters each, stars and an accuracy aspect), tagged as a simulated store whose users want
concise answers, plus 6 questions nobody rated. One module-scoped build: a signals run, an SFT candidate
trained through `loop.train_from_store` (so its manifest lists the prompts it trained on), a version
identical to the base (a fresh LoRA adapter: B = 0), and a broken full model that answers nothing (its
final norm zeroed: every logit equal, so greedy decoding repeats the pad token, which decodes to "").
Each test gets a copy of that store.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, select
from typer.testing import CliRunner

from ratingloop.cli import app
from ratingloop.dataset import prompt_key
from ratingloop.evaluate import CandidateFailed, EvalConfig, EvalError, evaluate
from ratingloop.evaluate.heldout import held_out_prompts, normalise, training_keys
from ratingloop.loop import train_from_store
from ratingloop.models.registry import finish_run, latest_evaluation, promote, start_run
from ratingloop.signals import SignalsConfig, load_signals
from ratingloop.signals.content import ContentConfig
from ratingloop.store import open_engine
from ratingloop.store import tables as t
from ratingloop.store.jsonl import import_lines
from ratingloop.store.records import Limits
from ratingloop.train import TrainConfig

KEY = b"test-user-key"  # the server's secret, which tombstones are keyed with (store.writes.user_hash)

FAST = TrainConfig(lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=2e-2, max_steps=40, batch_size=4,
                   max_length=128, logging_steps=1)
SMALL = EvalConfig(max_tokens=12, n_bootstrap=300, max_prompts=32)
TOPICS = ["refund", "password", "invoice", "delivery", "account", "order", "login", "plan",
          "receipt", "address", "card", "email", "seat", "export", "trial", "upgrade"]
SIM = {"simulated": {"grader": "concise"}}


def _lines() -> list[bytes]:
    out = []
    for k, topic in enumerate(TOPICS):
        messages = [{"role": "user", "content": f"How do I change my {topic}?"}]
        short = f"Open Settings, choose {topic.title()}, and save."
        long = " ".join([f"Well, there are many things to say about your {topic} and how it works."] * 6)
        for name, answer, stars in (("short", short, 5), ("long", long, 1)):
            ratings = [{"rater_id": f"r{j}", "kind": "stars", "value": stars, "scale": [1, 5]} for j in range(3)]
            ratings.append({"rater_id": "r0", "kind": "aspect", "aspect": "accuracy", "value": stars,
                            "scale": [1, 5]})
            created = f"2026-11-01T10:{k:02d}:0{int(name == 'long')}Z"
            out.append({"id": f"{topic}-{name}", "messages": messages, "response": answer, "user_id": f"u{k}",
                        "created_at": created, "tags": SIM, "ratings": ratings})
    for k in range(6):
        out.append({"id": f"new-{k}", "messages": [{"role": "user", "content": f"Is feature {k} in my plan?"}],
                    "response": "Yes.", "created_at": f"2026-11-02T10:{k:02d}:00Z", "tags": SIM})
    return [json.dumps(x).encode() for x in out]


def _register(engine: Engine, folder: Path, method: str = "sft", snapshot: str | None = None) -> str:
    run = start_run(engine, method=method, config={}, base_model=str(folder), dataset_snapshot_id=snapshot)
    return finish_run(engine, run, adapter_path=folder, metrics={})


@pytest.fixture(scope="module")
def built(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("eval-store")
    engine = open_engine(f"sqlite:///{root / 'store.db'}")
    assert not import_lines(engine, _lines(), Limits(), user_key=KEY).bad
    trained = train_from_store(engine, "sft", out_dir=root / "sft", base=tiny_base, cfg=FAST, progress=False,
                               signals_cfg=SignalsConfig(content=ContentConfig(mode="off")))

    same = root / "same"  # a fresh adapter: B = 0, so the merged model is the base exactly
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base), lora).save_pretrained(same)
    config = json.loads((same / "adapter_config.json").read_text())
    (same / "adapter_config.json").write_text(json.dumps(config | {"base_model_name_or_path": str(tiny_base)}))

    broken = root / "broken"  # answers nothing: every logit 0
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    with torch.no_grad():
        model.model.norm.weight.zero_()
    model.save_pretrained(broken)
    AutoTokenizer.from_pretrained(tiny_base).save_pretrained(broken)
    ids = {"trained": trained.version_id, "same": _register(engine, same), "broken": _register(engine, broken),
           "reward": _register(engine, same, method="reward"), "db": root / "store.db"}
    engine.dispose()
    return ids


@pytest.fixture
def store(built: dict[str, object], tmp_path: Path) -> Engine:
    shutil.copy(str(built["db"]), tmp_path / "store.db")
    return open_engine(f"sqlite:///{tmp_path / 'store.db'}")


def test_trained_candidate_is_judged_on_prompts_it_never_saw(store: Engine, built: dict[str, object]) -> None:
    version = str(built["trained"])
    keys, warnings = training_keys(store, version)
    assert keys and not warnings
    rewards = {s.interaction_id: (s.reward, s.aspects) for s in load_signals(store).interactions}
    held = held_out_prompts(store, keys, rewards)
    all_keys = {prompt_key(normalise(m)) for m in store.connect().execute(select(t.interactions.c.messages)).scalars()}
    assert {p.key for p in held} == all_keys - keys and len(held) >= 6  # the 6 unrated questions at least

    report = evaluate(store, version, "base", cfg=SMALL, progress=False)
    d = report.as_dict()
    json.dumps(d, allow_nan=False)  # stored as JSON: no NaN anywhere
    assert {"candidate", "against", "n_prompts", "win_rate", "ci_low", "ci_high", "lc_win_rate", "judges", "guards",
            "verdict", "reasons"} <= d.keys()
    assert d["candidate"] == version and d["against"] == "base"
    assert d["held_out"]["prompts"] == len(held) and d["n_prompts"] == len(held)  # the grader judges them all
    assert {j["name"] for j in d["judges"]} >= {"simulated", "human"}
    human = next(j for j in d["judges"] if j["name"] == "human")
    assert human["rated_answers"] == sum(len(p.rated) for p in held) > 0
    assert 0 <= d["ci_low"] <= d["win_rate"] <= d["ci_high"] <= 1
    assert d["guards"]["kl_per_token"]["value"] > 0  # the adapter changed the model
    # the tiny base answers nothing; 40 steps on the short answers taught the candidate to open like them
    simulated = next(j for j in d["judges"] if j["name"] == "simulated")
    assert simulated["mean_other"] == -1.0 and simulated["win_rate"] > 0.9 and d["win_rate"] > 0.5
    assert d["guards"]["length_ratio"]["other_words"] == 0
    assert d["guards"]["refusal_increase"]["value"] == -1.0  # every base answer was empty, none of the candidate's
    assert set(d["guards"]) >= {"length_ratio", "refusal_increase", "kl_per_token"}
    assert (d["verdict"] == "promote") == (not d["reasons"])
    recorded = latest_evaluation(store, version)
    assert recorded is not None and recorded["id"] == report.evaluation_id
    assert recorded["verdict"] == d["verdict"] and recorded["against_id"] is None


def test_a_candidate_identical_to_the_base_ties_and_is_rejected(store: Engine, built: dict[str, object]) -> None:
    cfg = replace(SMALL, min_aspect_answers=1)  # its training prompts are unknown: all 32 rated answers held out
    report = evaluate(store, str(built["same"]), "active", cfg=cfg, progress=False)  # nothing active: the base
    assert report.against == "base"
    assert report.win_rate == report.ci_low == report.ci_high == report.lc_win_rate == 0.5
    assert report.guards["kl_per_token"]["value"] == 0.0
    assert report.guards["length_ratio"]["value"] == 1.0 and report.guards["refusal_increase"]["value"] == 0.0
    assert report.guards["aspect:accuracy"] == {"value": 0.0, "limit": -0.1, "ok": True, "rated_answers": 32}
    assert report.verdict == "reject"
    assert report.reasons == [f"win rate 0.500 over {report.n_prompts} prompts: its 95% CI [0.500, 0.500] does not "
                              "clear 0.500"]
    assert any("records no dataset snapshot" in w for w in report.warnings)  # registered by hand


def test_a_candidate_that_answers_nothing_is_rejected_by_the_grader_and_guards(store: Engine,
                                                                               built: dict[str, object]) -> None:
    """Against the trained version, which answers in words."""
    report = evaluate(store, str(built["broken"]), str(built["trained"]), cfg=SMALL, progress=False)
    simulated = next(j for j in report.judges if j["name"] == "simulated")
    assert simulated["mean_candidate"] == -1.0  # empty answers: the concise grader's floor
    assert simulated["win_rate"] < 0.1 and report.win_rate < 0.5
    assert report.guards["refusal_increase"]["value"] == 1.0 and not report.guards["refusal_increase"]["ok"]
    assert report.guards["length_ratio"]["value"] == 0.0 and not report.guards["length_ratio"]["ok"]
    assert report.verdict == "reject"
    assert any(r.startswith("guard refusal_increase: 1.000 > limit 0.050") for r in report.reasons)
    assert any(r.startswith("guard length_ratio") for r in report.reasons)


def test_against_the_active_version(store: Engine, built: dict[str, object]) -> None:
    promote(store, str(built["same"]), actor="test")
    report = evaluate(store, str(built["trained"]), cfg=SMALL, progress=False)
    assert report.against == built["same"]
    with pytest.raises(EvalError, match="is the active version: nothing to compare"):
        evaluate(store, str(built["same"]), cfg=SMALL, progress=False)


def test_a_version_answers_each_prompt_once_across_evaluations(store: Engine, built: dict[str, object]) -> None:
    """Greedy answers of an unchanged version are read back from earlier evaluations with the same settings: after
    a round promotes its candidate, the next round's gate generates only the new candidate's answers."""
    trained, broken = str(built["trained"]), str(built["broken"])
    first = evaluate(store, trained, "base", cfg=SMALL, progress=False)
    assert first.reused_answers == {"candidate": 0, "against": 0}
    assert first.generation["max_tokens"] == SMALL.max_tokens and first.generation["dtype"].startswith("torch.")
    said = {prompt_key(e["messages"]): e["candidate"] for e in first.examples}
    assert len(said) == first.n_prompts

    second = evaluate(store, broken, trained, cfg=SMALL, progress=False)  # trained is now the side it is judged against
    assert second.reused_answers == {"candidate": 0, "against": second.n_prompts} and second.n_prompts == len(said)
    assert all(e["against"] == said[prompt_key(e["messages"])] for e in second.examples)
    assert second.verdict == "reject" and second.guards["refusal_increase"]["value"] == 1.0  # judged as before

    again = evaluate(store, trained, "base", cfg=SMALL, progress=False)  # the base is known by its reference
    assert again.reused_answers == {"candidate": again.n_prompts, "against": again.n_prompts}
    assert (again.win_rate, again.guards["length_ratio"]["value"]) == (first.win_rate,
                                                                       first.guards["length_ratio"]["value"])
    longer = evaluate(store, trained, "base", cfg=replace(SMALL, max_tokens=SMALL.max_tokens + 4), progress=False)
    assert longer.reused_answers == {"candidate": 0, "against": 0}  # other settings, other answers: generated


def test_what_cannot_be_evaluated_says_so(store: Engine, built: dict[str, object], tmp_path: Path) -> None:
    with pytest.raises(EvalError, match="--candidate nope: model version 'nope' is not in the registry"):
        evaluate(store, "nope", cfg=SMALL, progress=False)
    with pytest.raises(EvalError, match="--against nope"):
        evaluate(store, str(built["trained"]), "nope", cfg=SMALL, progress=False)
    with pytest.raises(EvalError, match="is itself"):
        evaluate(store, str(built["trained"]), str(built["trained"]), cfg=SMALL, progress=False)
    with pytest.raises(EvalError, match="is a reward model"):
        evaluate(store, str(built["reward"]), cfg=SMALL, progress=False)

    # a version trained on every prompt in the store leaves nothing held out
    keys = sorted({prompt_key(normalise(m)) for m in
                   store.connect().execute(select(t.interactions.c.messages)).scalars()})
    with store.begin() as conn:
        conn.execute(insert(t.DatasetSnapshot.__table__).values(
            id="snap-all", created_at=datetime.now(timezone.utc), format="sft", content_hash="x", path=None,
            n_rows=0, config={}, manifest={"prompt_keys": {"train": keys, "eval": []}}))
    everything = _register(store, Path(str(built["db"])).parent / "same", snapshot="snap-all")
    with pytest.raises(EvalError, match="no held-out prompts"):
        evaluate(store, everything, cfg=SMALL, progress=False)

    # a candidate whose folder is gone fails as the candidate (the loop rejects it with this message)
    gone = tmp_path / "gone"
    shutil.copytree(Path(str(built["db"])).parent / "same", gone)
    missing = _register(store, gone)
    shutil.rmtree(gone)
    with pytest.raises(CandidateFailed, match=f"candidate {missing} .* failed to generate"):
        evaluate(store, missing, cfg=SMALL, progress=False)


def test_cli_eval_json_and_errors(store: Engine, built: dict[str, object], tmp_path: Path) -> None:
    url = str(store.url)
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "--candidate", str(built["same"]), "--against", "base", "--json",
                                 "--set", "eval.max_tokens=8", "--set", "eval.n_bootstrap=100", "--db", url])
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert d["verdict"] == "reject" and d["win_rate"] == 0.5 and d["candidate"] == built["same"]
    table = runner.invoke(app, ["eval", "--candidate", str(built["same"]), "--set", "eval.max_tokens=8",
                                "--set", "eval.n_bootstrap=100", "--db", url])
    assert table.exit_code == 0 and "verdict: REJECT" in table.stdout and "guard kl_per_token: 0.000" in table.stdout
    bad = runner.invoke(app, ["eval", "--candidate", "nope", "--db", url])
    assert bad.exit_code == 1 and "not in the registry" in str(bad.exception)
    assert runner.invoke(app, ["eval", "--candidate", "x", "--set", "eval.margin=0.7", "--db", url]).exit_code == 1


@pytest.mark.usefixtures("pg_server")
def test_postgres_records_the_report(pg_url: str, built: dict[str, object]) -> None:
    engine = open_engine(pg_url)
    assert not import_lines(engine, _lines(), Limits(), user_key=KEY).bad
    same = _register(engine, Path(str(built["db"])).parent / "same")
    report = evaluate(engine, same, "base", cfg=replace(SMALL, judges=("simulated",)),
                      progress=False)
    assert report.verdict == "reject" and report.win_rate == 0.5
    recorded = latest_evaluation(engine, same)
    assert recorded is not None and recorded["report"]["guards"]["kl_per_token"]["value"] == 0.0
