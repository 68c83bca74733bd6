"""Region benchmarks of the BSDS500 benchmark: covering, PRI and VI.

All three compare one machine segmentation (a label map) with *several*
human segmentations of the same image, exactly as ``bench/benchmarks`` of
the BSDS500 release (``match_segmentations.m``, ``match_segmentations2.m``,
``evaluation_reg_image.m``) does:

* **Segmentation covering** (Arbelaez et al., TPAMI 2011, eq. 13): the
  covering of a segmentation :math:`S'` by :math:`S` is
  :math:`C(S' \\to S) = \\frac1N \\sum_{R \\in S'} |R| \\max_{R' \\in S} O(R, R')`
  with :math:`O` the region IoU.  The benchmark reports

  - ``R`` -- covering of the humans by the machine segmentation: every region
    of every one of the K human maps is weighted by its area and matched to
    its best machine region, the sum is divided by ``K * N``;
  - ``P`` -- the reverse: every machine region is matched to its best region
    over *all* human maps, divided by ``N``.

  ``R`` is the number reported as "Covering" (ODS/OIS) in the paper.
* **Probabilistic Rand Index** (Unnikrishnan et al., TPAMI 2007): the mean
  over the humans of the Rand index between the machine and each human map.
* **Variation of Information** (Meila, 2005/2007):
  :math:`VI = H(S) + H(S') - 2 I(S, S')` in bits (``log2``, as the benchmark),
  averaged over the humans.

Every label is a region by default (``void=None``), so 0-based label maps
(as produced by :mod:`uniap`) are scored correctly.  The benchmark itself
treats label ``0`` as *unlabelled* (its maps start at 1); pass ``void=0`` to
get that behaviour: for covering, void pixels still count in the areas of the
regions they overlap but are never scored themselves; for PRI/VI, pixels
that are void in either map are left out.  For maps without a 0 (all BSDS500
data) both settings give identical numbers.

Overlaps are computed from sparse contingency tables (``np.bincount`` on
joint labels), so the cost is linear in the number of pixels.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from ._labels import compact_labels, group_max, joint_counts

__all__ = [
    "CoveringCounts",
    "RegionCounts",
    "covering",
    "covering_counts",
    "probabilistic_rand_index",
    "variation_of_information",
    "rand_index",
    "region_counts",
]


class CoveringCounts(NamedTuple):
    """Covering numerators/denominators for one image (benchmark ``cntR`` ...).

    ``covering = cnt_r / sum_r`` (humans covered by the machine segmentation,
    the benchmark's ``R``) and ``reverse_covering = cnt_p / sum_p`` (machine
    segmentation covered by the humans, ``P``).  Keeping the counts lets a data
    set be pooled the way the benchmark pools it (ODS).
    """

    cnt_r: float
    sum_r: float
    cnt_p: float
    sum_p: float

    @property
    def covering(self) -> float:
        return _safe_ratio(self.cnt_r, self.sum_r)

    @property
    def reverse_covering(self) -> float:
        return _safe_ratio(self.cnt_p, self.sum_p)


class RegionCounts(NamedTuple):
    """Per-level region-benchmark numbers for one image (``*_ev2/3/4.txt``).

    Arrays have one entry per level (threshold) of the evaluated hierarchy.
    ``cnt_r_best`` is the numerator of the best possible covering (every human
    region matched to its best machine region over *all* levels).
    """

    cnt_r: np.ndarray
    sum_r: np.ndarray
    cnt_p: np.ndarray
    sum_p: np.ndarray
    ri: np.ndarray
    vi: np.ndarray
    cnt_r_best: float


def _safe_ratio(num, den):
    return float(num) / float(den) if den else 0.0


class _Human:
    __slots__ = ("labels", "k", "area")

    def __init__(self, gt, void):
        self.labels, self.k = compact_labels(gt, void)
        self.area = np.bincount(self.labels, minlength=self.k + 1)


def _as_list(gts) -> list:
    if isinstance(gts, np.ndarray):
        if gts.ndim == 2:
            return [gts]
        if gts.ndim == 3:
            return list(gts)
        raise ValueError("gts must be a label map or a sequence of label maps")
    gts = list(gts)
    if not gts:
        raise ValueError("at least one human segmentation is needed")
    return gts


def _prepare(gts, void, shape=None) -> list[_Human]:
    humans = []
    for g in _as_list(gts):
        g = np.asarray(g)
        if shape is not None and g.shape != shape:
            raise ValueError(f"shape mismatch: segmentation {shape} vs human {g.shape}")
        humans.append(_Human(g, void))
    return humans


def _compare(seg, humans: list[_Human], void, *, need_cover=True, need_rivi=True):
    """Core of ``evaluation_reg_image`` for one machine segmentation.

    Returns (cnt_r, sum_r, cnt_p, sum_p, mean RI, mean VI, best IoU per human region).
    """
    s, ks = compact_labels(seg, void)
    if s.size != humans[0].labels.size:
        raise ValueError("segmentation and human maps differ in size")
    area_s = np.bincount(s, minlength=ks + 1)
    best_seg = np.zeros(ks + 1)
    cnt_r = 0.0
    sum_r = 0
    ri_sum = 0.0
    vi_sum = 0.0
    best_gt_all = []
    for h in humans:
        ia, ib, n = joint_counts(s, ks, h.labels, h.k)
        both = (ia > 0) & (ib > 0)
        ia, ib, n = ia[both], ib[both], n[both]
        if need_cover:
            iou = n / (area_s[ia] + h.area[ib] - n)
            best_gt = group_max(ib, iou, h.k + 1)
            np.maximum(best_seg, group_max(ia, iou, ks + 1), out=best_seg)
            cnt_r += float(np.dot(h.area[1:], best_gt[1:]))
            sum_r += int(h.area[1:].sum())
            best_gt_all.append(best_gt[1:])
        if need_rivi:
            ri, vi = _ri_vi(ia, ib, n, ks + 1, h.k + 1)
            ri_sum += ri
            vi_sum += vi
    k = len(humans)
    cnt_p = float(np.dot(area_s[1:], best_seg[1:]))
    sum_p = int(area_s[1:].sum())
    best = np.concatenate(best_gt_all) if best_gt_all else np.zeros(0)
    return cnt_r, sum_r, cnt_p, sum_p, ri_sum / k, vi_sum / k, best


# Kept by hand: equal to skimage.metrics.variation_of_information and sklearn's rand_score
# (tests/test_library_oracles.py), but it reuses the covering's contingency table; skimage's VI
# is 1.6x slower and drops void pixels of its first image only, rand_score 15x slower (docs/benchmarks.md).
def _ri_vi(ia, ib, n, na, nb):
    """Rand index and VI (bits) from the non-zero cells of a contingency table."""
    n = n.astype(np.float64)
    total = n.sum()
    nu = np.bincount(ia, weights=n, minlength=na)
    nv = np.bincount(ib, weights=n, minlength=nb)
    if total > 1:
        pairs = total * (total - 1) / 2
        ri = 1.0 - (np.dot(nu, nu) / 2 + np.dot(nv, nv) / 2 - np.dot(n, n)) / pairs
    else:
        ri = float("nan")
    if total > 0:
        p = n / total
        pu = nu[nu > 0] / total
        pv = nv[nv > 0] / total
        h1 = -np.dot(pu, np.log2(pu))
        h2 = -np.dot(pv, np.log2(pv))
        mi = np.dot(p, np.log2(n * total / (nu[ia] * nv[ib])))
        vi = h1 + h2 - 2.0 * mi
    else:
        vi = float("nan")
    return float(ri), float(vi)


def covering_counts(seg, gts, *, void: int | None = None) -> CoveringCounts:
    """Covering counts of one machine segmentation against K human ones.

    Parameters
    ----------
    seg : array_like of int, shape (H, W)
        Machine segmentation (label map).
    gts : array_like or sequence of array_like
        One human label map (H, W), a stack (K, H, W) or a list of K maps.
    void : int or None, default None
        Label that is not a region (see module docstring); the benchmark's
        own convention is ``void=0``.

    Returns
    -------
    CoveringCounts
        ``cnt_r, sum_r`` (humans covered by ``seg``: sum over the regions of
        all K human maps of area x best IoU, and K x pixel count) and
        ``cnt_p, sum_p`` (``seg`` covered by the humans), with properties
        ``covering`` and ``reverse_covering``.

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.array([[1, 1, 2, 2]])
    >>> c = covering_counts(np.array([[1, 1, 1, 1]]), [gt])
    >>> c.covering, c.reverse_covering
    (0.5, 0.5)
    """
    seg = np.asarray(seg)
    humans = _prepare(gts, void, seg.shape)
    cnt_r, sum_r, cnt_p, sum_p, *_ = _compare(seg, humans, void, need_rivi=False)
    return CoveringCounts(cnt_r, float(sum_r), cnt_p, float(sum_p))


def covering(seg, gts, *, reverse: bool = False, void: int | None = None) -> float:
    """Segmentation covering as in the BSDS500 benchmark (Arbelaez et al. 2011).

    ``covering(seg, gts)`` is the benchmark's ``R``: the covering of the
    human segmentations by ``seg``,

    .. math:: \\frac{1}{K N} \\sum_{k=1}^{K} \\sum_{R' \\in G_k} |R'|
              \\max_{R \\in S} \\frac{|R \\cap R'|}{|R \\cup R'|}

    ``reverse=True`` gives ``P``: the covering of ``seg`` by the humans,
    :math:`\\frac1N \\sum_{R \\in S} |R| \\max_k \\max_{R' \\in G_k} IoU(R, R')`.

    Parameters
    ----------
    seg : array_like of int, shape (H, W)
    gts : array_like or sequence of array_like
        Human label map(s), see :func:`covering_counts`.
    reverse : bool, default False
    void : int or None, default None
        Label that is not a region (``0`` in the benchmark's convention).

    Returns
    -------
    float

    References
    ----------
    P. Arbelaez, M. Maire, C. Fowlkes, J. Malik. Contour Detection and
    Hierarchical Image Segmentation. IEEE TPAMI 33(5), 2011 (section 3.2).

    Examples
    --------
    A single region covering an image whose human map has regions of 3 and 1
    pixels: ``(3 * 3/4 + 1 * 1/4) / 4 = 0.625``.

    >>> import numpy as np
    >>> covering(np.ones((1, 4), int), np.array([[1, 1, 1, 2]]))
    0.625
    >>> covering(np.ones((1, 4), int), np.array([[1, 1, 1, 2]]), reverse=True)
    0.75
    """
    c = covering_counts(seg, gts, void=void)
    return c.reverse_covering if reverse else c.covering


def probabilistic_rand_index(seg, gts, *, void: int | None = None) -> float:
    """Probabilistic Rand Index: mean Rand index of ``seg`` against each human.

    For one pair of label maps with contingency table :math:`n_{uv}`, row sums
    :math:`a_u`, column sums :math:`b_v` and :math:`N` pixels,

    .. math:: RI = 1 - \\frac{\\tfrac12\\sum_u a_u^2 + \\tfrac12\\sum_v b_v^2
              - \\sum_{uv} n_{uv}^2}{N (N-1) / 2}

    (fraction of pixel pairs on which both maps agree); PRI is its mean over
    the K humans, which is the PRI of Unnikrishnan et al. with the pair
    probabilities estimated from the humans, as in the BSDS500 benchmark
    (``match_segmentations2.m``).  Pixels whose label is ``void`` in either
    map are left out.

    Parameters
    ----------
    seg : array_like of int, shape (H, W)
    gts : array_like or sequence of array_like
    void : int or None, default None
        Label that is not a region (see :mod:`uniap.metrics.region`).

    Returns
    -------
    float

    References
    ----------
    R. Unnikrishnan, C. Pantofaru, M. Hebert. Toward Objective Evaluation of
    Image Segmentation Algorithms. IEEE TPAMI 29(6), 2007.

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.array([[1, 1, 2, 2]])
    >>> probabilistic_rand_index(np.array([[5, 5, 7, 7]]), [gt])
    1.0
    >>> probabilistic_rand_index(np.array([[1, 1, 1, 1]]), [gt])  # 2 of 6 pairs agree
    0.33333333333333337
    """
    seg = np.asarray(seg)
    humans = _prepare(gts, void, seg.shape)
    return _compare(seg, humans, void, need_cover=False)[4]


def rand_index(seg, gt, *, void: int | None = None) -> float:
    """Rand index between two label maps (see :func:`probabilistic_rand_index`).

    Parameters
    ----------
    seg, gt : ndarray of shape (H, W), integer
        The two label maps.
    void : int, optional
        A label of ``gt`` whose pixels are left out.

    Returns
    -------
    float
        The fraction of pixel pairs on which both maps agree (same region or not), in [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> rand_index(np.array([[1, 1, 2, 2]]), np.array([[3, 3, 4, 4]]))
    1.0
    """
    return probabilistic_rand_index(seg, [gt], void=void)


def variation_of_information(seg, gts, *, void: int | None = None) -> float:
    """Variation of Information (bits), averaged over the human segmentations.

    .. math:: VI(S, G) = H(S) + H(G) - 2 I(S; G)

    with entropies and mutual information of the joint label distribution of
    the pixels, in base 2 -- the BSDS500 benchmark's ``log2`` (checked against
    its reference outputs).  Lower is better; 0 for identical partitions.
    Pixels whose label is ``void`` in either map are left out.

    Parameters
    ----------
    seg : array_like of int, shape (H, W)
    gts : array_like or sequence of array_like
    void : int or None, default None
        Label that is not a region (see :mod:`uniap.metrics.region`).

    Returns
    -------
    float

    References
    ----------
    M. Meila. Comparing clusterings: an axiomatic view. ICML 2005;
    M. Meila. Comparing clusterings -- an information based distance.
    J. Multivariate Analysis 98(5), 2007.

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.array([[1, 1, 2, 2]])
    >>> variation_of_information(np.array([[4, 4, 9, 9]]), gt)
    0.0
    >>> variation_of_information(np.array([[1, 1, 1, 1]]), gt)  # H(G) = 1 bit
    1.0
    """
    seg = np.asarray(seg)
    humans = _prepare(gts, void, seg.shape)
    return _compare(seg, humans, void, need_cover=False)[5]


def region_counts(segs: Sequence, gts, *, void: int | None = None) -> RegionCounts:
    """Region benchmark of a whole hierarchy for one image.

    Equivalent of ``evaluation_reg_image.m``: for every level ``segs[t]``
    (one label map per threshold) the covering counts, PRI and VI against the
    K humans, plus the numerator of the best possible covering over all
    levels.  Use :func:`uniap.metrics.bsds.collect_region` to pool images.

    Parameters
    ----------
    segs : sequence of array_like of int, each (H, W)
        Machine segmentations, one per level.
    gts : array_like or sequence of array_like
        Human label maps of the image.
    void : int or None, default None
        Label that is not a region (see :mod:`uniap.metrics.region`).

    Returns
    -------
    RegionCounts

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.array([[1, 1, 2, 2]])
    >>> rc = region_counts([gt, np.ones_like(gt)], [gt])
    >>> (rc.cnt_r / rc.sum_r).tolist(), rc.cnt_r_best / float(rc.sum_r[0])
    ([1.0, 0.5], 1.0)
    """
    segs = list(segs)
    if not segs:
        raise ValueError("no segmentation given")
    shape = np.shape(segs[0])
    humans = _prepare(gts, void, shape)
    n = len(segs)
    cnt_r = np.zeros(n)
    sum_r = np.zeros(n)
    cnt_p = np.zeros(n)
    sum_p = np.zeros(n)
    ri = np.zeros(n)
    vi = np.zeros(n)
    gt_area = np.concatenate([h.area[1:] for h in humans]).astype(np.float64)
    best = np.zeros(gt_area.shape)
    for t, seg in enumerate(segs):
        seg = np.asarray(seg)
        if seg.shape != shape:
            raise ValueError("all levels must have the same shape")
        cr, sr, cp, sp, ri[t], vi[t], b = _compare(seg, humans, void)
        cnt_r[t], sum_r[t], cnt_p[t], sum_p[t] = cr, sr, cp, sp
        np.maximum(best, b, out=best)
    return RegionCounts(cnt_r, sum_r, cnt_p, sum_p, ri, vi, float(np.dot(gt_area, best)))
