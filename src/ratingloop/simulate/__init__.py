"""Simulated users with known truth: interactions of known quality, raters with known offset, scale,
noise and habits, and trolls (inverting, random, constant floods, topic-targeted inverters).

Used by tests, `bench/signals.py`, `bench/content.py`, `bench/loop.py` and the demo. Only numpy; see
`population.py` (the truth), `ratings.py` (the ratings drawn from it), `texts.py` (question and answer
text that carries each interaction's quality, and the whole world as `ratingloop import` lines),
`graders.py` (hidden preferences scored from an answer's text, named in a simulated interaction's tags),
`single.py` (the realistic single-rated regime: each answer rated once by its asker, or not at all),
`groups.py` (users in groups whose hidden preferences oppose, each rating their own answers: cohorts to find),
`bank.py` and `users.py` (the prompts and the users who chat with a served model: hidden preferences
mixed per user, habits, trolls) and `http.py` (`ratingloop simulate`: those users over HTTP, which
also needs httpx; import it from its module).
"""

from ratingloop.simulate.graders import Grader, grader_for
from ratingloop.simulate.groups import GroupedWorld, GroupsConfig, fresh_questions, grouped_users
from ratingloop.simulate.population import HABITS, TROLL_KINDS, SimConfig, Truth
from ratingloop.simulate.ratings import STARS, THUMBS, SimRatings, simulate
from ratingloop.simulate.single import AskerConfig, SingleRatedWorld, cut_variants, single_rated, support_answers

__all__ = ["HABITS", "STARS", "THUMBS", "TROLL_KINDS", "AskerConfig", "Grader", "GroupedWorld", "GroupsConfig",
           "SimConfig", "SimRatings", "SingleRatedWorld", "Truth", "cut_variants", "fresh_questions", "grader_for",
           "grouped_users", "simulate", "single_rated", "support_answers"]
