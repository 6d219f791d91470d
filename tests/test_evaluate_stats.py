"""The evaluation's statistics, judges' arithmetic and guards, as tables with known answers (no models)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ratingloop.errors import ConfigError
from ratingloop.evaluate import EvalConfig
from ratingloop.evaluate.guards import failed, is_refusal, kl_per_token, length_ratio, refusal_increase
from ratingloop.evaluate.heldout import HeldOutPrompt, RatedAnswer
from ratingloop.evaluate.judges import human_judge
from ratingloop.evaluate.stats import lc_win_rate, outcome, win_rate


@pytest.mark.parametrize(("delta", "tie", "expected"), [(0.3, 0.0, 1.0), (-0.3, 0.0, 0.0), (0.0, 0.0, 0.5),
                                                         (0.05, 0.1, 0.5), (-0.05, 0.1, 0.5), (0.2, 0.1, 1.0)])
def test_outcome(delta: float, tie: float, expected: float) -> None:
    assert outcome(delta, tie) == expected


@pytest.mark.parametrize(("outcomes", "expected"), [
    ([1.0] * 10, (1.0, 1.0, 1.0)),  # every prompt won: no spread, the interval is the point
    ([0.5] * 7, (0.5, 0.5, 0.5)),  # every prompt tied
    ([0.0], (0.0, 0.0, 0.0)),
])
def test_win_rate_without_spread(outcomes: list[float], expected: tuple[float, float, float]) -> None:
    r = win_rate(outcomes)
    assert (r.win_rate, r.ci_low, r.ci_high) == expected and r.n == len(outcomes)


def test_win_rate_interval_matches_the_normal_approximation_and_is_seeded() -> None:
    y = [1.0] * 240 + [0.0] * 160  # p = 0.6 over 400 prompts: se = sqrt(.24 / 400) = 0.0245
    r = win_rate(y, n_resamples=4000, seed=1)
    assert r.win_rate == pytest.approx(0.6)
    assert r.ci_low == pytest.approx(0.6 - 1.96 * 0.0245, abs=0.006)
    assert r.ci_high == pytest.approx(0.6 + 1.96 * 0.0245, abs=0.006)
    assert win_rate(y, n_resamples=4000, seed=1) == r  # the same seed, the same interval
    assert win_rate(y, n_resamples=4000, seed=2) != r
    assert math.isnan(win_rate([]).win_rate)


def test_ties_count_half() -> None:
    assert win_rate([1.0, 0.5, 0.5, 0.0, 1.0]).win_rate == pytest.approx(0.6)


@pytest.mark.parametrize(("groups", "raw", "lc"), [
    # (length difference, n prompts, share won): LC is sigmoid(intercept) of a logistic fit on tanh(d / sd(d))
    ([(0, 10, 0.7)], 0.7, 0.7),  # no length difference: LC is the plain win rate
    ([(50, 30, 0.8), (-50, 10, 0.2)], 0.65, 0.5),  # logit .8 = -logit .2: the wins are all length
    ([(50, 20, 0.9), (-50, 20, 0.5)], 0.7, 0.75),  # intercept (logit .9 + logit .5) / 2 = log 3: LC 3/4
    ([(30, 10, 1.0), (-30, 10, 0.0)], 0.5, 0.5),  # complete separation, symmetric: the penalty keeps it finite
])
def test_length_controlled_win_rate(groups: list[tuple[int, int, float]], raw: float, lc: float) -> None:
    outcomes, len_c, len_o = [], [], []
    for d, n, share in groups:
        wins = round(n * share)
        outcomes += [1.0] * wins + [0.0] * (n - wins)
        len_c += [100 + d] * n
        len_o += [100] * n
    assert np.mean(outcomes) == pytest.approx(raw)
    assert lc_win_rate(outcomes, len_c, len_o) == pytest.approx(lc, abs=2e-3)


def test_length_controlled_win_rate_takes_fractional_outcomes() -> None:
    # ties and averaged judges enter as weighted wins and losses: 0.75 everywhere at d = 0 is 0.75
    assert lc_win_rate([0.75, 0.75, 0.5, 1.0], [10] * 4, [10] * 4) == pytest.approx(0.75, abs=1e-4)
    assert lc_win_rate([1.0, 1.0], [5, 50], [10, 10]) == 1.0
    with pytest.raises(ValueError, match="2 outcomes but 1"):
        lc_win_rate([1.0, 0.0], [1], [1])


def _prompt(key: str, *rated: tuple[str, float, dict[str, float]]) -> HeldOutPrompt:
    return HeldOutPrompt(key, [{"role": "user", "content": key}],
                         rated=[RatedAnswer(iid, "an answer", reward, aspects) for iid, reward, aspects in rated])


PROMPTS = [_prompt("p1", ("a", 0.8, {"accuracy": 1.0}), ("b", -0.6, {"accuracy": -1.0})),
           _prompt("p2", ("c", 0.5, {}), ("d", -0.9, {"accuracy": 0.5})),
           _prompt("p3", ("e", 0.7, {}))]


@pytest.mark.parametrize(("moves", "outcomes"), [
    # every rated text likelier by the same amount: no preference, all ties
    ({"a": 0.3, "b": 0.3, "c": 0.3, "d": 0.3, "e": 0.3}, {"p1": 0.5, "p2": 0.5, "p3": 0.5}),
    # good answers up, bad ones down: every answer counts as a win
    ({"a": 0.2, "b": -0.2, "c": 0.1, "d": -0.3, "e": 0.4}, {"p1": 1.0, "p2": 1.0, "p3": 1.0}),
    # everything likelier, the bad answers more so: centred, the candidate prefers what raters disliked
    ({"a": 0.1, "b": 0.5, "c": 0.1, "d": 0.6, "e": 0.1}, {"p1": 0.0, "p2": 0.0, "p3": 0.0}),
    # mixed: centre (median good 0.1 + median bad 0.0) / 2 = 0.05
    ({"a": 0.3, "b": 0.2, "c": 0.1, "d": -0.2, "e": 0.0}, {"p1": 0.5, "p2": 1.0, "p3": 0.0}),
])
def test_human_judge(moves: dict[str, float], outcomes: dict[str, float]) -> None:
    result = human_judge(PROMPTS, moves)
    assert result.outcomes == pytest.approx(outcomes)
    assert result.detail["rated_answers"] == 5 and result.detail["good"] == 3 and result.detail["bad"] == 2


def test_human_judge_on_an_aspect_uses_that_aspects_sign() -> None:
    # accuracy: a +1, b -1, d +0.5 (d's overall reward was bad, its accuracy good)
    result = human_judge(PROMPTS, {"a": 0.2, "b": -0.2, "d": 0.4}, "accuracy")
    assert result.name == "human:accuracy" and result.detail["rated_answers"] == 3
    assert result.outcomes == {"p1": 1.0, "p2": 1.0}


@pytest.mark.parametrize(("text", "refuses"), [("", True), ("   ", True), ("I'm sorry, but I can't help.", True),
                                               ("I cannot help with that.", True), ("As an AI, I have no view.", True),
                                               ("Sorry for the wait: open Settings.", False),
                                               ("Open Settings, then Billing.", False)])
def test_refusals(text: str, refuses: bool) -> None:
    assert is_refusal(text) is refuses


def test_guards_and_their_reasons() -> None:
    long = length_ratio(["one two three four five six"] * 2, ["one two"] * 2, 2.0)
    assert long["value"] == 3.0 and not long["ok"]
    assert length_ratio(["a b"], ["a b c d"], 2.0) == {"value": 0.5, "limit": 2.0, "floor": 0.5, "ok": True,
                                                       "candidate_words": 2.0, "other_words": 4.0}
    # users who want concise answers may make a candidate much shorter; growth stays bounded
    assert length_ratio(["a"] * 2, ["a b c d e"] * 2, 3.0, floor=0.1)["ok"]
    assert not length_ratio(["a"] * 2, ["a b c d e f g h i j k"] * 2, 3.0, floor=0.1)["ok"]
    refusals = refusal_increase(["", "fine answer", "I cannot do that."], ["ok", "fine answer", "sure thing"], 0.05)
    assert refusals["value"] == pytest.approx(2 / 3) and not refusals["ok"]
    assert kl_per_token(3.0, 12, 0.5) == {"value": 0.25, "limit": 0.5, "ok": True, "tokens": 12}
    assert kl_per_token(0.0, 0, 0.5)["value"] == 0.0
    reasons = failed({"length_ratio": long, "refusal_increase": refusals, "kl_per_token": kl_per_token(9.0, 10, 0.5),
                      "aspect:accuracy": {"value": -0.3, "limit": -0.1, "ok": False, "rated_answers": 8}})
    assert reasons == ["guard length_ratio: answers are 3.00x as long (6.0 vs 2.0 words), outside [0.50, 2.00]",
                       "guard refusal_increase: 0.667 > limit 0.050",
                       "guard kl_per_token: 0.900 > limit 0.500",
                       "guard aspect:accuracy: win rate on the aspect fell 0.30 below 0.5 (limit 0.10, "
                       "8 rated answers)"]


def test_eval_config_names_every_bad_key() -> None:
    with pytest.raises(ConfigError) as e:
        EvalConfig(max_prompts=0, judges=("oracle",), margin=0.6, max_length_ratio=1.0, max_kl=-1)
    for key in ("eval.max_prompts=0", "eval.judges=['oracle']", "eval.margin=0.6", "eval.max_length_ratio=1.0",
                "eval.max_kl=-1"):
        assert key in str(e.value)
