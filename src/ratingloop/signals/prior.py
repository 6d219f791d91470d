"""Stage 3, signals: the seam where a content-based reward model supplies a prior on quality.

Most production interactions are rated once, by the asker, so one rating cannot separate the
answer's quality from that rater's offset. The rater model takes, per interaction, a prior mean
and variance of the latent quality q (population-standardised: N(0, 1) means "nothing known").
`FlatPrior` is that default. `signals.content.CrossFittedPrior` implements `ContentPrior` (predicting
q from prompt and response, with its own uncertainty, each rater judged by a model fitted without
them); the rater effect is then what the content does not explain, and unrated interactions get a
reward too. Any other reward model can be passed to `compute_signals(engine, prior=...)`.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class ContentPrior(Protocol):
    def quality_prior(self, interaction_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Prior mean and variance (both float arrays, len(interaction_ids)) of each quality q.

        Variance must be > 0; use 1.0 (and mean 0.0) where the model knows nothing.
        """
        ...


class FlatPrior:
    """q ~ N(0, 1) for every interaction: the ratings alone decide."""

    def quality_prior(self, interaction_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        n = len(interaction_ids)
        return np.zeros(n), np.ones(n)
