"""Graphs UniAP runs on: grid adjacency, and batches of grids as one disjoint graph."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

CONNECTIVITIES = (4, 8)


@lru_cache(maxsize=64)
def _grid_edges_cached(shape: tuple[int, ...], connectivity: int) -> np.ndarray:
    n = int(np.prod(shape))
    ids = np.arange(n, dtype=np.int64).reshape(shape)
    ndim = len(shape)
    if connectivity == 4:
        offsets = [tuple(int(i == d) for i in range(ndim)) for d in range(ndim)]
    else:
        # Every neighbour whose first non-zero step is positive: each undirected edge once.
        offsets = [
            off
            for off in itertools.product((-1, 0, 1), repeat=ndim)
            if any(off) and off[next(i for i, o in enumerate(off) if o)] == 1
        ]
    parts = []
    for off in offsets:
        src = tuple(slice(max(0, -o), s - max(0, o)) for o, s in zip(off, shape))
        dst = tuple(slice(max(0, o), s - max(0, -o)) for o, s in zip(off, shape))
        a, b = ids[src].ravel(), ids[dst].ravel()
        parts.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
    edges = np.concatenate(parts) if parts else np.empty((0, 2), np.int64)
    # Sorted by (a, b): kernels then sweep the rows once, with each row's neighbours close.
    # Stored column-major so that each column is a contiguous array kernels take as is.
    order = np.lexsort((edges[:, 1], edges[:, 0]))
    edges = np.ascontiguousarray(edges[order].T).T
    edges.setflags(write=False)
    return edges


def grid_edges(shape: Sequence[int], connectivity: int = 4) -> np.ndarray:
    """Edges of the grid graph over cells numbered in row-major order.

    Parameters
    ----------
    shape : sequence of int
        Spatial shape of the grid, e.g. ``(H, W)`` or ``(D, H, W)``.
    connectivity : {4, 8}
        4: face neighbours (4 in 2-D, 6 in 3-D, 2N in N-D).  8: every neighbour that
        touches a face, edge or corner (8 in 2-D, 26 in 3-D).

    Returns
    -------
    edges : ndarray of shape (E, 2), int64
        Each undirected edge once, as ``(a, b)`` with ``a < b``, sorted by ``(a, b)``.
        Read-only (cached).

    Examples
    --------
    >>> grid_edges((2, 3)).tolist()
    [[0, 1], [0, 3], [1, 2], [1, 4], [2, 5], [3, 4], [4, 5]]
    """
    if connectivity not in CONNECTIVITIES:
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
    return _grid_edges_cached(tuple(int(s) for s in shape), int(connectivity))


@dataclass
class Graph:
    """A disjoint union of parts (images), each a contiguous range of nodes.

    Attributes
    ----------
    x : array of shape (N, C)
        Node features, in the input's array library.
    edges : ndarray of shape (E, 2), int64
        Undirected edges ``a < b`` (NumPy; backends move them where they need them).
    offsets : ndarray of shape (P + 1,), int64
        Part p owns nodes ``offsets[p]:offsets[p + 1]``.
    shapes : list of tuple
        The spatial shape of each part (``(n,)`` for a plain graph).
    name : str
        What the caller called the features (``features``, ``x``), for error messages.
    """

    x: Any
    edges: np.ndarray
    offsets: np.ndarray
    shapes: list[tuple[int, ...]]
    name: str = "features"

    @property
    def num_nodes(self) -> int:
        return int(self.offsets[-1])

    @property
    def num_parts(self) -> int:
        return len(self.shapes)

    def part_of_node(self) -> np.ndarray:
        """Part index of every node, shape (N,)."""
        sizes = np.diff(self.offsets)
        return np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)


def batch_edges(shapes: Sequence[tuple[int, ...]], connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """Edges and node offsets of the disjoint union of grids of the given shapes."""
    sizes = [int(np.prod(s)) for s in shapes]
    offsets = np.zeros(len(shapes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    if len(shapes) == 1:
        return grid_edges(shapes[0], connectivity), offsets
    parts = [grid_edges(s, connectivity) + off for s, off in zip(shapes, offsets[:-1])]
    return np.concatenate(parts), offsets


def nearest_index(n_out: int, n_in: int) -> np.ndarray:
    """Source index of each output position under nearest-neighbour resizing (pixel centres)."""
    idx = ((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64)
    return np.minimum(idx, n_in - 1)
