"""Stage 3, signals: raw ratings -> one debiased reward per interaction, with its confidence.

normalise.py     every kind of rating as a reward in [-1, 1] (raw values kept in the store)
observations.py  latest rating per rater/interaction/aspect; aspects combined into overall
raters.py        the rater model: quality, rater offset/scale/noise, thumbs, stars and comparisons jointly
comparisons.py   preferences and ranks as Thurstone pairs (ties by each rater's threshold), their arithmetic
trolls.py        inverters, random raters, constant floods, topic-targeted inverters: flag, refit
scales.py        each rater's scale from their own ratings: what the troll classes are compared on
evidence.py      Bayes factors between rater classes (honest, inverter, random, topic inverter)
prior.py         ContentPrior: the seam where a content reward model supplies a prior on quality
content.py       the cross-fitted content prior (sentence embeddings + BayesianRidge), on by default
                 where most interactions are rated once
load.py          the store's ratings as arrays
report.py        compute_signals(engine) -> InteractionSignal and RaterSignal rows, the ratings that counted
runs.py          record_signals(engine) fits once and stores the run; load_signals(engine) reads it back
                 (what build, raters, evaluation and the loop use: they never refit); purge_user: a
                 deleted user's rows out of every run
explain.py       explain(engine, interaction_id): its ratings and how a run reached its reward (`ratingloop show`)
summary.py       summarise(run), top_raters(run, n): the raters at a glance (`ratingloop raters --summary/--top`)

Importing this package loads numpy, scipy and the store's tables only, never torch (the content prior
loads scikit-learn and the sentence encoder when it runs). Other stages import from here:
`record_signals`, `load_signals`, `StoredSignals`, `SignalsConfig`, `InteractionSignal`, `RaterSignal`, and
`RawRatings` (the arrays the rater model reads; the simulator writes them), `rewards` with `KIND_CODE`
and `RATING_KINDS` (any rating on [-1, 1], as the dashboard plots them), and the views of a run: `explain`,
`summarise`, `top_raters`, `histogram_lines`.
"""

from ratingloop.signals.explain import Explanation, explain
from ratingloop.signals.normalise import KIND_CODE, RATING_KINDS, rewards
from ratingloop.signals.observations import RawRatings
from ratingloop.signals.report import InteractionSignal, RaterSignal, SignalsConfig
from ratingloop.signals.runs import StoredSignals, load_signals, purge_user, ratings_since, record_signals
from ratingloop.signals.summary import RaterSummary, histogram_lines, summarise, top_raters

__all__ = ["KIND_CODE", "RATING_KINDS", "Explanation", "InteractionSignal", "RaterSignal", "RaterSummary",
           "RawRatings", "SignalsConfig", "StoredSignals", "explain", "histogram_lines", "load_signals", "purge_user",
           "ratings_since", "record_signals", "rewards", "summarise", "top_raters"]
