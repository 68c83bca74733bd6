"""The teacher's pseudo-masks: UniAP on its fine map, on cells or superpixels, at calibrated levels.

Used in training (:class:`~uniap_train.recipes.paper.PaperRecipe`) and to evaluate a trained
teacher's own masks (:meth:`uniap_train.predict.Predictor.teacher_levels`), so both see the same
masks.

* :func:`superpixel_features`: each superpixel's sum of the fine map's cells under its pixels
  (the sum, as :func:`uniap.features.regions.pool_grid` pools patches into superpixels).
* :func:`calibrated_levels`: thresholds from the graph's own similarities.  A fixed threshold
  means something else on every feature map: on the fine map (the patch grid upsampled twice)
  neighbours are much more alike than on the patch grid, a trained adapter shifts similarities
  as it learns, and the paper's 0.8 .. 0.4 merge a whole image into one or two regions.  With
  ``uniap.edge_fractions`` level k's threshold is the similarity that the fraction ``f_k`` of
  the graph's edges (pairs of touching nodes) exceed, per image: the finest level joins the
  most alike ``f_0`` of the neighbours, and each next level a larger share.
* :func:`teacher_hierarchy`: UniAP with semantic groups at those levels.

Examples
--------
>>> import numpy as np
>>> x = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
>>> edges = np.array([[0, 1], [1, 2], [2, 3]])
>>> levels = calibrated_levels(x, edges, (0.5, 0.9))
>>> h = teacher_hierarchy(x, edges, levels, min_size=1)
>>> [len(set(lv.labels.tolist())) for lv in h.levels]
[2, 1]
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["calibrated_levels", "edge_scores", "superpixel_features", "teacher_hierarchy", "cell_edges"]


def superpixel_features(fine: Any, pool: tuple, count: int) -> Any:
    """Per superpixel, the pixel-weighted sum of a map's cells: ``fine`` (cells, C) -> (N, C).

    ``pool`` is :func:`uniap_train.regions.fine_pooling`'s ``(region, cell, pixels)``.
    """
    import torch

    region, cell, weight = (torch.as_tensor(a, device=fine.device) for a in pool)
    out = fine.new_zeros((count, fine.shape[1]))
    return out.index_add_(0, region.long(), fine[cell.long()] * weight[:, None].to(fine.dtype))


def cell_edges(rows: int, cols: int) -> np.ndarray:
    """The 4-neighbour pairs of a ``rows`` x ``cols`` grid of cells (row-major ids): (E, 2)."""
    import uniap

    return np.asarray(uniap.grid_edges((rows, cols)))


TIE = 1e-5  # similarities closer than this count as equal (UniAP compares them in float32)


def calibrated_levels(x: np.ndarray, edges: np.ndarray, fractions: Sequence[float], *,
                      preset: str = "released") -> tuple[float, ...]:
    """Thresholds such that the fraction ``fractions[k]`` of the edges score higher.

    The score is the one UniAP's first pass gives the edge under ``preset``: the cosine
    similarity (``"released"``), or the paper's ``w_f cos + w_s vote`` (``"paper"``, with the
    vote ``1 - mean_c |P_a[c] - P_b[c]|`` of the nodes' affinity profiles over all nodes,
    :func:`edge_scores`).

    The share is rounded up to whole edges and to whole groups of tied similarities: at least
    ``ceil(fractions[k] E)`` edges exceed threshold k, and every edge that does is at least as
    alike as the ``ceil(fractions[k] E)``-th most alike one (up to float32 rounding).

    Parameters
    ----------
    x : ndarray (N, C)
        Node features.
    edges : ndarray (E, 2)
        Pairs of neighbouring nodes.
    fractions : increasing floats in (0, 1)
        Per level, the share of edges whose similarity exceeds its threshold.
    preset : {"released", "paper"}
        The UniAP rule the levels are for.

    Returns
    -------
    tuple of float
        Strictly decreasing thresholds in [-1, 1] (ties nudged apart by 1e-4); with no edge,
        ``1 - fraction`` per level.
    """
    x = np.asarray(x, np.float64)
    edges = np.asarray(edges, np.int64).reshape(-1, 2)
    fractions = np.asarray(fractions, np.float64)
    if edges.shape[0] == 0:
        sims = None
        levels = list(1.0 - fractions)
    else:
        sims = edge_scores(x, edges, preset=preset)
        # UniAP merges the edges scoring strictly more than a threshold, in float32: a threshold
        # on a similarity itself (a quantile of tied similarities) would merge none of the edges
        # tied there.  So level k's threshold lies midway between the ceil(f_k E)-th largest
        # similarity and the next smaller one (similarities within TIE count as equal).
        desc = np.sort(sims)[::-1]
        levels = []
        for f in fractions:
            k = min(max(int(np.ceil(f * desc.size - 1e-9)), 1), desc.size)
            top = desc[k - 1]
            lower = desc[desc < top - TIE]
            levels.append((top + lower[0]) / 2 if lower.size else top - TIE)
    out = []
    for t in levels:
        t = float(np.clip(t, -1.0 + 1e-3, 1.0))
        if out and t >= out[-1]:
            t = out[-1] - 1e-4
        out.append(max(t, -1.0))
    return tuple(out)


def edge_scores(x: np.ndarray, edges: np.ndarray, *, preset: str = "released") -> np.ndarray:
    """UniAP's first-pass score of each edge (float64, (E,)): the cosine of its two nodes'
    features, or with ``preset="paper"`` ``w_f cos + w_s vote``, the vote being one minus the
    mean absolute difference of the two nodes' affinity profiles ``F_a F^T`` (F: every node's
    L2-normalised feature; :mod:`uniap.core.options`' weights)."""
    from uniap.core.cosine import row_norms
    from uniap.core.options import resolve_options

    x = np.asarray(x, np.float64)
    edges = np.asarray(edges, np.int64).reshape(-1, 2)
    unit = x / row_norms(np, x)[:, None]
    cos = np.einsum("ec,ec->e", unit[edges[:, 0]], unit[edges[:, 1]])
    options = resolve_options(preset=preset)
    if options.vote_weight == 0.0:
        return cos
    vote = np.empty_like(cos)
    step = max(1, (1 << 22) // max(1, unit.shape[0]))  # rows of (edges, nodes) at a time
    for lo in range(0, edges.shape[0], step):
        e = edges[lo:lo + step]
        vote[lo:lo + step] = 1.0 - np.abs((unit[e[:, 0]] - unit[e[:, 1]]) @ unit.T).mean(1)
    return options.feature_weight * cos + options.vote_weight * vote


def teacher_hierarchy(x: np.ndarray, edges: np.ndarray, levels: Sequence[float], *, min_size: int = 1,
                      preset: str = "released") -> Any:
    """UniAP with semantic groups on a graph (:func:`uniap.segment_graph`)."""
    import uniap

    return uniap.segment_graph(np.ascontiguousarray(x, np.float32), edges, levels=tuple(levels), min_size=min_size,
                               preset=preset, semantic=True)
