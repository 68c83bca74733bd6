"""Results of a run: a :class:`Hierarchy` of nested :class:`Level` partitions per image."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
from array_api_compat import array_namespace, is_cupy_array, is_torch_array

from .graph import nearest_index  # noqa: F401  (its old home: uniap.hierarchy.nearest_index)


def to_numpy(a: Any) -> Any:
    """Bring an array of any supported library to the host as NumPy (None passes through)."""
    if a is None or isinstance(a, np.ndarray):
        return a
    if is_torch_array(a):
        return a.detach().cpu().numpy()
    if is_cupy_array(a):
        return a.get()
    return np.asarray(a)


@dataclass(frozen=True)
class Level:
    """One level of a hierarchy: a partition of the grid's cells into clusters.

    Attributes
    ----------
    threshold : float
        The cosine threshold t of this level.
    labels : array of shape (*grid,), int32
        Cluster of every cell, numbered 0..K-1 in the order of each cluster's smallest
        cell id (row-major first appearance), so equal partitions give equal arrays.
    sizes : array of shape (K,), int64
        Cells per cluster.
    features : array of shape (K, C)
        The mean of member features (``pooling="sum"``) or the attention-pooled feature
        (``pooling="attention"``).
    parents : array of shape (K,), int64
        Cluster of the next (coarser) level containing each cluster; -1 at the last level.
    semantic_labels : array of shape (*grid,), int32, or None
        Semantic group of every cell (``semantic=True``), numbered canonically.
    """

    threshold: float
    labels: Any
    sizes: Any
    parents: Any
    semantic_labels: Any | None = None
    _features: Any = field(default=None, repr=False)
    # Backends that never form the per-level means themselves (Numba) leave them to be
    # computed here, once, on first access: a run that only needs partitions pays nothing.
    _compute_features: Callable[[], Any] | None = field(default=None, repr=False, compare=False)

    @property
    def features(self) -> Any:
        """(K, C) cluster features; see the class docstring."""
        if self._features is None and self._compute_features is not None:
            object.__setattr__(self, "_features", self._compute_features())
            object.__setattr__(self, "_compute_features", None)
        return self._features

    @property
    def num_clusters(self) -> int:
        return int(self.sizes.shape[0])


@dataclass(frozen=True)
class Hierarchy:
    """Nested multi-granular partitions of one grid (or graph), finest level first.

    Arrays stay in the input's array library and device; :meth:`numpy` is the one step to
    the host.

    Attributes
    ----------
    levels : list of Level
        The partitions, finest (highest threshold) first.
    min_size : int
        Clusters with fewer cells are not reported by :meth:`masks`, :meth:`queries` and
        :meth:`to_records` (label maps still cover every cell).
    options : dict
        The resolved options of the run (for provenance in output files).
    min_margin : float or None
        Smallest |s - t| over every decision the run took, when it was tracked (the NumPy
        reference with ``track_margin=True``); partitions of float32 backends can only
        differ from the reference when it is below about 1e-5.
    input_features : array of shape (N, C), optional
        The features the run read (channels last, flattened), in the input's library: the
        cluster means of ``Level.features`` are computed from them on first access.
    """

    levels: list[Level]
    min_size: int = 4
    options: dict = field(default_factory=dict)
    min_margin: float | None = None
    input_features: Any = field(default=None, repr=False)

    # -- columns across levels ---------------------------------------------------------
    def __len__(self) -> int:
        return len(self.levels)

    def level(self, i: int) -> Level:
        """Level ``i`` (0 = finest, highest threshold); negative indices count from the end."""
        return self.levels[i]

    @property
    def thresholds(self) -> tuple[float, ...]:
        return tuple(lv.threshold for lv in self.levels)

    @property
    def shape(self) -> tuple[int, ...]:
        """The grid's spatial shape (``(N,)`` for a plain graph)."""
        return tuple(self.levels[0].labels.shape)

    @property
    def labels(self) -> Any:
        """Instance label maps of every level, shape (L, *grid), int32."""
        xp = array_namespace(self.levels[0].labels)
        return xp.stack([lv.labels for lv in self.levels])

    def _mask_ids(self, i: int) -> Any:
        lv = self.levels[i]
        xp = array_namespace(lv.sizes)
        return xp.nonzero(lv.sizes >= self.min_size)[0]

    def masks(self, i: int) -> Any:
        """Boolean masks (K', *grid) of level ``i``'s clusters with size >= min_size, in label order."""
        lv = self.levels[i]
        xp = array_namespace(lv.labels)
        ids = xp.astype(self._mask_ids(i), lv.labels.dtype)
        return lv.labels[None, ...] == xp.reshape(ids, (-1,) + (1,) * lv.labels.ndim)

    def queries(self) -> Any:
        """Features of every level's masks, stacked finest level first: shape (sum K', C).

        These are the teacher queries of QuerySD.
        """
        xp = array_namespace(self.levels[0].features)
        parts = [xp.take(lv.features, self._mask_ids(i), axis=0) for i, lv in enumerate(self.levels)]
        return xp.concat(parts, axis=0)

    # -- conversions ------------------------------------------------------------------
    def numpy(self) -> "Hierarchy":
        """The same hierarchy with every array on the host as NumPy."""
        levels = [
            replace(
                lv,
                labels=to_numpy(lv.labels),
                sizes=to_numpy(lv.sizes),
                _features=to_numpy(lv.features),
                _compute_features=None,
                parents=to_numpy(lv.parents),
                semantic_labels=to_numpy(lv.semantic_labels),
            )
            for lv in self.levels
        ]
        return replace(self, levels=levels, input_features=to_numpy(self.input_features))

    def upsample(self, shape: Sequence[int], mode: str = "nearest") -> Any:
        """Label maps of every level resized to ``shape`` (e.g. the image's (H, W)).

        Parameters
        ----------
        shape : (H, W)
            Output size in pixels.  Grid cell (i, j) covers the pixels whose centres fall
            in its cell when the grid is stretched over the image.
        mode : {"nearest"}
            Nearest-neighbour (the only mode of the core; refinement lives with the CLI).

        Returns
        -------
        array of shape (L, H, W), int32
        """
        if mode != "nearest":
            raise ValueError(f"mode must be 'nearest', got {mode!r}")
        grid = self.shape
        if len(grid) != 2:
            raise ValueError(f"upsample needs a 2-D grid hierarchy, this one has shape {grid}")
        shape = tuple(int(s) for s in shape)
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"shape must be (H, W) with positive sizes, got {shape}")
        labels = self.labels
        xp = array_namespace(labels)
        rows, cols = (nearest_index(n_out, n_in) for n_out, n_in in zip(shape, grid))
        dev = _device_of(labels)
        rows = xp.asarray(rows, device=dev)
        cols = xp.asarray(cols, device=dev)
        return xp.take(xp.take(labels, rows, axis=1), cols, axis=2)

    def to_records(self, image_shape: Sequence[int] | None = None, *, unique: bool = True) -> list[dict]:
        """SAM-style mask records (COCO RLE) at image resolution; see :mod:`uniap.records`.

        Parameters
        ----------
        image_shape : (H, W), optional
            Output resolution (nearest-neighbour upsampling); the grid's when None.
        unique : bool
            True (default): each distinct mask once, at its finest level, with ``levels``
            listing the levels it spans; False: one record per cluster and level.
        """
        from ..records import hierarchy_records

        return hierarchy_records(self.numpy(), image_shape, unique=unique)


def _device_of(a: Any) -> Any:
    from array_api_compat import device

    return device(a)
