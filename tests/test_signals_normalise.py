"""Normalisation (signals/normalise.py): every kind of rating -> a reward in [-1, 1]."""

from __future__ import annotations

import numpy as np
import pytest

from ratingloop.signals.normalise import KIND_CODE, ImplicitRewards, reward, rewards


@pytest.mark.parametrize("kind, value, scale, expected", [
    ("thumbs", 1, None, 1.0),
    ("thumbs", -1, None, -1.0),
    ("stars", 1, (1, 5), -1.0),
    ("stars", 3, (1, 5), 0.0),
    ("stars", 5, (1, 5), 1.0),
    ("stars", 4, None, 0.5),  # stars default to 1-5
    ("scale", 7, (1, 7), 1.0),
    ("scale", 2.5, (1, 7), -0.5),
    ("scale", 0, (0, 10), -1.0),
    ("scale", 5, (0, 10), 0.0),
    ("aspect", 2, (1, 5), -0.5),
    ("scale", 12, (0, 10), 1.0),  # outside its scale (the store refuses it): clipped, never beyond 1
])
def test_scales_map_linearly_onto_minus_one_one(kind: str, value: float, scale: tuple[float, float] | None,
                                                 expected: float) -> None:
    assert reward(kind, value, scale) == pytest.approx(expected)


@pytest.mark.parametrize("signal, expected", [
    ("copy", 0.3), ("share", 0.4), ("regenerate", -0.3), ("edit", -0.1), ("abandon", -0.2), ("novel", 0.0),
])
def test_implicit_signals_are_weak_defaults(signal: str, expected: float) -> None:
    assert reward("implicit", signal=signal) == pytest.approx(expected)


def test_implicit_rewards_are_configurable() -> None:
    assert reward("implicit", signal="copy", implicit=ImplicitRewards(copy=0.8)) == pytest.approx(0.8)


def test_correction_is_weak_negative() -> None:
    assert reward("correction", text="the refund is due on the 3rd") == pytest.approx(-0.5)


@pytest.mark.parametrize("text, sign", [
    ("Great answer, thanks, really helpful!", 1), ("wrong refund date, useless", -1), ("", 0),
])
def test_comment_sentiment(text: str, sign: int) -> None:
    r = reward("comment", text=text)
    assert -1.0 <= r <= 1.0
    assert np.sign(round(r, 1)) == sign


def test_vectorised_form_matches_scalar_and_keeps_input() -> None:
    kind = np.asarray([KIND_CODE[k] for k in ("thumbs", "stars", "scale", "implicit", "comment")])
    value = np.asarray([-1.0, 2.0, 6.0, np.nan, np.nan])
    lo, hi = np.asarray([-1.0, 1.0, 0.0, np.nan, np.nan]), np.asarray([1.0, 5.0, 10.0, np.nan, np.nan])
    before = value.copy()
    out = rewards(kind, value, lo, hi, [None, None, None, "regenerate", None], [None] * 4 + ["nice"])
    assert out[:4] == pytest.approx([-1.0, -0.5, 0.2, -0.3])
    assert out[4] > 0
    assert np.array_equal(value, before, equal_nan=True)  # raw values untouched
