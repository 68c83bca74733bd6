"""The NumPy reference backend: float64, vectorised, SciPy for the graph primitives."""

from __future__ import annotations

from typing import Any

import numpy as np

from .registry import register
from .base import Backend


@register
class NumpyBackend(Backend):
    """The readable reference: float64 scores, exact "s > t" decisions (DESIGN.md 1.5)."""

    name = "numpy"
    library = "numpy"

    def accepts(self, x: Any) -> bool:
        return isinstance(x, np.ndarray)

    @property
    def xp(self) -> Any:
        return np

    def prepare_features(self, x: Any) -> np.ndarray:
        return np.array(x, dtype=np.float64, order="C", copy=True)

    def from_any(self, x: Any) -> np.ndarray:
        from ..core.hierarchy import to_numpy

        return to_numpy(x)

    def all_finite(self, x: Any) -> bool:
        return bool(np.isfinite(x).all())

    def asarray_index(self, a: np.ndarray, like: Any) -> np.ndarray:
        return np.asarray(a, dtype=np.int64)

    def to_numpy(self, a: Any) -> np.ndarray:
        return np.asarray(a)

    def components(self, num_nodes: int, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, int]:
        # SciPy loads on the first run, not with ``import uniap`` (a fifth of a second)
        import scipy.sparse as sp
        from scipy.sparse.csgraph import connected_components

        adjacency = sp.coo_array(
            (np.ones(a.shape[0], dtype=np.int8), (a, b)), shape=(num_nodes, num_nodes)
        ).tocsr()
        # SciPy labels components in the order of their first node: already canonical.
        k, comp = connected_components(adjacency, directed=False)
        return comp.astype(np.int64, copy=False), int(k)

    def segment_sum(self, values, labels, num, rows=None):
        if rows is None:
            rows = np.arange(labels.shape[0])
        if values.ndim == 1:
            sums = np.bincount(labels, weights=values[rows], minlength=num)
            return sums.astype(values.dtype) if values.dtype.kind in "iu" else sums
        import scipy.sparse as sp

        # Row b of the indicator lists bin b's rows in the order given, and SciPy's CSR
        # product accumulates them in that order, reading only those rows of ``values``.
        indicator = sp.csr_array(
            (np.ones(rows.shape[0], dtype=values.dtype), (labels, rows)),
            shape=(num, values.shape[0]),
        )
        return indicator @ values

    def first_occurrences(self, comp: np.ndarray, k: int) -> np.ndarray:
        # Canonical labels first appear in increasing order: where the running maximum grows.
        return np.flatnonzero(np.diff(np.maximum.accumulate(comp), prepend=-1) > 0)

    # The fixed-shape primitives let the device loop (uniap.backends._device) run, and be
    # tested, on NumPy arrays too.
    def scatter_min_(self, target: np.ndarray, index: np.ndarray, values: np.ndarray) -> None:
        np.minimum.at(target, index, values)

    def index_add_(self, target: np.ndarray, index: np.ndarray, values: np.ndarray) -> None:
        np.add.at(target, index, values)  # unbuffered, in the order of ``index``

    def bincount(self, index: np.ndarray, n: int) -> np.ndarray:
        return np.bincount(index, minlength=n)

    def compact(self, mask: np.ndarray, count: int) -> np.ndarray:
        return np.flatnonzero(mask)

    def unique_edges(self, a: np.ndarray, b: np.ndarray, num_nodes: int):
        keep = a != b
        lo = np.minimum(a[keep], b[keep])
        hi = np.maximum(a[keep], b[keep])
        key = np.unique(lo * num_nodes + hi)
        return key // num_nodes, key % num_nodes
