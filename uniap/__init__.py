"""uniap: fast universal agglomerative pooling (UniAP) for unsupervised pseudo-masks.

>>> import numpy as np, uniap
>>> h = uniap.segment(np.random.default_rng(0).normal(size=(16, 16, 8)))
>>> len(h), h.labels.shape
(5, (5, 16, 16))

Importing uniap loads NumPy and SciPy only; Numba, torch and CuPy are imported by the
backend that needs them, when it first runs.
"""

from . import backends
from .api import segment, segment_graph
from .graph import grid_edges
from .hierarchy import Hierarchy, Level
from .options import DEFAULT_LEVELS, PRESETS
from .pipeline import ImageSegmentation, segment_image

__version__ = "0.1.0"

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
