"""Superpixel nodes for the teacher's UniAP (``uniap.nodes: superpixels``): pixel-accurate targets.

On the fine map (the patch grid upsampled twice) a teacher mask is a union of cells of 4 pixels
of the teacher's view, 10 or more pixels of a large image: every boundary is a staircase.  As
``uniap-cli``'s default does for pseudo-masks (:mod:`uniap.superpixels`), the teacher can run
UniAP on the image's watershed superpixels instead: each superpixel pools the teacher's fine map
under its pixels, UniAP merges touching superpixels, and every teacher mask is a union of
superpixels that follows the image's edges.  The data pipeline computes per image (once, cached
with its features)

* :class:`ImageRegions`: the superpixels of the working image, their adjacency and, optionally,
  the contour regions of the watershed hierarchy (:func:`uniap.superpixels.superpixel_hierarchy`);
* :func:`fine_pooling`: which fine cells of the teacher's view each superpixel covers, and with
  how many pixels;

and per view :func:`view_region_ids`: the superpixel under each of the view's target points, so
a teacher mask (a set of superpixels) becomes a view's target map by one lookup.

Examples
--------
>>> import numpy as np
>>> from uniap_train.crops import Crop
>>> image = np.zeros((24, 32, 3), np.uint8); image[:, 16:] = 255
>>> regions = image_regions(image, size=64)
>>> ids = view_region_ids(regions.labels, Crop((0.0, 0.0, 32.0, 32.0), False, 32), 8)
>>> ids.shape, int(ids[-1, 0])  # the view's last rows lie below the image: no superpixel
((8, 8), -1)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .crops import Crop

__all__ = ["ImageRegions", "image_regions", "fine_pooling", "view_region_ids"]


@dataclass(frozen=True)
class ImageRegions:
    """An image's superpixels and what the teacher needs of them.

    Attributes
    ----------
    labels : ndarray (H, W), int32
        Superpixels of the working image, 0 .. N-1.
    edges : ndarray (E, 2), int64
        Pairs of touching superpixels.
    contours : ndarray (K, N), int64, or None
        The contour regions: K coarser cuts of the watershed hierarchy, a label per superpixel.
    """

    labels: np.ndarray
    edges: np.ndarray
    contours: np.ndarray | None = None

    @property
    def count(self) -> int:
        """N, the number of superpixels."""
        return int(self.labels.max()) + 1 if self.labels.size else 0


def image_regions(image: np.ndarray, size: int = 150, contours: bool = False) -> ImageRegions:
    """Watershed superpixels of ``size`` pixels (:func:`uniap.superpixels.superpixels`), their
    adjacency and, with ``contours``, the contour regions of the hierarchy they are cut from."""
    from uniap.superpixels import adjacency, superpixel_hierarchy, superpixels

    cuts = None
    if contours:
        labels, cuts, _ = superpixel_hierarchy(image, size=size)
        cuts = np.asarray(cuts, np.int64)
    else:
        labels = superpixels(image, size=size, method="watershed")
    labels = np.ascontiguousarray(labels, np.int32)
    return ImageRegions(labels, adjacency(labels), cuts)


def fine_pooling(labels: np.ndarray, cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel counts of every (superpixel, fine cell) pair of the teacher's whole-image view.

    The teacher's view is the square of side ``max(H, W)`` at the image's top-left corner (the
    image resized and padded, :func:`uniap_train.data.teacher_crop`), cut into ``cells`` x
    ``cells`` fine cells; a pixel lies in the cell that holds its centre: pixel ``(y, x)`` in cell
    ``((2 y + 1) * cells // (2 side), (2 x + 1) * cells // (2 side))``.

    Parameters
    ----------
    labels : ndarray (H, W), integer
        Superpixels 0 .. N-1.
    cells : int
        Fine cells per side of the teacher's view.

    Returns
    -------
    region, cell, count : ndarray (P,), int64, int64, float32
        Superpixel, flat cell index ``row * cells + col`` and the pixels they share; a
        superpixel's mean of a fine map ``F`` (cells * cells, C) is
        ``sum count * F[cell] / sum count`` over its pairs.
    """
    height, width = labels.shape
    side = max(height, width)
    rows = np.minimum((2 * np.arange(height) + 1) * cells // (2 * side), cells - 1)
    cols = np.minimum((2 * np.arange(width) + 1) * cells // (2 * side), cells - 1)
    cell = (rows[:, None] * cells + cols[None, :]).ravel()
    code = labels.astype(np.int64).ravel() * (cells * cells) + cell
    pairs, counts = np.unique(code, return_counts=True)
    return pairs // (cells * cells), pairs % (cells * cells), counts.astype(np.float32)


def view_region_ids(labels: np.ndarray, crop: Crop, points: int) -> np.ndarray:
    """The superpixel under each of a ``points`` x ``points`` grid of a view's point centres.

    Parameters
    ----------
    labels : ndarray (H, W), integer
        Superpixels of the working image the crop's box refers to.
    crop : Crop
        The view (box in the working image's pixels, flip).
    points : int
        Target points per side of the view.

    Returns
    -------
    ndarray (points, points), int32
        A superpixel id, or -1 where the point lies outside the image (a padded view).
    """
    height, width = labels.shape
    steps = (np.arange(points) + 0.5) / points
    x, _ = crop.to_image(steps, np.zeros(1))
    _, y = crop.to_image(np.zeros(1), steps)
    xi, yi = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    inside = ((yi >= 0) & (yi < height))[:, None] & ((xi >= 0) & (xi < width))[None, :]
    ids = labels[np.clip(yi, 0, height - 1)][:, np.clip(xi, 0, width - 1)].astype(np.int32)
    ids[~inside] = -1
    return ids
