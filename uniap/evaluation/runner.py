"""Old path of :mod:`uniap.evaluation.scoring` (a segmenter scored over a data set), kept so that
old imports keep working: every name of it is read through this module.  The
one runner is :mod:`uniap.pipeline.runner` (``docs/architecture.md``).
"""

from typing import Any

from . import scoring as _module


def __getattr__(name: str) -> Any:
    """Every name of the moved module, read from it (set attributes there, not here)."""
    return getattr(_module, name)


def __dir__() -> list[str]:
    return dir(_module)
