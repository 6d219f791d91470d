"""Real annotators (item 9 of issue 3): PandaLM's three human raters, read from ../shared/data (never
copied), with synthetic trolls injected. The reader and scenarios live in bench/pandalm.py."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "pandalm.py"


def _pandalm() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_pandalm", BENCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pandalm() -> ModuleType:
    module = _pandalm()
    if not module.DATA.exists():
        if os.environ.get("CI") == "true":  # CI lays shared/ beside the clone: missing data is a break
            pytest.fail(f"{module.DATA} is missing under CI=true")
        pytest.skip(f"{module.DATA} is not there (shared/data ships with the project workspace)")
    return module


def test_three_annotators_alone_match_their_majority(pandalm: ModuleType) -> None:
    res = pandalm.run(pandalm.load_labels(), ())
    assert res["ratingloop"] > 0.99 and res["flagged"] == []


@pytest.mark.parametrize("trolls", [("inverter", "inverter"), ("inverter", "random", "position")])
def test_injected_trolls_are_flagged_and_the_majority_recovered(pandalm: ModuleType, trolls: tuple[str, ...]) -> None:
    res = pandalm.run(pandalm.load_labels(), trolls)
    assert res["ratingloop"] >= 0.95 and res["ratingloop"] > res["naive"] + 0.05
    assert len(res["flagged"]) == len(trolls)
    assert all("troll" in f for f in res["flagged"])  # no real annotator flagged
