"""Where a run's outputs came from: the source revision, saved beside every build and training run.

Shared by the dataset and train stages (and anything else that records a run), so neither reaches
into the other for it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_revision() -> str | None:
    """The source revision this process runs from, when the package runs from a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
