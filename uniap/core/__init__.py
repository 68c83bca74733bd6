"""The UniAP algorithm on its own: options, graphs, the level loop, the hierarchy of results.

Nothing here knows of images, features, superpixels, pipelines, files or mask records:
:mod:`uniap.core` imports only NumPy, array-api-compat and :mod:`uniap.backends` (the array
primitives the level loop runs on), and every other layer imports it
(``docs/architecture.md``).

* :mod:`~uniap.core.api` -- :func:`segment` and :func:`segment_graph`, the public functions.
* :mod:`~uniap.core.options` -- :class:`Options`, presets and their checks, written once.
* :mod:`~uniap.core.graph` -- :class:`Graph` and grid edges.
* :mod:`~uniap.core.levels` -- the level loop over a backend's primitives (was ``uniap.engine``).
* :mod:`~uniap.core.hierarchy` -- :class:`Hierarchy` and :class:`Level`, the results.

>>> import numpy as np
>>> from uniap.core import segment
>>> segment(np.ones((4, 4, 3)), levels=(0.5,), min_size=1).labels.shape
(1, 4, 4)
"""

from .api import segment, segment_graph
from .graph import Graph, grid_edges
from .hierarchy import Hierarchy, Level
from .options import DEFAULT_LEVELS, PRESETS, Options, resolve_options

__all__ = [
    "DEFAULT_LEVELS",
    "PRESETS",
    "Graph",
    "Hierarchy",
    "Level",
    "Options",
    "grid_edges",
    "resolve_options",
    "segment",
    "segment_graph",
]
