"""Personalisation's settings: the `[personal]` table of a config file (`--set personal.KEY=VALUE`).

The defaults here are the only defaults; `pipeline_config.load_section(PersonalConfig, "personal", ...)`
overlays a file and overrides, and refuses unknown keys and wrong types.
"""

from __future__ import annotations

from dataclasses import dataclass

from ratingloop.errors import ConfigError


@dataclass(frozen=True)
class PersonalConfig:
    # how many ratings' worth of pull toward the population's weights each user's weights get: a user with
    # far fewer ratings than this has about the population's weights, one with far more their own
    shrinkage: float = 3.0
    min_user_ratings: int = 5  # fewer overall ratings than this: weights stored, but the user is in no cohort
    max_cohorts: int = 4  # K is chosen among 1..max_cohorts by held-out likelihood
    min_cohort_users: int = 5  # no cohort (when K > 1) has fewer users: no adapter may learn one person
    min_gain: float = 0.02  # nats per held-out rating K cohorts must gain over fewer to be chosen
    folds: int = 5  # each user's ratings are split into this many parts; each is held out once
    min_feature_ratings: int = 10  # an aspect is a feature when at least this many rated answers have it
    seed: int = 0  # KMeans and the held-out split: the same store and seed give the same cohorts
    # the loop: after each round, fit a personal run and, when it finds 2 or more cohorts, train an adapter for
    # each cohort whose users gave at least min_cohort_ratings ratings, on top of the global version; the gate
    # judges it on that cohort's held-out prompts against what the cohort is served now
    cohort_adapters: bool = True
    min_cohort_ratings: int = 100

    def check(self) -> None:
        problems = []
        if self.shrinkage < 0:
            problems.append(f"personal.shrinkage={self.shrinkage}: must be >= 0")
        if self.min_user_ratings < 2:
            problems.append(f"personal.min_user_ratings={self.min_user_ratings}: at least 2 (one rating says "
                            "nothing about what drives it)")
        if self.max_cohorts < 1:
            problems.append(f"personal.max_cohorts={self.max_cohorts}: at least 1")
        if self.min_cohort_users < 1:
            problems.append(f"personal.min_cohort_users={self.min_cohort_users}: at least 1")
        if self.folds < 2:
            problems.append(f"personal.folds={self.folds}: at least 2")
        if self.min_cohort_ratings < 1:
            problems.append(f"personal.min_cohort_ratings={self.min_cohort_ratings}: at least 1")
        if self.min_gain < 0:
            problems.append(f"personal.min_gain={self.min_gain}: must be >= 0")
        if problems:
            raise ConfigError("; ".join(problems))
