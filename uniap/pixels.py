"""From patch-grid label maps to pixel label maps: nearest, or a light bilinear refinement."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .features.base import FeatureGrid
    from .core.hierarchy import Hierarchy

UPSAMPLING = ("nearest", "bilinear")


def _cell_coordinates(grid: "FeatureGrid") -> tuple[np.ndarray, np.ndarray]:
    """Continuous grid coordinates of every original pixel centre (cell centres are integers)."""
    (h, w), (height, width) = grid.grid_shape, grid.original_shape
    if grid.fit == "pad":
        ys = (np.arange(height) + 0.5) / grid.patch_size - 0.5
        xs = (np.arange(width) + 0.5) / grid.patch_size - 0.5
    else:
        ys = (np.arange(height) + 0.5) * h / height - 0.5
        xs = (np.arange(width) + 0.5) * w / width - 0.5
    return np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1)


# Rows of pixels voted at a time: temporaries stay O(BAND_PIXELS), whatever the image size.
BAND_PIXELS = 1 << 18


def _bilinear_vote(labels: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Each pixel takes the label with most bilinear weight among its four nearest cells.

    The same as the argmax of bilinearly upsampled one-hot assignments, without ever holding
    one channel per cluster.  Pixels are voted in bands of rows, and only where the four
    cells disagree (elsewhere the vote is their common label), so memory beyond the output
    stays O(``BAND_PIXELS``).
    """
    h, w = labels.shape
    y0 = np.minimum(np.floor(ys).astype(np.int64), h - 1)
    x0 = np.minimum(np.floor(xs).astype(np.int64), w - 1)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy_all, fx_all = ys - y0, xs - x0
    out = np.empty((ys.size, xs.size), labels.dtype)
    band = max(1, BAND_PIXELS // max(xs.size, 1))
    for r0 in range(0, ys.size, band):
        r = slice(r0, r0 + band)
        rows0, rows1 = labels[y0[r]], labels[y1[r]]
        l00, l01 = rows0[:, x0], rows0[:, x1]
        l10, l11 = rows1[:, x0], rows1[:, x1]
        out[r] = l00
        mixed = (l00 != l01) | (l00 != l10) | (l00 != l11)
        iy, ix = np.nonzero(mixed)
        if iy.size == 0:
            continue
        fy, fx = fy_all[r][iy], fx_all[ix]
        corners = [
            (l00[iy, ix], (1 - fy) * (1 - fx)),
            (l01[iy, ix], (1 - fy) * fx),
            (l10[iy, ix], fy * (1 - fx)),
            (l11[iy, ix], fy * fx),
        ]
        best_label, best_weight = corners[0][0], np.full(iy.size, -1.0)
        for label, _ in corners:
            weight = sum(wt * (other == label) for other, wt in corners)
            better = weight > best_weight + 1e-12  # ties keep the earlier (nearest-first) corner
            best_label = np.where(better, label, best_label)
            best_weight = np.where(better, weight, best_weight)
        out[r][iy, ix] = best_label
    return out


def pixel_labels(h: "Hierarchy", grid: "FeatureGrid", upsampling: str = "nearest") -> np.ndarray:
    """Instance label maps of every level at the original image's resolution.

    Parameters
    ----------
    h : Hierarchy
        A 2-D grid hierarchy (any array library; brought to the host).
    grid : FeatureGrid or RegionGraph
        The features the hierarchy was computed from: it knows how cells cover pixels.  For a
        :class:`~uniap.features.RegionGraph` (superpixel nodes) every pixel takes its
        superpixel's label: the levels are already pixel-accurate.
    upsampling : {"nearest", "bilinear"}
        "nearest": each pixel takes its cell's label (exact patch blocks).  "bilinear": the
        finest level takes, per pixel, the label with most bilinear weight among the four
        nearest cells, which smooths the staircase along boundaries; coarser levels are then
        read through the parents, so levels stay nested.

    Returns
    -------
    ndarray of shape (L, H, W), int32
    """
    if upsampling not in UPSAMPLING:
        raise ValueError(f"upsampling must be one of {list(UPSAMPLING)}, got {upsampling!r}")
    h = h.numpy()
    if hasattr(grid, "regions"):  # superpixel nodes: nothing to upsample
        if upsampling != "nearest":
            raise ValueError("upsampling applies to patch grids; with superpixel nodes (refine="
                             "'superpixels') every level is already pixel-accurate")
        return grid.to_image(h.labels).astype(np.int32)
    if upsampling == "nearest":
        return grid.to_image(h.labels).astype(np.int32)
    ys, xs = _cell_coordinates(grid)
    finest = _bilinear_vote(h.level(0).labels, ys, xs)
    out = np.empty((len(h),) + finest.shape, np.int32)
    out[0] = finest
    for i in range(1, len(h)):
        out[i] = h.level(i - 1).parents[out[i - 1]]
    return out
