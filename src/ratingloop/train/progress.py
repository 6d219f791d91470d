"""Stage 5, train: one rich progress bar per training run - steps, the latest loss, tokens/s and an ETA.

    trainer.add_callback(TrainProgress("training kto"))   # run.py does this when progress is on

It replaces transformers' tqdm bar (`disable_tqdm=True` in every run's arguments), which shows neither the
loss nor the throughput, and prints log dicts between its redraws. Only the main process draws it.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback


class TrainProgress(TrainerCallback):
    """Advances on every optimizer step; the loss is the latest logged one, tokens/s counts input tokens
    (`include_num_input_tokens_seen`) since the run (or its resume) began."""

    def __init__(self, description: str, console: Console | None = None):
        self.description = description
        self.console = console or Console(stderr=True)
        self.bar: Progress | None = None
        self.task: Any = None
        self.start = (0.0, 0)  # (time, tokens seen) when this process began

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} tokens/s"),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False)
        self.bar.start()
        self.task = self.bar.add_task(self.description, total=state.max_steps, completed=state.global_step,
                                      loss="-", rate="-")
        self.start = (time.perf_counter(), int(state.num_input_tokens_seen or 0))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is None:
            return
        seconds = time.perf_counter() - self.start[0]
        tokens = int(state.num_input_tokens_seen or 0) - self.start[1]
        self.bar.update(self.task, completed=state.global_step,
                        rate=f"{tokens / seconds:.0f}" if seconds > 0 and tokens > 0 else "-")

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if self.bar is not None and logs and "loss" in logs:
            self.bar.update(self.task, loss=f"{float(logs['loss']):.4f}")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=state.global_step)
            self.bar.stop()
            self.bar = None
