"""The cores this process may run on: the one count the evaluation's workers, the pipeline's
writer thread and the superpixels' thread beside the features all follow."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """CPUs this process may use (its affinity mask where the platform has one), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)
