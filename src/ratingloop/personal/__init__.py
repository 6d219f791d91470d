"""Personalisation: what drives each end user's ratings, and cohorts of users who want alike answers.

features.py   a stored signals run -> each end user's overall ratings in [-1, 1] and the rated answers' shared
              features (the run's per-aspect rewards, the answer's standardised log length)
weights.py    per-user weights: a hierarchical ridge, each user's ratings standardised, shrunk toward everyone's
cohorts.py    k-means on the weights, small clusters merged, K chosen by held-out likelihood of the ratings
fit.py        fit_personal(ratings, cfg): weights -> K -> cohorts, with what sets each cohort apart in words
runs.py       record_personal(engine) fits once and stores the run; load_personal / user_weights read it back
              (`ratingloop cohorts`, `ratingloop users show`); purge_user: a deleted user's weights out of every run
config.py     PersonalConfig, the `[personal]` settings

Reads the store and a stored signals run (never refits one); writes `personal_runs`, `personal_users` and
`personal_cohorts`. Importing this package loads numpy, scipy (through signals) and the store's tables;
scikit-learn loads only when users are clustered.
The loop (loop.py) trains an adapter per cohort from a stored run; serve and generate route a user to their
cohort's version (serve/routing.py); the registry keeps those versions (models/registry.py, status `cohort`).
"""

from ratingloop.personal.config import PersonalConfig
from ratingloop.personal.features import UserRatings, user_ratings
from ratingloop.personal.fit import PersonalFit, fit_personal
from ratingloop.personal.runs import (
    Cohort,
    StoredPersonal,
    UserWeights,
    cohort_members,
    load_personal,
    newer_signals_run,
    purge_user,
    record_personal,
    user_weights,
)

__all__ = ["Cohort", "PersonalConfig", "PersonalFit", "StoredPersonal", "UserRatings", "UserWeights",
           "cohort_members", "fit_personal", "load_personal", "newer_signals_run", "purge_user", "record_personal",
           "user_ratings", "user_weights"]
