"""Boundary benchmark of BSDS500: pixel correspondence, precision/recall/F.

Follows ``bench/benchmarks/evaluation_bdry_image.m`` and
``correspondPixels`` of the BSDS500 release (Martin et al., TPAMI 2004;
Arbelaez et al., TPAMI 2011):

1. the machine boundary map is binarised and thinned to one-pixel width
   (MATLAB ``bwmorph(bmap, 'thin', inf)`` = :func:`skimage.morphology.thin`);
2. it is matched **one-to-one** against each human boundary map, a machine
   and a human pixel being matchable when their Euclidean distance is at most
   ``max_dist`` x the image diagonal (0.0075 by default, about 4.3 px on
   BSDS);
3. recall pools the humans (matched human pixels over all human boundary
   pixels, summed over the K humans); a machine pixel counts for precision
   when it is matched to *any* human.

The benchmark solves the matching with Goldberg's CSA min-cost assignment on a
sparse graph whose unmatched pixels are sent to "outlier" nodes at a cost
``outlier_cost`` x the distance limit (100 x), so that the number of matched
pixels is maximised first and the total distance (rounded to 1/100 px, CSA
works on integers) is minimised among those.  :func:`correspond_pixels`
solves that same problem exactly with SciPy's sparse LAPJV
(:func:`scipy.sparse.csgraph.min_weight_full_bipartite_matching`) on the
candidate pairs only, with one private outlier node per pixel of the smaller
side.  The benchmark adds *random* sparse outlier connections, so its matching
(hence its precision, which depends on which pixels are matched) varies at
the 1e-3 level between runs; it publishes different numbers for the same
input (compare ``test_3`` and ``test_4`` of ``bench/data``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "BoundaryCounts",
    "BoundaryPRF",
    "Correspondence",
    "boundary_counts",
    "boundary_prf",
    "correspond_pixels",
    "f_measure",
    "segmentation_boundaries",
    "thin_boundaries",
]

#: Default matching tolerance of the benchmark, as a fraction of the image diagonal.
MAX_DIST = 0.0075


class Correspondence(NamedTuple):
    """Result of :func:`correspond_pixels`.

    ``match1`` / ``match2``: boolean maps of the matched pixels of the first /
    second map.  ``pairs``: (k, 2) flat (row-major) indices of the matched
    pixel pairs (first map, second map).  ``cost``: total distance of the
    matched pairs, in pixels.
    """

    match1: np.ndarray
    match2: np.ndarray
    pairs: np.ndarray
    cost: float


class BoundaryCounts(NamedTuple):
    """Boundary-benchmark counts for one image and one threshold.

    ``cnt_r`` matched human pixels (summed over humans), ``sum_r`` human
    boundary pixels (summed over humans), ``cnt_p`` machine pixels matched to
    some human, ``sum_p`` machine pixels (after thinning).
    """

    cnt_r: int
    sum_r: int
    cnt_p: int
    sum_p: int

    @property
    def recall(self) -> float:
        return self.cnt_r / self.sum_r if self.sum_r else 0.0

    @property
    def precision(self) -> float:
        return self.cnt_p / self.sum_p if self.sum_p else 0.0

    @property
    def f(self) -> float:
        return f_measure(self.recall, self.precision)


class BoundaryPRF(NamedTuple):
    """Precision, recall and F of :func:`boundary_prf`, with the raw counts."""

    precision: float
    recall: float
    f: float
    counts: BoundaryCounts


def f_measure(r, p):
    """Harmonic mean ``2pr / (p + r)``, 0 where ``p + r == 0`` (benchmark ``fmeasure``).

    Parameters
    ----------
    r, p : float or ndarray
        Recall and precision (broadcast together).

    Returns
    -------
    float or ndarray
        The F-measure, of the broadcast shape.

    Examples
    --------
    >>> f_measure(0.5, 1.0)
    0.6666666666666666
    """
    r = np.asarray(r, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    s = p + r
    out = 2.0 * p * r / (s + (s == 0))
    return float(out) if out.ndim == 0 else out


def segmentation_boundaries(seg, *, doubled: bool = False) -> np.ndarray:
    """Boundary map of a label map, as the benchmark's ``seg2bdry``.

    On the doubled grid (``2H+1`` x ``2W+1``) an edge element between two
    4-neighbours is on when their labels differ, a grid corner when any of the
    four edge elements around it is on, and the outer frame copies its inner
    neighbour.  The image-size map (default) is ``bdry[2::2, 2::2]`` of the
    doubled one (MATLAB ``bdry(3:2:end, 3:2:end)``): pixel ``(i, j)`` takes
    the grid corner at its lower right, so a contour is drawn on the
    upper/left pixel of each label transition (the same convention as
    ``ucm2[2::2, 2::2]``).

    Parameters
    ----------
    seg : array_like of int, shape (H, W)
    doubled : bool, default False
        Return the (2H+1, 2W+1) map instead of the image-size one.

    Returns
    -------
    ndarray of bool

    Examples
    --------
    >>> import numpy as np
    >>> seg = np.array([[1, 1, 2, 2]] * 3)
    >>> segmentation_boundaries(seg).astype(int)
    array([[0, 1, 0, 0],
           [0, 1, 0, 0],
           [0, 1, 0, 0]])
    """
    seg = np.asarray(seg)
    if seg.ndim != 2:
        raise ValueError("seg must be 2-D")
    h, w = seg.shape
    ev = np.zeros((h, w), bool)  # vertical neighbours differ (pixel i vs i+1)
    ev[:-1, :] = seg[:-1, :] != seg[1:, :]
    eh = np.zeros((h, w), bool)  # horizontal neighbours differ
    eh[:, :-1] = seg[:, :-1] != seg[:, 1:]
    b = np.zeros((2 * h + 1, 2 * w + 1), bool)
    b[2::2, 1::2] = ev
    b[1::2, 2::2] = eh
    b[2:-1:2, 2:-1:2] = (eh[:-1, :-1] | eh[1:, :-1]) | (ev[:-1, :-1] | ev[:-1, 1:])
    b[0, :] = b[1, :]
    b[:, 0] = b[:, 1]
    b[-1, :] = b[-2, :]
    b[:, -1] = b[:, -2]
    return b if doubled else b[2::2, 2::2]


def thin_boundaries(bmap) -> np.ndarray:
    """Thin a binary boundary map to one-pixel width (MATLAB ``bwmorph(.., 'thin', inf)``).

    :func:`skimage.morphology.thin` implements the same two-subiteration
    algorithm (Lam, Lee & Suen 1992; Guo & Hall 1989) run to convergence.

    Parameters
    ----------
    bmap : ndarray of shape (H, W)
        A boundary map; non-zero pixels are boundary.

    Returns
    -------
    ndarray of shape (H, W), bool
        The thinned map.

    Examples
    --------
    >>> import numpy as np
    >>> thick = np.zeros((5, 7), bool); thick[1:4, 1:6] = True
    >>> int(thin_boundaries(thick).sum()) < int(thick.sum())
    True
    """
    from skimage.morphology import thin

    return thin(np.asarray(bmap) != 0)


_OFFSET_CACHE: dict[float, tuple] = {}


def _offsets(radius: float):
    """Integer offsets (dy, dx) with dy^2 + dx^2 <= radius^2 and their CSA costs."""
    hit = _OFFSET_CACHE.get(radius)
    if hit is not None:
        return hit
    r = int(np.ceil(radius))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    d2 = dy * dy + dx * dx
    keep = d2 <= radius * radius
    dy, dx, d2 = dy[keep], dx[keep], d2[keep]
    order = np.argsort(d2, kind="stable")
    dy, dx, d2 = dy[order], dx[order], d2[order]
    cost = np.rint(np.sqrt(d2) * 100.0).astype(np.int64)  # CSA's integer weights
    out = (dy, dx, cost, np.sqrt(d2))
    if len(_OFFSET_CACHE) < 64:
        _OFFSET_CACHE[radius] = out
    return out


class _PixelIndex:
    """On-pixels of a binary map with a padded pixel -> node-id lookup image."""

    __slots__ = ("y", "x", "ids", "pad", "shape")

    def __init__(self, bmap: np.ndarray, pad: int):
        self.shape = bmap.shape
        self.y, self.x = np.nonzero(bmap)
        self.pad = pad
        self.ids = np.full((bmap.shape[0] + 2 * pad, bmap.shape[1] + 2 * pad), -1, np.intp)
        self.ids[self.y + pad, self.x + pad] = np.arange(self.y.size)


def _candidate_pairs(y1, x1, index: _PixelIndex, radius: float):
    """All (i, j, cost) with pixel i = (y1[i], x1[i]) within ``radius`` of on-pixel j of ``index``."""
    ii, jj, cc = [], [], []
    p = index.pad
    yp = y1 + p
    xp = x1 + p
    for dy, dx, c, _ in zip(*_offsets(radius)):
        j = index.ids[yp + dy, xp + dx]
        hit = np.flatnonzero(j >= 0)
        if hit.size:
            ii.append(hit)
            jj.append(j[hit])
            cc.append(np.full(hit.size, c, np.int64))
    if not ii:
        z = np.zeros(0, np.intp)
        return z, z, z.astype(np.int64)
    return np.concatenate(ii), np.concatenate(jj), np.concatenate(cc)


def _match(y1, x1, index: _PixelIndex, radius: float, outlier_cost: float):
    """Max-cardinality, then min-cost matching; returns matched node ids (p1, p2)."""
    from scipy import sparse
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    z = np.zeros(0, np.intp)
    if y1.size == 0 or index.y.size == 0:
        return z, z
    ii, jj, cc = _candidate_pairs(y1, x1, index, radius)
    if ii.size == 0:
        return z, z
    # keep only matchable nodes, renumbered densely
    u1, i1 = np.unique(ii, return_inverse=True)
    u2, j2 = np.unique(jj, return_inverse=True)
    m1, m2 = u1.size, u2.size
    # rows = smaller side, columns = other side + one private outlier per row
    if m1 <= m2:
        r_idx, c_idx, mr, mc = i1, j2, m1, m2
    else:
        r_idx, c_idx, mr, mc = j2, i1, m2, m1
    outlier = float(np.ceil(outlier_cost * radius * 100.0))
    rows = np.concatenate([r_idx, np.arange(mr)])
    cols = np.concatenate([c_idx, mc + np.arange(mr)])
    # +1: every full matching has exactly mr edges, so a constant shift is
    # harmless, and it keeps zero-distance pairs from being read as "no edge".
    wts = np.concatenate([cc.astype(np.float64) + 1.0, np.full(mr, outlier + 1.0)])
    graph = sparse.csr_matrix((wts, (rows, cols)), shape=(mr, mc + mr))
    row, col = min_weight_full_bipartite_matching(graph)
    real = col < mc
    a, b = row[real], col[real]
    if m1 > m2:
        a, b = b, a
    return u1[a], u2[b]


def _radius(shape, max_dist: float) -> float:
    return float(max_dist) * float(np.hypot(*shape))


def correspond_pixels(bmap1, bmap2, max_dist: float = MAX_DIST, *, outlier_cost: float = 100.0) -> Correspondence:
    """One-to-one correspondence of two binary boundary maps (benchmark ``correspondPixels``).

    Finds a matching between the on-pixels of ``bmap1`` and ``bmap2`` that
    only pairs pixels at Euclidean distance <= ``max_dist`` x image diagonal
    and that has the largest number of pairs and, among those, the smallest
    total distance (distances rounded to 1/100 px like the benchmark's integer
    CSA weights).  An unmatched pixel costs ``outlier_cost`` x the distance
    limit, exactly as in the benchmark, which makes cardinality dominate.

    Parameters
    ----------
    bmap1, bmap2 : array_like, shape (H, W)
        Boundary maps (non-zero = boundary pixel).
    max_dist : float, default 0.0075
        Tolerance as a fraction of the image diagonal ``hypot(H, W)``.
    outlier_cost : float, default 100
        Cost of leaving a pixel unmatched, in units of the distance limit.

    Returns
    -------
    Correspondence

    Examples
    --------
    Two parallel vertical lines one pixel apart all match (the tolerance is
    0.0075 x 282.8 = 2.1 px here):

    >>> import numpy as np
    >>> a = np.zeros((200, 200), bool); a[10:40, 20] = True
    >>> b = np.zeros((200, 200), bool); b[10:40, 21] = True
    >>> m = correspond_pixels(a, b)
    >>> int(m.match1.sum()), int(m.match2.sum()), m.cost
    (30, 30, 30.0)
    """
    b1 = np.asarray(bmap1) != 0
    b2 = np.asarray(bmap2) != 0
    if b1.shape != b2.shape or b1.ndim != 2:
        raise ValueError(f"maps must be 2-D and of the same shape, got {b1.shape} and {b2.shape}")
    radius = _radius(b1.shape, max_dist)
    index = _PixelIndex(b2, int(np.ceil(radius)))
    y1, x1 = np.nonzero(b1)
    p1, p2 = _match(y1, x1, index, radius, outlier_cost)
    match1 = np.zeros(b1.shape, bool)
    match2 = np.zeros(b2.shape, bool)
    match1[y1[p1], x1[p1]] = True
    match2[index.y[p2], index.x[p2]] = True
    w = b1.shape[1]
    pairs = np.stack([y1[p1] * w + x1[p1], index.y[p2] * w + index.x[p2]], axis=1)
    dist = float(np.hypot(y1[p1] - index.y[p2], x1[p1] - index.x[p2]).sum())
    return Correspondence(match1, match2, pairs, dist)


class _Humans:
    """Human boundary maps indexed once, for scoring many machine maps of one image."""

    def __init__(self, gt_boundaries, max_dist: float):
        maps = [np.asarray(g) != 0 for g in _as_maps(gt_boundaries)]
        self.shape = maps[0].shape
        if any(m.shape != self.shape or m.ndim != 2 for m in maps):
            raise ValueError("human boundary maps must be 2-D and of the same shape")
        self.radius = _radius(self.shape, max_dist)
        pad = int(np.ceil(self.radius))
        self.index = [_PixelIndex(m, pad) for m in maps]
        self.sum_r = int(sum(int(ix.y.size) for ix in self.index))

    def counts(self, b: np.ndarray) -> BoundaryCounts:
        """Counts of an already thinned binary machine map."""
        if b.shape != self.shape:
            raise ValueError(f"machine map {b.shape} and human maps {self.shape} differ in shape")
        y1, x1 = np.nonzero(b)
        hit = np.zeros(y1.size, bool)
        cnt_r = 0
        for ix in self.index:
            p1, p2 = _match(y1, x1, ix, self.radius, 100.0)
            hit[p1] = True
            cnt_r += int(p2.size)
        return BoundaryCounts(cnt_r, self.sum_r, int(hit.sum()), int(y1.size))


def _as_maps(gt_boundaries) -> list:
    if isinstance(gt_boundaries, np.ndarray):
        if gt_boundaries.ndim == 2:
            return [gt_boundaries]
        if gt_boundaries.ndim == 3:
            return list(gt_boundaries)
        raise ValueError("gt_boundaries must be a 2-D map or a sequence of them")
    maps = list(gt_boundaries)
    if not maps:
        raise ValueError("at least one human boundary map is needed")
    return maps


def boundary_counts(bmap, gt_boundaries, *, max_dist: float = MAX_DIST, thin: bool = True) -> BoundaryCounts:
    """Boundary-benchmark counts of one binary boundary map against K humans.

    Parameters
    ----------
    bmap : array_like, shape (H, W)
        Machine boundary map (non-zero = boundary).  For a label map use
        :func:`segmentation_boundaries` first; for a soft map threshold it
        (``pb >= t``).
    gt_boundaries : array_like or sequence of array_like
        Human boundary maps (for BSDS500 the ``Boundaries`` of the
        ground-truth files, not recomputed from the label maps).
    max_dist : float, default 0.0075
        Matching tolerance, fraction of the image diagonal.
    thin : bool, default True
        Thin ``bmap`` first (the benchmark always does).

    Returns
    -------
    BoundaryCounts
    """
    b = np.asarray(bmap) != 0
    if thin:
        b = thin_boundaries(b)
    return _Humans(gt_boundaries, max_dist).counts(b)


def boundary_prf(bmap, gt_boundaries, *, max_dist: float = MAX_DIST, thin: bool = True) -> BoundaryPRF:
    """Boundary precision, recall and F-measure (BSDS500 definition).

    ``recall`` = matched human boundary pixels / human boundary pixels, both
    summed over the K humans; ``precision`` = machine pixels matched to at
    least one human / machine pixels; ``f = 2PR / (P + R)``.  Matching is
    one-to-one per human within ``max_dist`` x the image diagonal, see
    :func:`correspond_pixels`.

    Parameters
    ----------
    bmap : array_like, shape (H, W)
        Binary machine boundary map.
    gt_boundaries : array_like or sequence of array_like
        Human boundary maps.
    max_dist : float, default 0.0075
    thin : bool, default True

    Returns
    -------
    BoundaryPRF
        ``precision, recall, f, counts``.

    References
    ----------
    D. Martin, C. Fowlkes, J. Malik. Learning to Detect Natural Image
    Boundaries Using Local Brightness, Color, and Texture Cues. IEEE TPAMI
    26(5), 2004.  P. Arbelaez et al., TPAMI 33(5), 2011.

    Examples
    --------
    >>> import numpy as np
    >>> seg = np.zeros((200, 200), int); seg[:, 100:] = 1
    >>> b = segmentation_boundaries(seg)          # tolerance 2.1 px
    >>> r = boundary_prf(b, [b, np.roll(b, 2, axis=1)])
    >>> r.precision, r.recall, r.f
    (1.0, 1.0, 1.0)
    >>> boundary_prf(b, [np.roll(b, 3, axis=1)]).recall
    0.0
    """
    c = boundary_counts(bmap, gt_boundaries, max_dist=max_dist, thin=thin)
    return BoundaryPRF(c.precision, c.recall, c.f, c)
