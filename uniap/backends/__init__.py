"""Backends behind one registry: the array's library picks one, or the user names it.

Every backend gives the same partitions (DESIGN.md 1.5).  ``available()`` says which ones
this machine can run, and why the others cannot.  Importing this module imports none of
Numba, torch or CuPy: a backend imports its library when it is first used.

Examples
--------
>>> from uniap import backends
>>> backends.available()["numpy"] is None
True
"""

from __future__ import annotations

from .base import Backend
from .registry import _AUTO_CACHE, _AUTO_ORDER, _REGISTRY, available, for_array, get, names, register  # noqa: F401

from . import numpy_backend as _numpy_backend  # noqa: F401  (registers "numpy")
from . import numba_backend as _numba_backend  # noqa: F401  (registers "numba")
from . import torch_backend as _torch_backend  # noqa: F401  (registers "torch"; imports no torch)
from . import cupy_backend as _cupy_backend  # noqa: F401  (registers "cupy"; imports no CuPy)

__all__ = ["Backend", "register", "names", "available", "get", "for_array"]
