"""The order the two workers take test files in: the longest first (tests/conftest.py applies it,
bench/suite_schedule.py replays it).

`--dist loadfile` hands whole files to the workers in queue order, and a long file started last is the suite's
tail. xdist's own queue order (`--loadscope-reorder`) is by number of tests, which put the default-model files -
a few tests each, 2-18 minutes each on a CPU without native bf16 - last. Here they come first (most
default-model tests first), then files by their number of slow tests, then by their number of tests, as
xdist would; ties keep the collection order.
"""

from __future__ import annotations

from typing import Any, Iterable


def file_of(item: Any) -> str:
    """A test's file, as its node id starts (tests/test_x.py)."""
    return str(item.nodeid.split("::")[0])


def file_ranks(items: Iterable[Any]) -> dict[str, tuple[int, int, int]]:
    """Each test file's sort key (by `file_of`) over the tests that will run."""
    ranks: dict[str, tuple[int, int, int]] = {}
    for item in items:
        path = file_of(item)
        model, slow, tests = ranks.get(path, (0, 0, 0))
        ranks[path] = (model - ("default_model" in item.fixturenames),
                       slow - (item.get_closest_marker("slow") is not None), tests - 1)
    return ranks
