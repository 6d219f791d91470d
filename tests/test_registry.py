"""The registry's actions on both databases: one active version at every moment (the index, concurrent
promotions, a crash mid-promotion), promote/rollback/reject sequences and their history, evaluations,
and folders that must never serve (missing, truncated, corrupt, a reward model). Real tiny PEFT adapters."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, update
from sqlalchemy.exc import IntegrityError

from ratingloop.errors import RatingloopError
from ratingloop.models.files import check_model_files
from ratingloop.models.load import ModelLoadError
from ratingloop.models.registry import (
    active_version,
    finish_run,
    get_version,
    latest_evaluation,
    list_events,
    model_versions,
    promote,
    record_evaluation,
    reject,
    rollback,
    start_run,
    version_method,
)
from ratingloop.models.versions import choose_model, version_rows
from ratingloop.store import open_engine
from ratingloop.store.writes import new_id


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real LoRA adapter of a tiny random Llama, saved with its base."""
    from peft import LoraConfig, get_peft_model

    from train_support import save_tiny_base

    base = save_tiny_base(tmp_path_factory.mktemp("base"))
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    path = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(path)
    return path


def register(engine: Engine, adapter: Path, tmp_path: Path, method: str = "kto") -> str:
    """A succeeded run and its candidate version, with its own copy of the adapter."""
    folder = tmp_path / f"v-{new_id()}"
    shutil.copytree(adapter, folder)
    run_id = start_run(engine, method=method, config={}, base_model="default")
    return finish_run(engine, run_id, adapter_path=folder, metrics={})


def statuses(engine: Engine, *ids: str) -> list[str]:
    return [get_version(engine, i).status for i in ids]


def test_the_index_refuses_a_second_active_row(db_url: str, adapter: Path, tmp_path: Path) -> None:
    engine = open_engine(db_url)
    a, b = register(engine, adapter, tmp_path), register(engine, adapter, tmp_path)
    with engine.begin() as conn:
        conn.execute(update(model_versions).where(model_versions.c.id == a).values(status="active"))
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(update(model_versions).where(model_versions.c.id == b).values(status="active"))
    row = {**get_version(engine, a).__dict__, "id": new_id()}
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert(model_versions).values(**row))
    assert statuses(engine, a, b) == ["active", "candidate"]


def test_promote_rollback_reject_sequence(db_url: str, adapter: Path, tmp_path: Path) -> None:
    engine = open_engine(db_url)
    a, b, c = (register(engine, adapter, tmp_path) for _ in range(3))
    with pytest.raises(RatingloopError, match="nothing to roll back to"):
        rollback(engine, actor="t")
    promote(engine, a, actor="gate", reason="won")
    promote(engine, b, actor="alice", reason="manual")
    assert statuses(engine, a, b, c) == ["retired", "active", "candidate"]
    assert get_version(engine, b).traffic_share == 1.0 and get_version(engine, a).traffic_share == 0.0
    promote(engine, b, actor="gate")  # already active: a retried gate changes nothing
    reject(engine, c, actor="gate", reasons=["ci_low 0.41 <= 0.5", "length ratio 1.9 > 1.5"])
    with pytest.raises(RatingloopError, match="is active; .*rollback"):
        reject(engine, b, actor="gate", reasons=["no"])

    assert rollback(engine, actor="bob", reason="bad answers") == (b, a)
    assert statuses(engine, a, b, c) == ["active", "retired", "rejected"]
    assert active_version(engine).id == a  # type: ignore[union-attr]
    assert rollback(engine, actor="bob") == (a, None)  # the first promotion undone: the base serves
    assert active_version(engine) is None
    with pytest.raises(RatingloopError, match="nothing to roll back to"):
        rollback(engine, actor="bob")

    promote(engine, c, actor="carol", reason="override")  # a rejected version may be promoted by hand
    assert rollback(engine, actor="bob") == (c, None)
    events = [(e.action, e.version_id, e.previous_id, e.actor, e.reason) for e in list_events(engine)]
    assert events == [
        ("promote", a, None, "gate", "won"), ("promote", b, a, "alice", "manual"),
        ("reject", c, None, "gate", "ci_low 0.41 <= 0.5; length ratio 1.9 > 1.5"),
        ("rollback", a, b, "bob", "bad answers"), ("rollback", None, a, "bob", None),
        ("promote", c, None, "carol", "override"), ("rollback", None, c, "bob", None)]


def test_concurrent_promotions_leave_exactly_one_active(db_url: str, adapter: Path, tmp_path: Path) -> None:
    engine = open_engine(db_url)
    ids = [register(engine, adapter, tmp_path) for _ in range(6)]
    errors: list[BaseException] = []

    def go(version_id: str) -> None:
        try:
            promote(engine, version_id, actor="race")
        except BaseException as e:  # noqa: BLE001 - collected and asserted on below
            errors.append(e)

    threads = [threading.Thread(target=go, args=(i,)) for i in ids]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert sorted(statuses(engine, *ids)) == ["active"] + ["retired"] * 5
    events = list_events(engine)
    # the history is one chain: each promotion replaced exactly the one before it
    assert [e.previous_id for e in events] == [None] + [e.version_id for e in events[:-1]]
    assert events[-1].version_id == active_version(engine).id  # type: ignore[union-attr]


CRASH = """
import os, signal, sys
from sqlalchemy import update
from ratingloop.models.registry import _registry_transaction, _switch, model_versions
from ratingloop.store import open_engine
engine = open_engine(sys.argv[1])
with _registry_transaction(engine) as conn:
    _switch(conn, sys.argv[2], None)  # the old active retired ...
    print("retired", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # ... and the process dies before the new one is active
"""


def test_a_crash_mid_promotion_leaves_the_old_version_active(db_url: str, adapter: Path, tmp_path: Path) -> None:
    engine = open_engine(db_url)
    a, b = register(engine, adapter, tmp_path), register(engine, adapter, tmp_path)
    promote(engine, a, actor="gate")
    done = subprocess.run([sys.executable, "-c", CRASH, db_url, a], capture_output=True, text=True, timeout=120)
    assert done.returncode == -9 and "retired" in done.stdout, done.stderr
    assert statuses(engine, a, b) == ["active", "candidate"]
    promote(engine, b, actor="gate")  # the store is not left locked
    assert statuses(engine, a, b) == ["retired", "active"]


def test_what_cannot_serve_never_becomes_active(sqlite_url: str, adapter: Path, tmp_path: Path) -> None:
    engine = open_engine(sqlite_url)
    good = register(engine, adapter, tmp_path)
    promote(engine, good, actor="gate")

    def broken(damage: str) -> str:
        version = register(engine, adapter, tmp_path)
        folder = Path(get_version(engine, version).adapter_path or "")
        weights = folder / "adapter_model.safetensors"
        if damage == "missing folder":
            shutil.rmtree(folder)
        elif damage == "truncated":
            weights.write_bytes(weights.read_bytes()[:-100])
        elif damage == "garbage":
            weights.write_bytes(b"\x00" * 64)
        elif damage == "no weights":
            weights.unlink()
        elif damage == "bad config":
            (folder / "adapter_config.json").write_text("{not json")
        elif damage == "base gone":
            config = json.loads((folder / "adapter_config.json").read_text())
            (folder / "adapter_config.json").write_text(json.dumps(
                {**config, "base_model_name_or_path": str(tmp_path / "deleted-base")}))
        return version

    cases = {"missing folder": "is missing", "truncated": "truncated", "garbage": "corrupt or truncated",
             "no weights": "holds no weights", "bad config": "unreadable", "base gone": "base model .* is missing"}
    for damage, why in cases.items():
        version = broken(damage)
        with pytest.raises(RatingloopError, match=f"cannot serve: .*{why}"):
            promote(engine, version, actor="gate")
        assert statuses(engine, good, version) == ["active", "candidate"], damage
    reward = register(engine, adapter, tmp_path, method="reward")
    with pytest.raises(RatingloopError, match="reward model"):
        promote(engine, reward, actor="gate")
    with pytest.raises(RatingloopError, match="not in the registry"):
        promote(engine, "01NOSUCHVERSION", actor="gate")

    # rolling back to a version whose folder has since gone is refused too, and nothing changes
    second = register(engine, adapter, tmp_path)
    promote(engine, second, actor="gate")
    shutil.rmtree(get_version(engine, good).adapter_path or "")
    with pytest.raises(RatingloopError, match=f"version {good} cannot serve: .*is missing"):
        rollback(engine, actor="bob")
    assert active_version(engine).id == second  # type: ignore[union-attr]
    assert [e.action for e in list_events(engine)] == ["promote", "promote"]


def test_check_model_files_on_full_models(tmp_path: Path) -> None:
    from train_support import save_tiny_base

    folder = save_tiny_base(tmp_path / "full")
    assert check_model_files(folder) == "folder"
    weights = folder / "model.safetensors"
    weights.rename(folder / "model-00001-of-00001.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00001.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(ModelLoadError, match="model-00002-of-00002.safetensors are corrupt"):
        check_model_files(folder)
    with pytest.raises(ModelLoadError, match="records no model folder"):
        check_model_files(None)


def test_evaluations_and_the_method(db_url: str, adapter: Path, tmp_path: Path) -> None:
    engine = open_engine(db_url)
    a, b = register(engine, adapter, tmp_path), register(engine, adapter, tmp_path, method="sft")
    assert latest_evaluation(engine, b) is None and version_method(engine, b) == "sft"
    first = record_evaluation(engine, b, None, "reject", {"win_rate": 0.4, "reasons": ["ci_low 0.3"]})
    second = record_evaluation(engine, b, a, "promote", {"win_rate": 0.7, "reasons": []})
    latest = latest_evaluation(engine, b)
    assert latest is not None and first != second
    assert (latest["id"], latest["against_id"], latest["verdict"], latest["report"]) == (
        second, a, "promote", {"win_rate": 0.7, "reasons": []})
    with pytest.raises(RatingloopError, match="verdict 'maybe'"):
        record_evaluation(engine, b, a, "maybe", {})
    with pytest.raises(RatingloopError, match="not in the registry"):
        record_evaluation(engine, "01NOSUCH", a, "promote", {})
    with pytest.raises(RatingloopError, match="evaluation 'nope' is not in the store"):
        promote(engine, b, actor="gate", evaluation_id="nope")
    promote(engine, b, actor="gate", evaluation_id=second)
    assert list_events(engine)[-1].evaluation_id == second
    rows = {r["id"]: r for r in version_rows(engine)}
    assert (rows[b]["verdict"], rows[b]["evaluation_id"], rows[b]["method"], rows[b]["status"]) == (
        "promote", second, "sft", "active")
    assert rows[a]["verdict"] is None and rows[a]["method"] == "kto"


def test_choose_model(sqlite_url: str, adapter: Path, tmp_path: Path) -> None:
    engine = open_engine(sqlite_url)
    assert choose_model(engine, None).ref == "default"  # an empty registry: the default model
    a = register(engine, adapter, tmp_path)
    base = str(tmp_path / "the-base")
    with engine.begin() as conn:
        conn.execute(update(model_versions).values(base_model=base))
    assert (choose_model(engine, None).ref, choose_model(engine, None).version_id) == (base, None)
    promote(engine, a, actor="gate")
    assert choose_model(engine, "active") == choose_model(engine, None)
    assert (choose_model(engine, None).ref, choose_model(engine, None).version_id) == (
        get_version(engine, a).adapter_path, a)
    assert choose_model(engine, "base").ref == base
    assert choose_model(engine, a).version_id == a
    assert choose_model(engine, str(adapter)).ref == str(adapter)  # a folder passes through
    assert choose_model(engine, "default").ref == "default"
