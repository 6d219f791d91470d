"""Stage 4, dataset (`ratingloop build`): debiased rewards -> training sets in TRL's conversational formats.

config.py   BuildConfig: thresholds and margins, defaults derived from each reward's confidence
answers.py  the store + signals -> one Answer per distinct (prompt, response), corrections beside them
scrub.py    optional PII scrubbing (emails, phone numbers) of prompts and completions
formats.py  answers -> rows: sft, kto (with TRL's class-balance weights), reward, weighted
pairs.py    answers -> DPO pairs whose reward gap the uncertainty supports; corrections as chosen
split.py    prompt-disjoint deterministic train/eval split, row de-duplication, the filter log
write.py    DIR/train, DIR/eval (datasets.save_to_disk), *.jsonl, manifest.json, the DatasetSnapshot row
run.py      build_dataset(engine, fmt, out_dir, cfg) -> BuildResult: the stage top to bottom

Importing this package is cheap: `datasets` is imported only when a build writes its output.
"""

from ratingloop.dataset.config import FORMATS, BuildConfig
from ratingloop.dataset.run import BuildResult, build_dataset

__all__ = ["FORMATS", "BuildConfig", "BuildResult", "build_dataset"]
