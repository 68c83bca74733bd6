"""Region features: any patch extractor made pixel-accurate, with superpixels as UniAP's nodes.

:class:`RegionFeatures` wraps an extractor.  For an image it computes the patch grid as
before, superpixels of the image (:func:`uniap.superpixels.superpixels`), one feature per
superpixel and the superpixels' adjacency, and returns them as a :class:`RegionGraph`, which
:func:`uniap.segment_graph` pools (the pipeline, :func:`uniap.segment_image` and
``uniap-eval`` do so on their own).  Every level is then a union of superpixels: boundaries
follow the image's edges instead of the patch staircase, and levels nest as before.

A superpixel's feature is the sum of the patch features under its pixels (:func:`pool_grid`),
which works for any features, a ViT's included; with ``pixel_features=True`` an extractor's
own ``region_features(image, regions)`` is used instead where it has one
(:meth:`uniap.features.DefaultFeatures.region_features`: histograms of the superpixel's own
pixels).  Either way a node weighs as many patches as it covers.  Pooling the patches measured
better (``docs/quality.md``): the patch histograms carry each superpixel's surroundings, a
little context that its own few pixels lack.

Watershed superpixels come with the coarser cuts of the hierarchy they are cut from
(:func:`uniap.superpixels.superpixel_hierarchy`): *contour regions*, bounded by the image's
strongest edges.  A :class:`RegionGraph` carries them as ``contours``; the records and the
evaluation's proposals add them to UniAP's levels (``kind: "contour"``), because regions
grouped by features and regions cut by edges find different objects (``docs/quality.md``).

The superpixels need the image, not its features.  With the default features and a spare
core (:data:`OVERLAP`), they are made in a thread beside the features, from the CIELab the
features convert first (the compiled kernels release the GIL): at 481 x 321 the two take
about 30 and 20 ms of CPU, so on two free cores the region graph takes about the patch
grid's wall time (on the project's two vCPUs, which slow each other, the README's 400 x 600
image took 45-59 ms, against 72 in turn and 39-42 for its features alone).  The graph is the same either
way, bit for bit.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from .._cores import usable_cores
from ..superpixels import (DEFAULT_COMPACTNESS, DEFAULT_METHOD, DEFAULT_SIZE, adjacency, check_options,
                           downscaled, downscaled_hierarchy, superpixels, upscaled)
from ..superpixels import MAX_PIXELS as SUPERPIXEL_MAX_PIXELS
from .base import FeatureGrid
from .image import load_image

__all__ = ["OVERLAP", "REFINES", "REGION_LEVELS", "RegionFeatures", "RegionGraph", "default_levels", "pool_grid",
           "refined", "superpixel_options"]

REFINES = ("none", "superpixels")  # how patch features become UniAP's nodes
# Superpixels merge at lower cosines than patches (a patch on an edge mixes two regions, a
# superpixel rarely does): their own thresholds, tuned on BSDS500 val, CamVid val and COCO dev
# (docs/quality.md; finer steps at the top helped BSDS500 but cost COCO AR@100).
REGION_LEVELS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)


def default_levels(refine: str = "superpixels") -> tuple[float, ...]:
    """The default thresholds for the nodes ``refine`` makes.

    Parameters
    ----------
    refine : {"superpixels", "none"}

    Returns
    -------
    tuple of float
        :data:`REGION_LEVELS` for superpixels, :data:`uniap.DEFAULT_LEVELS` for patches.
    """
    from ..core.options import DEFAULT_LEVELS

    if refine not in REFINES:
        raise ValueError(f"refine must be one of {list(REFINES)}, got {refine!r}")
    return REGION_LEVELS if refine == "superpixels" else DEFAULT_LEVELS


@dataclass(frozen=True)
class RegionGraph:
    """Node features of an image's superpixels, their adjacency and the pixels they cover.

    Stands where a :class:`~uniap.features.FeatureGrid` stands in the pipeline: UniAP pools
    ``features`` over ``edges`` (:func:`uniap.segment_graph`), and :meth:`to_image` maps the
    per-node labels back to pixels.

    Attributes
    ----------
    features : ndarray of shape (N, C), float32
    edges : ndarray of shape (E, 2), int64
        Pairs of 4-adjacent superpixels.
    regions : ndarray of shape (H, W), int32
        The superpixel of every pixel of the original image, 0 .. N-1.
    grid : FeatureGrid
        The patch features the node features come from.
    size, compactness : the superpixels' parameters
    method : the superpixel method (:data:`uniap.superpixels.METHODS`)
    pixel_features : whether the node features came from the superpixels' own pixels
    contours : ndarray of shape (K, N), int32, or None
        Contour regions: ``contours[k, i]`` is the region of the watershed hierarchy's k-th
        coarser cut holding superpixel i (:func:`uniap.superpixels.superpixel_hierarchy`);
        None without them (SLIC superpixels, or ``contours=False``).
    contour_thresholds : ndarray of shape (K,), float64, or None
        Each cut's altitude in the hierarchy.
    edge_strength : ndarray of shape (h, w), float32, or None
        The edge strength, unnormalised (:func:`uniap.scores.raw_edge_strength`), of the image
        the watershed ran on, from the CIELab image it converts anyway: the image itself, or
        for an image of more than :data:`uniap.superpixels.MAX_PIXELS` pixels its downscaled
        copy (:func:`uniap.superpixels.downscaled`).  The records' scores read it
        (:meth:`boundary_strength`) instead of converting the image again.  Watershed
        superpixels have it with or without their contour regions; None for SLIC's.
    strength_regions : ndarray of shape (h, w), int32, or None
        The superpixels of that downscaled copy, where ``edge_strength`` is gathered on their
        boundaries (``regions`` is this map upscaled); None when ``edge_strength`` is at the
        image's resolution or absent.
    boundary : uniap.scores.BoundaryStrength or None
        :meth:`boundary_strength`'s, when it was gathered with the superpixels (in the thread
        that makes them beside the features); None: gathered when asked.
    runs : uniap.records.RegionRuns or None
        The runs of ``regions`` for the records, found with the superpixels the same way;
        None: found when needed.
    """

    features: np.ndarray
    edges: np.ndarray
    regions: np.ndarray
    grid: FeatureGrid
    size: int = DEFAULT_SIZE
    compactness: float = DEFAULT_COMPACTNESS
    pixel_features: bool = False
    method: str = DEFAULT_METHOD
    contours: np.ndarray | None = None
    contour_thresholds: np.ndarray | None = None
    edge_strength: np.ndarray | None = None
    strength_regions: np.ndarray | None = None
    boundary: Any = field(default=None, compare=False, repr=False)
    runs: Any = field(default=None, compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.grid.name

    @property
    def patch_size(self) -> int:
        return self.grid.patch_size

    @property
    def original_shape(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.regions.shape)

    @property
    def grid_shape(self) -> tuple[int]:
        """``(N,)``: the graph's nodes, one per superpixel."""
        return (int(self.features.shape[0]),)

    def to_image(self, labels: np.ndarray) -> np.ndarray:
        """Per-node values (..., N) onto the original image's pixels: (..., H, W)."""
        labels = np.asarray(labels)
        if labels.shape[-1:] != self.grid_shape:
            raise ValueError(f"labels must end with the node count {self.grid_shape}, got {labels.shape}")
        return np.take(labels, self.regions, axis=-1)

    def describe(self) -> dict:
        """The refinement as recorded in output files."""
        out = {"method": "superpixels", "superpixels": self.method, "size": int(self.size),
               "nodes": int(self.features.shape[0])}
        if self.method == "slic":
            out["compactness"] = float(self.compactness)
        if self.pixel_features:
            out["pixel_features"] = True
        if self.contours is not None:
            out["contours"] = int(self.contours.shape[0])
        return out

    def contour_maps(self) -> np.ndarray | None:
        """The contour regions at the image's pixels: (K, H, W) int32, or None."""
        return None if self.contours is None else self.to_image(self.contours)

    def boundary_strength(self, image: np.ndarray | None = None) -> Any:
        """The edge strength on the boundaries between the superpixels, for the records' scores.

        Gathered from :attr:`edge_strength` where the graph has it (for an image the
        superpixels downscale, on the downscaled copy's superpixels: a quarter of the pixels
        of an 8-megapixel image, the same pairs of neighbours), else from ``image``.

        Parameters
        ----------
        image : ndarray of shape (H, W, 3), optional
            The image (used without :attr:`edge_strength`; without either, every contrast is 1).

        Returns
        -------
        uniap.scores.BoundaryStrength
        """
        from ..scores import BoundaryStrength

        if self.boundary is not None:
            return self.boundary
        if self.edge_strength is None:
            return BoundaryStrength(self.regions, image, pairs=self.edges)
        regions = self.regions if self.strength_regions is None else self.strength_regions
        return BoundaryStrength(regions, pairs=self.edges, strength=self.edge_strength)


def pool_grid(grid: FeatureGrid, regions: np.ndarray) -> np.ndarray:
    """Each region's sum of the features of the patches under its pixels, in patch units.

    Parameters
    ----------
    grid : FeatureGrid
    regions : ndarray of shape (H, W), integer
        A label map at the grid's original resolution, labels 0 .. N-1.

    Returns
    -------
    ndarray of shape (N, C), float32
        ``sum over the region's pixels of feature(cell of pixel) / pixels per cell``: a region
        inside one patch gets that patch's feature times its share of the patch.
    """
    from .._superpixel_kernels import pool_cells

    regions = np.asarray(regions)
    if regions.shape != tuple(grid.original_shape):
        raise ValueError(f"regions must have the image's shape {grid.original_shape}, got {regions.shape}")
    rows, cols = grid.cell_index()
    h, w = grid.grid_shape
    n = int(regions.max()) + 1
    feats = np.asarray(grid.features, np.float64).reshape(h * w, -1)
    out = pool_cells(np.ascontiguousarray(regions, dtype=np.int32), rows.astype(np.int64),
                     cols.astype(np.int64), feats, w, n)  # one pass, no temporaries
    (height, width), (hr, wr) = grid.original_shape, grid.resized_shape
    out /= grid.patch_size ** 2 * (height / hr) * (width / wr)
    return out.astype(np.float32)


#: Make the image side of a region graph (superpixels, contour regions, edge strength) in a
#: thread beside the default features: when this process may run on more than one core (a
#: pipeline worker given one thread sets it False, ``uniap.pipeline.engine``).
OVERLAP = usable_cores() > 1


@dataclass
class _ImageSide:
    """What :class:`RegionFeatures` makes of the image alone (see ``_image_side``)."""

    regions: np.ndarray
    small: np.ndarray | None
    edges: np.ndarray
    contours: np.ndarray | None
    thresholds: np.ndarray | None
    strength: np.ndarray | None
    boundary: Any = None
    runs: Any = None


@contextmanager
def _one_blas_thread() -> Iterator[None]:
    """BLAS limited to one thread within; the limit is the process's, so callers in several
    threads share it: the first sets it, the last gives BLAS its threads back.  (One
    controller for the process: making one scans the loaded libraries, about a millisecond.)"""
    global _BLAS, _BLAS_LIMIT, _BLAS_USERS
    with _BLAS_LOCK:
        if _BLAS_USERS == 0:
            if _BLAS is None:
                from threadpoolctl import ThreadpoolController

                _BLAS = ThreadpoolController()
            _BLAS_LIMIT = _BLAS.limit(limits=1, user_api="blas")
        _BLAS_USERS += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_USERS -= 1
            if _BLAS_USERS == 0:
                _BLAS_LIMIT.restore_original_limits()
                _BLAS_LIMIT = None


def _warm_the_image_side(features: "RegionFeatures") -> None:
    """Run the image side once, in turn, on a small image, before its thread first starts.

    What it imports lazily is imported here: two threads importing SciPy's submodules for the
    first time at once can fail (``KeyError: 'scipy'``), and the features import
    ``scipy.ndimage`` too.  Numba's first kernel call in a process also imports modules
    (``numba.np.arraymath``, which imports ``scipy.linalg.cython_blas``), and a kernel first
    called in the thread would do so there.  ``tests/test_shared_work.py`` checks, on a cold
    Numba cache, that the thread loads no module of SciPy or scikit-image."""
    if features.contours in _WARMED:
        return
    image = np.random.default_rng(0).integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    features._image_side(image, None, True)
    _WARMED.add(features.contours)


_WARMED: set[bool] = set()  # the contours settings whose image side has run
_BLAS: Any = None
_BLAS_LIMIT: Any = None
_BLAS_USERS = 0
_BLAS_LOCK = threading.Lock()


class _InThread(threading.Thread):
    """``fn(*args)`` started in a thread; :meth:`result` waits and returns it (or raises its error).

    A thread per call, not a pool: a pool's thread would not survive the fork of the
    pipeline's worker processes."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        super().__init__(name="uniap-image-side", daemon=True)
        self._call = (fn, args)
        self._value: Any = None
        self._error: BaseException | None = None
        self.start()

    def run(self) -> None:
        fn, args = self._call
        try:
            self._value = fn(*args)
        except BaseException as error:  # raised again in the caller's thread
            self._error = error

    def result(self) -> Any:
        self.join()
        if self._error is not None:
            raise self._error
        return self._value


class RegionFeatures:
    """An extractor whose nodes are superpixels: ``extractor``'s features, pixel-accurate.

    Parameters
    ----------
    extractor : a feature extractor (:mod:`uniap.features`)
    size : int, default 150
        Mean superpixel area in pixels (:func:`uniap.superpixels.superpixels`).
    method : {"watershed", "slic"}, default "watershed"
        How the superpixels are made (:func:`uniap.superpixels.superpixels`).
    compactness : float, default 20
        SLIC's compactness (``method="slic"``).
    contours : bool, optional
        Also give the contour regions of the watershed hierarchy (:class:`RegionGraph`
        ``contours``).  Default: True for watershed superpixels; SLIC has no hierarchy, so
        ``True`` with ``method="slic"`` is an error.
    pixel_features : bool, default False
        Use the extractor's ``region_features`` (its descriptors of each superpixel's own
        pixels) where it has one, instead of pooling its patch grid (:func:`pool_grid`); an
        ablation of ``docs/quality.md``, a little worse there.

    Examples
    --------
    >>> import uniap
    >>> from skimage import data
    >>> from uniap.features import DefaultFeatures, RegionFeatures
    >>> graph = RegionFeatures(DefaultFeatures())(data.coffee())
    >>> h = uniap.segment_graph(graph.features, graph.edges, levels=(0.5,))
    >>> graph.to_image(h.labels).shape  # one label map per level, at the image's resolution
    (1, 400, 600)
    """

    def __init__(self, extractor: Any, *, size: int = DEFAULT_SIZE, method: str = DEFAULT_METHOD,
                 compactness: float = DEFAULT_COMPACTNESS, contours: bool | None = None,
                 pixel_features: bool = False) -> None:
        if isinstance(extractor, RegionFeatures):
            raise TypeError("the extractor already gives region features")
        check_options(size=size, method=method, compactness=compactness)
        if contours and method != "watershed":
            raise ValueError(f"contour regions come from the watershed hierarchy: method={method!r} has none")
        self.contours = method == "watershed" if contours is None else bool(contours)
        self.extractor = extractor
        self.size = int(size)
        self.method = method
        self.compactness = float(compactness)
        self.pixel_features = bool(pixel_features)
        self.name = extractor.name
        self.patch_size = extractor.patch_size
        if hasattr(extractor, "batch_grids"):  # keep the batched (ViT) path of the pipeline
            self.batch_grids = self._batch_grids

    def __repr__(self) -> str:
        return (f"RegionFeatures({self.extractor!r}, size={self.size}, method={self.method!r}, "
                f"compactness={self.compactness:g}, contours={self.contours}, "
                f"pixel_features={self.pixel_features})")

    def __call__(self, image: Any) -> RegionGraph:
        rgb = load_image(image)
        with_lab = getattr(self.extractor, "_grid_and_lab", None)
        if with_lab is None or self.method != "watershed" or rgb.dtype != np.uint8:
            return self.graph(rgb, self.extractor(rgb))
        # The default features convert the image to CIELab first: the watershed takes theirs.
        # With a spare core it runs in a thread from then on (from the start where it cannot
        # take theirs), while the features compute their descriptors, words and histograms:
        # about 30 and 20 ms at 481 x 321, each on one core (docs/benchmarks.md).  The
        # features' BLAS keeps to one thread meanwhile: their products are small, and a second
        # BLAS thread would only wait for the core the watershed uses.
        if not OVERLAP:
            grid, lab = with_lab(rgb)
            return self._assemble(rgb, grid, self._image_side(rgb, lab))
        _warm_the_image_side(self)
        image_side: list[_InThread] = []

        def start(lab: np.ndarray | None) -> None:  # a copy: the watershed smooths it in place
            image_side.append(_InThread(self._image_side, rgb, None if lab is None else lab.copy(), True))

        try:
            with _one_blas_thread():
                grid, lab = with_lab(rgb, on_lab=start)
        except BaseException:
            if image_side:  # no thread outlives the call (nor holds its image's memory)
                image_side[0].join()
            raise
        side = image_side[0].result() if image_side else self._image_side(rgb, lab)
        return self._assemble(rgb, grid, side)

    def graph(self, image: np.ndarray, grid: FeatureGrid, *, lab: np.ndarray | None = None) -> RegionGraph:
        """The region graph of ``image`` from its patch features ``grid``.

        ``lab``: the CIELab of ``image`` (3, H, W) float32 when the caller has it
        (``uniap.features.default._rgb2lab(image)``; the default features'), used for the
        watershed instead of converting the image again, which smooths it in place (ignored
        where the watershed runs on a downscaled copy).
        """
        return self._assemble(image, grid, self._image_side(image, lab))

    def _image_side(self, image: np.ndarray, lab: np.ndarray | None, records: bool = False) -> _ImageSide:
        """Everything of the graph that needs the image only, not its features: the
        superpixels, their contour regions, edge strength and adjacency; with ``records``,
        also what the records need of them alone (the boundary strength per superpixel
        pair, the runs of the superpixel map), where it costs nothing: in a thread beside
        the features."""
        contours = thresholds = strength = small = None
        if self.method == "watershed":  # with or without its contour regions
            copy = downscaled(image, SUPERPIXEL_MAX_PIXELS)  # what the watershed runs on
            if lab is None or copy is not image or lab.shape != (3, *image.shape[:2]) or lab.dtype != np.float32:
                lab = None
            if image.dtype == np.uint8:
                # one CIELab conversion for the watershed and the records' edge strength, both
                # on the copy (at 4000 x 4000 a full-resolution strength cost 1 s of 8)
                from ..scores import raw_edge_strength
                from .default import _rgb2lab

                lab = _rgb2lab(np.ascontiguousarray(copy)) if lab is None else np.ascontiguousarray(lab)
                strength = raw_edge_strength(lab)
            else:
                lab = None
            small, contours, thresholds = downscaled_hierarchy(image, size=self.size, lab=lab,
                                                               max_pixels=SUPERPIXEL_MAX_PIXELS,
                                                               contours=self.contours)
            if not self.contours:
                contours = thresholds = None
            regions = upscaled(small, image.shape[:2])
        else:
            regions = superpixels(image, size=self.size, method=self.method, compactness=self.compactness)
        # the copy's superpixels touch where the image's do (nearest-neighbour upscaling keeps
        # 4-adjacency): the same pairs from fewer pixels
        edges = adjacency(regions if small is None else small)
        side = _ImageSide(regions, small, edges, contours, thresholds, strength)
        if records and strength is not None and small is regions:  # (not for a downscaled copy: memory)
            from ..records import RegionRuns
            from ..scores import BoundaryStrength

            side.boundary = BoundaryStrength(regions, pairs=edges, strength=strength)
            side.runs = RegionRuns(regions)
        return side

    def _assemble(self, image: np.ndarray, grid: FeatureGrid, side: _ImageSide) -> RegionGraph:
        """The graph from its image side and the features: one feature per superpixel."""
        regions = side.regions
        if self.pixel_features and hasattr(self.extractor, "region_features"):
            x = self.extractor.region_features(image, regions)
            missing = np.isnan(x).any(axis=1)
            if missing.any():
                x[missing] = pool_grid(grid, regions)[missing]
        else:
            x = pool_grid(grid, regions)
        downscaled_strength = side.strength is not None and side.small is not regions
        return RegionGraph(x, side.edges, regions, grid, self.size, self.compactness, self.pixel_features,
                           self.method, side.contours, side.thresholds, side.strength,
                           side.small if downscaled_strength else None, side.boundary, side.runs)

    def _batch_grids(self, images: Iterable[np.ndarray]) -> Iterator[tuple[RegionGraph, np.ndarray]]:
        images = list(images)
        for image, (grid, _) in zip(images, self.extractor.batch_grids(images)):
            graph = self.graph(image, grid)
            yield graph, graph.features


def superpixel_options(size: int | None = None, method: str | None = None,
                       contours: bool | None = None) -> dict[str, Any]:
    """The :class:`RegionFeatures` keywords a caller set (``None``: the default), e.g. for
    :func:`refined`."""
    return {key: value for key, value in (("size", size), ("method", method), ("contours", contours))
            if value is not None}


def check_refine(refine: str, *, upsampling: str = "nearest", superpixel_options: Any = (),
                 connectivity: int | None = None, flags: bool = False) -> None:
    """Whether ``refine`` fits the other options: the one rule, for :func:`uniap.segment_image`,
    the pipeline and ``uniap-eval``'s ``uniap`` segmenter.

    Parameters
    ----------
    refine : str
        UniAP's nodes: ``"superpixels"`` or ``"none"`` (:data:`REFINES`).
    upsampling : str
        Patch labels to pixels; only ``"nearest"`` with superpixels (their levels are
        pixel-accurate already).
    superpixel_options : iterable of str
        The names of the superpixel options the caller set (only with superpixels).
    connectivity : int, optional
        The grid's connectivity (only with patches: superpixels are joined where they touch).
    flags : bool
        Name the options as command-line flags (``--superpixel-size``, ``--refine none``)
        rather than as keywords (``superpixel_size``, ``refine 'none'``).

    Raises
    ------
    ValueError
        Naming the option that does not apply.

    Examples
    --------
    >>> check_refine("none", superpixel_options=["superpixel_size"])
    Traceback (most recent call last):
    ...
    ValueError: superpixel_size applies to refine 'superpixels' only
    """
    def name(option: str) -> str:
        return f"--{option.replace('_', '-')}" if flags else option

    def nodes(kind: str) -> str:
        return f"--refine {kind}" if flags else f"refine {kind!r}"

    if refine not in REFINES:
        raise ValueError(f"refine must be one of {list(REFINES)}, got {refine!r}")
    if refine == "superpixels":
        if upsampling != "nearest":
            raise ValueError(f"{name('upsampling')} applies to {nodes('none')} only: superpixel levels are "
                             "pixel-accurate")
        if connectivity is not None:
            raise ValueError(f"{name('connectivity')} applies to {nodes('none')} only: superpixels are joined "
                             "where they touch")
    elif superpixel_options:
        raise ValueError(f"{', '.join(map(name, superpixel_options))} applies to {nodes('superpixels')} only")


def refined(extractor: Any, refine: str = "superpixels", **options: Any) -> Any:
    """``extractor`` with UniAP's nodes as ``refine`` says.

    Parameters
    ----------
    extractor : a feature extractor
    refine : {"superpixels", "none"}
        ``"superpixels"``: a :class:`RegionFeatures` around ``extractor`` (unless it is one);
        ``"none"``: ``extractor`` itself (patch nodes).
    **options
        Keyword arguments of :class:`RegionFeatures` (``size``, ``method``, ``compactness``).

    Returns
    -------
    RegionFeatures or the extractor

    Raises
    ------
    ValueError
        For an unknown ``refine``, or options with ``refine="none"``.
    """
    if refine not in REFINES:
        raise ValueError(f"refine must be one of {list(REFINES)}, got {refine!r}")
    if refine == "none" and options:
        raise ValueError(f"{', '.join(sorted(options))} applies to refine='superpixels' only")
    if refine == "none" or isinstance(extractor, RegionFeatures):
        return extractor
    return RegionFeatures(extractor, **options)
