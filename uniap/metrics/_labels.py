"""Label-map helpers shared by the metric modules (private).

Everything here works on flattened integer arrays and builds contingency
(overlap) tables with :func:`numpy.bincount` -- no per-pixel Python loops.
"""

from __future__ import annotations

import numpy as np

__all__: list[str] = []

# Largest dense joint histogram (number of bins) built with ``np.bincount``;
# above this the table is built by sorting the joint keys instead.
_DENSE_BINS = 1 << 22


def as_label_array(labels, name: str = "labels") -> np.ndarray:
    """Return ``labels`` as an integer ndarray (bool -> uint8; integral floats accepted)."""
    a = np.asarray(labels)
    if a.dtype == bool:
        return a.astype(np.uint8)
    if a.dtype.kind in "iu":
        return a
    if a.dtype.kind == "f":
        if not (np.all(np.isfinite(a)) and np.array_equal(a, np.round(a))):
            raise ValueError(f"{name} must hold integer labels")
        return a.astype(np.int64)
    raise TypeError(f"{name} must be an integer label array, got dtype {a.dtype}")


def compact_labels(labels, void: int | None = 0) -> tuple[np.ndarray, int]:
    """Relabel a label map to ``0..k`` (flattened, ``intp``).

    Pixels equal to ``void`` become 0 ("not a region"); the other labels are
    renumbered ``1..k`` in increasing order of their value.  With
    ``void=None`` every label is a region.

    Returns
    -------
    flat : ndarray of intp, shape (N,)
    k : int
        Number of (non-void) regions.
    """
    a = as_label_array(labels).ravel()
    if a.size == 0:
        return np.zeros(0, np.intp), 0
    lo = int(a.min())
    hi = int(a.max())
    if lo >= 0 and hi < max(4 * a.size, 1 << 16):
        a = a.astype(np.intp, copy=False)
        present = np.bincount(a, minlength=hi + 1) > 0
        if void is not None and 0 <= void <= hi:
            present[void] = False
        lut = np.cumsum(present, dtype=np.intp)
        lut *= present
        return lut[a], int(lut.max(initial=0))
    uniq, inv = np.unique(a, return_inverse=True)
    keep = np.ones(uniq.shape, bool) if void is None else uniq != void
    lut = np.cumsum(keep, dtype=np.intp) * keep
    return lut[inv.ravel()], int(keep.sum())


def joint_counts(a: np.ndarray, na: int, b: np.ndarray, nb: int):
    """Sparse contingency table of two compact label arrays.

    ``a`` takes values in ``0..na`` and ``b`` in ``0..nb``.  Returns the
    non-zero cells as three arrays ``(ia, ib, count)``.
    """
    ma, mb = na + 1, nb + 1
    key = a * mb + b
    if ma * mb <= max(_DENSE_BINS, 4 * a.size):
        counts = np.bincount(key, minlength=ma * mb)
        nz = np.flatnonzero(counts)
        return nz // mb, nz % mb, counts[nz]
    keys, counts = np.unique(key, return_counts=True)
    return keys // mb, keys % mb, counts


def group_max(groups: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    """``out[g] = max(values[groups == g])`` (0 where a group is empty); values >= 0."""
    out = np.zeros(size, dtype=np.float64)
    if groups.size:
        np.maximum.at(out, groups, values)
    return out
