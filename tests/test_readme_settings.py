"""The README's tables of `[build]`, `[signals]` and `[personal]` settings cannot go stale: every top-level field
of BuildConfig, SignalsConfig and PersonalConfig has a row, no row names a field that is gone, and a plain default
(a number, a flag, a string, unset) reads as TOML writes it."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest

from ratingloop.dataset import BuildConfig
from ratingloop.personal import PersonalConfig
from ratingloop.signals import SignalsConfig

README = Path(__file__).resolve().parents[1] / "README.md"


def table(section: str) -> dict[str, str]:
    """key -> default cell of the table that follows the line introducing `[section]` under Pipeline settings."""
    text = README.read_text().split("### Pipeline settings", 1)[1]
    start = text.index(f"\n`[{section}]`")
    rows: dict[str, str] = {}
    for line in text[start:].splitlines()[1:]:
        if rows and not line.startswith("|"):
            break
        m = re.match(r"\| `([a-z_0-9]+)` \| (.+?) \| ", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def toml(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f"`{json.dumps(value)}`"
    return f"`{value!r}`"


@pytest.mark.parametrize(("cls", "section"), [(BuildConfig, "build"), (SignalsConfig, "signals"),
                                                     (PersonalConfig, "personal")])
def test_every_setting_has_a_row_with_its_default(cls: type, section: str) -> None:
    rows = table(section)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(rows) == set(fields), (f"README's [{section}] table: missing {sorted(set(fields) - set(rows))}, "
                                      f"stale {sorted(set(rows) - set(fields))}")
    for name, f in fields.items():
        if f.default is None or isinstance(f.default, (bool, int, float, str)):
            assert rows[name] == toml(f.default), f"{section}.{name}: the README says {rows[name]}"
    if section == "signals":  # the mapping's default, spelled as a TOML inline table
        weights = SignalsConfig().aspect_weights
        assert rows["aspect_weights"] == "`{" + ", ".join(f"{k} = {v!r}" for k, v in weights.items()) + "}`"
