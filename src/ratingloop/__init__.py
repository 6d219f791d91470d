"""ratingloop: turn the ratings users give an LLM's answers into a better model, continuously.

The data path is the architecture (see README.md): store -> serve -> signals -> build -> train ->
evaluate -> loop. Importing this package is cheap: nothing here imports torch.
"""

__version__ = "0.1.0"
