"""Personal weights and cohorts (ratingloop.personal) on simulated users whose hidden preferences are known:
two opposed groups are found as two cohorts, one taste as one cohort; and the model's parts on hand-made
arrays: shrinkage toward the population, users whose ratings are all one value, thumbs vs stars users, the
minimum cohort size, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from personal_world import grouped_store
from ratingloop.personal import PersonalConfig, PersonalFit, UserRatings, fit_personal, user_ratings
from ratingloop.personal.cohorts import merge_small
from ratingloop.personal.weights import moments, population_weights, user_weights
from ratingloop.simulate.graders import concise, thorough
from ratingloop.simulate.groups import GroupedWorld, GroupsConfig
from ratingloop.store import open_engine

OPPOSED = GroupsConfig(groups=(("concise", 0.7), ("thorough", 0.3)), n_users=60, seed=0)


def _fit(tmp: Path, cfg: GroupsConfig, personal: PersonalConfig | None = None
         ) -> tuple[GroupedWorld, UserRatings, PersonalFit]:
    engine = open_engine(f"sqlite:///{tmp / 'store.db'}")
    world, run = grouped_store(engine, cfg)
    data = user_ratings(engine, run)
    return world, data, fit_personal(data, personal or PersonalConfig())


@pytest.fixture(scope="module")
def opposed(tmp_path_factory: pytest.TempPathFactory) -> tuple[GroupedWorld, UserRatings, PersonalFit]:
    return _fit(tmp_path_factory.mktemp("opposed"), OPPOSED)


def _ari(world: GroupedWorld, fit: PersonalFit) -> float:
    placed = [u for u in fit.users if u.cohort is not None]
    return float(adjusted_rand_score([world.group_of[u.user_id] for u in placed], [u.cohort for u in placed]))


def test_two_opposed_groups_are_two_cohorts_that_match_them(opposed: tuple[GroupedWorld, UserRatings, PersonalFit]
                                                            ) -> None:
    world, data, fit = opposed
    assert data.features == ("accuracy", "length")  # the run's accuracy aspect and the answer's length
    assert len(data.users) == 60 and 600 <= len(data.y) <= 1200  # 10-20 ratings each
    assert fit.k == 2
    assert _ari(world, fit) > 0.9  # measured 1.0 (seeds 0 and 1), 0.93 (seed 2)
    scores = {h.k: h.per_rating for h in fit.heldout}
    assert sorted(scores) == [1, 2, 3, 4]
    assert scores[2] - scores[1] > 0.1  # measured -1.022 -> -0.868 nats per held-out rating
    assert scores[2] == max(scores.values())
    # the majority (concise) is cohort 0 and wants short answers; the minority (thorough) long ones
    major, minor = fit.cohorts
    assert (major.n_users, minor.n_users) == (39, 18)  # 42 + 18 simulated; 3 rated one value throughout
    assert major.weights["length"] < -0.4 and minor.weights["length"] > 0.4
    assert "shorter answers" in major.description and "longer answers" in minor.description
    # everyone dislikes a wrong answer: accuracy drives both cohorts' ratings the same way
    assert major.weights["accuracy"] > 0.2 and minor.weights["accuracy"] > 0.2 and fit.population["accuracy"] > 0.3


def test_the_groups_are_the_simulated_shares_and_thorough_mirrors_concise(
        opposed: tuple[GroupedWorld, UserRatings, PersonalFit]) -> None:
    world, _, _ = opposed
    assert np.bincount(world.group).tolist() == [42, 18]
    for words, score in ((20, -1.0), (60, -0.067), (100, 1.0)):  # thorough: -1 up to 25 words, +1 from 100
        answer = " ".join(["word"] * words)
        assert thorough([], answer) == -concise([], answer) == pytest.approx(score, abs=0.001)
    assert thorough([], "Yes.") == concise([], "Yes.") == -1.0  # not an answer, for anyone


def test_each_user_gets_weights_a_count_and_a_cohort_or_a_reason(opposed: tuple[GroupedWorld, UserRatings,
                                                                                PersonalFit]) -> None:
    world, data, fit = opposed
    by_status: dict[str, int] = {}
    for u in fit.users:
        by_status[u.status] = by_status.get(u.status, 0) + 1
        assert set(u.weights) == {"accuracy", "length"} and 10 <= u.n_ratings <= 20
        assert (u.cohort is None) == (u.status != "placed")
    assert by_status == {"placed": 57, "constant": 3}
    for u in (u for u in fit.users if u.status == "constant"):  # a thumbs user who liked everything, say
        assert u.rating_sd == 0 and abs(u.mean_rating) == 1.0 and u.weights == fit.population


def test_one_taste_is_one_cohort(tmp_path: Path) -> None:
    world, _, fit = _fit(tmp_path, GroupsConfig(groups=(("concise", 1.0),), n_users=60, seed=1))
    assert fit.k == 1 and len(fit.cohorts) == 1
    scores = {h.k: h.per_rating for h in fit.heldout}
    assert scores[1] == max(scores.values()) and scores[1] - scores[2] > 0.02  # measured -0.933 vs -0.972
    assert fit.cohorts[0].n_users == sum(u.status == "placed" for u in fit.users) == 60
    assert fit.cohorts[0].description.startswith("everyone: ") and "longer answers (-0." in fit.cohorts[0].description


def test_no_cohort_is_smaller_than_the_minimum(opposed: tuple[GroupedWorld, UserRatings, PersonalFit]) -> None:
    _, data, _ = opposed
    # the 18 thorough users cannot form a cohort of 25: merged into the other, nothing is gained, K = 1
    fit = fit_personal(data, PersonalConfig(min_cohort_users=25))
    assert [h.k for h in fit.heldout] == [1, 2] and fit.heldout[1].cohorts == 1.0 and fit.k == 1
    # a minimum the population cannot meet twice: one cohort, and the reason
    fit = fit_personal(data, PersonalConfig(min_cohort_users=40))
    assert fit.k == 1 and [h.k for h in fit.heldout] == [1]
    assert fit.notes == ["too few users for more than one cohort: 57 with 5+ varying ratings, and each cohort "
                         "needs 40 (personal.min_cohort_users)"]


def test_the_same_seed_gives_the_same_cohorts(opposed: tuple[GroupedWorld, UserRatings, PersonalFit]) -> None:
    _, data, fit = opposed
    again = fit_personal(data, PersonalConfig())
    assert again.users == fit.users and again.cohorts == fit.cohorts and again.heldout == fit.heldout


# --- the model's parts, on hand-made arrays ----------------------------------------------------------------

def _ratings(rng: np.random.Generator, taste: np.ndarray, n: int, thumbs: bool = False) -> tuple[np.ndarray, ...]:
    X = rng.standard_normal((n, len(taste)))
    p = 0.3 * X @ taste + 0.2 * rng.standard_normal(n)
    y = np.where(p > 0, 1.0, -1.0) if thumbs else np.clip(np.rint(2 * p) / 2, -1, 1)  # 1-5 stars as rewards
    return X, y


def _arrays(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    user = np.concatenate([np.full(len(y), k) for k, (_, y) in enumerate(parts)])
    return user, np.concatenate([y for _, y in parts]), np.concatenate([X for X, _ in parts])


def test_few_ratings_give_about_the_population_weights_and_many_the_users_own() -> None:
    rng = np.random.default_rng(0)
    crowd = [_ratings(rng, np.array([1.0, -1.0]), 30) for _ in range(40)]
    odd_many, odd_few = _ratings(rng, np.array([-1.0, 1.0]), 300), _ratings(rng, np.array([-1.0, 1.0]), 3)
    user, y, X = _arrays([*crowd, odd_many, odd_few])
    m = moments(user, y, X, 42)
    pop = population_weights(m)
    assert pop[0] > 0.3 and pop[1] < -0.3  # the crowd's taste (in sds of a rating per sd of a feature)
    w = user_weights(m, 3.0, pop)
    assert w[40][0] < -0.3 and w[40][1] > 0.3  # 300 ratings: their own, against the crowd
    assert np.linalg.norm(w[41] - pop) < np.linalg.norm(w[41] - w[40])  # 3 ratings: nearer the crowd than themselves
    assert np.allclose(user_weights(m, 1e9, pop)[40], pop, atol=1e-3)  # all shrinkage: the population, whatever


def test_thumbs_and_stars_users_of_one_taste_get_alike_weights_and_a_constant_user_the_populations() -> None:
    rng = np.random.default_rng(1)
    taste = np.array([1.0, 0.0, -0.5])
    stars = [_ratings(rng, taste, 400) for _ in range(3)]
    thumbs = [_ratings(rng, taste, 400, thumbs=True) for _ in range(3)]
    constant = (rng.standard_normal((12, 3)), np.ones(12))  # 12 thumbs up
    user, y, X = _arrays([*stars, *thumbs, constant])
    m = moments(user, y, X, 7)
    w = user_weights(m, 3.0, population_weights(m))
    # on raw rewards a thumbs user's weights come out 2.4x a stars user's (0.67 vs 0.28 on the first feature);
    # on their own spread they match (0.64 vs 0.72)
    raw = [np.linalg.lstsq(np.c_[X, np.ones(len(y))], y, rcond=None)[0][0] for X, y in (stars[0], thumbs[0])]
    assert raw[1] > 2 * raw[0]
    assert np.allclose(w[:3].mean(axis=0), w[3:6].mean(axis=0), atol=0.12)
    assert np.corrcoef(w[:6].ravel(), np.tile(taste, 6))[0, 1] > 0.95
    assert m.y_sd[6] == 0 and np.array_equal(w[6], population_weights(m))


def test_a_cluster_under_the_minimum_merges_into_the_nearest_and_cohorts_number_by_size() -> None:
    weights = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2], [5.3], [5.4], [1.0]])
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1, 2])  # cluster 2 (one user at 1.0) is nearest cluster 0
    assert merge_small(weights, labels, 2).tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 1]
    assert merge_small(weights, labels, 5).tolist() == [0] * 9  # 4 users are still short: one cohort
    assert merge_small(weights, labels, 1).tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 2]
