"""Stage 3, signals: raw ratings -> one debiased reward per interaction, with its confidence.

normalise.py     every kind of rating as a reward in [-1, 1] (raw values kept in the store)
observations.py  latest rating per rater/interaction/aspect; aspects combined into overall
raters.py        the rater model: quality, rater offset/scale/noise, thumbs and stars jointly
trolls.py        inverters, random raters, constant floods, topic-targeted inverters: flag, refit
scales.py        each rater's scale from their own ratings: what the troll classes are compared on
evidence.py      Bayes factors between rater classes (honest, inverter, random, topic inverter)
prior.py         ContentPrior: the seam where a content reward model supplies a prior on quality
content.py       the cross-fitted content prior (sentence embeddings + BayesianRidge), on by default
                 where most interactions are rated once
load.py          the store's ratings as arrays
report.py        compute_signals(engine) -> InteractionSignal and RaterSignal rows

Importing this package loads numpy and scipy only, never torch (the content prior loads scikit-learn
and the sentence encoder when it runs).
"""
