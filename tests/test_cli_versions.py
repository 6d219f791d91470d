"""`ratingloop versions list|promote|rollback` on both databases, and `generate` answering with the active
version (the base when none is active), on a tiny random Llama and a real LoRA adapter of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

from ratingloop.cli import app
from ratingloop.errors import RatingloopError
from ratingloop.models.registry import (
    active_version,
    finish_run,
    get_version,
    list_events,
    record_evaluation,
    start_run,
)
from ratingloop.store import open_engine
from tiny import CHAT_TEXTS, save_random_adapter, save_varied_base

runner = CliRunner()
TEXTS = CHAT_TEXTS


def cli(*args: str) -> Any:
    result = runner.invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_varied_base(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def adapter(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_adapter(base, tmp_path_factory.mktemp("adapter"))


def register(engine: Engine, adapter: Path, base: Path, method: str = "kto") -> str:
    run_id = start_run(engine, method=method, config={}, base_model=str(base))
    return finish_run(engine, run_id, adapter_path=adapter, metrics={})


def test_versions_list_promote_rollback(db_url: str, adapter: Path, base: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "alice")
    engine = open_engine(db_url)
    a = register(engine, adapter, base)
    b = register(engine, adapter, base, method="sft")
    evaluation = record_evaluation(engine, b, None, "reject", {"reasons": ["ci_low 0.42 <= 0.5"]})

    rows = json.loads(cli("versions", "list", "--json", "--db", db_url).stdout)
    assert [r["id"] for r in rows] == [b, a]
    assert {k: rows[0][k] for k in ("status", "method", "parent", "traffic_share", "verdict", "evaluation_id")} == {
        "status": "candidate", "method": "sft", "parent": None, "traffic_share": 0.0, "verdict": "reject",
        "evaluation_id": evaluation}
    assert rows[1]["verdict"] is None and rows[1]["adapter_path"] == str(adapter) and rows[1]["base_model"] == str(base)
    assert rows[0]["created_at"].startswith(str(get_version(engine, b).created_at.date()))

    plan = cli("versions", "promote", b, "--db", db_url)
    assert plan.exit_code == 1 and f"would make {b} active" in plan.stderr and "--yes" in plan.stderr
    assert active_version(engine) is None and list_events(engine) == []
    for version in (a, b):
        done = cli("versions", "promote", version, "--reason", "looks better", "--yes", "--db", db_url)
        assert done.exit_code == 0, done.output
    assert cli("versions", "promote", b, "--db", db_url).stdout.startswith(f"{b} is already active")
    table = cli("versions", "list", "--db", db_url).stdout
    assert "active" in table and "retired" in table and "100%" in table

    plan = cli("versions", "rollback", "--db", db_url)
    assert plan.exit_code == 1 and f"would roll back from {b} to {a}" in plan.stderr
    assert active_version(engine).id == b  # type: ignore[union-attr]
    done = cli("versions", "rollback", "--reason", "complaints", "--yes", "--db", db_url)
    assert done.exit_code == 0 and f"{a} serves (was {b})" in done.stdout
    events = [(e.action, e.version_id, e.previous_id, e.actor, e.reason) for e in list_events(engine)]
    assert events == [("promote", a, None, "alice", "looks better"), ("promote", b, a, "alice", "looks better"),
                      ("rollback", a, b, "alice", "complaints")]
    assert cli("versions", "rollback", "--yes", "--db", db_url).exit_code == 0  # a -> the base
    with pytest.raises(RatingloopError, match="nothing to roll back to"):
        cli("versions", "rollback", "--yes", "--db", db_url)
    with pytest.raises(RatingloopError, match="not in the registry"):
        cli("versions", "promote", "01NOSUCH", "--yes", "--db", db_url)


def test_refusals_exit_1_with_the_reason(sqlite_url: str, adapter: Path, base: Path, tmp_path: Path) -> None:
    engine = open_engine(sqlite_url)
    reward = register(engine, adapter, base, method="reward")
    empty = tmp_path / "empty-adapter"
    empty.mkdir()
    (empty / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text())
    corrupt = register(engine, empty, base)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ratingloop.cli", *args, "--db", sqlite_url],
                              capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})

    for args, why in [(("versions", "rollback", "--yes"), "nothing to roll back to"),
                      (("versions", "promote", reward, "--yes"), "is a reward model"),
                      (("versions", "promote", corrupt), "holds no weights")]:
        done = run(*args)
        assert done.returncode == 1 and why in " ".join(done.stderr.split()), done.stderr
    assert active_version(engine) is None


def test_generate_answers_with_the_active_version(sqlite_url: str, adapter: Path, base: Path,
                                                  tmp_path: Path) -> None:
    engine = open_engine(sqlite_url)
    version = register(engine, adapter, base)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "messages": [{"role": "user", "content": t}]}) + "\n"
                               for i, t in enumerate(TEXTS[::2])))

    def answers(*model: str) -> list[str]:
        out = tmp_path / f"answers-{len(list(tmp_path.iterdir()))}.jsonl"
        done = cli("generate", "--prompts", str(prompts), "--out", str(out), "--max-tokens", "8", *model,
                   "--db", sqlite_url)
        assert done.exit_code == 0, done.output
        return [json.loads(x)["response"] for x in out.read_text().splitlines()]

    from_base = answers("--model", str(base))
    from_adapter = answers("--model", str(adapter))
    assert from_base != from_adapter  # the adapter changes the answers, so the checks below mean something
    assert answers() == from_base  # nothing active: the base the versions were trained on serves
    cli("versions", "promote", version, "--yes", "--db", sqlite_url)
    assert answers() == from_adapter
    assert answers("--model", "active") == from_adapter and answers("--model", version) == from_adapter
    assert answers("--model", "base") == from_base
