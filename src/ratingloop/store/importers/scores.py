"""Stage 1, the store: how a named score of another tool (a Langfuse score, a LangSmith feedback key, an OASST
label) becomes a ratingloop rating.

A name is read the way `--map NAME=KIND[:LOW-HIGH]` says, else by the defaults below; names are compared
lower-cased with `-` and spaces read as `_`. KIND is `thumbs`, `stars` (LOW-HIGH defaults to 1-5), `scale`
(LOW-HIGH required), `comment` (the score's text), `skip`, or a configured aspect (RATINGLOOP_ASPECTS; LOW-HIGH
required, `overall` meaning a `scale` rating). The defaults, when no --map names the score:

  a boolean score                           thumbs (true/1 up, false/0 down); on [0, 1] if named after an aspect
  thumbs, thumbs_up, user_feedback,          thumbs: 1 up, 0 or -1 down
    feedback, user_score, vote, like
  stars, star_rating                        stars on 1-5
  a category (text value)                   thumbs when it is a thumbs word (up/down, positive/negative,
                                             good/bad, yes/no, correct/incorrect, thumbs_up/thumbs_down)
  anything else                             skipped, with a note naming the score and the --map that reads it

A score's free-text comment is a `comment` rating beside it, whatever its value became.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ratingloop.errors import ConfigError, FieldError

KINDS = ("thumbs", "stars", "scale", "comment", "skip")
THUMBS_NAMES = {"thumbs", "thumbs_up", "user_feedback", "feedback", "user_score", "vote", "like"}
STARS_NAMES = {"stars", "star_rating"}
UP_WORDS = {"up", "thumbs_up", "positive", "good", "yes", "correct", "true", "1", "+1", "like"}
DOWN_WORDS = {"down", "thumbs_down", "negative", "bad", "no", "incorrect", "false", "0", "-1", "dislike"}
_RANGE = re.compile(r"^(-?\d+(?:\.\d+)?)-(-?\d+(?:\.\d+)?)$")


@dataclass(frozen=True)
class Reading:
    """How one score name becomes a rating."""

    kind: str  # thumbs | stars | scale | aspect | comment | skip
    aspect: str = "overall"
    low: float | None = None
    high: float | None = None

    def describe(self) -> str:
        kind = self.aspect if self.kind == "aspect" else self.kind
        return kind + (f":{self.low:g}-{self.high:g}" if self.low is not None and self.high is not None else "")


def normal(name: str) -> str:
    return re.sub(r"[\s-]+", "_", name.strip().lower())


def parse_maps(specs: list[str], aspects: tuple[str, ...]) -> dict[str, Reading]:
    """`--map NAME=KIND[:LOW-HIGH]` options, by normalised name; ConfigError names every bad one and its fix."""
    out: dict[str, Reading] = {}
    problems = []
    for spec in specs:
        name, sep, rest = spec.partition("=")
        kind, _, bounds = rest.partition(":")
        kind = kind.strip().lower()
        low = high = None
        if bounds:
            m = _RANGE.match(bounds.strip())
            if m is None:
                problems.append(f"{spec}: LOW-HIGH must be two numbers, e.g. 1-5 or -1-1")
                continue
            low, high = float(m.group(1)), float(m.group(2))
            if not low < high:
                problems.append(f"{spec}: LOW must be below HIGH")
                continue
        if not sep or not name.strip():
            problems.append(f"{spec}: write NAME=KIND[:LOW-HIGH], e.g. quality=stars:1-5")
        elif kind in aspects:
            if low is None:
                problems.append(f"{spec}: an aspect needs its range, e.g. {name}={kind}:1-5")
            else:
                out[normal(name)] = Reading("scale" if kind == "overall" else "aspect", kind, low, high)
        elif kind not in KINDS:
            problems.append(f"{spec}: KIND is one of {', '.join(KINDS)} or a configured aspect "
                            f"({', '.join(aspects)}; RATINGLOOP_ASPECTS adds more)")
        elif kind == "scale" and low is None:
            problems.append(f"{spec}: a scale needs its range, e.g. {name}=scale:0-10")
        elif kind in ("thumbs", "comment", "skip") and low is not None:
            problems.append(f"{spec}: {kind} takes no range")
        else:
            if kind == "stars" and low is None:
                low, high = 1.0, 5.0
            out[normal(name)] = Reading(kind, "overall", low, high)
    if problems:
        raise ConfigError("--map: " + "; ".join(problems))
    return out


class Notes:
    """What an import left out on purpose, counted: one line per reason, not one per record."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, note: str, n: int = 1) -> None:
        self.counts[note] += n

    def lines(self) -> list[str]:
        return [f"{n} x {note}" if n > 1 else note for note, n in self.counts.items()]


class ScoreReader:
    """Named scores -> rating dicts (the import format's), by --map and the defaults."""

    def __init__(self, maps: dict[str, Reading], aspects: tuple[str, ...], notes: Notes, tool: str) -> None:
        self.maps, self.aspects, self.notes, self.tool = maps, aspects, notes, tool

    def reading(self, name: str, value: Any) -> Reading | None:
        key = normal(name)
        if key in self.maps:
            return self.maps[key]
        if isinstance(value, bool):
            return Reading("aspect", key, 0, 1) if key in self.aspects and key != "overall" else Reading("thumbs")
        if key in THUMBS_NAMES:
            return Reading("thumbs")
        if key in STARS_NAMES:
            return Reading("stars", "overall", 1, 5)
        if isinstance(value, str) and normal(value) in UP_WORDS | DOWN_WORDS:
            return Reading("thumbs")
        return None

    def rating(self, name: str, value: Any, field: str) -> tuple[dict[str, Any] | None, FieldError | None]:
        """The rating `value` under `name` is (None when it is skipped or carries no value), or what is wrong."""
        if value is None:
            return None, None
        reading = self.reading(name, value)
        if reading is None:
            hint = f"--map {name}=stars:1-5 (or scale:LOW-HIGH, thumbs, an aspect:LOW-HIGH, skip)"
            self.notes.add(f"{self.tool} score {name!r}: no default reading, skipped; say how to read it with {hint}")
            return None, None
        if reading.kind in ("skip", "comment"):
            return None, None
        if reading.kind == "thumbs":
            up = thumb(value)
            if up is None:
                return None, FieldError(field, f"{value!r} is not a thumbs value (1/0/-1, true/false, up/down) for "
                                               f"score {name!r}; --map {name}=KIND says how to read it")
            return {"kind": "thumbs", "value": 1 if up else -1}, None
        number = _number(value)
        assert reading.low is not None and reading.high is not None
        if number is None or not reading.low <= number <= reading.high:
            return None, FieldError(field, f"{value!r} is not a number in [{reading.low:g}, {reading.high:g}], the "
                                           f"range score {name!r} is read on ({reading.describe()})")
        out: dict[str, Any] = {"kind": "aspect" if reading.kind == "aspect" else reading.kind, "value": number,
                               "scale": [reading.low, reading.high]}
        if reading.kind == "aspect":
            out["aspect"] = reading.aspect
        return out, None

    def text_kind(self, name: str) -> str | None:
        """`comment` when --map says a score's text is a comment (a TEXT score always is)."""
        reading = self.maps.get(normal(name))
        return reading.kind if reading is not None and reading.kind in ("comment", "skip") else None


def thumb(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return True if value == 1 else False if value in (0, -1) else None
    if isinstance(value, str):
        word = normal(value)
        return True if word in UP_WORDS else False if word in DOWN_WORDS else None
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None
