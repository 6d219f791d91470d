"""Fast tests of resolving, loading and generating, on a tiny randomly initialised Llama saved to disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ratingloop.errors import InvalidInput, RatingloopError
from ratingloop.models import (
    ModelLoadError,
    cli_generate,
    cpu_has_fast_bf16,
    generate,
    load_for_generation,
    read_prompts,
    resolve_model,
)
from tiny import CHAT_TEXTS, save_random_adapter, save_varied_base

TEXTS = CHAT_TEXTS


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_varied_base(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def adapter_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_adapter(tiny_dir, tmp_path_factory.mktemp("adapter"))


def _prompts(*texts: str) -> list[Any]:
    return [{"id": f"p{i}", "messages": [{"role": "user", "content": t}]} for i, t in enumerate(texts)]


def test_resolve_folder_and_errors(tiny_dir: Path, tmp_path: Path) -> None:
    resolved = resolve_model(str(tiny_dir))
    assert resolved.kind == "folder" and resolved.path == tiny_dir.resolve() and resolved.base is None
    with pytest.raises(ModelLoadError, match="no such folder"):
        resolve_model(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="neither config.json"):
        resolve_model(tmp_path / "empty")
    with pytest.raises(ModelLoadError, match="hf download"):
        resolve_model("nobody-here/not-a-cached-model")


def test_default_not_pulled_without_pull_says_how(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="ratingloop model pull"):
        resolve_model("default", data_dir=tmp_path, pull=False)


def test_load_for_generation_eval_mode_left_padding(tiny_dir: Path) -> None:
    import torch

    model, tok = load_for_generation(tiny_dir)
    assert not model.training
    # the measured CPU default: bf16 where the CPU multiplies it natively, fp32 where torch would emulate it
    has_bf16 = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    assert cpu_has_fast_bf16() == has_bf16
    assert model.dtype == (torch.bfloat16 if has_bf16 else torch.float32)
    assert load_for_generation(tiny_dir, dtype="fp32")[0].dtype == torch.float32
    assert load_for_generation(tiny_dir, dtype="bf16")[0].dtype == torch.bfloat16
    assert tok.padding_side == "left" and tok.pad_token is not None


def test_greedy_is_deterministic(tiny_dir: Path) -> None:
    loaded = load_for_generation(tiny_dir, dtype="fp32")
    prompts = _prompts(*TEXTS[:3])
    first = generate(loaded, prompts, max_tokens=12, progress=False)
    second = generate(loaded, prompts, max_tokens=12, progress=False)
    assert first == second
    assert [a["id"] for a in first] == ["p0", "p1", "p2"]
    assert any(a["response"] for a in first)


def test_batch_of_different_lengths_matches_one_at_a_time(tiny_dir: Path) -> None:
    loaded = load_for_generation(tiny_dir, dtype="fp32")
    prompts = _prompts("Hi", TEXTS[3] + " " + TEXTS[1], TEXTS[0], "Tell me")
    batched = generate(loaded, prompts, max_tokens=10, batch_size=4, progress=False)
    single = generate(loaded, prompts, max_tokens=10, batch_size=1, progress=False)
    assert batched == single


def test_sampling_is_seeded_and_differs_from_greedy(tiny_dir: Path) -> None:
    loaded = load_for_generation(tiny_dir, dtype="fp32")
    prompts = _prompts(*TEXTS)
    a = generate(loaded, prompts, max_tokens=12, temperature=1.5, seed=3, progress=False)
    b = generate(loaded, prompts, max_tokens=12, temperature=1.5, seed=3, progress=False)
    greedy = generate(loaded, prompts, max_tokens=12, progress=False)
    assert a == b
    assert a != greedy


def test_adapter_folder_loads_base_plus_adapter(tiny_dir: Path, adapter_dir: Path) -> None:
    resolved = resolve_model(adapter_dir)
    assert resolved.kind == "adapter" and resolved.base is not None
    assert resolved.weights_path == tiny_dir.resolve()
    prompts = _prompts(*TEXTS)
    tuned = generate(str(adapter_dir), prompts, max_tokens=12, progress=False)
    base = generate(str(tiny_dir), prompts, max_tokens=12, progress=False)
    assert tuned != base


def test_cli_generate_roundtrip(tiny_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "prompts.jsonl"
    rows = [{"id": "a", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
            {"id": 7, "messages": [{"role": "user", "content": TEXTS[0]}]}]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    out = tmp_path / "out" / "answers.jsonl"
    assert cli_generate(str(tiny_dir), src, out, max_tokens=6) == 2
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["id"] for a in answers] == ["a", 7]
    assert all(set(a) == {"id", "response"} and isinstance(a["response"], str) for a in answers)


@pytest.mark.parametrize("line, expected", [
    ('{"id": "x", "messages": [{"role": "robot", "content": "hi"}]}', r"line 3\.messages\[0\]\.role"),
    ('{"id": "x", "messages": [{"role": "user", "content": 5}]}', r"line 3\.messages\[0\]\.content"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', r"line 3\.id: missing"),
    ('{"id": "x"}', r"line 3\.messages: missing"),
    ('{"id": "x", "messages": []}', r"line 3\.messages: must be a non-empty list"),
    ('{"id": "a", "messages": [{"role": "user", "content": "again"}]}', r"line 3\.id: 'a' repeats line 1"),
    ('{"id": "x", "messages": [{"role": "user", "content": "hi"}', r"line 3: not valid JSON"),
    ('[1, 2]', r"line 3: must be a JSON object"),
])
def test_bad_prompts_name_the_line_and_field(tmp_path: Path, line: str, expected: str) -> None:
    src = tmp_path / "prompts.jsonl"
    good = '{"id": "a", "messages": [{"role": "user", "content": "hi"}]}'
    src.write_text(f"{good}\n\n{line}\n")
    with pytest.raises(InvalidInput, match=expected):
        read_prompts(src)


def test_bad_prompts_fail_before_loading_a_model(tmp_path: Path) -> None:
    src = tmp_path / "prompts.jsonl"
    src.write_text('{"id": 1, "messages": "hi"}\n')
    with pytest.raises(InvalidInput, match="line 1.messages"):
        cli_generate(str(tmp_path / "no-such-model"), src, tmp_path / "out.jsonl")
    src.write_text("\n")
    with pytest.raises(RatingloopError, match="no prompts"):
        read_prompts(src)
    with pytest.raises(RatingloopError, match="cannot read"):
        read_prompts(tmp_path / "missing.jsonl")


def test_importing_models_does_not_import_torch() -> None:
    code = "import sys, ratingloop.models; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
