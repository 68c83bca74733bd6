"""uniap: fast universal agglomerative pooling (UniAP) for unsupervised pseudo-masks.

>>> import numpy as np, uniap
>>> h = uniap.segment(np.random.default_rng(0).normal(size=(16, 16, 8)))
>>> len(h), h.labels.shape
(5, (5, 16, 16))

Importing uniap loads the algorithm's core (:mod:`uniap.core`) and NumPy only; the image
layers (:func:`segment_image`: features, superpixels, the pipeline) load on first use, and
Numba, torch and CuPy are imported by the backend that needs them, when it first runs.
The layers and their one-way arrows: ``docs/architecture.md``.
"""

from typing import Any

from . import backends
from ._version import __version__
from .core.api import segment, segment_graph
from .core.graph import grid_edges
from .core.hierarchy import Hierarchy, Level
from .core.options import DEFAULT_LEVELS, PRESETS

# Public names whose modules load on first use: they pull in features, superpixels and the
# pipeline, which ``uniap.segment`` on a feature grid never needs.
_LAZY = {
    "segment_image": "uniap.pipeline.image",
    "ImageSegmentation": "uniap.pipeline.image",
}

__all__ = [
    "segment",
    "segment_graph",
    "segment_image",
    "ImageSegmentation",
    "Hierarchy",
    "Level",
    "grid_edges",
    "backends",
    "DEFAULT_LEVELS",
    "PRESETS",
    "__version__",
]


def __getattr__(name: str) -> Any:
    """Load :data:`_LAZY`'s names, and subpackages (``uniap.pipeline``, ...), on first use."""
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
