"""Superpixels and their adjacency: the pixel-accurate nodes of a region graph.

UniAP on patch features gives regions that are unions of patches: their boundaries are
staircases up to a patch (8 or 16 pixels) off the image's edges.  Running UniAP instead on a
graph whose nodes are superpixels (small regions that follow the image's edges) and whose
edges join touching superpixels gives regions that are unions of superpixels, so every level
is pixel-accurate and the levels still nest.  :mod:`uniap.features.regions` builds such a
graph for any feature extractor; this module holds the image side.

Examples
--------
>>> import numpy as np
>>> from uniap.superpixels import adjacency, superpixels
>>> image = np.zeros((60, 90, 3), np.uint8)
>>> image[:, 45:] = 255
>>> regions = superpixels(image, size=300)
>>> regions.shape, regions.dtype, int(regions.max()) + 1 >= 2
((60, 90), dtype('int32'), True)
>>> edges = adjacency(regions)
>>> bool((regions[:, :45, None] == regions[:, 45:].ravel()).any())  # no superpixel crosses the edge
False
"""

from __future__ import annotations

import numpy as np

from .core.hierarchy import nearest_index

__all__ = ["CONTOUR_FACTOR", "CONTOUR_FIRST", "DEFAULT_COMPACTNESS", "DEFAULT_METHOD", "DEFAULT_SIZE",
           "MAX_PIXELS", "METHODS", "adjacency", "check_options", "downscaled", "downscaled_hierarchy",
           "superpixel_hierarchy", "superpixels", "upscaled"]

DEFAULT_SIZE = 150  # pixels per superpixel: about a 12 x 12 patch (tuned on BSDS500 val)
DEFAULT_METHOD = "watershed"  # follows edges better than SLIC (docs/quality.md)
_WATERSHED_SIGMA = 1.0  # Gaussian smoothing (pixels) of the CIELab image before the watershed
DEFAULT_COMPACTNESS = 20.0  # SLIC's colour / space balance (tuned on BSDS500 val)
CONTOUR_FIRST = 9  # contour regions: the finest cut has N / 9 regions for N superpixels ...
CONTOUR_FACTOR = 3  # ... and each next one 3x fewer (COCO dev, docs/quality.md)
MAX_PIXELS = 1 << 22  # larger images get their superpixels on a downscaled copy (memory)


def superpixels(
    image: np.ndarray,
    *,
    size: int = DEFAULT_SIZE,
    method: str = DEFAULT_METHOD,
    compactness: float = DEFAULT_COMPACTNESS,
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """Superpixels of about ``size`` pixels each, numbered 0 .. N-1.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8
        An RGB image (:func:`uniap.features.load_image` makes one from anything).
    size : int, default 150
        Mean superpixel area in pixels: the image gets ``round(H * W / size)`` of them.
    method : {"watershed", "slic"}, default "watershed"
        ``"watershed"``: the regions of a hierarchical watershed by volume [1]_ of the
        smoothed CIELab image, cut where it has that many regions: they follow the image's
        edges wherever they are, and their size adapts (small where the image is busy, large
        where it is flat).  Computed by compiled kernels (:mod:`uniap._superpixel_kernels`:
        one radix sort and a few passes over the pixels, about 20 ms at 481 x 321), the
        hierarchy higra's ``watershed_hierarchy_by_volume`` gives, tie for tie.  ``"slic"``: SLIC [2]_, compact superpixels of nearly equal size
        (the default before; ``docs/quality.md`` compares them).
    compactness : float, default 20
        SLIC's balance of colour (CIELab) against distance: larger makes squarer superpixels
        (``method="slic"`` only; the watershed has none).
    max_pixels : int, default 2**22
        An image with more pixels is segmented at a downscaled copy of at most this many
        pixels, and the labels are mapped back by nearest neighbour (SLIC holds about 100
        bytes a pixel, the watershed's edge weights, order and tree about 120).

    Returns
    -------
    ndarray of shape (H, W), int32
        Connected superpixels numbered consecutively from 0.

    Raises
    ------
    ValueError
        If ``image`` is not (H, W, 3), ``method`` is unknown, or ``size``, ``compactness`` or
        ``max_pixels`` is not positive.

    References
    ----------
    .. [1] J. Cousty, L. Najman, Y. Kenmochi, S. Guimaraes, "Hierarchical segmentations with
       graphs: quasi-flat zones, minimum spanning trees, and saliency maps", JMIV 60, 2018;
       L. Najman, M. Schmitt, "Geodesic saliency of watershed contours and hierarchical
       segmentation", IEEE TPAMI 18(12), 1996.
    .. [2] R. Achanta, A. Shaji, K. Smith, A. Lucchi, P. Fua, S. Suesstrunk, "SLIC superpixels
       compared to state-of-the-art superpixel methods", IEEE TPAMI 34(11), 2012.
       https://doi.org/10.1109/TPAMI.2012.120
    """
    image = _rgb(image)
    check_options(size=size, method=method, compactness=compactness, max_pixels=max_pixels)
    small = _downscaled(image, max_pixels)
    count = max(1, round(image.shape[0] * image.shape[1] / size))  # superpixels of ``size`` original pixels
    return _consecutive(_upscaled(METHODS[method](small, count, compactness), image.shape[:2]))


def superpixel_hierarchy(
    image: np.ndarray,
    *,
    size: int = DEFAULT_SIZE,
    first: int = CONTOUR_FIRST,
    factor: int = CONTOUR_FACTOR,
    max_pixels: int = MAX_PIXELS,
    lab: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Watershed superpixels and the coarser cuts of the hierarchy they are cut from.

    The superpixels of ``superpixels(image, size=size, method="watershed")`` are one
    horizontal cut of a hierarchical watershed; its coarser cuts (the first with ``first``
    times fewer regions than superpixels, each next one ``factor`` times fewer again) are
    regions bounded by ever stronger edges of the image (*contour regions*).  They are unions
    of superpixels, nested, and complement UniAP's levels, which group superpixels by their
    features (``docs/quality.md``: COCO AR@1000).

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8
    size : int, default 150
        Mean superpixel area in pixels.
    first : int, default 9
        The finest cut has about N / ``first`` regions for N superpixels (regions of about
        ``first`` superpixels: a finer cut mostly repeats UniAP's finest level and, on large
        images, multiplies the records).
    factor : int, default 3
        Each next cut has about ``factor`` times fewer regions; the last has at least 2.
    max_pixels : int, default 2**22
        As for :func:`superpixels`.
    lab : ndarray of shape (3, h, w), float32, optional
        The CIELab of the image the watershed runs on when the caller has converted it
        already (``uniap.features.default._rgb2lab``), so that it is not converted twice: the
        image itself, or its downscaled copy (:func:`downscaled`) when it has more than
        ``max_pixels`` pixels.  It is smoothed in place; one of another shape is not used.

    Returns
    -------
    regions : ndarray of shape (H, W), int32
        The superpixels, 0 .. N-1 (equal to :func:`superpixels`'s).
    cuts : ndarray of shape (K, N), int32
        ``cuts[k, i]``: the region (0 .. R_k - 1) of cut k holding superpixel i, finest cut
        first; K = 0 when there are too few superpixels for a coarser cut.
    thresholds : ndarray of shape (K,), float64
        Each cut's altitude in the hierarchy by volume, increasing: the volume (pixels times
        CIELab colour difference) below which a basin is merged into its neighbour.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> image = rng.integers(0, 40, size=(40, 60, 3)).astype(np.uint8)  # noise ...
    >>> image[:, 30:] += 200  # ... and a strong edge
    >>> regions, cuts, thresholds = superpixel_hierarchy(image, size=10)
    >>> cuts.shape[1] == int(regions.max()) + 1, len(cuts) > 0
    (True, True)
    >>> all(np.intersect1d(c[regions[:, :30]], c[regions[:, 30:]]).size == 0 for c in cuts)  # edge kept
    True
    """
    image = _rgb(image)
    regions, cuts, thresholds = downscaled_hierarchy(image, size=size, first=first, factor=factor,
                                                     max_pixels=max_pixels, lab=lab)
    return _upscaled(regions, image.shape[:2]), cuts, thresholds


def downscaled_hierarchy(
    image: np.ndarray,
    *,
    size: int = DEFAULT_SIZE,
    first: int = CONTOUR_FIRST,
    factor: int = CONTOUR_FACTOR,
    max_pixels: int = MAX_PIXELS,
    lab: np.ndarray | None = None,
    contours: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`superpixel_hierarchy` with the superpixels on the copy the watershed ran on.

    For an image of at most ``max_pixels`` pixels that is the image and the result is
    :func:`superpixel_hierarchy`'s; a larger one gets the superpixel map of its downscaled
    copy (:func:`downscaled`), which :func:`upscaled` maps back to the image.  A caller that
    gathers something per superpixel boundary (the records' edge strength,
    :class:`uniap.features.RegionFeatures`) does it on the copy, at a fraction of the pixels:
    nearest-neighbour upscaling keeps 4-adjacency, so the copy's superpixels touch exactly
    where the image's do.

    Parameters
    ----------
    image, size, first, factor, max_pixels, lab
        As for :func:`superpixel_hierarchy`.
    contours : bool, default True
        False: the superpixels alone (no cut above them is made; ``cuts`` has no rows), for
        a caller that wants them on the copy without the contour regions.

    Returns
    -------
    regions : ndarray of shape (h, w), int32
        The superpixels of the copy, 0 .. N-1 (every one of them is in ``upscaled(regions,
        image.shape[:2])``, numbered as there).
    cuts, thresholds
        As for :func:`superpixel_hierarchy`.

    Examples
    --------
    >>> import numpy as np
    >>> image = np.zeros((100, 120, 3), np.uint8); image[:, 60:] = 200
    >>> small, cuts, _ = downscaled_hierarchy(image, size=20, max_pixels=3000)
    >>> small.shape, downscaled(image, 3000).shape[:2]
    ((50, 60), (50, 60))
    >>> regions, _, _ = superpixel_hierarchy(image, size=20, max_pixels=3000)
    >>> bool((upscaled(small, image.shape[:2]) == regions).all())
    True
    """
    image = _rgb(image)
    check_options(size=size, max_pixels=max_pixels)
    for name, value in (("first", first), ("factor", factor)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 2:
            raise ValueError(f"{name} must be an integer >= 2, got {value!r}")
    shape = _copy_shape(*image.shape[:2], max_pixels)
    count = max(1, round(image.shape[0] * image.shape[1] / size))
    if lab is not None and lab.shape == (3, *shape) and lab.dtype == np.float32:
        tree = _WatershedTree(shape, lab)  # the caller made the copy and its CIELab already
    else:
        small = _downscaled(image, max_pixels)
        tree = _WatershedTree(shape, _smoothable_lab(small))
    altitude = tree.altitude(count)
    regions = tree.labels(altitude)  # on the (maybe downscaled) copy: every superpixel is there
    n = int(regions.max()) + 1
    if not contours:
        return regions, np.zeros((0, n), np.int32), np.zeros(0, np.float64)
    a, b, persist = tree.region_tree(regions, altitude)  # the hierarchy above the superpixels
    descending = _descending(persist)
    cuts, thresholds = [], []
    target = n / first
    while target >= 2:
        level = _cut_altitude(descending, int(round(target)))
        of_node = _tree_cut(n, a, b, persist, level)
        if of_node.max() < (cuts[-1].max() if cuts else n - 1):  # coarser than the last, not it again
            cuts.append(of_node)
            thresholds.append(level)
        target /= factor
    cuts_array = np.stack(cuts) if cuts else np.zeros((0, n), np.int32)
    return regions, cuts_array, np.asarray(thresholds, np.float64)


def check_options(*, size: int = DEFAULT_SIZE, method: str = DEFAULT_METHOD,
                  compactness: float = DEFAULT_COMPACTNESS, max_pixels: int = MAX_PIXELS) -> None:
    """Raise ValueError naming the first option of :func:`superpixels` that is not valid."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    _check_positive(size=size, max_pixels=max_pixels)
    if not np.isfinite(compactness) or compactness <= 0:
        raise ValueError(f"compactness must be a finite number > 0, got {compactness!r}")


def _slic(image: np.ndarray, count: int, compactness: float) -> np.ndarray:
    from skimage.segmentation import slic

    return slic(image, n_segments=count, compactness=float(compactness), start_label=0,
                enforce_connectivity=True, channel_axis=-1)


class _WatershedTree:
    """The hierarchical watershed by volume of an image's 4-adjacency graph
    (:mod:`uniap._superpixel_kernels`): edge weights the L2 distance of CIELab colours smoothed
    at sigma 1, the minimum spanning tree and each of its edges' persistence."""

    def __init__(self, shape: tuple[int, int], lab: np.ndarray) -> None:
        """``lab``: the (3, H, W) float32 CIELab of the image of ``shape`` (smoothed in place)."""
        from . import _superpixel_kernels as kernels

        self.shape = tuple(shape)
        weights = kernels.edge_weights(_smoothed_lab(lab))
        mst, self.persist = kernels.persistence(weights, *self.shape)
        del weights
        self.u, self.v = mst[:, 0], mst[:, 1]
        self.descending = _descending(self.persist)

    def altitude(self, count: int) -> float:
        """The altitude of the cut with the fewest regions >= ``count`` (or the finest cut)."""
        return _cut_altitude(self.descending, count)

    def labels(self, altitude: float) -> np.ndarray:
        """The regions of the cut at ``altitude``: (H, W) int32, 0 .. R-1 in raster order."""
        from ._superpixel_kernels import pixel_cut

        return pixel_cut(*self.shape, self.u, self.v, self.persist, float(altitude)).reshape(self.shape)

    def region_tree(self, regions: np.ndarray, altitude: float):
        """The MST edges between the regions of the cut at ``altitude``, as region pairs
        ``(a, b)`` with their persistence: a spanning tree of the regions."""
        above = self.persist > altitude
        flat = regions.ravel()
        return flat[self.u[above]], flat[self.v[above]], np.ascontiguousarray(self.persist[above])


def _smoothable_lab(image: np.ndarray) -> np.ndarray:
    """CIELab of an RGB image: (3, H, W) float32, a new array (:func:`_smoothed_lab` smooths it)."""
    from .features.default import _rgb2lab

    return _rgb2lab(np.ascontiguousarray(image))


def _smoothed_lab(lab: np.ndarray) -> np.ndarray:
    """``lab`` (3, H, W) float32 smoothed in place by a Gaussian of sigma 1 pixel: SciPy's
    ``gaussian_filter(channel, 1, mode="nearest")`` of each channel, bit for bit, by a compiled
    kernel (:func:`uniap._superpixel_kernels.smooth_nearest`, 2x faster)."""
    from ._superpixel_kernels import smooth_nearest

    if lab.flags.c_contiguous:
        return smooth_nearest(lab, _gaussian_weights(_WATERSHED_SIGMA))
    lab[...] = smooth_nearest(np.ascontiguousarray(lab), _gaussian_weights(_WATERSHED_SIGMA))
    return lab


_WEIGHTS: dict[float, np.ndarray] = {}


def _gaussian_weights(sigma: float) -> np.ndarray:
    """The correlation weights of SciPy's ``gaussian_filter1d`` at ``sigma`` (truncated at 4
    sigma): its response to an impulse, which is the weights exactly (float64)."""
    if sigma not in _WEIGHTS:
        from scipy.ndimage import gaussian_filter1d

        radius = int(4.0 * sigma + 0.5)
        impulse = np.zeros(2 * radius + 1)
        impulse[radius] = 1.0
        _WEIGHTS[sigma] = gaussian_filter1d(impulse, sigma, mode="constant")
    return _WEIGHTS[sigma]


def _descending(persist: np.ndarray) -> np.ndarray:
    """The positive persistences, negated (in no particular order): :func:`_cut_altitude`'s input."""
    return -persist[persist > 0]


def _cut_altitude(negated: np.ndarray, count: int) -> float:
    """The largest altitude whose cut has at least ``count`` regions (``1 + #{persist > it}``,
    higra's ``horizontal_cut_from_num_regions``), or 0 (the finest cut) when none has;
    ``negated``: :func:`_descending` of the persistences.  O(N): a partition, not a sort."""
    k = count - 1
    if k >= negated.size:
        return 0.0
    if k <= 0:
        return float(-negated.min())
    part = np.partition(negated, (k - 1, k))  # -part[k - 1], -part[k]: the k-th and (k+1)-th largest
    tie, value = -part[k - 1], -part[k]
    if tie > value:
        return float(value)
    below = negated[negated > -tie]  # a tie: the next altitude down
    return float(-below.min()) if below.size else 0.0


def _tree_cut(n: int, a: np.ndarray, b: np.ndarray, persist: np.ndarray, altitude: float) -> np.ndarray:
    from ._superpixel_kernels import tree_cut

    return tree_cut(n, a, b, persist, float(altitude))


def _watershed(image: np.ndarray, count: int, compactness: float) -> np.ndarray:
    """The ``count``-region cut of the watershed hierarchy (:class:`_WatershedTree`)."""
    tree = _WatershedTree(image.shape[:2], _smoothable_lab(image))
    return tree.labels(tree.altitude(count))


METHODS = {"watershed": _watershed, "slic": _slic}  # superpixel methods by name


def adjacency(regions: np.ndarray) -> np.ndarray:
    """Pairs of 4-adjacent regions of a label map: (E, 2) int64, ``a < b``, sorted, unique.

    Parameters
    ----------
    regions : ndarray of shape (H, W), integer
        A label map, labels in [0, N).

    Returns
    -------
    ndarray of shape (E, 2), int64
    """
    regions = np.asarray(regions)
    if regions.ndim != 2:
        raise ValueError(f"regions must be an (H, W) label map, got shape {regions.shape}")
    n = int(regions.max()) + 1 if regions.size else 0
    if n == 0:
        return np.zeros((0, 2), np.int64)
    from ._superpixel_kernels import adjacent_pairs

    code = adjacent_pairs(np.ascontiguousarray(regions, dtype=np.int32 if n < 2**31 else np.int64), n)
    return np.stack([code // n, code % n], axis=1)


def _rgb(image: np.ndarray) -> np.ndarray:
    """``image`` as an array, or ValueError unless it is (H, W, 3) and not empty."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(f"image must be an (H, W, 3) RGB array, got shape {image.shape}")
    return image


def downscaled(image: np.ndarray, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The copy of ``image`` the superpixels are made on: ``image`` itself if it has at most
    ``max_pixels`` pixels, else a nearest-neighbour copy of at most that many.

    Parameters
    ----------
    image : ndarray of shape (H, W, ...)
    max_pixels : int, default 2**22

    Returns
    -------
    ndarray of shape (h, w, ...)
        ``image`` (the same object) or its copy, the aspect ratio kept.

    Examples
    --------
    >>> import numpy as np
    >>> downscaled(np.zeros((400, 300, 3), np.uint8), 30000).shape
    (200, 150, 3)
    """
    height, width = image.shape[:2]
    if height * width <= max_pixels:
        return image
    shape = _copy_shape(height, width, max_pixels)
    return image[nearest_index(shape[0], height)][:, nearest_index(shape[1], width)]


def _copy_shape(height: int, width: int, max_pixels: int) -> tuple[int, int]:
    """The shape of :func:`downscaled`'s copy of an image of ``height x width`` pixels."""
    if height * width <= max_pixels:
        return int(height), int(width)
    scale = np.sqrt(max_pixels / (height * width))
    return max(1, int(height * scale)), max(1, int(width * scale))


def upscaled(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A label map of a :func:`downscaled` copy back at the image's ``shape`` (nearest
    neighbour; ``labels`` itself when it has that shape).

    Examples
    --------
    >>> import numpy as np
    >>> upscaled(np.array([[0, 1]]), (2, 4)).tolist()
    [[0, 0, 1, 1], [0, 0, 1, 1]]
    """
    if labels.shape == tuple(shape):
        return labels
    # nearest_index is non-decreasing, so indexing by it repeats each row and column its
    # number of times: np.repeat, 10x faster than the gather at 4000 x 4000
    rows, cols = (np.bincount(nearest_index(n_out, n_in), minlength=n_in)
                  for n_out, n_in in zip(shape, labels.shape))
    return np.repeat(np.repeat(labels, cols, axis=1), rows, axis=0)


_downscaled, _upscaled = downscaled, upscaled  # the names callers used before


def _consecutive(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0 .. N-1 in order of their values (O(pixels), no sort)."""
    present = np.bincount(labels.ravel()) > 0
    remap = (np.cumsum(present) - 1).astype(np.int32)
    return remap[labels]


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
