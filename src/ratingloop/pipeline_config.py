"""Pipeline settings (thresholds, margins, LoRA rank) from a TOML file and `--set key=value` overrides.

Each stage keeps its settings in a frozen dataclass whose defaults are the only defaults; this module
only overlays a file's table and dotted overrides on top, and names every bad key and its fix.

    [build]                 # ratingloop build --config ratingloop.toml --set build.z=1.5
    z = 1.5
    scrub_pii = true
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from ratingloop.errors import ConfigError

T = TypeVar("T")


def load_section(cls: type[T], section: str, file: Path | None = None, overrides: list[str] | None = None) -> T:
    """`cls()` with the `[section]` table of `file` and `section.key=value` overrides applied."""
    values: dict[str, Any] = {}
    if file is not None:
        try:
            data = tomllib.loads(Path(file).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"--config {file}: {e}") from None
        table = data.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"--config {file}: [{section}] must be a table")
        values.update(table)
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        name = key.strip().removeprefix(section + ".")
        if not sep or "." in name:
            raise ConfigError(f"--set {item!r}: write {section}.KEY=VALUE, e.g. {section}.z=1.5")
        values[name] = _parse(raw.strip())
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    problems = [f"{section}.{k}: unknown key; known: {', '.join(sorted(fields))}" for k in values if k not in fields]
    for name, value in values.items():
        if name in fields and not _fits(value, fields[name].default):
            problems.append(f"{section}.{name}={value!r}: expected {type(fields[name].default).__name__}")
    if problems:
        raise ConfigError("; ".join(problems))
    return cls(**values)


def _parse(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # a bare word is a string


def _fits(value: Any, default: Any) -> bool:
    if default is None or default is dataclasses.MISSING:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, type(default))
