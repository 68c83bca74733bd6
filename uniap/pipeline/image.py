"""From an image to masks: features, UniAP, pixel label maps and records in one call.

:func:`segment_image` is one call of UniAP's segmenter (:class:`UniapSegmenter`, defined with
the pipeline's stages in :mod:`uniap.pipeline.stages` and read here too).
"""

from __future__ import annotations

import warnings
from typing import Any

from ..core.hierarchy import Hierarchy
from .stages import ImageSegmentation, UniapSegmenter, _is_graph, _segment_graph, _segment_grid

__all__ = ["ImageSegmentation", "UniapSegmenter", "segment_image"]


def segment_nodes(grid: Any, **options: Any) -> Hierarchy:
    """UniAP on one image's nodes, on the host (deprecated: :meth:`UniapSegmenter.nodes`
    decides grid or graph once, from its extractor)."""
    warnings.warn("uniap.pipeline.image.segment_nodes is deprecated; use UniapSegmenter(extractor).nodes(grid)",
                  DeprecationWarning, stacklevel=2)
    return (_segment_graph if _is_graph(grid) else _segment_grid)(grid, **options)


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
