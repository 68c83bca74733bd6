"""BSDS500 hierarchical-segmentation benchmark: per-image evaluation and ODS/OIS/AP.

Re-implements ``bench/`` of the BSDS500 release (``boundaryBench``,
``regionBench``, ``allBench`` and their ``collect_eval_*`` summaries):

* a hierarchy is scored at a list of thresholds: for a ``ucm2`` (doubled-grid
  ultrametric contour map, shape ``(2H+1, 2W+1)``) the benchmark's 99
  thresholds ``linspace(1/(n+1), 1-1/(n+1), n)``; for a list of segmentations
  the threshold is the 1-based list index;
* segmentation of a ``ucm2`` at ``t``: 8-connected components of
  ``ucm2 <= t`` on the doubled grid, pixel centres ``[1::2, 1::2]`` kept;
* boundary map: ``ucm2[2::2, 2::2] >= t`` for a ucm2, ``pb >= t`` for a soft
  map (8-bit maps are divided by 255), :func:`segmentation_boundaries` of each
  level for a list of segmentations; then thinned and matched
  (:mod:`uniap.metrics.boundary`);
* region scores per level: covering both ways, PRI, VI
  (:mod:`uniap.metrics.region`).

Summaries (``collect_eval_bdry.m`` / ``collect_eval_reg.m``):

* **ODS** (optimal data-set scale): counts are pooled over images per
  threshold and the best threshold is taken.  For boundaries the F-measure is
  maximised on the P/R curve *linearly interpolated* between consecutive
  thresholds (100 steps), as the benchmark's ``maxF`` does; the reported
  threshold can therefore fall between two thresholds.
* **OIS** (optimal image scale): each image at its own best threshold, counts
  pooled over images (boundaries: at the un-interpolated best F; covering: the
  best ``R``); PRI/VI: mean over images of the best value.
* **AP**: area under the pooled P/R curve, ``interp1`` at recall
  ``0:0.01:1`` (0 outside the recall range covered), times 0.01.
* **Best possible covering**: every human region matched to its best machine
  region over all levels.
* Ties: the lowest threshold wins (first maximum), as in the benchmark; for
  the OIS *counts* the benchmark takes the last maximum (``ff(end)``), which
  is reproduced (it only matters for the pooled P of boundary OIS).

Ordering of a hierarchy given as a list: any order is accepted, but ODS
compares the same list index across images, so level ``k`` should mean the
same scale in every image.  The convention of the benchmark's own example
(``bench/data/segs``) and of ucm thresholds is **fine to coarse** (index 1 =
finest = lowest ucm threshold); ties then resolve to the finest level.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from .boundary import MAX_DIST, _Humans, f_measure, segmentation_boundaries, thin_boundaries
from .region import RegionCounts, _compare, _prepare

__all__ = [
    "BSDSResult",
    "BoundaryResult",
    "ImageCounts",
    "RegionResult",
    "collect",
    "collect_boundary",
    "collect_region",
    "evaluate_boundary_maps",
    "evaluate_hierarchies",
    "evaluate_image",
    "evaluate_ucms",
    "ucm_boundaries",
    "ucm_segmentation",
    "ucm_thresholds",
]

N_THRESHOLDS = 99


# --------------------------------------------------------------------------- thresholds


def ucm_thresholds(n: int = N_THRESHOLDS) -> np.ndarray:
    """The benchmark's thresholds ``linspace(1/(n+1), 1 - 1/(n+1), n)``.

    Computed with MATLAB's ``linspace`` arithmetic
    (``[d1 + (0:n-2)*(d2-d1)/(n-1), d2]``) so that thresholds that coincide
    with 8-bit levels (e.g. ``85/255`` vs ``1/3`` for n = 5) compare exactly as
    in the benchmark.

    Parameters
    ----------
    n : int, default 99
        Number of thresholds.

    Returns
    -------
    ndarray of shape (n,), float64
        Increasing thresholds in (0, 1).

    Examples
    --------
    >>> ucm_thresholds(5).round(4).tolist()
    [0.1667, 0.3333, 0.5, 0.6667, 0.8333]
    >>> t = ucm_thresholds(); (t.size, float(t[0]), float(t[-1]))
    (99, 0.01, 0.99)
    """
    n = int(n)
    if n < 1:
        raise ValueError("n must be >= 1")
    d1 = 1.0 / (n + 1)
    d2 = 1.0 - 1.0 / (n + 1)
    if n == 1:
        return np.array([d2])
    return np.append(d1 + (np.arange(n - 1) * (d2 - d1)) / (n - 1), d2)


def ucm_segmentation(ucm2, threshold: float) -> np.ndarray:
    """Segmentation of a doubled-grid ucm at ``threshold`` (benchmark ``bwlabel``).

    8-connected components of ``ucm2 <= threshold``, sampled at the pixel
    centres ``[1::2, 1::2]``.  Labels start at 1 (raster order).

    Parameters
    ----------
    ucm2 : array_like, shape (2H+1, 2W+1)
    threshold : float

    Returns
    -------
    ndarray of int32, shape (H, W)

    Examples
    --------
    >>> import numpy as np
    >>> ucm2 = np.zeros((3, 5)); ucm2[:, 2] = 0.5   # one contour between 2 pixels
    >>> ucm_segmentation(ucm2, 0.3).tolist(), ucm_segmentation(ucm2, 0.6).tolist()
    ([[1, 2]], [[1, 1]])
    """
    from skimage.measure import label

    ucm2 = np.asarray(ucm2)
    if ucm2.ndim != 2 or ucm2.shape[0] % 2 == 0 or ucm2.shape[1] % 2 == 0:
        raise ValueError("ucm2 must be a (2H+1, 2W+1) array")
    lab = label(ucm2 <= threshold, connectivity=2)
    return lab[1::2, 1::2].astype(np.int32, copy=False)


def ucm_boundaries(ucm2, threshold: float) -> np.ndarray:
    """Binary boundary map of a ucm2 at ``threshold``: ``ucm2[2::2, 2::2] >= threshold``.

    Parameters
    ----------
    ucm2 : ndarray of shape (2H + 1, 2W + 1)
        An ultrametric contour map on the doubled grid.
    threshold : float
        Boundaries at least this strong are kept.

    Returns
    -------
    ndarray of shape (H, W), bool
        The boundary pixels.

    Examples
    --------
    >>> import numpy as np
    >>> ucm2 = np.zeros((3, 5)); ucm2[:, 2] = 0.5
    >>> ucm_boundaries(ucm2, 0.3).tolist()
    [[True, False]]
    """
    ucm2 = np.asarray(ucm2)
    return ucm2[2::2, 2::2] >= threshold


# --------------------------------------------------------------------------- per image


@dataclass
class ImageCounts:
    """All per-threshold counts of one image (the benchmark's ``*_ev*.txt``).

    ``boundary`` is an int array (n_thresholds, 4) of ``cntR, sumR, cntP,
    sumP``; ``region`` a :class:`~uniap.metrics.region.RegionCounts`.  Either
    may be ``None`` when that benchmark was not run.
    """

    thresholds: np.ndarray
    boundary: np.ndarray | None = None
    region: RegionCounts | None = None


def _boundary_rows(bmaps: Iterable, gt_boundaries, max_dist: float, thin: bool) -> np.ndarray:
    humans = _Humans(gt_boundaries, max_dist)
    rows = []
    prev_raw = prev_thin = prev_row = None
    for raw in bmaps:
        raw = np.asarray(raw) != 0
        if prev_raw is not None and np.array_equal(raw, prev_raw):
            rows.append(prev_row)
            continue
        b = thin_boundaries(raw) if thin else raw
        if prev_thin is None or not np.array_equal(b, prev_thin):
            prev_row = tuple(humans.counts(b))
        prev_raw, prev_thin = raw, b
        rows.append(prev_row)
    return np.array(rows, dtype=np.int64).reshape(-1, 4)


def _region_counts_cached(levels: Iterable, gts, void) -> RegionCounts:
    """``region_counts`` over an iterable of levels, reusing identical consecutive levels."""
    humans = None
    out = []
    best = None
    gt_area = None
    prev_seg = prev_val = None
    for seg in levels:
        seg = np.asarray(seg)
        if humans is None:
            humans = _prepare(gts, void, seg.shape)
            gt_area = np.concatenate([h.area[1:] for h in humans]).astype(np.float64)
            best = np.zeros(gt_area.shape)
        if prev_seg is not None and np.array_equal(seg, prev_seg):
            out.append(prev_val)
            continue
        *vals, b = _compare(seg, humans, void)
        np.maximum(best, b, out=best)
        prev_seg, prev_val = seg, vals
        out.append(vals)
    if humans is None:
        raise ValueError("no segmentation given")
    a = np.array(out, dtype=np.float64).reshape(-1, 6)
    return RegionCounts(a[:, 0], a[:, 1], a[:, 2], a[:, 3], a[:, 4], a[:, 5], float(np.dot(gt_area, best)))


def _ucm_levels(ucm2, thresholds):
    """Segmentations of ucm2 at the thresholds; recomputed only when the level set changes."""
    ucm2 = np.asarray(ucm2, dtype=np.float64)
    values = np.unique(ucm2)
    seg = None
    prev_t = None
    for t in thresholds:
        if seg is None or np.any((values > prev_t) & (values <= t)) or np.any((values > t) & (values <= prev_t)):
            seg = ucm_segmentation(ucm2, t)
        prev_t = t
        yield seg


def evaluate_image(
    *,
    segmentations: Sequence | None = None,
    ucm2=None,
    soft_boundaries=None,
    gt_segmentations=None,
    gt_boundaries=None,
    n_thresholds: int = N_THRESHOLDS,
    region: bool = True,
    boundary: bool = True,
    max_dist: float = MAX_DIST,
    thin: bool = True,
    void: int | None = None,
) -> ImageCounts:
    """Run the benchmark on one image (``evaluation_bdry_image`` + ``evaluation_reg_image``).

    Give exactly one of ``segmentations`` (a hierarchy as a list of label
    maps; thresholds = 1..n), ``ucm2`` (doubled-grid ucm; ``n_thresholds``
    benchmark thresholds) or ``soft_boundaries`` (a boundary-probability map
    in [0, 1], or uint8 0..255; boundary benchmark only).

    Parameters
    ----------
    segmentations, ucm2, soft_boundaries
        The machine result, see above.
    gt_segmentations : sequence of array_like, optional
        Human label maps (needed for the region benchmark; also used to make
        human boundary maps when ``gt_boundaries`` is not given).
    gt_boundaries : sequence of array_like, optional
        Human boundary maps (BSDS500 ``Boundaries``).  Default: the thinned
        :func:`segmentation_boundaries` of ``gt_segmentations``.
    n_thresholds : int, default 99
    region, boundary : bool
        Which benchmarks to run.
    max_dist : float, default 0.0075
        Largest distance between matched boundary pixels, as a fraction of the image
        diagonal (the benchmark's ``maxDist``).
    thin : bool, default True
        Thin the machine boundaries to one pixel before matching (the benchmark's ``thinpb``).
    void : int or None, default None
        Label that is not a region (region benchmark; ``0`` in the BSDS
        convention -- BSDS maps start at 1, so it only matters for maps
        containing 0).

    Returns
    -------
    ImageCounts
    """
    given = [x is not None for x in (segmentations, ucm2, soft_boundaries)]
    if sum(given) != 1:
        raise ValueError("give exactly one of segmentations, ucm2, soft_boundaries")
    if soft_boundaries is not None:
        region = False
    if region and gt_segmentations is None:
        raise ValueError("the region benchmark needs gt_segmentations")
    if boundary and gt_boundaries is None:
        if gt_segmentations is None:
            raise ValueError("the boundary benchmark needs gt_boundaries (or gt_segmentations)")
        # thinned like the machine maps, so that a perfect segmentation scores F = 1
        gt_boundaries = [thin_boundaries(segmentation_boundaries(g)) for g in _list_maps(gt_segmentations)]

    if segmentations is not None:
        levels = _levels(segmentations)
        if not levels:
            raise ValueError("empty hierarchy")
        thresholds = np.arange(1, len(levels) + 1, dtype=np.float64)
        bmaps = (segmentation_boundaries(s) for s in levels)
        seg_levels = levels
    else:
        thresholds = ucm_thresholds(n_thresholds)
        if ucm2 is not None:
            u = np.asarray(ucm2, dtype=np.float64)
            pb = u[2::2, 2::2]
            seg_levels = _ucm_levels(u, thresholds) if region else None
        else:
            pb = np.asarray(soft_boundaries)
            pb = pb / 255.0 if pb.dtype == np.uint8 else pb.astype(np.float64)
            seg_levels = None
        bmaps = (pb >= t for t in thresholds)

    out = ImageCounts(thresholds=thresholds)
    if boundary:
        out.boundary = _boundary_rows(bmaps, gt_boundaries, max_dist, thin)
    if region:
        out.region = _region_counts_cached(seg_levels, gt_segmentations, void)
    return out


def _levels(hierarchy) -> list[np.ndarray]:
    """Label maps of a hierarchy: a sequence of maps, a (L, H, W) array, or an object
    with a stacked ``labels`` attribute and a ``numpy()`` method (``uniap.Hierarchy``)."""
    if not isinstance(hierarchy, np.ndarray) and hasattr(hierarchy, "labels"):
        if hasattr(hierarchy, "numpy"):
            hierarchy = hierarchy.numpy()
        hierarchy = np.asarray(hierarchy.labels)
    return [np.asarray(s) for s in hierarchy]


def _list_maps(maps) -> list:
    if isinstance(maps, np.ndarray) and maps.ndim == 2:
        return [maps]
    return list(maps)


# --------------------------------------------------------------------------- summaries


@dataclass
class BoundaryResult:
    """Boundary benchmark summary (``eval_bdry*.txt``).

    Attributes
    ----------
    thresholds, recall, precision, f : ndarray
        Data-set curve (counts pooled over images), one entry per threshold
        (``eval_bdry_thr.txt``).
    ods_threshold, ods_recall, ods_precision, ods_f : float
        Optimal data-set scale (interpolated ``maxF``).
    ois_recall, ois_precision, ois_f : float
        Optimal image scale.
    ap : float
        Area under the P/R curve.
    per_image : ndarray, shape (n_images, 4)
        ``best threshold, R, P, F`` of each image (``eval_bdry_img.txt``).
    """

    thresholds: np.ndarray
    recall: np.ndarray
    precision: np.ndarray
    f: np.ndarray
    ods_threshold: float
    ods_recall: float
    ods_precision: float
    ods_f: float
    ois_recall: float
    ois_precision: float
    ois_f: float
    ap: float
    per_image: np.ndarray

    def summary_row(self) -> tuple:
        """The 8 numbers of ``eval_bdry.txt`` in its order."""
        return (self.ods_threshold, self.ods_recall, self.ods_precision, self.ods_f,
                self.ois_recall, self.ois_precision, self.ois_f, self.ap)


@dataclass
class RegionResult:
    """Region benchmark summary (``eval_cover*.txt``, ``eval_RI_VOI*.txt``).

    Attributes
    ----------
    thresholds : ndarray
    covering : ndarray
        Pooled covering ``R`` per threshold (``eval_cover_th.txt``).
    pri, vi : ndarray
        Mean PRI / VI over images per threshold (``eval_RI_VOI_thr.txt``).
    covering_ods_threshold, covering_ods, covering_ois, covering_best : float
        ``eval_cover.txt``.
    pri_ods_threshold, pri_ods, pri_ois, vi_ods_threshold, vi_ods, vi_ois : float
        ``eval_RI_VOI.txt``.
    per_image : ndarray, shape (n_images, 3)
        ``best threshold, R, P`` of each image (``eval_cover_img.txt``).
    """

    thresholds: np.ndarray
    covering: np.ndarray
    pri: np.ndarray
    vi: np.ndarray
    covering_ods_threshold: float
    covering_ods: float
    covering_ois: float
    covering_best: float
    pri_ods_threshold: float
    pri_ods: float
    pri_ois: float
    vi_ods_threshold: float
    vi_ods: float
    vi_ois: float
    per_image: np.ndarray

    def covering_row(self) -> tuple:
        """The 4 numbers of ``eval_cover.txt``."""
        return (self.covering_ods_threshold, self.covering_ods, self.covering_ois, self.covering_best)

    def ri_voi_row(self) -> tuple:
        """The 6 numbers of ``eval_RI_VOI.txt``."""
        return (self.pri_ods_threshold, self.pri_ods, self.pri_ois,
                self.vi_ods_threshold, self.vi_ods, self.vi_ois)


@dataclass
class BSDSResult:
    """Boundary and/or region summaries of a data set, plus the per-image counts.

    Attributes
    ----------
    boundary : BoundaryResult or None
        The boundary benchmark (ODS/OIS F, AP, curves), when it was run.
    region : RegionResult or None
        The region benchmarks (covering, PRI, VI), when they were run.
    images : list of ImageCounts
        The per-image counts the summaries were made from.
    """

    boundary: BoundaryResult | None = None
    region: RegionResult | None = None
    images: list = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        """Headline numbers as a flat dict (the columns of the BSDS500 paper's tables)."""
        d: dict[str, float] = {}
        if self.boundary is not None:
            b = self.boundary
            d.update(boundary_ods=b.ods_f, boundary_ois=b.ois_f, boundary_ap=b.ap)
        if self.region is not None:
            r = self.region
            d.update(covering_ods=r.covering_ods, covering_ois=r.covering_ois,
                     covering_best=r.covering_best, pri_ods=r.pri_ods, pri_ois=r.pri_ois,
                     vi_ods=r.vi_ods, vi_ois=r.vi_ois)
        return d


def _g6(x):
    """Round to 6 significant digits, as ``fprintf('%10g')`` + ``dlmread`` do."""
    a = np.asarray(x, dtype=np.float64)
    out = np.array([float(f"{v:.6g}") for v in a.ravel()]).reshape(a.shape)
    return float(out) if out.ndim == 0 else out


def _ratio(num, den):
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return num / (den + (den == 0))


def _max_f(thresh, r, p):
    """Benchmark ``maxF``: best F on the linearly interpolated P/R curve (first maximum)."""
    thresh = np.asarray(thresh, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    best = (thresh[0], r[0], p[0], f_measure(r[0], p[0]))
    if thresh.size < 2:
        return best
    d = np.linspace(0.0, 1.0, 100)[None, :]
    tt = thresh[1:, None] * d + thresh[:-1, None] * (1 - d)
    rr = r[1:, None] * d + r[:-1, None] * (1 - d)
    pp = p[1:, None] * d + p[:-1, None] * (1 - d)
    ff = np.asarray(f_measure(rr, pp)).ravel()
    k = int(np.argmax(ff))  # first occurrence in scan order
    if ff[k] > best[3]:
        best = (float(tt.ravel()[k]), float(rr.ravel()[k]), float(pp.ravel()[k]), float(ff[k]))
    return best


def _average_precision(r, p) -> float:
    """Benchmark AP: ``interp1(unique(R), P, 0:0.01:1)``, NaN -> 0, sum x 0.01.

    For repeated recall values the precision of the *last* occurrence is
    used (``unique`` of the MATLAB releases the benchmark was written for).
    """
    r = np.asarray(r, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    rev = r[::-1]
    ru, idx = np.unique(rev, return_index=True)
    if ru.size < 2:
        return 0.0
    pu = p[::-1][idx]
    ri = np.arange(101) * 0.01  # 0:0.01:1
    pi = np.interp(ri, ru, pu)
    pi[(ri < ru[0]) | (ri > ru[-1])] = 0.0
    return float(pi.sum() * 0.01)


def collect_boundary(
    thresholds, per_image: Sequence[np.ndarray], *, emulate_text_files: bool = False
) -> BoundaryResult:
    """Summarise per-image boundary counts (``collect_eval_bdry.m``).

    Parameters
    ----------
    thresholds : array_like, shape (T,)
    per_image : sequence of int arrays, each (T, 4)
        ``cntR, sumR, cntP, sumP`` per threshold (``ImageCounts.boundary``).
    emulate_text_files : bool, default False
        Round the thresholds and per-image numbers to 6 significant digits
        first, as the benchmark does by writing them with ``%10g`` and reading
        them back; use it to reproduce the benchmark's printed numbers to the
        last digit.

    Returns
    -------
    BoundaryResult
    """
    thr = np.asarray(thresholds, dtype=np.float64)
    if not per_image:
        raise ValueError("no image")
    if emulate_text_files:
        thr = _g6(thr)
        per_image = [_g6(c) for c in per_image]
    tot = np.zeros((thr.size, 4))
    best = np.zeros(4)
    rows = []
    for c in per_image:
        c = np.asarray(c, dtype=np.float64).reshape(thr.size, 4)
        r = _ratio(c[:, 0], c[:, 1])
        p = _ratio(c[:, 2], c[:, 3])
        f = f_measure(r, p)
        rows.append(_max_f(thr, r, p))
        tot += c
        k = np.flatnonzero(f == f.max())[-1]  # ff(end)
        best += c[k]
    r = _ratio(tot[:, 0], tot[:, 1])
    p = _ratio(tot[:, 2], tot[:, 3])
    f = f_measure(r, p)
    ods = _max_f(thr, r, p)
    r_max = float(_ratio(best[0], best[1]))
    p_max = float(_ratio(best[2], best[3]))
    return BoundaryResult(
        thresholds=thr, recall=r, precision=p, f=np.asarray(f),
        ods_threshold=float(ods[0]), ods_recall=float(ods[1]), ods_precision=float(ods[2]), ods_f=float(ods[3]),
        ois_recall=r_max, ois_precision=p_max, ois_f=float(f_measure(r_max, p_max)),
        ap=_average_precision(r, p), per_image=np.array(rows, dtype=np.float64).reshape(-1, 4),
    )


def collect_region(thresholds, per_image: Sequence[RegionCounts], *, emulate_text_files: bool = False) -> RegionResult:
    """Summarise per-image region counts (``collect_eval_reg.m``).

    Parameters
    ----------
    thresholds : array_like, shape (T,)
    per_image : sequence of RegionCounts
    emulate_text_files : bool, default False
        Round thresholds and per-image numbers to 6 significant digits first
        (the benchmark's ``%10g`` intermediate files), see
        :func:`collect_boundary`.

    Returns
    -------
    RegionResult
    """
    thr = np.asarray(thresholds, dtype=np.float64)
    if not per_image:
        raise ValueError("no image")
    if emulate_text_files:
        thr = _g6(thr)
        per_image = [RegionCounts(*(_g6(v) for v in rc)) for rc in per_image]
    n = len(per_image)
    cnt_r = np.zeros(thr.size)
    sum_r = np.zeros(thr.size)
    ois_cnt = ois_sum = 0.0
    best_cnt = 0.0
    ri = np.zeros(thr.size)
    vi = np.zeros(thr.size)
    ri_best = vi_best = 0.0
    rows = []
    for rc in per_image:
        r = _ratio(rc.cnt_r, rc.sum_r)
        p = _ratio(rc.cnt_p, rc.sum_p)
        k = int(np.argmax(r))
        rows.append((thr[k], r[k], p[k]))
        cnt_r += rc.cnt_r
        sum_r += rc.sum_r
        kl = np.flatnonzero(r == r.max())[-1]  # ff(end)
        ois_cnt += rc.cnt_r[kl]
        ois_sum += rc.sum_r[kl]
        best_cnt += rc.cnt_r_best
        ri += rc.ri
        vi += rc.vi
        ri_best += float(np.max(rc.ri))
        vi_best += float(np.min(rc.vi))
    cov = _ratio(cnt_r, sum_r)
    k = int(np.argmax(cov))
    ri /= n
    vi /= n
    kri = int(np.argmax(ri))
    kvi = int(np.argmin(vi))
    return RegionResult(
        thresholds=thr, covering=cov, pri=ri, vi=vi,
        covering_ods_threshold=float(thr[k]), covering_ods=float(cov[k]),
        covering_ois=float(_ratio(ois_cnt, ois_sum)),
        covering_best=float(best_cnt / sum_r[0]) if sum_r[0] else 0.0,
        pri_ods_threshold=float(thr[kri]), pri_ods=float(ri[kri]), pri_ois=ri_best / n,
        vi_ods_threshold=float(thr[kvi]), vi_ods=float(vi[kvi]), vi_ois=vi_best / n,
        per_image=np.array(rows, dtype=np.float64).reshape(-1, 3),
    )


def collect(images: Sequence[ImageCounts], *, emulate_text_files: bool = False) -> BSDSResult:
    """Summarise a list of :class:`ImageCounts` (same thresholds) into a :class:`BSDSResult`.

    Parameters
    ----------
    images : sequence of ImageCounts
        Per-image counts (:func:`evaluate_image`), all at the same thresholds.
    emulate_text_files : bool, default False
        Round per-image numbers like the benchmark's ``%10g`` files (see
        :func:`collect_boundary`).

    Returns
    -------
    BSDSResult
        The data set's summaries; ``images`` keeps the counts.
    """
    images = list(images)
    if not images:
        raise ValueError("no image")
    thr = images[0].thresholds
    for im in images[1:]:
        if im.thresholds.shape != thr.shape or not np.allclose(im.thresholds, thr):
            raise ValueError("all images must be evaluated at the same thresholds")
    res = BSDSResult(images=images)
    if all(im.boundary is not None for im in images):
        res.boundary = collect_boundary(thr, [im.boundary for im in images], emulate_text_files=emulate_text_files)
    if all(im.region is not None for im in images):
        res.region = collect_region(thr, [im.region for im in images], emulate_text_files=emulate_text_files)
    return res


# --------------------------------------------------------------------------- data sets


def _run(jobs: list[dict], n_jobs: int) -> list[ImageCounts]:
    if n_jobs is None or n_jobs == 1 or len(jobs) < 2:
        return [evaluate_image(**kw) for kw in jobs]
    from concurrent.futures import ProcessPoolExecutor
    import os

    workers = (os.cpu_count() or 1) if n_jobs in (-1, 0) else int(n_jobs)
    with ProcessPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(_evaluate_kwargs, jobs))


def _evaluate_kwargs(kw: dict) -> ImageCounts:
    return evaluate_image(**kw)


def _per_image(name, values, n):
    if values is None:
        return [None] * n
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{name}: expected {n} images, got {len(values)}")
    return values


def evaluate_hierarchies(
    hierarchies: Sequence[Sequence],
    gt_segmentations: Sequence[Sequence] | None,
    gt_boundaries: Sequence[Sequence] | None = None,
    *,
    region: bool = True,
    boundary: bool = True,
    max_dist: float = MAX_DIST,
    thin: bool = True,
    void: int | None = None,
    n_jobs: int = 1,
    emulate_text_files: bool = False,
) -> BSDSResult:
    """Benchmark a data set of hierarchies given as lists of label maps.

    Parameters
    ----------
    hierarchies : sequence (images) of sequences (levels) of label maps
        ``hierarchies[i][k]`` is the segmentation of image ``i`` at level
        ``k``; every image must have the same number of levels (the
        benchmark's "threshold" is the 1-based level index).  Recommended
        order: fine to coarse (see module docstring); ties resolve to the
        lowest index.  An image may also be a ``(L, H, W)`` array or an
        object with a stacked ``labels`` attribute such as
        ``uniap.Hierarchy`` (finest level first), at the resolution of the
        ground truth (upsample it first).
    gt_segmentations : sequence (images) of sequences of label maps
        Human segmentations of each image (required for the region benchmark).
    gt_boundaries : sequence (images) of sequences of boundary maps, optional
        Human boundary maps.  If omitted they are derived from
        ``gt_segmentations`` with :func:`segmentation_boundaries` and thinned
        (so a perfect hierarchy scores F = 1).  For BSDS500 pass the data
        set's ``Boundaries`` instead: they are what the benchmark uses.
    region, boundary : bool
        Which benchmarks to run.
    max_dist : float, default 0.0075
        Largest distance between matched boundary pixels, as a fraction of the image
        diagonal (the benchmark's ``maxDist``).
    thin : bool, default True
        Thin the machine boundaries to one pixel before matching (the benchmark's ``thinpb``).
    void : int or None, default None
        Label that is not a region (see :mod:`uniap.metrics.region`).
    n_jobs : int, default 1
        Worker processes (-1: all CPUs).
    emulate_text_files : bool, default False
        Round per-image numbers like the benchmark's ``%10g`` files (see
        :func:`collect_boundary`).

    Returns
    -------
    BSDSResult
        ``.boundary`` (ODS/OIS F, AP, curves) and ``.region`` (covering
        ODS/OIS/best, PRI and VI ODS/OIS); ``.summary()`` for a flat dict.

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.zeros((20, 30), int); gt[:, 15:] = 1
    >>> hier = [np.arange(600).reshape(20, 30) % 2 + 1, gt + 1, np.ones_like(gt)]
    >>> res = evaluate_hierarchies([hier], [[gt + 1]])
    >>> res.region.covering_ods_threshold, res.region.covering_ods, res.boundary.ods_f
    (2.0, 1.0, 1.0)
    """
    hierarchies = list(hierarchies)
    n = len(hierarchies)
    gseg = _per_image("gt_segmentations", gt_segmentations, n)
    gbd = _per_image("gt_boundaries", gt_boundaries, n)
    jobs = [dict(segmentations=h, gt_segmentations=s, gt_boundaries=b, region=region, boundary=boundary,
                 max_dist=max_dist, thin=thin, void=void) for h, s, b in zip(hierarchies, gseg, gbd)]
    return collect(_run(jobs, n_jobs), emulate_text_files=emulate_text_files)


def evaluate_ucms(
    ucm2s: Sequence,
    gt_segmentations: Sequence[Sequence] | None,
    gt_boundaries: Sequence[Sequence] | None = None,
    *,
    n_thresholds: int = N_THRESHOLDS,
    region: bool = True,
    boundary: bool = True,
    max_dist: float = MAX_DIST,
    thin: bool = True,
    void: int | None = None,
    n_jobs: int = 1,
    emulate_text_files: bool = False,
) -> BSDSResult:
    """Benchmark a data set of doubled-grid ucms (``ucm2``, values in [0, 1]).

    Parameters
    ----------
    ucm2s : sequence of ndarray of shape (2H + 1, 2W + 1)
        One ultrametric contour map per image on the doubled grid (the BSDS500 ``ucm2``
        format): region boundaries at odd indices, their strength in [0, 1].
    gt_segmentations : sequence (images) of sequences of label maps, or None
        Human segmentations of each image (required for the region benchmark).
    gt_boundaries : sequence (images) of sequences of boundary maps, optional
        Human boundary maps (derived from ``gt_segmentations`` when omitted).
    n_thresholds : int, default 99
        The ucm is cut at :func:`ucm_thresholds` of this many levels.
    region, boundary : bool, default True
        Which benchmarks to run.
    max_dist : float, default 0.0075
        Largest boundary matching distance, as a fraction of the image diagonal.
    thin : bool, default True
        Thin the cut boundaries before matching.
    void : int or None, default None
        Label that is not a region.
    n_jobs : int, default 1
        Worker processes (-1: all CPUs).
    emulate_text_files : bool, default False
        Round per-image numbers like the benchmark's ``%10g`` files.

    Returns
    -------
    BSDSResult
        As :func:`evaluate_hierarchies`, with the ucm thresholds as the scale.

    See Also
    --------
    evaluate_hierarchies : the same benchmark for a list of label maps per image.
    """
    ucm2s = list(ucm2s)
    n = len(ucm2s)
    gseg = _per_image("gt_segmentations", gt_segmentations, n)
    gbd = _per_image("gt_boundaries", gt_boundaries, n)
    jobs = [dict(ucm2=u, gt_segmentations=s, gt_boundaries=b, n_thresholds=n_thresholds, region=region,
                 boundary=boundary, max_dist=max_dist, thin=thin, void=void) for u, s, b in zip(ucm2s, gseg, gbd)]
    return collect(_run(jobs, n_jobs), emulate_text_files=emulate_text_files)


def evaluate_boundary_maps(
    soft_boundaries: Sequence,
    gt_boundaries: Sequence[Sequence],
    *,
    n_thresholds: int = N_THRESHOLDS,
    max_dist: float = MAX_DIST,
    thin: bool = True,
    n_jobs: int = 1,
    emulate_text_files: bool = False,
) -> BSDSResult:
    """Boundary benchmark of soft boundary maps (values in [0, 1], or uint8 / 255).

    Parameters
    ----------
    soft_boundaries : sequence of ndarray of shape (H, W)
        One boundary strength map per image: float in [0, 1], or uint8 (read as value / 255).
    gt_boundaries : sequence (images) of sequences of boundary maps
        The human boundary maps of each image.
    n_thresholds : int, default 99
        Thresholds at which the maps are cut (:func:`ucm_thresholds`).
    max_dist : float, default 0.0075
        Largest boundary matching distance, as a fraction of the image diagonal.
    thin : bool, default True
        Thin the cut maps before matching.
    n_jobs : int, default 1
        Worker processes (-1: all CPUs).
    emulate_text_files : bool, default False
        Round per-image numbers like the benchmark's ``%10g`` files.

    Returns
    -------
    BSDSResult
        ``.boundary`` only (ODS/OIS F, AP and the precision-recall curve).
    """
    maps = list(soft_boundaries)
    gbd = _per_image("gt_boundaries", gt_boundaries, len(maps))
    jobs = [dict(soft_boundaries=m, gt_boundaries=b, n_thresholds=n_thresholds, max_dist=max_dist, thin=thin,
                 region=False, boundary=True) for m, b in zip(maps, gbd)]
    return collect(_run(jobs, n_jobs), emulate_text_files=emulate_text_files)
