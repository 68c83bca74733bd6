"""Scores of masks that rank: the ``score``, ``predicted_iou`` and ``stability_score`` of records.

UniAP gives a nested stack of label maps (its levels, and the contour regions of watershed
superpixels); each distinct mask of the stack gets three numbers:

``stability_score``
    The mask's *persistence*: the mean, over the maps of its stack, of its best IoU with a
    region of that map.  1 for a mask present unchanged at every level; a mask that exists at
    one level only and is split or swallowed everywhere else scores low.  It is how long the
    mask survives as the threshold moves (the lifetime of a region in an ultrametric contour
    map, or MSER's stability), and plays the part of SAM's ``stability_score`` (the IoU of a
    mask with itself under a shifted threshold).
``score``
    ``stability_score * sqrt(area / image area) * contrast``, where ``contrast`` is the mean
    edge strength on the mask's boundary pixels relative to the image's mean
    (:func:`edge_strength`; 1 without the image).  An object is usually set off by an edge all
    round; a fragment of a uniform or textured area is not.  This is exactly the ``contrast``
    rule ``uniap-eval`` ranks proposals by (:mod:`uniap.evaluation.proposals`), so COCOeval on
    a written file ranks the masks as ``uniap-eval`` does.  It is a rank, not a probability.
``predicted_iou``
    An estimate, in (0, 1), of the mask's IoU with the object or region a person would draw
    there: ``1 / (1 + exp(-(a + b * log(score))))``, increasing in ``score`` (so it ranks as
    ``score`` does), with ``a, b`` (:data:`PREDICTED_IOU_FIT`) fitted once by least squares
    to the best IoU of each mask with a human segment of BSDS500's *train* images
    (``bench/fit_predicted_iou.py``); never fitted to the images it is evaluated on.

All three are computed on the nodes the maps are made of (superpixels or patches), not on the
pixels: a map's regions are unions of nodes, so areas and intersections are sums of node areas,
and the boundary strength is gathered once per pair of adjacent nodes (:class:`BoundaryStrength`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["BoundaryStrength", "PREDICTED_IOU_FIT", "edge_strength", "mask_scores", "persistence",
           "predicted_iou", "raw_edge_strength"]

EDGE_SIGMA = 1.0  # pixels: the derivative-of-Gaussian filters of the edge strength
_HALO = 4  # rows each side a band needs: the filters' radius at sigma 1 (scipy's truncate 4)
BAND_PIXELS = 1 << 21  # pixels per band of the edge strength (memory: a few bytes per pixel)

#: ``(a, b)`` of ``predicted_iou = sigmoid(a + b * log(score))``, fitted on BSDS500 train
#: (``bench/fit_predicted_iou.py``).
PREDICTED_IOU_FIT = (0.3252, 0.9148)


def _lab(rgb: np.ndarray) -> np.ndarray:
    """CIELab of an (h, W, 3) image, channels first, float32."""
    if rgb.dtype == np.uint8:
        from .features.default import _rgb2lab

        return _rgb2lab(np.ascontiguousarray(rgb))
    from skimage.color import rgb2lab

    return np.ascontiguousarray(np.moveaxis(rgb2lab(rgb), -1, 0), np.float32)


def _gaussian_weights(sigma: float, order: int) -> np.ndarray:
    """Correlation weights of a Gaussian (``order`` 0) or its derivative (1), radius 4 sigma:
    the kernels of ``scipy.ndimage.gaussian_filter1d``."""
    x = np.arange(-_HALO, _HALO + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (sigma * sigma) * x ** 2)
    phi /= phi.sum()
    weights = phi if order == 0 else (-x / (sigma * sigma)) * phi
    return np.ascontiguousarray(weights[::-1])


_WEIGHTS = (_gaussian_weights(EDGE_SIGMA, 0), _gaussian_weights(EDGE_SIGMA, 1))


def _strength_rows(image: np.ndarray, y0: int, y1: int) -> np.ndarray:
    """Unnormalised edge strength of rows ``[y0, y1)``: equal to the whole image's there.

    ``scipy.ndimage.gaussian_gradient_magnitude`` of each Lab channel, summed (the same
    values, from one compiled pass, :func:`uniap._score_kernels.gradient_magnitude`).  The
    filters read ``_HALO`` rows each side; the image's own top and bottom are mirrored just as
    for the whole image, so a band's values equal the whole image's exactly.
    """
    from ._score_kernels import gradient_magnitude

    a, b = max(0, y0 - _HALO), min(image.shape[0], y1 + _HALO)
    lab = _lab(image[a:b, :, :3])
    out = np.zeros((y1 - y0, image.shape[1]), np.float32)
    gradient_magnitude(lab, a, y0, y1, image.shape[0], *_WEIGHTS, out)
    return out


def raw_edge_strength(lab: np.ndarray) -> np.ndarray:
    """:func:`edge_strength` before its division by the mean, from the image's CIELab.

    Parameters
    ----------
    lab : ndarray of shape (3, H, W), float32
        ``uniap.features.default._rgb2lab`` of the image (for a caller that converted it).

    Returns
    -------
    ndarray of shape (H, W), float32
    """
    from ._score_kernels import gradient_magnitude

    lab = np.ascontiguousarray(lab, np.float32)
    out = np.zeros(lab.shape[1:], np.float32)
    gradient_magnitude(lab, 0, 0, lab.shape[1], lab.shape[1], *_WEIGHTS, out)
    return out


def _bands(height: int, width: int) -> list[tuple[int, int]]:
    rows = max(1, BAND_PIXELS // max(width, 1))
    return [(y, min(height, y + rows)) for y in range(0, height, rows)]


def edge_strength(image: np.ndarray) -> np.ndarray:
    """Gradient magnitude of the CIELab image (sigma 1 pixel, summed over channels) over its mean.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3)
        RGB, uint8 (or float in [0, 1]).

    Returns
    -------
    ndarray of shape (H, W), float64, mean 1 (all ones for a flat image)

    Examples
    --------
    >>> import numpy as np
    >>> image = np.zeros((8, 8, 3), np.uint8); image[:, 4:] = 255
    >>> s = edge_strength(image)
    >>> bool(s[0, 3] > 1 > s[0, 0]), round(float(s.mean()), 6)
    (True, 1.0)
    """
    image = _check_image(image)
    grad = np.concatenate([_strength_rows(image, a, b) for a, b in _bands(*image.shape[:2])])
    mean = float(grad.mean(dtype=np.float64))
    return grad / np.float64(mean) if mean > 1e-9 else np.ones(grad.shape)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] < 3 or 0 in image.shape[:2]:
        raise ValueError(f"image must be (H, W, 3), got shape {image.shape}")
    return image


class BoundaryStrength:
    """The edge strength on the boundaries between the regions of a label map.

    Gathered in one pass over the pixels: the strength of each boundary pixel goes to the pair
    (its region, the other region it touches), or, at junctions of three or more regions, is
    kept with the regions it touches.  Any map whose regions are unions of these regions then
    gets its regions' boundary contrast from the pairs (:meth:`contrast`), in time linear in
    the pairs, whatever the image size.

    Parameters
    ----------
    regions : ndarray of shape (H, W), integer
        The node (superpixel, patch) of every pixel, 0 .. N-1.
    image : ndarray of shape (H, W, 3), optional
        The image whose :func:`edge_strength` is gathered; without it every boundary pixel has
        strength 1 (and every contrast is 1).
    pairs : ndarray of shape (E, 2), optional
        The pairs ``a < b`` of 4-adjacent regions (``uniap.superpixels.adjacency(regions)``)
        when the caller has them already (a region graph's ``edges``).
    strength : ndarray of shape (H, W), optional
        The image's :func:`raw_edge_strength` when the caller has it (a region graph's
        ``edge_strength``): used instead of ``image``.

    Examples
    --------
    >>> import numpy as np
    >>> regions = np.array([[0, 0, 1, 1]] * 3)
    >>> image = np.zeros((3, 4, 3), np.uint8); image[:, 2:] = 200
    >>> b = BoundaryStrength(regions, image)
    >>> c = b.contrast(np.array([0, 1]))
    >>> bool(np.allclose(c[0], c[1]) and c[0] > 1), b.contrast(np.array([0, 0])).tolist()
    (True, [1.0])
    """

    def __init__(self, regions: np.ndarray, image: np.ndarray | None = None, *,
                 pairs: np.ndarray | None = None, strength: np.ndarray | None = None) -> None:
        from . import _score_kernels as kernels
        from ._superpixel_kernels import adjacent_pairs  # superpixels.adjacency's kernel (no import of it)

        regions = np.asarray(regions)
        if regions.ndim != 2 or 0 in regions.shape:
            raise ValueError(f"regions must be an (H, W) map, got shape {regions.shape}")
        if strength is not None:
            strength = np.asarray(strength, np.float32)
            if strength.shape != regions.shape:
                raise ValueError(f"strength is {strength.shape}, the regions {regions.shape}")
        elif image is not None:
            image = _check_image(image)
            if image.shape[:2] != regions.shape:
                raise ValueError(f"image is {image.shape[:2]}, the regions {regions.shape}")
        n = int(regions.max()) + 1
        if pairs is None:  # codes a * n + b of the pairs a < b
            codes = adjacent_pairs(regions if regions.dtype == np.int32 and regions.flags.c_contiguous else
                                   np.ascontiguousarray(regions, dtype=np.int32 if n < 2**31 else np.int64), n)
        else:
            pairs = np.asarray(pairs, np.int64)
            codes = pairs[:, 0] * n + pairs[:, 1]
        keys = np.sort(np.concatenate([codes, (codes % n) * n + codes // n]))
        self.num_nodes = n
        self.pair_node, self.pair_other = keys // n, keys % n
        self.pair_sum = np.zeros(keys.size)
        self.pair_count = np.zeros(keys.size, np.int64)
        size = max(16, keys.size)
        buffers = (np.empty(size, np.int64), np.empty((size, 4), np.int64), np.empty(size), 0)
        # the map as it is (int32 from the superpixels): an int64 copy is 0.5 GB at 8000 x 8000
        work = np.ascontiguousarray(regions) if regions.dtype in (np.int32, np.int64) else \
            np.ascontiguousarray(regions, dtype=np.int64)
        total = 0.0
        for a, b in _bands(*regions.shape):
            if strength is not None:
                rows = strength[a:b]
            elif image is not None:
                rows = _strength_rows(image, a, b)
            else:
                rows = np.ones((b - a, regions.shape[1]), np.float32)
            total += float(rows.sum(dtype=np.float64))
            buffers = kernels.boundary_sums(work, rows, a, n, keys, self.pair_sum, self.pair_count, *buffers)
        count = buffers[3]
        self.junction_node = buffers[0][:count]
        self.junction_others = buffers[1][:count]
        self.junction_sum = buffers[2][:count]
        mean = total / regions.size
        # relative to the image's mean, as edge_strength's map (a flat image: all ones)
        self.scale = 1.0 / mean if mean > 1e-9 else 0.0
        self.flat = (image is not None or strength is not None) and mean <= 1e-9

    def contrast(self, node_labels: np.ndarray) -> np.ndarray:
        """Mean edge strength (over the image's mean) on each region's boundary pixels; 1 for
        a region without any.

        Parameters
        ----------
        node_labels : ndarray of shape (N,), integer >= 0
            The region of every node.

        Returns
        -------
        ndarray of shape (node_labels.max() + 1,), float64
        """
        return self.contrasts([node_labels])[0]

    def contrasts(self, maps: Sequence[np.ndarray]) -> list[np.ndarray]:
        """:meth:`contrast` of several maps (one compiled pass over the pairs for all)."""
        from ._score_kernels import map_contrasts

        maps = [np.asarray(m) for m in maps]
        if not maps:
            return []
        sizes = np.array([int(m.max()) + 1 for m in maps], np.int64)
        total, count = map_contrasts(np.stack(maps).astype(np.int64, copy=False), self.pair_node, self.pair_other,
                                     self.pair_sum, self.pair_count, self.junction_node, self.junction_others,
                                     self.junction_sum, sizes)
        out = []
        for m, k in enumerate(sizes):
            if self.flat:
                out.append(np.ones(k))
            else:
                c = count[m, :k]
                out.append(np.where(c > 0, total[m, :k] * self.scale / np.maximum(c, 1), 1.0))
        return out


def persistence(stack: Sequence[np.ndarray], node_area: np.ndarray | None = None) -> list[np.ndarray]:
    """Each region's mean, over the maps of ``stack``, of its best IoU with a region of that map.

    Parameters
    ----------
    stack : sequence of M ndarrays of shape (N,), integer >= 0
        The region of every node in each map (nested or not).
    node_area : ndarray of shape (N,), optional
        Each node's area in pixels (1 each by default).

    Returns
    -------
    list of M ndarrays
        ``out[m][r]``: the persistence of region ``r`` of map ``m`` (indexed by label; labels
        that no node has get NaN).

    Examples
    --------
    >>> import numpy as np
    >>> fine, coarse = np.array([0, 1]), np.array([0, 0])
    >>> [p.round(3).tolist() for p in persistence([fine, fine, coarse], np.array([2, 2]))]
    [[0.833, 0.833], [0.833, 0.833], [0.667]]
    """
    maps = [np.asarray(m) for m in stack]
    n = maps[0].size if maps else 0
    area = np.ones(n, np.int64) if node_area is None else np.asarray(node_area, np.int64)
    nested = _nested_persistence(maps, area)
    if nested is not None:
        return nested
    compact, uniq = [], []
    for m in maps:
        values, inverse = np.unique(m, return_inverse=True)
        uniq.append(values)
        compact.append(inverse.ravel())
    ious = best_region_ious(compact, [len(v) for v in uniq], area)
    out = []
    for values, iou in zip(uniq, ious):
        full = np.full(int(values.max()) + 1 if values.size else 0, np.nan)
        full[values] = iou.mean(axis=1)
        out.append(full)
    return out


def best_region_ious(compact: Sequence[np.ndarray], sizes: Sequence[int],
                     weight: np.ndarray | None = None) -> list[np.ndarray]:
    """For every region of every map, its best IoU with a region of each map.

    Parameters
    ----------
    compact : sequence of M ndarrays of shape (N,), integer
        Each map's region of every element (pixel or node), numbered ``0 .. sizes[m] - 1``.
    sizes : sequence of M int
    weight : ndarray of shape (N,), optional
        Each element's area (1 each: pixels).

    Returns
    -------
    list of M ndarrays (sizes[m], M)
        ``out[a][r, b]``: the best IoU of region r of map a with a region of map b (1 at b = a).
    """
    areas = [np.bincount(c, weight, minlength=k) for c, k in zip(compact, sizes)]
    count = len(compact)
    ious = [np.ones((k, count)) for k in sizes]
    for a in range(count):
        for b in range(a + 1, count):
            ka, kb = sizes[a], sizes[b]
            pair = compact[a] * kb + compact[b]
            if weight is None and ka * kb <= 1 << 22:  # a count per pair of labels fits in memory
                inter = np.bincount(pair, minlength=ka * kb)
                codes = np.flatnonzero(inter)
                inter = inter[codes]
            else:
                codes, inverse = np.unique(pair, return_inverse=True)
                inter = np.bincount(inverse.ravel(), weight, minlength=codes.size)
            ra, rb = codes // kb, codes % kb
            with np.errstate(invalid="ignore"):  # regions of no pixel (a map of a shrunk image): NaN
                iou = inter / (areas[a][ra] + areas[b][rb] - inter)
            best_a = np.zeros(ka)
            np.maximum.at(best_a, ra, iou)
            best_b = np.zeros(kb)
            np.maximum.at(best_b, rb, iou)
            ious[a][:, b] = best_a
            ious[b][:, a] = best_b
    return ious


def _nested_persistence(maps: list[np.ndarray], area: np.ndarray) -> list[np.ndarray] | None:
    """:func:`persistence` of a stack nested finest first (every region of a map inside one
    region of the next), from the regions' areas alone: O(regions) per pair of maps, the same
    values (a region's best IoU with a coarser map is its area over its ancestor's, with a
    finer one its largest descendant's area over its own).  None if the stack is not nested."""
    if not maps or any(m.ndim != 1 or m.size != area.size or (m.size and m.min() < 0) for m in maps):
        return None
    sizes = [int(m.max()) + 1 if m.size else 0 for m in maps]
    parent = []  # parent[i][r]: the region of map i + 1 holding region r of map i
    for i in range(len(maps) - 1):
        up = np.zeros(sizes[i], np.int64)
        up[maps[i]] = maps[i + 1]
        if not np.array_equal(up[maps[i]], maps[i + 1]):
            return None
        parent.append(up)
    areas = [np.bincount(m, area, minlength=k) for m, k in zip(maps, sizes)]
    count = len(maps)
    ious = [np.ones((k, count)) for k in sizes]
    with np.errstate(invalid="ignore", divide="ignore"):  # regions of no pixel: NaN, never recorded
        for a in range(count):
            ancestor = np.arange(sizes[a])
            for b in range(a + 1, count):
                ancestor = parent[b - 1][ancestor]
                ious[a][:, b] = areas[a] / areas[b][ancestor]
                largest = np.zeros(sizes[b])
                np.maximum.at(largest, ancestor, areas[a])
                ious[b][:, a] = largest / areas[b]
    out = []
    for k, iou, a in zip(sizes, ious, areas):
        p = iou.mean(axis=1)
        p[a == 0] = np.nan
        out.append(p)
    return out


def mask_scores(stability: np.ndarray, area: np.ndarray, contrast: np.ndarray, image_area: int) -> np.ndarray:
    """``score`` of masks: ``stability * sqrt(area / image_area) * contrast`` (the module's docs)."""
    return np.asarray(stability) * np.sqrt(np.asarray(area) / float(image_area)) * np.asarray(contrast)


def predicted_iou(score: np.ndarray, fit: tuple[float, float] = PREDICTED_IOU_FIT) -> np.ndarray:
    """``sigmoid(a + b * log(score))``: the IoU a mask of this ``score`` has on average with the
    best-matching human region (:data:`PREDICTED_IOU_FIT`); 0 for a score of 0.

    Examples
    --------
    >>> predicted_iou(np.array([0.0, 1.0]), (0.0, 1.0)).tolist()
    [0.0, 0.5]
    """
    score = np.asarray(score, np.float64)
    a, b = fit
    with np.errstate(divide="ignore"):
        z = a + b * np.log(np.maximum(score, 0.0))
    return 1.0 / (1.0 + np.exp(-z))
