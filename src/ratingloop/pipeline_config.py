"""Pipeline settings (thresholds, margins, LoRA rank) from a TOML or YAML file and `--set key=value` overrides.

Each stage keeps its settings in a frozen dataclass whose defaults are the only defaults; this module
only overlays a file's table and dotted overrides on top, and names every bad key and its fix.

    [build]                 # ratingloop build --config ratingloop.toml --set build.z=1.5
    z = 1.5
    scrub_pii = true

A file ending in .yaml or .yml is read as YAML, with the same tables as top-level mappings.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from ratingloop.errors import ConfigError

T = TypeVar("T")


def load_section(cls: type[T], section: str, file: Path | None = None, overrides: list[str] | None = None,
                 defaults: dict[str, Any] | None = None) -> T:
    """`cls()` with `defaults`, then the `[section]` table of `file`, then `section.key=value` overrides."""
    values = dict(defaults or {}) | section_values(section, file, overrides)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    problems = [f"{section}.{k}: unknown key; known: {', '.join(sorted(fields))}" for k in values if k not in fields]
    for name, value in values.items():
        if name in fields and not _fits(value, fields[name].default):
            problems.append(f"{section}.{name}={value!r}: expected {type(fields[name].default).__name__}")
    if problems:
        raise ConfigError("; ".join(problems))
    return cls(**values)


def section_values(section: str, file: Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Only what the `[section]` table of `file` and the `section.key=value` overrides set (unchecked), for
    callers whose defaults depend on more than the dataclass (the loop sizes training by the data)."""
    values: dict[str, Any] = {}
    if file is not None:
        data = _read(Path(file))
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
    return values


def _read(file: Path) -> dict[str, Any]:
    try:
        text = file.read_text()
        if file.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text)
    except (OSError, ValueError) as e:  # tomllib.TOMLDecodeError is a ValueError
        raise ConfigError(f"--config {file}: {e}") from None
    except Exception as e:  # noqa: BLE001 - yaml.YAMLError, which the lazy import keeps out of reach here
        raise ConfigError(f"--config {file}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {file}: the file must hold tables such as [train], not {type(data).__name__}")
    return data


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
