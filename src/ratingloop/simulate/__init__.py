"""Simulated users with known truth: interactions of known quality, raters with known offset, scale,
noise and habits, and trolls (inverting, random, constant floods, topic-targeted inverters).

Used by tests, `bench/signals.py`, `bench/content.py` and the demo. Only numpy; see `population.py`
(the truth), `ratings.py` (the ratings drawn from it) and `texts.py` (question and answer text that
carries each interaction's quality, and the whole world as `ratingloop import` lines).
"""

from ratingloop.simulate.population import HABITS, TROLL_KINDS, SimConfig, Truth
from ratingloop.simulate.ratings import STARS, THUMBS, SimRatings, simulate

__all__ = ["HABITS", "STARS", "THUMBS", "TROLL_KINDS", "SimConfig", "SimRatings", "Truth", "simulate"]
