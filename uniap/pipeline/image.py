"""From an image to masks: features, UniAP, pixel label maps and records in one call."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.api import segment, segment_graph
from ..core.hierarchy import Hierarchy
from .stages import encode, uniap_info


@dataclass
class ImageSegmentation:
    """What :func:`segment_image` returns.

    Attributes
    ----------
    hierarchy : Hierarchy
        The UniAP hierarchy on the host: of the superpixel graph (labels per superpixel) or
        of the patch grid.
    records : list of dict
        SAM-style records at the original image's resolution (:mod:`uniap.records`).
    pixel_labels : ndarray of shape (L, H, W), int32
        Instance label maps at image resolution, nested across levels.
    semantic_labels : ndarray of shape (L, H, W), int32, or None
        Semantic groups at image resolution (``semantic=True``).
    contour_labels : ndarray of shape (K, H, W), int32, or None
        The contour regions of watershed superpixels (``contours``), finest cut first.
    grid : RegionGraph or FeatureGrid
        The nodes' features and how they cover the image's pixels.
    image : ndarray of shape (H, W, 3), uint8
    timings : dict
        Seconds spent in ``features``, ``pooling`` (UniAP) and ``records``.
    """

    hierarchy: Hierarchy
    records: list[dict]
    pixel_labels: np.ndarray
    semantic_labels: np.ndarray | None
    grid: Any
    image: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    contour_labels: np.ndarray | None = None

    def uniap_info(self) -> dict:
        """Provenance for output files: version, thresholds, options, grid and features."""
        return uniap_info(self.hierarchy, self.grid)


class UniapSegmenter:
    """UniAP as a segmenter: an image in, an :class:`ImageSegmentation` out.

    Everything that does not depend on the image is settled once, here: the extractor and its
    nodes (patch grid or superpixels: :func:`uniap.features.refined`), the refine rule
    (:func:`uniap.features.regions.check_refine`), the levels (the nodes' defaults when not
    given) and UniAP's options.  :func:`segment_image` is one call of it, and ``uniap-eval``'s
    ``uniap`` segmenter runs one.

    Parameters
    ----------
    extractor : callable, optional
        A feature extractor (:mod:`uniap.features`); the embedded default when None.
    refine, superpixel_size, superpixel_method, contours, upsampling, unique
        As :func:`segment_image`.
    flags : bool
        Name options in errors as command-line flags (``uniap-eval``) rather than keywords.
    **options
        UniAP's options (:func:`uniap.segment`: levels, min_size, preset, semantic, ...).

    Examples
    --------
    >>> import numpy as np
    >>> segmenter = UniapSegmenter(refine="none", levels=(0.5,))
    >>> segmenter(np.zeros((32, 32, 3), np.uint8)).pixel_labels.shape
    (1, 32, 32)
    """

    def __init__(self, extractor: Any | None = None, *, refine: str = "superpixels",
                 superpixel_size: int | None = None, superpixel_method: str | None = None,
                 contours: bool | None = None, upsampling: str = "nearest", unique: bool = True,
                 flags: bool = False, **options: Any) -> None:
        from ..features import RegionFeatures, get_extractor, refined
        from ..features.regions import check_refine, default_levels, superpixel_options

        sp_options = superpixel_options(superpixel_size, superpixel_method, contours)
        check_refine(refine, upsampling=upsampling, connectivity=options.get("connectivity"), flags=flags,
                     superpixel_options=[k if k == "contours" else "superpixel_" + k for k in sp_options])
        self.refine, self.upsampling, self.unique = refine, upsampling, unique
        self.extractor = refined(get_extractor("default") if extractor is None else extractor, refine, **sp_options)
        options.setdefault("levels", default_levels(refine))
        self.options = options
        # the nodes, decided once: superpixels are a graph (segment_graph), patches a grid
        self._segment = _segment_graph if isinstance(self.extractor, RegionFeatures) else _segment_grid

    def nodes(self, grid: Any) -> Hierarchy:
        """UniAP on one image's nodes, on the host."""
        return self._segment(grid, **self.options)

    def __call__(self, image: Any, max_pixels: int | None = None) -> ImageSegmentation:
        """The segmentation of ``image`` (anything :func:`uniap.features.load_image` reads)."""
        from ..features import load_image

        pixels = load_image(image, max_pixels=max_pixels)
        t0 = time.perf_counter()
        grid = self.extractor(pixels)
        t1 = time.perf_counter()
        h = self.nodes(grid)
        t2 = time.perf_counter()
        encoded = encode(grid, h, upsampling=self.upsampling, unique=self.unique, image=pixels)
        t3 = time.perf_counter()
        return ImageSegmentation(
            hierarchy=h, records=encoded.records, pixel_labels=encoded.pixel_labels,
            semantic_labels=encoded.semantic_labels, grid=grid,
            image=pixels, timings={"features": t1 - t0, "pooling": t2 - t1, "records": t3 - t2},
            contour_labels=encoded.contour_labels,
        )


def _segment_graph(grid: Any, **options: Any) -> Hierarchy:
    return segment_graph(grid.features, grid.edges, **options).numpy()


def _segment_grid(grid: Any, **options: Any) -> Hierarchy:
    return segment(grid.features, **options).numpy()


def segment_nodes(grid: Any, **options: Any) -> Hierarchy:
    """UniAP on one image's nodes, on the host: a region graph's superpixels
    (:func:`uniap.segment_graph` over its edges) or a patch grid (:func:`uniap.segment`)."""
    if hasattr(grid, "edges"):
        return segment_graph(grid.features, grid.edges, **options).numpy()
    return segment(grid.features, **options).numpy()


def segment_image(
    image: Any,
    extractor: Any | None = None,
    *,
    refine: str = "superpixels",
    superpixel_size: int | None = None,
    superpixel_method: str | None = None,
    contours: bool | None = None,
    upsampling: str = "nearest",
    unique: bool = True,
    max_pixels: int | None = None,
    **options: Any,
) -> ImageSegmentation:
    """Masks of one image: extract features, run UniAP, map to pixels.

    With ``refine="superpixels"`` (default) UniAP's nodes are the image's superpixels, each
    pooling the patch features under it (:class:`uniap.features.RegionFeatures`), so every level
    follows the image's edges; with ``"none"`` they are the extractor's patches
    (:func:`uniap.segment` on the grid) and regions are unions of patches.

    Parameters
    ----------
    image : str, Path or ndarray
        A path to an image file, or an (H, W[, 3|4]) array (see
        :func:`uniap.features.load_image`).
    extractor : callable, optional
        A feature extractor (:mod:`uniap.features`); the embedded default when None.
    refine : {"superpixels", "none"}
        UniAP's nodes: superpixels (pixel-accurate levels) or patches.
    superpixel_size : int, optional
        Mean superpixel area in pixels (default 150; ``refine="superpixels"`` only).
    superpixel_method : {"watershed", "slic"}, optional
        How the superpixels are made (default ``"watershed"``,
        :func:`uniap.superpixels.superpixels`; ``refine="superpixels"`` only).
    contours : bool, optional
        Also give the contour regions of the watershed superpixels' hierarchy, as
        ``contour_labels`` and records of kind ``"contour"`` after the levels' (default: True
        with watershed superpixels; :class:`uniap.features.RegionFeatures`).
    upsampling : {"nearest", "bilinear"}
        How patch labels become pixel labels (:func:`uniap.pixels.pixel_labels`;
        ``refine="none"`` only).
    unique : bool
        True (default): one record per distinct mask, with the ``levels`` it spans; False:
        one record per cluster and level (:func:`uniap.records.hierarchy_records`).
    max_pixels : int, optional
        The most pixels ``image`` may have, checked before it is decoded
        (:func:`uniap.features.load_image`: 89.5 million for a file by default; 0: no limit).
    **options
        Passed to :func:`uniap.segment` / :func:`uniap.segment_graph` (levels, min_size,
        preset, semantic, backend, ...).  The default levels are
        :data:`uniap.features.regions.REGION_LEVELS` for superpixels, the library's for patches.

    Returns
    -------
    ImageSegmentation

    Examples
    --------
    >>> import skimage.data, uniap
    >>> result = uniap.segment_image(skimage.data.coffee(), levels=(0.8, 0.5))
    >>> result.pixel_labels.shape
    (2, 400, 600)
    """
    return UniapSegmenter(extractor, refine=refine, superpixel_size=superpixel_size,
                          superpixel_method=superpixel_method, contours=contours, upsampling=upsampling,
                          unique=unique, **options)(image, max_pixels=max_pixels)
