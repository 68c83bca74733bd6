"""From an image to masks: features, UniAP, pixel label maps and records in one call."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..api import segment
from ..hierarchy import Hierarchy
from .stages import encode, uniap_info


@dataclass
class ImageSegmentation:
    """What :func:`segment_image` returns.

    Attributes
    ----------
    hierarchy : Hierarchy
        The UniAP hierarchy on the patch grid (on the host).
    records : list of dict
        SAM-style records at the original image's resolution (:mod:`uniap.records`).
    pixel_labels : ndarray of shape (L, H, W), int32
        Instance label maps at image resolution, nested across levels.
    semantic_labels : ndarray of shape (L, H, W), int32, or None
        Semantic groups at image resolution (``semantic=True``).
    grid : FeatureGrid
        The features and how their cells cover the image's pixels.
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

    def uniap_info(self) -> dict:
        """Provenance for output files: version, thresholds, options, grid and features."""
        return uniap_info(self.hierarchy, self.grid)


def segment_image(
    image: Any,
    extractor: Any | None = None,
    *,
    upsampling: str = "nearest",
    unique: bool = True,
    **options: Any,
) -> ImageSegmentation:
    """Masks of one image: extract patch features, run :func:`uniap.segment`, map to pixels.

    Parameters
    ----------
    image : str, Path or ndarray
        A path to an image file, or an (H, W[, 3|4]) array (see
        :func:`uniap.features.load_image`).
    extractor : callable, optional
        A feature extractor (:mod:`uniap.features`); the embedded default when None.
    upsampling : {"nearest", "bilinear"}
        How grid labels become pixel labels (:func:`uniap.pixels.pixel_labels`).
    unique : bool
        True (default): one record per distinct mask, with the ``levels`` it spans; False:
        one record per cluster and level (:func:`uniap.records.hierarchy_records`).
    **options
        Passed to :func:`uniap.segment` (levels, min_size, preset, semantic, backend, ...).

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
    from ..features import get_extractor, load_image

    pixels = load_image(image)
    if extractor is None:
        extractor = get_extractor("default")
    t0 = time.perf_counter()
    grid = extractor(pixels)
    t1 = time.perf_counter()
    h = segment(grid.features, **options).numpy()
    t2 = time.perf_counter()
    encoded = encode(grid, h, upsampling=upsampling, unique=unique)
    t3 = time.perf_counter()
    return ImageSegmentation(
        hierarchy=h, records=encoded.records, pixel_labels=encoded.pixel_labels,
        semantic_labels=encoded.semantic_labels, grid=grid,
        image=pixels, timings={"features": t1 - t0, "pooling": t2 - t1, "records": t3 - t2},
    )
