"""Stage 4, dataset (`ratingloop build`): debiased rewards -> training sets in TRL's conversational formats.

config.py   BuildConfig: thresholds and margins, defaults derived from each reward's confidence
answers.py  a recorded signals run + the store's texts -> one Answer per distinct (prompt, response),
            corrections beside them (only the ratings the run counted)
scrub.py    optional PII scrubbing (emails, phone numbers) of prompts and completions
formats.py  answers -> rows: sft, kto (with TRL's class-balance weights: kto_class_weights), reward, weighted
pairs.py    answers -> DPO pairs: comparisons every honest rater agreed on, then pairs whose reward gap the
            uncertainty supports; corrections as chosen
split.py    prompt-disjoint deterministic train/eval split, row de-duplication, the filter log
write.py    DIR/train, DIR/eval (datasets.save_to_disk), *.jsonl, manifest.json, the DatasetSnapshot row
rows.py     the typed rows between the steps (each row names the interactions it came from);
            prompt_key(prompt): a prompt's identity (manifests list them)
run.py      build_dataset(engine, fmt, out_dir, cfg, signals=None) -> BuildResult: the stage top to bottom;
            reads the newest recorded signals run (or the one given), never refits
purge.py    a deleted user out of built datasets: snapshots that held their data are purged (purged_at)
preview.py  preview(out_dir, n): the first rows of a built set, texts cut to a line (`build --preview N`)

Importing this package is cheap: `datasets` is imported only when a build writes its output.
"""

from ratingloop.dataset.config import FORMATS, BuildConfig
from ratingloop.dataset.formats import kto_class_weights
from ratingloop.dataset.preview import PreviewRow, preview
from ratingloop.dataset.purge import purge_user, purged_at, remove_purged_files
from ratingloop.dataset.rows import prompt_key
from ratingloop.dataset.run import BuildResult, build_dataset
from ratingloop.dataset.scrub import scrub

__all__ = ["FORMATS", "BuildConfig", "BuildResult", "PreviewRow", "build_dataset", "kto_class_weights", "preview",
           "prompt_key", "purge_user", "purged_at", "remove_purged_files", "scrub"]
