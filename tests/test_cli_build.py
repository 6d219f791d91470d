"""`ratingloop build` through the CLI, and the TOML / --set overlay of pipeline settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ratingloop.cli import app
from ratingloop.dataset import BuildConfig
from ratingloop.errors import ConfigError
from ratingloop.pipeline_config import load_section

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "support-chat.jsonl"


@pytest.mark.parametrize("fmt", ["sft", "kto", "dpo", "reward", "weighted"])
def test_build_writes_loadable_sets_with_a_manifest(fmt: str, sqlite_url: str, tmp_path: Path) -> None:
    from datasets import load_from_disk

    assert runner.invoke(app, ["import", str(EXAMPLES), "--db", sqlite_url]).exit_code == 0
    out = tmp_path / fmt
    refused = runner.invoke(app, ["build", "--format", fmt, "--out", str(out), "--db", sqlite_url])
    assert refused.exit_code != 0 and "run `ratingloop signals` first" in str(refused.exception)
    signals = runner.invoke(app, ["signals", "--db", sqlite_url])
    assert signals.exit_code == 0, signals.output
    run_id = signals.stdout.split()[2].rstrip(":")
    result = runner.invoke(app, ["build", "--format", fmt, "--out", str(out), "--db", sqlite_url,
                                 *(["--signals", run_id] if fmt == "dpo" else [])])
    assert result.exit_code == 0, result.output
    assert f"signals run {run_id}" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["signals_run_id"] == run_id
    train = load_from_disk(str(out / "train"))
    assert len(train) == manifest["rows"]["train"] > 0
    assert len((out / "train.jsonl").read_text().splitlines()) == len(train)
    columns = {"sft": {"prompt", "completion"}, "kto": {"prompt", "completion", "label"},
               "dpo": {"prompt", "chosen", "rejected"}, "reward": {"prompt", "completion", "score"},
               "weighted": {"prompt", "completion", "weight"}}[fmt]
    assert columns <= set(train.column_names)


def test_build_refuses_unknown_settings_naming_them(sqlite_url: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["build", "--format", "sft", "--out", str(tmp_path / "x"), "--db", sqlite_url,
                                 "--set", "build.zz=1"])
    assert result.exit_code != 0
    assert "build.zz: unknown key" in str(result.exception)
    assert not (tmp_path / "x").exists()


def test_toml_file_and_overrides_layer_on_the_defaults(tmp_path: Path) -> None:
    file = tmp_path / "ratingloop.toml"
    file.write_text("[build]\nz = 2.0\nscrub_pii = true\n")
    cfg = load_section(BuildConfig, "build", file, ["build.z=1.5", "eval_fraction=0.2"])
    assert (cfg.z, cfg.scrub_pii, cfg.eval_fraction) == (1.5, True, 0.2)
    assert cfg.pair_z == BuildConfig().pair_z
    with pytest.raises(ConfigError, match=r"build.scrub_pii='yes': expected bool"):
        load_section(BuildConfig, "build", None, ["build.scrub_pii=yes"])
