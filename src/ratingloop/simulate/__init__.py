"""Simulated users with known truth: interactions of known quality, raters with known offset, scale,
noise and habits, and trolls (inverting, random, constant floods, topic-targeted inverters).

Used by tests, `bench/signals.py` and the demo. Only numpy; see `population.py` (the truth) and
`ratings.py` (the ratings drawn from it).
"""

from ratingloop.simulate.population import HABITS, TROLL_KINDS, SimConfig, Truth
from ratingloop.simulate.ratings import STARS, THUMBS, SimRatings, simulate

__all__ = ["HABITS", "STARS", "THUMBS", "TROLL_KINDS", "SimConfig", "SimRatings", "Truth", "simulate"]
