"""Benchmark: how long `make test` takes on two workers under two queue orders, from one run's test durations.

xdist's `--dist loadfile` hands whole files to the two workers in queue order, a file at a time, topping a
worker up once it has two or fewer tests pending. Its default queue order (`--loadscope-reorder`) puts the
files with the most tests first - which put the default-model files (a few tests each, minutes each on a CPU
without native bf16) last, where a long file becomes the suite's tail. tests/conftest.py queues the files with
the most default-model tests first, then the most slow tests (tests/file_order.py; `--no-loadscope-reorder`
keeps that order).

This replays xdist's scheduler over each test's measured time (setup + call + teardown, from a run with
`--durations=0`) under both orders, and prints each worker's finish time; the measured wall time of the run
the log came from is the check on the replay of the order it ran with.

    PYTHONPATH=... .venv/bin/python -m pytest --durations=0 -q > /tmp/suite.log   # a whole run, any order
    .venv/bin/python bench/suite_schedule.py /tmp/suite.log
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from file_order import file_of, file_ranks  # noqa: E402 - the rule tests/conftest.py applies

DURATION = re.compile(r"^([0-9.]+)s (?:setup|call|teardown)\s+(\S.*)$")


class Collected:
    """The tests that run, in collection order (before tests/conftest.py reorders them)."""

    def __init__(self) -> None:
        self.items: list[pytest.Item] = []
        self.deselected: set[str] = set()

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        self.items = list(items)

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected |= {item.nodeid for item in items}

    @property
    def selected(self) -> list[pytest.Item]:
        return [item for item in self.items if item.nodeid not in self.deselected]


def collect(marks: str) -> Collected:
    plugin = Collected()
    code = pytest.main(["--collect-only", "-qq", "-p", "no:xdist", "-o", "addopts=", "-m", marks], plugins=[plugin])
    if code != 0:
        sys.exit(f"collection failed (pytest exit {code})")
    return plugin


def durations(log: Path) -> dict[str, float]:
    """Each test id's setup + call + teardown seconds; pytest hides those under 5 ms (counted as 0)."""
    seconds: dict[str, float] = defaultdict(float)
    for line in log.read_text().splitlines():
        if m := DURATION.match(line.strip()):
            seconds[m[2]] += float(m[1])
    if not seconds:
        sys.exit(f"{log}: no '--durations=0' lines")
    return seconds


def replay(files: list[tuple[str, list[float]]], workers: int = 2) -> list[float]:
    """xdist's LoadScopeScheduling over `files` (each file's tests' seconds, in queue order): each worker gets a
    file, then a second while it has <= 2 tests pending, and another each time a test ends with <= 2 pending.
    Returns each worker's finish time."""
    queue = list(files)
    pending: list[list[float]] = [[] for _ in range(workers)]
    clock = [0.0] * workers

    def top_up(w: int) -> None:
        if queue and len(pending[w]) <= 2:
            pending[w].extend(queue.pop(0)[1])

    for w in range(workers):
        if queue:
            pending[w].extend(queue.pop(0)[1])
    for w in range(workers):
        top_up(w)
    while any(pending):
        w = min((w for w in range(workers) if pending[w]), key=lambda w: clock[w] + pending[w][0])
        clock[w] += pending[w].pop(0)
        top_up(w)
    return clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", type=Path, help="the output of a pytest run with --durations=0")
    parser.add_argument("-m", dest="marks", default="", help="the run's -m expression, e.g. 'not slow'")
    args = parser.parse_args()
    seconds = durations(args.log)
    collected = collect(args.marks)
    by_file: dict[str, list[float]] = defaultdict(list)
    for item in collected.selected:
        by_file[file_of(item)].append(seconds.get(item.nodeid, 0.0))
    files = list(by_file.items())
    ranks = file_ranks(collected.selected)
    orders = {
        "xdist's default (most tests first)": sorted(files, key=lambda f: -len(f[1])),
        "tests/file_order.py (default-model, then slow files first)": sorted(files, key=lambda f: ranks[f[0]]),
    }
    total = sum(map(sum, by_file.values()))
    print(f"{len(files)} files, {len(collected.selected)} tests, {total / 60:.1f} worker-minutes in all "
          f"({total / 120:.1f} minutes on 2 workers at best)")
    for name, order in orders.items():
        finish = replay(order)
        print(f"{name}: workers finish at {', '.join(f'{t / 60:.1f}' for t in finish)} min "
              f"-> wall {max(finish) / 60:.1f} min; first files {', '.join(Path(f).stem for f, _ in order[:4])}")
    print("longest files: " + ", ".join(f"{Path(f).stem} {sum(s) / 60:.1f} min"
                                        for f, s in sorted(files, key=lambda f: -sum(f[1]))[:8]))


if __name__ == "__main__":
    main()
