"""Comparisons in the rater model (signals/comparisons.py, raters.py, trolls.py): preferences and ranks as
Thurstone observations of quality through each rater's scale, ties included - on arrays with known truth,
and through the store (a signals run counts them, and answers rated only through them get a reward)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import orjson
import pytest
from scipy.special import ndtr
from scipy.stats import spearmanr, truncnorm
from sqlalchemy import Engine

from ratingloop import rounds
from ratingloop.signals import load_signals, ratings_since, record_signals
from ratingloop.signals.comparisons import RawComparisons, as_pairs, information, truncated
from ratingloop.signals.observations import RawRatings, observations
from ratingloop.signals.raters import fit_raters
from ratingloop.signals.trolls import fit_excluding_trolls
from ratingloop.store import Limits, open_engine
from ratingloop.store.jsonl import import_lines

KEY = b"test-user-key"


def raw(n_items: int, n_raters: int, rater: Sequence[int], tiers: Sequence[Any],
        stars: Sequence[tuple[int, int, int]] = (), strength: Sequence[float | None] | None = None) -> RawRatings:
    """Comparisons as tiers of item indices (best first), and optional 1-5 stars as (rater, item, value)."""
    s = np.asarray(stars, np.int64).reshape(-1, 3)
    n = len(s)
    return RawRatings(rater=s[:, 0], item=s[:, 1], kind=np.full(n, 1), aspect=np.zeros(n, np.int64),
                      value=s[:, 2].astype(float), scale_min=np.ones(n), scale_max=np.full(n, 5.0),
                      n_raters=n_raters, n_items=n_items,
                      comparisons=RawComparisons.from_tiers(rater, tiers, strength=strength) if len(rater) else None)


def duel_world(seed: int, kinds: Sequence[str], per: int = 120, n_pairs: int = 300, tie_width: float = 0.1
               ) -> tuple[RawRatings, np.ndarray]:
    """Answers 2p and 2p + 1 answer prompt p; each rater compares `per` random pairs, d = 0.5 (q_a - q_b) + noise,
    a tie when |d| < tie_width. An inverter flips d, a random rater draws it."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal(2 * n_pairs)
    rater, tiers = [], []
    for k, kind in enumerate(kinds):
        for p in rng.integers(n_pairs, size=per):
            i, j = 2 * p, 2 * p + 1
            d = {"honest": 1.0, "inverter": -1.0, "random": 0.0}[kind] * 0.5 * (q[i] - q[j]) + rng.normal(0, 0.3)
            tiers.append(((i, j),) if abs(d) < tie_width else ((i,), (j,)) if d > 0 else ((j,), (i,)))
            rater.append(k)
    return raw(2 * n_pairs, len(kinds), rater, tiers), q


def order_accuracy(score: np.ndarray, q: np.ndarray) -> float:
    return float(np.mean(np.sign(score[0::2] - score[1::2]) == np.sign(q[0::2] - q[1::2])))


# -- the ordered probit's arithmetic ------------------------------------------------------------------------------

@pytest.mark.parametrize("eta", [-30.0, -3.0, -0.4, 0.0, 0.7, 4.0, 30.0])
def test_truncated_moments_match_scipy_in_both_tails(eta: float) -> None:
    sd, delta = np.full(2, 0.8), np.full(2, 0.3)
    mean, var, logp = truncated(np.full(2, eta), sd, delta, np.asarray([False, True]))
    for k, (lo, hi) in enumerate([(0.3, np.inf), (-0.3, 0.3)]):
        ref = truncnorm((lo - eta) / 0.8, (hi - eta) / 0.8)
        assert mean[k] == pytest.approx(ref.mean(), rel=1e-5, abs=1e-8)
        assert var[k] == pytest.approx(ref.var(), rel=1e-4, abs=1e-8)
    assert np.all(np.isfinite(logp))


def test_information_without_ties_is_the_probits() -> None:
    eta = np.linspace(-5, 5, 11)
    phi = np.exp(-eta**2 / 2) / np.sqrt(2 * np.pi)
    probit = phi**2 / (ndtr(eta) * ndtr(-eta))
    assert information(eta, np.ones(11), np.zeros(11)) == pytest.approx(probit, rel=1e-9)
    # a tie threshold adds a third outcome: more information, never less; finite far out
    with_ties = information(eta, np.ones(11), np.full(11, 0.5))
    assert np.all(with_ties >= probit - 1e-12) and np.all(np.isfinite(information(np.full(1, 60.0), np.ones(1),
                                                                                       np.full(1, 0.5))))


def test_a_rank_is_its_pairs_and_counts_as_k_minus_1_comparisons() -> None:
    pairs = as_pairs(RawComparisons.from_tiers([0], [((4,), (1, 2), (3,))]))
    got = {(int(a), int(b), bool(t)) for a, b, t in zip(pairs.first, pairs.second, pairs.tie, strict=True)}
    assert got == {(4, 1, False), (4, 2, False), (4, 3, False), (1, 2, True), (1, 3, False), (2, 3, False)}
    assert pairs.weight.sum() == pytest.approx(3.0)  # 4 answers: 3 comparisons' worth, not 6
    assert sorted(pairs.member_item.tolist()) == [1, 2, 3, 4]
    fit = fit_raters(observations(raw(12, 2, [0, 1], [[(k,) for k in range(10)], ((10,), (11,))])))
    assert fit.n.tolist() == [9.0, 1.0]


# -- the rater model on comparisons alone -------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_comparisons_alone_find_inverters_and_random_raters(seed: int) -> None:
    kinds = ["honest"] * 20 + ["inverter", "inverter", "random", "random"]
    data, q = duel_world(seed, kinds)
    obs = observations(data)
    fit, flags = fit_excluding_trolls(obs)
    assert {(f.rater, f.kind) for f in flags} == {(20, "inverter"), (21, "inverter"), (22, "random"), (23, "random")}
    assert all("over" in f.reason and f.evidence["n"] >= 100 for f in flags)
    assert (fit.a[:20] > 0).all() and (fit.a[20:22] < 0).all() and (abs(fit.a[22:]) < 0.2 * fit.mu_a).all()
    # the majority of every vote (trolls included) vs the fit's order
    c = obs.comparisons
    vote = np.zeros(len(q))
    np.add.at(vote, c.first, ~c.tie)
    np.add.at(vote, c.second, -(~c.tie).astype(float))
    assert order_accuracy(fit.reward(), q) >= order_accuracy(vote, q) + 0.02
    assert order_accuracy(fit.reward(), q) > 0.92


def test_a_tie_says_the_answers_are_alike() -> None:
    """Answer 0 got 4 stars and answer 1 got 2 from a star rater; five raters, who prefer one answer of other
    pairs whenever the stars differ, tie 0 and 1. The tie pulls their qualities together and makes both
    surer; a preference keeps them apart."""
    values = [1, 2, 3, 4, 5, 3, 4, 2] * 4
    stars = [(0, 0, 4), (0, 1, 2)] + [(0, k, v) for k, v in zip(range(2, 34), values, strict=True)]
    rater, others = [], []
    for r in range(1, 6):
        for k in range(2, 34, 2):
            a, b = (k, k + 1) if values[k - 2] >= values[k - 1] else (k + 1, k)
            others.append(((a, b),) if values[k - 2] == values[k - 1] else ((a,), (b,)))
            rater.append(r)
    five = [1, 2, 3, 4, 5]
    alone = fit_raters(observations(raw(34, 6, rater, others, stars)))
    tied = fit_raters(observations(raw(34, 6, rater + five, others + [((0, 1),)] * 5, stars)))
    preferred = fit_raters(observations(raw(34, 6, rater + five, others + [((0,), (1,))] * 5, stars)))
    gap = [f.quality[0] - f.quality[1] for f in (alone, tied, preferred)]
    assert gap[1] < 0.5 * gap[0] and gap[2] > 0.9 * gap[0]  # the preference agrees with the (precise) stars
    assert (tied.quality_var[:2] < alone.quality_var[:2]).all()
    assert 0 < tied.tie_delta[1] < 1.0


def test_ties_are_fitted_per_rater_habit() -> None:
    """One rater calls a tie whenever |d| < 0.4, the others whenever |d| < 0.05: their thresholds differ."""
    rng = np.random.default_rng(3)
    q = rng.standard_normal(400)
    rater, tiers = [], []
    for k, width in enumerate([0.05] * 5 + [0.4]):
        for p in rng.integers(200, size=150):
            d = 0.5 * (q[2 * p] - q[2 * p + 1]) + rng.normal(0, 0.2)
            tiers.append(((2 * p, 2 * p + 1),) if abs(d) < width else ((2 * p,), (2 * p + 1,)) if d > 0
                         else ((2 * p + 1,), (2 * p,)))
            rater.append(k)
    fit, flags = fit_excluding_trolls(observations(raw(400, 6, rater, tiers)))
    assert not flags
    assert fit.tie_delta[5] > 3 * np.median(fit.tie_delta[:5])


def test_strength_weighs_a_preference() -> None:
    stars = [(0, k, v) for k, v in zip(range(2, 22), [1, 2, 3, 4, 5] * 4, strict=True)]
    strong = fit_raters(observations(raw(22, 2, [1], [((0,), (1,))], stars, strength=[1.0])))
    weak = fit_raters(observations(raw(22, 2, [1], [((0,), (1,))], stars, strength=[0.2])))
    assert 0 < weak.quality[0] - weak.quality[1] < strong.quality[0] - strong.quality[1]


def test_ratings_alone_are_fitted_as_before() -> None:
    """No comparison: not one number of the fit moves (the comparisons' terms are all empty)."""
    stars = [(r, k, 1 + (k + r) % 5) for r in range(4) for k in range(12)]
    a = fit_raters(observations(raw(12, 4, [], [], stars)))
    b = fit_raters(observations(raw(12, 4, [], [], stars)))
    assert np.array_equal(a.quality, b.quality) and len(a.cmp_z) == 0


# -- through the store ---------------------------------------------------------------------------------------------

def _line(iid: str, prompt: int, ratings: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"id": iid, "messages": [{"role": "user", "content": f"question {prompt}"}],
                         "response": f"answer {iid}", "ratings": ratings})


def compared_store(url: str, seed: int = 0, n_prompts: int = 40) -> tuple[Engine, dict[str, float]]:
    """Prompt p has answers p-a and p-b (and p-c for every fourth prompt). Six honest raters compare a and b
    (the line of b carries their preferences), an inverter compares them too, and where there is a c, one
    honest rater ranks all three. Answers 0-a .. 9-a also get stars from two raters: the rest are rated only
    through comparisons."""
    rng = np.random.default_rng(seed)
    truth: dict[str, float] = {}
    lines = []
    for p in range(n_prompts):
        names = ["a", "b", "c"] if p % 4 == 0 else ["a", "b"]
        q = dict(zip(names, rng.standard_normal(len(names)).tolist(), strict=True))
        truth.update({f"{p}-{x}": v for x, v in q.items()})
        stars = [{"rater_id": f"s{k}", "kind": "stars", "value": int(np.clip(np.rint(3 + 1.5 * q["a"]), 1, 5))}
                 for k in range(2)] if p < 10 else []
        lines.append(_line(f"{p}-a", p, stars))
        prefs = []
        for r in [f"h{k}" for k in range(6)] + ["inverter"]:
            d = 0.5 * (q["a"] - q["b"]) * (-1 if r == "inverter" else 1) + rng.normal(0, 0.25)
            value = "tie" if abs(d) < 0.05 else "a" if d > 0 else "b"
            prefs.append({"rater_id": r, "kind": "preference", "other_interaction_id": f"{p}-a", "value": value})
        lines.append(_line(f"{p}-b", p, [{**x, "value": {"a": "b", "b": "a", "tie": "tie"}[x["value"]]}
                                          for x in prefs]))  # stored on b: b's side first
        if "c" in q:
            best_first = sorted(q, key=lambda x: -q[x])
            lines.append(_line(f"{p}-c", p, [{"rater_id": "h0", "kind": "rank",
                                               "ranking": [[f"{p}-{x}"] for x in best_first]}]))
    engine = open_engine(url)
    report = import_lines(engine, lines, Limits(), user_key=KEY)
    assert not report.bad, report.bad
    return engine, truth


def test_a_run_counts_comparisons_and_rewards_answers_rated_only_through_them(db_url: str) -> None:
    engine, truth = compared_store(db_url)
    stored = record_signals(engine)
    rows = {s.interaction_id: s for s in stored.interactions}
    assert rows.keys() == truth.keys()  # every compared answer is rated, stars or not
    assert stored.flagged == {"inverter"}
    raters = {r.rater_id: r for r in stored.raters}
    assert raters["inverter"].scale < 0 and "rates against the consensus" in raters["inverter"].reasons[0]
    assert raters["h0"].n == 40 + 10 * 2  # 40 preferences and 10 ranks of 3 answers (2 comparisons' worth each)
    assert raters["h1"].bias == 0.0  # a comparison says nothing about an offset
    # 20 stars + 7 preferences x 40 prompts + 10 ranks were read; the inverter's 40 do not count
    assert stored.summary["n_ratings"] == 20 + 280 + 10 and stored.summary["n_counted"] == 20 + 240 + 10
    only_compared = [iid for iid in truth if iid not in {f"{p}-a" for p in range(10)}]
    for iid in only_compared:  # a and b: six honest preferences (and a rank); c: one rank
        assert rows[iid].n_ratings >= (1 if iid.endswith("c") else 6) and rows[iid].confidence > 0.1
    b_side = [rows[f"{p}-b"] for p in range(40)]
    assert rows["0-b"].n_ratings == 6 + 1  # six honest preferences and h0's rank
    assert spearmanr([rows[iid].reward for iid in truth], list(truth.values()))[0] > 0.6
    pair_order = np.mean([np.sign(rows[f"{p}-a"].reward - b.reward) == np.sign(truth[f"{p}-a"] - truth[f"{p}-b"])
                          for p, b in enumerate(b_side)])
    assert pair_order > 0.9
    # the counted comparisons sit under the interaction each is stored on
    assert len([rid for ids in stored.counted.values() for rid in ids]) == stored.summary["n_counted"]


def test_a_comparison_after_a_run_is_news_to_the_build_and_the_loop(sqlite_url: str) -> None:
    engine, _ = compared_store(sqlite_url, n_prompts=8)
    stored = record_signals(engine)
    assert ratings_since(engine, stored) == 0
    before = rounds.new_ratings(engine)
    more = _line("0-b", 0, [{"rater_id": "late", "kind": "preference", "other_interaction_id": "0-a", "value": "a"}])
    assert not import_lines(engine, [more], Limits(), user_key=KEY).bad
    assert ratings_since(engine, stored) == 1 and rounds.new_ratings(engine) == before + 1
    again = record_signals(engine)
    assert ratings_since(engine, again) == 0 and again.summary["n_ratings"] == stored.summary["n_ratings"] + 1
    assert load_signals(engine).run_id == again.run_id


def test_a_cohort_build_counts_only_its_raters_late_ratings(sqlite_url: str) -> None:
    """A run fitted on some raters (a cohort's) read nobody else's ratings: another rater's rating after it is
    no news to a build from those raters, and is to everyone's."""
    engine, _ = compared_store(sqlite_url, n_prompts=8)
    raters = frozenset({"h0", "s0", "s1"})
    scoped = record_signals(engine, raters=raters, scope="cohort 0 of test")
    assert ratings_since(engine, scoped, raters) == 0
    assert ratings_since(engine, scoped) > 0  # everyone else's ratings were never read by it
    more = _line("0-b", 0, [{"rater_id": "late", "kind": "preference", "other_interaction_id": "0-a", "value": "a"}])
    assert not import_lines(engine, [more], Limits(), user_key=KEY).bad
    assert ratings_since(engine, scoped, raters) == 0
    mine = _line("1-b", 1, [{"rater_id": "h0", "kind": "preference", "other_interaction_id": "1-a", "value": "b"}])
    assert not import_lines(engine, [mine], Limits(), user_key=KEY).bad
    assert ratings_since(engine, scoped, raters) == 1
