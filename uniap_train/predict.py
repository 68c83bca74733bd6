"""Using a trained paper-recipe model: :class:`Predictor` and the ``uniap-predict`` command.

``Predictor.from_checkpoint(path, device=...)`` rebuilds the backbone (a frozen one with the
shared words the run was trained with, or a fine-tuned ViT, both stored in the checkpoint), the
neck, pixel decoder and decoder (the EMA teacher's weights), and turns images into a
:class:`Prediction`:

* **instance masks** with scores: the [INS] queries ranked at the model's resolution by their
  learned score (the predicted IoU, SAM's ``predicted_iou``; ``score`` chooses other rules),
  the overlaps decayed by Matrix NMS (``nms="matrix"``) or removed by greedy mask NMS
  (``nms="hard"``), the best ``max_masks`` kept (:func:`rank_instances`); only those are
  brought to the image's pixels, snapped to its superpixels (``refine="superpixels"``: each
  superpixel takes its mean probability, :func:`~uniap_train.postprocess.snap_to_regions`) or
  thresholded per pixel (``refine="none"``) (:func:`instance_masks`);
* a **semantic map**: per pixel (or, with ``refine="superpixels"``, per superpixel: its mean
  probabilities), the [SEM] query of the largest probability;
* **nested levels** of label maps and the **SAM-style records** ``uniap-cli`` writes
  (:func:`uniap.records.hierarchy_records`): level 0 (``threshold`` 1.0) are the connected
  parts of the panoptic map (each pixel to its best-scoring instance as Mask2Former's panoptic
  inference assigns them, the rest to its semantic query); above them, with
  ``hierarchy="pooled"`` (default), UniAP's levels on the image's superpixels holding their
  mean [SEM] logits (:func:`pooled_levels`), or with ``hierarchy="semantic"`` the semantic
  map's connected regions (``threshold`` 0.5) and the semantic map itself (``threshold`` 0.0,
  a semantic query's parts anywhere in the image); semantic records are the semantic map's
  groups.  A record's ``predicted_iou`` is its query's learned score, its
  ``stability_score`` SAM's stability of the query's mask logits, and its ``score`` the
  ranking score of the part (area-weighted over the parts of a region).

The work is done by module functions (:func:`teacher_grids`, :func:`decode_masks`,
:func:`rank_instances`, :func:`instance_masks`, :func:`nested_levels`, :func:`pooled_levels`,
:func:`prediction_records`); the class holds
the model and options.  :class:`CheckpointSegmenter` is the predictor as a
:class:`uniap.pipeline.segmenter.Segmenter`: ``uniap-predict`` runs it through
:func:`uniap.pipeline.run` (same inputs, plan, resuming, engine and sinks as ``uniap-cli``), and
``uniap-eval --segmenter checkpoint`` benchmarks it.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from uniap.pipeline.segmenter import Encoded, Pooled, Segmentation, Segmenter

__all__ = ["CheckpointSegmenter", "Prediction", "Predictor", "build_parser", "main"]


@dataclass
class Prediction:
    """What the predictor says about one image (arrays on the host, at the image's resolution).

    Attributes
    ----------
    masks : ndarray (N, H, W), bool
        Instance masks, best score first.
    scores : ndarray (N,), float32
        Their ranking scores in [0, 1] (after non-maximum suppression).
    semantic : ndarray (H, W), int32
        [SEM] query of every pixel.
    levels : ndarray (3, H, W), int32
        Nested label maps (parts, regions, semantic groups).
    semantic_labels : ndarray (3, H, W), int32
        Semantic group of every pixel, per level.
    hierarchy : uniap.Hierarchy
        The levels as a hierarchy on the pixel grid.
    records : list of dict
        SAM-style records (:mod:`uniap.records`).
    timings : dict
        Seconds spent in each step of the prediction.
    predicted_iou : ndarray (N,), float32, optional
        The instance masks' learned scores (their queries' predicted IoU).
    stability : ndarray (N,), float32, optional
        Their stability scores (SAM's, of the queries' mask logits).
    """

    masks: np.ndarray
    scores: np.ndarray
    semantic: np.ndarray
    levels: np.ndarray
    semantic_labels: np.ndarray
    hierarchy: Any
    records: list[dict]
    timings: dict = field(default_factory=dict)
    predicted_iou: np.ndarray | None = None  # (N,) the masks' learned scores
    stability: np.ndarray | None = None  # (N,) their stability scores


# ---------------------------------------------------------------------------------- functions


def teacher_grids(images: Sequence[np.ndarray], extractor: Any, kind: str, max_side: int, size: int,
                  device) -> tuple[Any, list[tuple[int, int]]]:
    """Whole-image views of ``images`` as the teacher saw them in training: (B, T, T, C) on
    ``device`` (``kind="pixels"``: the uint8 views (B, T p, T p, 3) for a trainable backbone),
    and each image's working (resized) shape."""
    import torch

    from .data import load_resized, teacher_view_features, teacher_view_pixels

    shapes, grids = [], []
    for image in images:
        work = _downscale(np.asarray(image), max_side, load_resized)
        shapes.append(work.shape[:2])
        if kind in ("vit", "pixels"):
            grids.append(teacher_view_pixels(work, size))
            continue
        g = extractor(work)
        (hr, wr), (ho, wo) = g.resized_shape, g.original_shape
        p = g.patch_size
        feats, _ = teacher_view_features(np.ascontiguousarray(g.features, np.float32), (hr / ho / p, wr / wo / p),
                                         work.shape[:2], size, p)
        grids.append(feats)
    if kind == "pixels":
        return torch.from_numpy(np.stack(grids)).to(device), shapes
    if kind == "vit":
        return extractor.batch_features(torch.from_numpy(np.stack(grids))), shapes
    return torch.from_numpy(np.stack(grids)).to(device), shapes


def _downscale(image: np.ndarray, max_side: int, load_resized) -> np.ndarray:
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return np.ascontiguousarray(image)
    from PIL import Image

    s = max_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.ascontiguousarray(np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR, reducing_gap=None)))


def decode_masks(logits: Any, image_shape: tuple[int, int], work_shape: tuple[int, int]) -> Any:
    """Mask logits (Q, 2T, 2T) of a padded whole-image view, resampled at the image's pixel
    centres: (Q, H, W) (bilinear)."""
    import torch
    import torch.nn.functional as F

    height, width = image_shape
    side = float(max(work_shape))
    # pixel centre -> working image -> the teacher view's normalised coordinates
    u = (torch.arange(width, device=logits.device, dtype=torch.float32) + 0.5) / width * (work_shape[1] / side)
    v = (torch.arange(height, device=logits.device, dtype=torch.float32) + 0.5) / height * (work_shape[0] / side)
    grid = torch.stack(torch.meshgrid(u * 2 - 1, v * 2 - 1, indexing="xy"), dim=-1)[None]
    return F.grid_sample(logits[None].float(), grid, mode="bilinear", align_corners=False)[0]


NMS_KINDS = ("matrix", "hard", "none")
MASK_PIXELS = 1 << 22  # instance masks are decoded at most at this many pixels (then mapped back)
DECODE_PIXELS = 1 << 24  # mask probabilities held at a time (floats): a few queries of a large image


def working_shape(height: int, width: int, max_pixels: int) -> tuple[int, int]:
    """``(height, width)``, or the largest shape of the same aspect with at most ``max_pixels``."""
    if height * width <= max_pixels:
        return height, width
    scale = (max_pixels / (height * width)) ** 0.5
    return max(1, int(height * scale)), max(1, int(width * scale))
REFINES = ("superpixels", "none")
SCORES = ("learned", "mask", "contrast")
HIERARCHIES = ("pooled", "semantic")


@dataclass
class RankedQueries:
    """The [INS] queries an image keeps, best first (tensors on the model's device)."""

    queries: Any  # (K,) LongTensor: 0-based among the [INS] queries
    scores: Any  # (K,) ranking scores (after NMS)
    predicted_iou: Any  # (K,) the learned scores
    stability: Any  # (K,) SAM's stability scores


def rank_instances(logits: Any, mask_threshold: float = 0.5, *, score_logits: Any = None, nms: str = "matrix",
                   nms_threshold: float = 0.5, max_masks: int = 0, score: str = "learned", strength: Any = None,
                   score_threshold: float = 0.0) -> RankedQueries:
    """Rank [INS] masks at the model's own resolution: scores, stability, overlaps, the best ones.

    Everything here works on the mask logits as the model gives them (the image's part of the
    whole-image view, e.g. 64 x 48 cells): only the masks kept are brought to the image's
    pixels afterwards (:func:`instance_masks`), as SAM's mask generator ranks and suppresses
    low-resolution masks before it upsamples the survivors.

    Parameters
    ----------
    logits : tensor (N, h, w)
    mask_threshold : float
        Probability above which a cell is inside.
    score_logits : tensor (N,), optional
        The queries' learned score logits (predicted IoU); without them it counts as 1.
    nms : {"matrix", "hard", "none"}
        Matrix NMS (decays the scores of overlapping masks), greedy mask NMS at
        ``nms_threshold`` IoU, or none.
    max_masks : int
        Keep at most this many (0: all).
    score : {"learned", "mask", "contrast"}
        Rank by the learned score (the predicted IoU), by the mask score (Mask2Former's mean
        probability inside the mask), or by predicted IoU x stability x boundary contrast (the
        mean of ``strength`` on the mask's boundary,
        :func:`~uniap_train.postprocess.boundary_contrast`, as ``uniap``'s own proposals are
        ranked).
    strength : tensor (h, w), optional
        The image's edge strength at the logits' resolution; needed by ``score="contrast"``.
    score_threshold : float
        Masks scoring less after NMS are dropped.
    """
    import math

    import torch

    from .postprocess import boundary_contrast, mask_nms, matrix_nms, stability_score

    prob = logits.float().sigmoid()
    binary = prob > mask_threshold
    area = binary.flatten(1).sum(-1)
    learned = score_logits.float().sigmoid() if score_logits is not None else torch.ones(len(logits), device=logits.device)
    cut = math.log(mask_threshold / (1 - mask_threshold))  # the probability threshold in logits
    stability = stability_score(logits.float(), threshold=cut, offset=1.0)
    valid = torch.nonzero(area > 0).flatten()
    if score == "contrast":
        if strength is None:
            raise ValueError("score='contrast' needs the image's edge strength")
        ranked = learned[valid] * stability[valid] * boundary_contrast(binary[valid], strength)
    elif score == "learned":
        ranked = learned[valid]
    else:
        ranked = ((prob * binary).flatten(1).sum(-1) / area.clamp_min(1))[valid]
    if nms != "none" and valid.numel() > 1:
        if nms == "matrix":
            ranked = matrix_nms(binary[valid], ranked)
        else:
            kept = mask_nms(binary[valid], ranked, nms_threshold)
            valid, ranked = valid[kept], ranked[kept]
    keep = ranked >= score_threshold
    valid, ranked = valid[keep], ranked[keep]
    order = torch.argsort(ranked, descending=True, stable=True)
    if max_masks:
        order = order[:max_masks]
    chosen = valid[order]
    return RankedQueries(chosen, ranked[order], learned[chosen], stability[chosen])


def instance_masks(logits: Any, mask_threshold: float = 0.5, min_area: int = 1, *,
                   regions: Any = None) -> tuple[Any, Any, Any]:
    """Masks at the image's pixels from their logits (K, H, W): ``(masks, prob, keep)``.

    Parameters
    ----------
    logits : tensor (K, H, W)
    mask_threshold : float
        Probability above which a pixel (or, with ``regions``, a superpixel's mean) is inside.
    min_area : int
        Masks with fewer pixels are not kept.
    regions : tensor (H, W), optional
        Superpixels to snap the masks to (:func:`~uniap_train.postprocess.snap_to_regions`).

    Returns
    -------
    masks : bool tensor (K, H, W)
    prob : tensor (K, H, W)
    keep : bool tensor (K,)
        The masks of at least ``min_area`` pixels.
    """
    from .postprocess import snap_to_regions

    prob = logits.sigmoid()
    if regions is not None:
        binary, _ = snap_to_regions(prob, regions, mask_threshold)
    else:
        binary = prob > mask_threshold
    return binary, prob, binary.flatten(1).sum(-1) >= min_area


def _relabel_connected(labels: np.ndarray) -> np.ndarray:
    """Connected regions (4-connectivity) of equal labels, numbered 0.. in raster order."""
    from skimage.measure import label

    return (label(labels.astype(np.int64), background=-1, connectivity=1) - 1).astype(np.int32)


def _canonical(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0.. in the order of their first pixel (row-major)."""
    uniq, first = np.unique(labels.ravel(), return_index=True)
    rank = np.empty(uniq.size, np.int64)
    rank[np.argsort(first)] = np.arange(uniq.size)
    return rank[np.searchsorted(uniq, labels)].astype(np.int32)


def nested_levels(masks: np.ndarray, scores: np.ndarray, prob: np.ndarray | None, semantic: np.ndarray,
                  semantic_confidence: np.ndarray, overlap: float = 0.8, *, owner: np.ndarray | None = None,
                  spatial: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Nested label maps and, per level-0 part, a score and the query it comes from.

    Each pixel goes to the instance of largest ``score * prob`` that covers it; an instance
    left with less than ``overlap`` of its mask is dropped (Mask2Former's panoptic rule); the
    remaining pixels go to their semantic query.  The semantic map leads the hierarchy: level 2
    is the semantic map itself (each pixel's [SEM] query), level 1 its connected regions, and
    level 0 the connected parts of the panoptic map inside them (an instance cut where the
    semantic map changes), so level 0 nests in level 1 and level 1 in level 2.  (Grouping the
    panoptic parts by their majority query instead let one large instance mask decide the
    query of most of the image: on CamVid the levels then scored about half the semantic
    map's mIoU.)

    ``prob`` (N, H, W) gives each pixel's instance (``argmax(score * prob)``); a caller that
    has it already (the predictor computes it a few masks at a time) passes ``owner`` (H, W)
    instead and ``prob=None``.

    With ``spatial`` (L, H, W), nested label maps of connected regions, finest first (the
    predictor's ``hierarchy="pooled"``: :func:`pooled_levels`), those lead instead: level 0 are the
    connected parts of the panoptic map cut where the semantic map or ``spatial[0]`` changes,
    and levels 1 .. L are ``spatial`` (renumbered), so level 0 nests in level 1.

    Returns
    -------
    levels : ndarray (3, H, W), or (1 + L, H, W) with ``spatial``, int32
    groups : ndarray (K0,), int64
        Semantic query of each level-0 part.
    part_scores : ndarray (K0,), float64
        An instance part's score, a semantic part's mean ``semantic_confidence``.
    part_source : ndarray (K0,), int64
        The instance mask of a part (0 .. N-1), or N + its semantic query.
    """
    n_sem = int(semantic.max()) + 1 if semantic.size else 1
    panoptic = semantic.astype(np.int64) + masks.shape[0]  # stuff: after the instances
    instance_score = np.zeros(masks.shape[0] + n_sem)
    if masks.shape[0]:
        if owner is None:
            owner = (scores[:, None, None] * prob).argmax(0)
        covered = np.take_along_axis(masks, owner[None], 0)[0]
        assigned = np.bincount(owner[covered], minlength=masks.shape[0])
        original = masks.reshape(masks.shape[0], -1).sum(1)
        good = assigned >= overlap * np.maximum(original, 1)
        take = covered & good[owner]
        panoptic[take] = owner[take]
        instance_score[: masks.shape[0]] = scores
    semantic = semantic.astype(np.int64)
    cut = panoptic * n_sem + semantic
    if spatial is not None:  # parts also end where the finest spatial region does
        cut = cut * (int(spatial[0].max()) + 1) + spatial[0]
    level0 = _relabel_connected(cut)  # connected parts, each in one query
    k0 = int(level0.max()) + 1
    flat0 = level0.ravel()
    source = np.zeros(k0, np.int64)
    source[flat0] = panoptic.ravel()
    groups = np.zeros(k0, np.int64)
    groups[flat0] = semantic.ravel()
    is_instance = source < masks.shape[0]
    sizes = np.bincount(flat0, minlength=k0)
    confidence = np.bincount(flat0, weights=semantic_confidence.ravel(), minlength=k0) / np.maximum(sizes, 1)
    part_scores = np.where(is_instance, instance_score[np.minimum(source, len(instance_score) - 1)], confidence)
    if spatial is not None:
        return np.stack([level0, *(_canonical(level) for level in spatial)]), groups, part_scores, source
    level1 = _relabel_connected(semantic)
    level2 = _canonical(semantic)
    return np.stack([level0, level1, level2]), groups, part_scores, source


def pooled_levels(region_logits: np.ndarray, regions: np.ndarray, edges: np.ndarray, *,
                  edge_fractions: Sequence[float] | None = None, thresholds: Sequence[float] = (0.8, 0.6, 0.4),
                  preset: str = "released") -> tuple[np.ndarray, tuple[float, ...]]:
    """Nested levels of the image's regions, merged by UniAP on the model's [SEM] logits.

    Each region (superpixel) is a node whose features are the mean of its pixels' [SEM]
    query logits; UniAP (:func:`uniap.segment_graph`) contracts the region graph's most alike
    edges, as the teacher's UniAP did in training on the teacher's features.  With
    ``edge_fractions`` (the run's ``uniap.edge_fractions``) level k is calibrated on the image
    to contract the share ``edge_fractions[k]`` of the edges
    (:func:`uniap_train.teacher.calibrated_levels`); else the fixed ``thresholds``.  Unlike the
    semantic map's own groups, a level's regions are spatially connected: two parts of the
    image that the [SEM] queries confuse (alike in colour and texture) stay apart unless
    joined through their neighbours.

    Parameters
    ----------
    region_logits : ndarray (R, Q)
        Mean [SEM] logits of each region.
    regions : ndarray (H, W), integer
        Region of every pixel, 0 .. R-1.
    edges : ndarray (E, 2)
        Pairs of neighbouring regions (:func:`uniap.superpixels.adjacency`).

    Returns
    -------
    levels : ndarray (L, H, W), int32
        Nested label maps, finest first.
    thresholds : tuple of float
        The cosine thresholds of the levels.

    Examples
    --------
    >>> import numpy as np
    >>> regions = np.array([[0, 0, 1, 2],
    ...                     [0, 0, 1, 2]])
    >>> logits = np.array([[4.0, 0.0], [3.9, 0.2], [0.0, 4.0]])   # regions 0 and 1 alike
    >>> levels, _ = pooled_levels(logits, regions, np.array([[0, 1], [1, 2]]), thresholds=(0.9,))
    >>> levels[0]
    array([[0, 0, 0, 1],
           [0, 0, 0, 1]], dtype=int32)
    """
    from .teacher import calibrated_levels, teacher_hierarchy

    x = np.ascontiguousarray(region_logits, np.float32)
    edges = np.asarray(edges, np.int64).reshape(-1, 2)
    levels = calibrated_levels(x, edges, edge_fractions, preset=preset) if edge_fractions else tuple(thresholds)
    h = teacher_hierarchy(x, edges, levels, preset=preset)
    regions = np.asarray(regions)
    return np.stack([np.asarray(lv.labels)[regions] for lv in h.levels]).astype(np.int32), tuple(levels)


def prediction_records(levels: np.ndarray, groups: np.ndarray, part_scores: np.ndarray, min_area: int,
                       options: dict, part_iou: np.ndarray | None = None, part_stability: np.ndarray | None = None,
                       thresholds: Sequence[float] | None = None) -> tuple[Any, list[dict], np.ndarray]:
    """The levels as a :class:`uniap.Hierarchy` on the pixel grid, its SAM-style records and the
    per-level semantic label maps.

    ``levels`` (L, H, W) are nested, finest first (:func:`nested_levels`); ``thresholds`` name
    them (default 1.0 .. 0.0, evenly spaced).  A record's ``score`` is its part's score
    (area-weighted over the parts of a region or of a semantic group); ``predicted_iou`` and
    ``stability_score`` come from ``part_iou`` and ``part_stability`` (per level-0 part: its
    query's learned score and stability) the same way; without them they are the score and 1.
    """
    from uniap.hierarchy import Hierarchy, Level
    from uniap.records import hierarchy_records

    n = len(levels)
    counts = [int(lv.max()) + 1 for lv in levels]
    parents = []
    for k in range(n):
        p = np.full(counts[k], -1, np.int64)
        if k + 1 < n:
            p[levels[k].ravel()] = levels[k + 1].ravel()
        parents.append(p)
    if thresholds is None:
        thresholds = np.linspace(1.0, 0.0, n) if n > 1 else (1.0,)
    semantic = _canonical(groups[levels[0]])
    region_of = [np.arange(counts[0])]  # each level-0 part's region at every level
    for k in range(1, n):
        region_of.append(parents[k - 1][region_of[-1]])
    sizes0 = np.bincount(levels[0].ravel(), minlength=counts[0]).astype(np.int64)
    sizes = [np.bincount(region_of[k], weights=sizes0, minlength=counts[k]) for k in range(n)]
    built = [Level(float(thresholds[k]), levels[k], sizes[k].astype(np.int64), parents[k], semantic)
             for k in range(n)]
    h = Hierarchy(built, min_size=int(min_area), options=dict(options))
    records = hierarchy_records(h, pixel_labels=levels, unique=True)
    columns = {"score": part_scores,
               "predicted_iou": part_scores if part_iou is None else part_iou,
               "stability_score": np.ones(counts[0]) if part_stability is None else part_stability}
    # per level and per region: the area-weighted mean of its level-0 parts
    means = {name: [np.bincount(region_of[k], weights=values * sizes0, minlength=counts[k])
                    / np.maximum(sizes[k], 1) for k in range(n)] for name, values in columns.items()}
    group_area = np.bincount(semantic.ravel())
    group_means = {name: np.bincount(semantic.ravel(), weights=values[levels[0]].ravel()) / np.maximum(group_area, 1)
                   for name, values in columns.items()}
    for rec in records:
        x, y = (int(round(c)) for c in rec["point_coords"][0])
        for name in columns:
            if rec["kind"] == "semantic":
                value = group_means[name][semantic[y, x]]
            else:
                k = rec["level"]
                value = means[name][k][levels[k][y, x]]
            rec[name] = round(float(value), 6)
    return h, records, np.stack([semantic] * n)


# ---------------------------------------------------------------------------------- the class


class Predictor:
    """A trained paper-recipe model on a device, with its post-processing options.

    Build it with :meth:`from_checkpoint`.

    Parameters
    ----------
    model : uniap_train.decoder.PaperModel
        In eval mode on ``device``.
    cfg : TrainConfig
        The configuration of the run that trained it.
    extractor : feature extractor
        The frozen backbone (with its shared words).
    device : torch.device
    mask_threshold : float
        Probability above which a pixel (or a superpixel's mean) is in a query's mask.
    score_threshold : float
        Instance masks scoring less (after NMS) are dropped.
    min_area : int
        Smallest instance mask and smallest recorded part (pixels).
    refine : {"superpixels", "none"}
        Snap the instance masks to the image's watershed superpixels (pixel-accurate edges;
        :func:`uniap.superpixels.superpixels`) or threshold them per pixel.
    nms : {"matrix", "hard", "none"}
        How overlapping instance masks are suppressed (:func:`rank_instances`).
    nms_threshold : float
        IoU above which ``nms="hard"`` drops a mask.
    max_masks : int
        Most instance masks kept per image (0: all).
    score : {"learned", "mask", "contrast"}
        Rank instance masks by their learned score (predicted IoU, default), by Mask2Former's
        mask score, or by predicted IoU x stability x the image's contrast along the mask's
        boundary (:func:`rank_instances`).
    view_size : int
        Side of the whole-image view the model sees (0: ``crops.teacher_size``, as trained);
        larger views see smaller objects (images are then downscaled to at most this side).
    hierarchy : {"pooled", "semantic"}
        What the nested label maps above the parts are.  ``pooled`` (default): UniAP on the
        image's superpixels, each holding its mean [SEM] logits, at the run's calibrated levels
        (:func:`pooled_levels`: ``uniap.edge_fractions``, else ``uniap.levels``): spatially
        connected regions, as the teacher's masks were made.  ``semantic``: the semantic map
        leads (its connected regions, then the map itself), three levels in all.
    flip : bool
        Test-time mirroring for the pooled levels: the model also sees the image mirrored
        left-right, and each superpixel holds the [SEM] logits of both views side by side (a
        second forward pass; concatenated, not averaged, so the two views' queries need not
        mean the same group).  The instance masks come from the image alone.
    mask_pixels : int
        Instance masks, superpixels and levels are computed at most at this many pixels
        (default 2**22); a larger image is worked on at a nearest-neighbour downscaled copy
        and its label maps and masks are mapped back, so memory stays bounded (the model
        sees a small view anyway: this only coarsens the superpixel edges).
    name : str
        The predictor's name in output files (``from_checkpoint`` names the checkpoint,
        its step and digest).
    """

    def __init__(self, model, cfg, extractor, device, *, mask_threshold: float = 0.5, score_threshold: float = 0.0,
                 min_area: int = 16, refine: str = "superpixels", nms: str = "matrix", nms_threshold: float = 0.5,
                 max_masks: int = 100, score: str = "learned", view_size: int = 0, hierarchy: str = "pooled",
                 flip: bool = False, mask_pixels: int = MASK_PIXELS, name: str = "uniap_train") -> None:
        if not 0 < mask_threshold < 1:
            raise ValueError(f"mask_threshold must be in (0, 1), got {mask_threshold}")
        if not 0 <= score_threshold <= 1:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        if min_area < 1:
            raise ValueError(f"min_area must be >= 1, got {min_area}")
        for option, value, allowed in (("refine", refine, REFINES), ("nms", nms, NMS_KINDS), ("score", score, SCORES),
                                       ("hierarchy", hierarchy, HIERARCHIES)):
            if value not in allowed:
                raise ValueError(f"{option} must be one of {list(allowed)}, got {value!r}")
        if not 0 < nms_threshold <= 1:
            raise ValueError(f"nms_threshold must be in (0, 1], got {nms_threshold}")
        if max_masks < 0:
            raise ValueError(f"max_masks must be >= 0 (0: all), got {max_masks}")
        if mask_pixels < 1:
            raise ValueError(f"mask_pixels must be >= 1, got {mask_pixels}")
        if flip and hierarchy != "pooled":
            raise ValueError("flip mirrors the pooled levels' node features: it needs hierarchy='pooled', "
                             f"got hierarchy={hierarchy!r}")
        patch = int(getattr(extractor, "patch_size", None) or getattr(getattr(model, "backbone", None), "patch_size",
                                                                         None) or 1)
        if view_size < 0 or (view_size and view_size % patch):
            raise ValueError(f"view_size must be 0 (as trained) or a positive multiple of the patch size {patch}, "
                             f"got {view_size}")
        self.model = model
        self.cfg = cfg
        self.extractor = extractor
        self.device = device
        self.mask_threshold = float(mask_threshold)
        self.score_threshold = float(score_threshold)
        self.min_area = int(min_area)
        self.refine = refine
        self.nms = nms
        self.nms_threshold = float(nms_threshold)
        self.max_masks = int(max_masks)
        self.score = score
        self.view_size = int(view_size)
        self.hierarchy = hierarchy
        self.flip = bool(flip)
        self.mask_pixels = int(mask_pixels)
        self.name = name

    @classmethod
    def from_checkpoint(cls, path, device: str = "cpu", *, weights: str | None = None, **options: Any) -> "Predictor":
        """A predictor from a ``recipe: paper`` checkpoint (the EMA teacher's weights).

        Parameters
        ----------
        path : path-like
            ``checkpoint_last.pt`` (or a kept ``checkpoint_<step>.pt``).
        device : str
            ``cpu``, ``cuda``, ``cuda:N`` (``auto``: CUDA when available).
        weights : str, optional
            The ViT weights file when it moved since training (``backbone.kind: vit``).
        **options
            ``mask_threshold``, ``score_threshold``, ``min_area``, ``refine``, ``nms``,
            ``nms_threshold``, ``max_masks``, ``score`` (see the class).

        Raises
        ------
        uniap_train.checkpoint.CheckpointError
            An unreadable file, a checkpoint of another recipe, or weights of other shapes
            than its configuration (one line naming the file).
        """
        import torch

        from .backbone import build_extractor, vocabulary_from_state
        from .checkpoint import CheckpointError, checkpoint_config, read_checkpoint
        from .config import ConfigError
        from .recipes import RECIPES

        ckpt = read_checkpoint(path)
        recipe = RECIPES.get(ckpt["recipe"])
        if recipe is None or not recipe.serves_predictor:  # a recipe that gives masks declares it
            serving = " or ".join(repr(name) for name, r in RECIPES.items() if r.serves_predictor)
            raise CheckpointError(f"{path}: a checkpoint of recipe {ckpt['recipe']!r}; the predictor needs "
                                  f"recipe {serving} (a mask decoder)")
        try:
            cfg = checkpoint_config(ckpt)  # also one written with the old epoch-counted schedule keys
        except ConfigError as err:
            raise CheckpointError(f"{path}: its configuration does not load here ({err})") from None
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for but CUDA is not available")
        b = cfg.backbone
        in_dim = int(ckpt.get("in_dim") or _infer_in_dim(ckpt["teacher"]))
        vit = None
        if b.trainable:  # the fine-tuned ViT is in the checkpoint: no weights file is needed
            from .backbone import TrainableVit

            extractor, vit = None, TrainableVit.from_config(b)
        else:
            extractor = build_extractor(b.kind, b.model, weights or b.weights, b.options,
                                        str(dev) if b.kind == "vit" else "cpu")
            vocabulary = vocabulary_from_state(ckpt.get("vocabulary"))
            if vocabulary is not None:
                from dataclasses import replace

                extractor = replace(extractor, vocabulary=vocabulary)
        model = recipe.predictor_model(in_dim, cfg, vit)
        try:
            model.load_state_dict(ckpt["teacher"])
        except RuntimeError as err:
            first = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line
                          or "Missing key" in line or "Unexpected key" in line), str(err).splitlines()[0])
            raise CheckpointError(f"{path}: the weights do not fit the model its configuration describes "
                                  f"({first})") from None
        model = model.to(dev).eval()
        digest = hashlib.sha1(f"{Path(path).resolve()}:{ckpt['step']}:{ckpt.get('git')}".encode()).hexdigest()[:12]
        return cls(model, cfg, extractor, dev, name=f"uniap_train:paper:{Path(path).name}@{ckpt['step']}:{digest}",
                   **options)

    def options(self) -> dict:
        """What decides the outputs (recorded in output files)."""
        return {"predictor": self.name, "mask_threshold": self.mask_threshold,
                "score_threshold": self.score_threshold, "min_area": self.min_area, "refine": self.refine,
                "nms": self.nms, "nms_threshold": self.nms_threshold, "max_masks": self.max_masks,
                "score": self.score, "view_size": self.view_size, "hierarchy": self.hierarchy,
                "flip": self.flip, "mask_pixels": self.mask_pixels}

    def __call__(self, image: np.ndarray) -> Prediction:
        """The prediction for one (H, W, 3) uint8 image."""
        return self.predict([image])[0]

    def predict(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Predictions for several images: one batch through the model on the device."""
        import torch

        if len(images) == 0:
            return []
        for image in images:
            if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.size):
                raise ValueError(f"images must be (H, W, 3) arrays, got {getattr(image, 'shape', type(image))}")
        t0 = time.perf_counter()
        with torch.no_grad():
            grids, shapes, pixels = self._grids(images, *self._view())
            mirrored = None
            if self.flip:
                grids_m, _, pixels_m = self._grids([np.ascontiguousarray(image[:, ::-1]) for image in images],
                                                   *self._view())
            t1 = time.perf_counter()
            out = self.model(grids, pixels)
            if self.flip:
                mirrored = self.model(grids_m, pixels_m)["masks"][:, :self.model.num_semantic]
            results = [self._one(image, out["masks"][i], out["scores"][i], shapes[i], t1 - t0, len(images),
                                 None if mirrored is None else mirrored[i])
                       for i, image in enumerate(images)]
        return results

    def teacher_levels(self, image: np.ndarray) -> np.ndarray:
        """UniAP on the model's own fine map of ``image``, as its teacher ran it in training.

        Returns
        -------
        ndarray (2 L, H, W), int32
            The L levels' clusters, then their semantic groups, at the image's resolution.
        """
        import torch

        from uniap.superpixels import adjacency

        from .regions import fine_pooling, image_regions
        from .teacher import calibrated_levels, cell_edges, superpixel_features, teacher_hierarchy

        u = self.cfg.uniap
        max_side, size = self._view()
        with torch.no_grad():
            grids, shapes, pixels = self._grids([image], max_side, size)
            fine, _ = self.model.teacher_maps(grids, pixels)
        fine = fine[0].float().cpu()
        cells = fine.shape[0]
        work = shapes[0]
        side = max(work)
        height, width = image.shape[:2]
        # every image pixel -> its pixel in the working image -> its node
        wy = np.minimum((np.arange(height) + 0.5) * work[0] / height, work[0] - 1).astype(np.int64)
        wx = np.minimum((np.arange(width) + 0.5) * work[1] / width, work[1] - 1).astype(np.int64)
        if u.nodes == "superpixels":
            labels = image_regions(_downscale(np.asarray(image), max_side, None),
                                   max(1, round(u.superpixel_size * (size / self.cfg.crops.teacher_size) ** 2))).labels
            x = superpixel_features(fine.reshape(-1, fine.shape[-1]), fine_pooling(labels, cells),
                                    int(labels.max()) + 1).numpy()
            edges = adjacency(labels)
            node = labels[wy][:, wx]
        else:
            rows = min(cells, int(np.ceil(work[0] * cells / side - 0.5)))
            cols = min(cells, int(np.ceil(work[1] * cells / side - 0.5)))
            x = fine[:rows, :cols].reshape(rows * cols, -1).numpy()
            edges = cell_edges(rows, cols)
            ry = np.minimum((2 * wy + 1) * cells // (2 * side), rows - 1)  # the cell holding the pixel's centre
            rx = np.minimum((2 * wx + 1) * cells // (2 * side), cols - 1)
            node = ry[:, None] * cols + rx[None, :]
        levels = calibrated_levels(x, edges, u.edge_fractions, preset=u.preset) if u.edge_fractions else u.levels
        h = teacher_hierarchy(x, edges, levels, min_size=u.min_size, preset=u.preset)
        maps = [np.asarray(lv.labels).reshape(-1)[node] for lv in h.levels]
        maps += [np.asarray(lv.semantic_labels).reshape(-1)[node] for lv in h.levels]
        return np.stack(maps).astype(np.int32)

    def _view(self) -> tuple[int, int]:
        """The working image's longer side and the model's whole-image view side at inference."""
        cfg = self.cfg
        size = self.view_size or cfg.crops.teacher_size
        return max(cfg.data.max_side, size), size

    def _grids(self, images: Sequence[np.ndarray], max_side: int, size: int) -> tuple[Any, list, Any]:
        """The model's inputs for whole-image views: grids, working shapes, pixels (or None)."""
        kind = "pixels" if self.model.backbone is not None else self.cfg.backbone.kind
        grids, shapes = teacher_grids(images, self.extractor, kind, max_side, size, self.device)
        pixels = None
        if getattr(self.model, "needs_pixels", False):
            pixels = teacher_grids(images, None, "pixels", max_side, size, self.device)[0]
        grids = grids.to(self.device) if kind == "pixels" else grids.to(self.device).float()
        return grids, shapes, pixels

    def _one(self, image: np.ndarray, logits_view: Any, score_logits: Any, work_shape: tuple[int, int],
             features_seconds: float, batch: int, mirrored: Any = None) -> Prediction:
        """One image's prediction from its view's mask and score logits (``mirrored``: the
        [SEM] logits of the mirrored image's view, for ``flip``)."""
        import torch
        import torch.nn.functional as F

        from uniap.hierarchy import nearest_index

        from .data import teacher_cells
        from .postprocess import stability_score

        start = time.perf_counter()
        n_sem = self.model.num_semantic
        rows, cols = teacher_cells(work_shape[0], work_shape[1], logits_view.shape[-1])
        low = logits_view[:, :rows, :cols].float()  # the image's part of the view, as the model sees it
        height, width = image.shape[:2]
        shape = working_shape(height, width, self.mask_pixels)
        small = image if shape == (height, width) else image[nearest_index(shape[0], height)][:, nearest_index(
            shape[1], width)]
        strength = None
        if self.score == "contrast":
            from uniap.evaluation.proposals import edge_strength

            full = torch.from_numpy(edge_strength(small)).float().to(low.device)
            strength = F.adaptive_avg_pool2d(full[None, None], (rows, cols))[0, 0]
        ranked = rank_instances(low[n_sem:], self.mask_threshold, score_logits=score_logits[n_sem:], nms=self.nms,
                                nms_threshold=self.nms_threshold, max_masks=self.max_masks, score=self.score,
                                strength=strength, score_threshold=self.score_threshold)
        sem_prob = decode_masks(logits_view[:n_sem], shape, work_shape)  # logits, then probabilities in place
        regions = spatial = thresholds = None
        if self.refine == "superpixels" or self.hierarchy == "pooled":
            from uniap.superpixels import superpixels

            regions = torch.from_numpy(superpixels(small).astype(np.int64)).to(sem_prob.device)
        if self.hierarchy == "pooled":
            pooled = sem_prob
            if mirrored is not None:  # the mirror's logits, mirrored back onto the image's pixels
                pooled = torch.cat([sem_prob, decode_masks(mirrored, shape, work_shape).flip(-1)])
            spatial, thresholds = self._pooled(pooled, regions)
            del pooled
        sem_prob.sub_(sem_prob.amax(0, keepdim=True)).exp_()
        sem_prob.div_(sem_prob.sum(0, keepdim=True))  # softmax over the [SEM] queries, without a copy
        if self.refine == "superpixels":
            from .postprocess import region_means

            sem_prob = region_means(sem_prob, regions)[:, regions]  # each superpixel: its mean query probabilities
        else:
            regions = None  # the instance masks stay per pixel
        semantic = sem_prob.argmax(0)
        confidence = sem_prob.amax(0)
        del sem_prob
        masks, keep, owner = self._instances(logits_view, ranked, n_sem, shape, work_shape, regions)
        cut = float(np.log(self.mask_threshold / (1 - self.mask_threshold)))
        sem_iou = score_logits[:n_sem].float().sigmoid()
        sem_stability = stability_score(low[:n_sem], threshold=cut, offset=1.0)
        host = [t.cpu().numpy() for t in (masks[keep], ranked.scores[keep], owner, semantic, confidence,
                                          ranked.predicted_iou[keep], ranked.stability[keep], sem_iou,
                                          sem_stability)]  # the one host exit
        masks, scores, owner, semantic, confidence, iou, stability, sem_iou, sem_stability = host
        levels, groups, part_scores, source = nested_levels(masks, scores, None, semantic.astype(np.int64), confidence,
                                                            owner=owner, spatial=spatial)
        if shape != (height, width):  # back to the image's pixels (nearest neighbour)
            ys, xs = nearest_index(height, shape[0]), nearest_index(width, shape[1])
            levels, semantic, masks = levels[:, ys][:, :, xs], semantic[ys][:, xs], masks[:, ys][:, :, xs]
        query_iou = np.concatenate([iou, sem_iou]).astype(np.float64)
        query_stability = np.concatenate([stability, sem_stability]).astype(np.float64)
        if thresholds is not None:
            thresholds = (1.0, *thresholds)  # the parts, then UniAP's levels
        h, records, sem_labels = prediction_records(levels, groups, part_scores, self.min_area, self.options(),
                                                    query_iou[source], query_stability[source], thresholds)
        timings = {"features": features_seconds / batch, "records": time.perf_counter() - start}
        return Prediction(masks, scores.astype(np.float32), semantic.astype(np.int32), levels, sem_labels, h,
                          records, timings, iou.astype(np.float32), stability.astype(np.float32))

    def _pooled(self, sem_logits: Any, regions: Any) -> tuple[np.ndarray, tuple[float, ...]]:
        """:func:`pooled_levels` of the image's superpixels from the [SEM] logits at their pixels."""
        from uniap.superpixels import adjacency

        from .postprocess import region_means

        region_logits = region_means(sem_logits, regions)  # each superpixel: its mean logits
        labels = regions.cpu().numpy()
        u = self.cfg.uniap
        return pooled_levels(region_logits.T.cpu().numpy(), labels, adjacency(labels),
                             edge_fractions=u.edge_fractions, thresholds=u.levels, preset=u.preset)

    def level_names(self) -> list[str]:
        """Names of the label maps' levels, finest first (as ``uniap-eval`` reports them)."""
        if self.hierarchy == "semantic":
            return ["parts", "regions", "semantic"]
        u = self.cfg.uniap
        # calibrated levels are named by the share of edges contracted (thresholds vary per image)
        return ["parts"] + ([f"f={f:g}" for f in u.edge_fractions] if u.edge_fractions
                            else [f"t={t:g}" for t in u.levels])

    def _instances(self, logits_view: Any, ranked: RankedQueries, n_sem: int, shape: tuple[int, int],
                   work_shape: tuple[int, int], regions: Any) -> tuple[Any, Any, Any]:
        """The kept instance masks at ``shape``, decoded a few queries at a time.

        Returns ``(masks (K, h, w) bool, keep (K,) bool: at least min_area, owner (h, w))``:
        ``owner`` is the panoptic owner of each pixel among the kept masks (largest score x
        probability, :func:`nested_levels`), so no (K, h, w) array of floats is ever held.
        """
        import torch

        queries = ranked.queries + n_sem
        k = int(queries.numel())
        device = logits_view.device
        masks = torch.zeros((k, *shape), dtype=torch.bool, device=device)
        keep = torch.zeros(k, dtype=torch.bool, device=device)
        best = torch.full(shape, -1.0, device=device)
        owner = torch.zeros(shape, dtype=torch.int64, device=device)
        chunk = max(1, DECODE_PIXELS // max(1, shape[0] * shape[1]))
        for s in range(0, k, chunk):
            e = min(k, s + chunk)
            logits = decode_masks(logits_view[queries[s:e]], shape, work_shape)
            masks[s:e], prob, keep[s:e] = instance_masks(logits, self.mask_threshold, self.min_area, regions=regions)
            weighted = ranked.scores[s:e, None, None].float() * prob
            weighted[~keep[s:e]] = -1.0  # a dropped mask owns nothing
            value, index = weighted.max(0)
            better = value > best  # strictly: the first mask of the largest value wins, as argmax
            best = torch.where(better, value, best)
            owner = torch.where(better, index + s, owner)
        kept_index = torch.cumsum(keep.long(), 0) - 1  # owner among all masks -> among the kept ones
        return masks, keep, kept_index[owner].clamp_min(0) if k else owner


def _infer_in_dim(state: dict) -> int:
    return int(state["neck.adapter.0.weight"].shape[1])


# ----------------------------------------------------------- the segmenter (uniap-predict, uniap-eval)


class CheckpointSegmenter(Segmenter):
    """A trained model as a :class:`uniap.pipeline.segmenter.Segmenter`: ``uniap-predict``'s
    (through :func:`uniap.pipeline.run`, as ``uniap-cli`` runs UniAP) and ``uniap-eval
    --segmenter checkpoint``'s, one class.

    The label maps are the predictor's nested levels (the parts, then its ``hierarchy``:
    :class:`Predictor`, named by :meth:`Predictor.level_names`); the records are its own (:attr:`Prediction.records`); its batched
    step is one batch through the model (:meth:`Predictor.predict`).

    Parameters
    ----------
    checkpoint : str, optional
        The checkpoint file (a recipe that serves the predictor).
    device : str
        Where the model runs (``auto``: CUDA when available).
    score : str
        ``uniap-eval``'s ranking of proposals: ``record`` (default), the instance masks by their
        scores; or a rule of :mod:`uniap.evaluation.proposals` on the levels.
    min_area : int
        Smallest proposal (pixels).
    predictor : Predictor, optional
        One built already (``uniap-predict``), instead of ``checkpoint``.
    **predictor_options
        ``refine``, ``nms``, ``nms_threshold``, ``max_masks``, ``ranking`` (the predictor's
        ``score``), ``hierarchy``, ``mask_threshold``, ``score_threshold``: see :class:`Predictor`.
    """

    name = "checkpoint"
    record_scores = True

    def __init__(self, checkpoint: str | None = None, *, device: str = "auto", score: str = "record",
                 min_area: int = 1, predictor: "Predictor | None" = None, **predictor_options: Any) -> None:
        super().__init__(score, min_area)
        if checkpoint is None and predictor is None:
            raise ValueError(f"--segmenter {self.name} needs --checkpoint FILE (a uniap-train checkpoint)")
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.device = device
        self.predictor_options = {k: v for k, v in predictor_options.items() if v is not None}
        if predictor is None:
            options = dict(self.predictor_options)
            if "ranking" in options:
                options["score"] = options.pop("ranking")
            predictor = Predictor.from_checkpoint(checkpoint, device=device, **options)
        self.predictor = predictor

    def params(self) -> dict[str, Any]:
        """The constructor's arguments (``build_segmenter("checkpoint", **params)`` rebuilds it)."""
        return {"checkpoint": self.checkpoint, "device": self.device, **self.predictor_options, **super().params()}

    @property
    def on_device(self) -> bool:
        return self.predictor.device.type != "cpu"

    def level_names(self) -> list[str]:
        return self.predictor.level_names()

    def label_maps(self, image: np.ndarray) -> np.ndarray:
        return self.predictor(image).levels

    def segment(self, image, *, key="", shape=None, proposals=False) -> Segmentation:
        from uniap.evaluation.proposals import proposals_from_levels
        from uniap.records import encode_rle

        t0 = time.perf_counter()
        pred = self.predictor(image)
        t1 = time.perf_counter()
        out = Segmentation(pred.levels, None, {"segment": t1 - t0})
        if proposals:
            if self.score == "record":
                keep = pred.masks.reshape(len(pred.masks), -1).sum(1) >= self.min_area
                rles = encode_rle(pred.masks[keep])
                areas = pred.masks[keep].reshape(int(keep.sum()), -1).sum(1)
                out.proposals = [{"segmentation": r, "score": float(s), "area": int(a), "level": 0}
                                 for r, s, a in zip(rles, pred.scores[keep], areas)]
            else:
                out.proposals = proposals_from_levels(pred.levels, self.score, self.min_area, image=image)
            out.timings["proposals"] = time.perf_counter() - t1
        return out

    # -- the pipeline's steps -------------------------------------------------------------------
    def segment_batch(self, images) -> list[Pooled]:
        """One batch through the model (the whole prediction: its records are made here)."""
        images = list(images)
        if not images:
            return []
        start = time.perf_counter()
        predictions = self.predictor.predict(images)
        share = (time.perf_counter() - start) / len(images)
        return [Pooled(p.hierarchy, p, {"features": share, "pooling": 0.0}) for p in predictions]

    def encode(self, pooled: Pooled, image: np.ndarray | None = None) -> Encoded:  # noqa: ARG002 - scored already
        p = pooled.nodes
        return Encoded(p.records, p.levels, p.semantic_labels)

    def provenance(self, pooled: Pooled) -> dict:
        from uniap._version import __version__

        h = pooled.hierarchy
        return {"version": __version__, "thresholds": list(h.thresholds), "options": h.options,
                "grid": [int(s) for s in pooled.nodes.levels.shape[1:]], "patch_size": 1,
                "features": self.predictor.name, "refine": {"method": "none"}}


class PredictEngine:
    """Deprecated: ``uniap.pipeline.run(..., segmenter=CheckpointSegmenter(predictor=...))``
    runs a predictor through any engine."""

    def __init__(self, predictor: Predictor, batch_size: int = 4) -> None:
        warnings.warn("uniap_train.predict.PredictEngine is deprecated; pass "
                      "segmenter=CheckpointSegmenter(predictor=predictor) to uniap.pipeline.run",
                      DeprecationWarning, stacklevel=2)
        self.predictor = predictor
        self.batch_size = int(batch_size)

    def run(self, jobs, stages, collect: bool = False):
        from uniap.pipeline.engine import LocalEngine
        from uniap.pipeline.stages import Stages

        segmenter = CheckpointSegmenter(predictor=self.predictor)
        return LocalEngine(1, self.batch_size).run(jobs, Stages(stages.settings, segmenter=segmenter), collect)


def PredictStages(predictor: Predictor, stages: Any) -> Any:  # noqa: N802 - the deprecated class's name
    """Deprecated: the pipeline's stages with the predictor as their segmenter."""
    from uniap.pipeline.stages import Stages

    warnings.warn("uniap_train.predict.PredictStages is deprecated; use "
                  "Stages(settings, segmenter=CheckpointSegmenter(predictor=predictor))", DeprecationWarning,
                  stacklevel=2)
    return Stages(stages.settings, segmenter=CheckpointSegmenter(predictor=predictor))


def build_parser() -> argparse.ArgumentParser:
    from uniap.cli import add_input_output_arguments, add_version

    parser = argparse.ArgumentParser(
        prog="uniap-predict",
        description="Masks from a trained S2-UniSeg model (uniap-train recipe: paper): instance masks, "
        "semantic groups and their nested levels, written as uniap-cli writes them.",
        epilog="Example: uniap-predict runs/paper/checkpoint_last.pt photos/ --out masks/ --viz viz/",
    )
    add_version(parser)
    parser.add_argument("checkpoint", help="a uniap-train checkpoint of recipe paper (checkpoint_last.pt)")
    io = parser.add_argument_group("input and output (as uniap-cli)")
    add_input_output_arguments(io, batch_help="images per batch through the model (default 4)")
    model = parser.add_argument_group("model")
    model.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: CUDA when available)")
    model.add_argument("--weights", metavar="FILE", help="the ViT weights file, when it moved since training")
    model.add_argument("--mask-threshold", type=float, metavar="P",
                       help="probability above which a pixel is in a mask (default 0.5)")
    model.add_argument("--score-threshold", type=float, metavar="S",
                       help="drop instance masks scoring less (default 0)")
    model.add_argument("--min-area", type=_positive_int, metavar="PIXELS",
                       help="smallest instance mask and recorded part (default 16)")
    add_predictor_arguments(model)
    return parser


PREDICTOR_FLAGS = ("mask_threshold", "score_threshold", "min_area", "refine", "nms", "nms_threshold", "max_masks",
                   "score", "hierarchy")


def add_predictor_arguments(group: Any) -> None:
    """The post-processing flags of :class:`Predictor` that ``uniap-predict`` and ``uniap-eval`` share."""
    group.add_argument("--refine", choices=REFINES,
                       help="superpixels: snap instance masks to the image's superpixels (default); none: per pixel")
    group.add_argument("--nms", choices=NMS_KINDS,
                       help="overlapping instance masks: matrix (decay their scores, default), hard (drop them "
                       "above --nms-threshold IoU) or none")
    group.add_argument("--nms-threshold", type=float, metavar="IOU", help="--nms hard: IoU above which a mask is "
                       "dropped (default 0.5)")
    group.add_argument("--max-masks", type=_nonnegative_int, metavar="N",
                       help="most instance masks kept per image (default 100; 0: all)")
    group.add_argument("--ranking", dest="score", choices=SCORES,
                       help="rank instance masks by learned (their predicted IoU, default), mask (Mask2Former's "
                       "mask score) or contrast (predicted IoU x stability x the image's contrast along the "
                       "mask's boundary)")
    group.add_argument("--hierarchy", choices=HIERARCHIES,
                       help="the nested label maps above the parts: pooled (UniAP on the superpixels' [SEM] "
                       "logits at the run's levels, default) or semantic (the semantic map's connected regions, "
                       "then the map)")


def _nonnegative_int(text: str) -> int:
    from uniap.cli import nonnegative_int

    return nonnegative_int(text)


def _positive_int(text: str) -> int:
    from uniap.cli import positive_int

    return positive_int(text)


def run(args: argparse.Namespace) -> int:
    from uniap.cli import (
        UsageError,
        check_polygons,
        check_viz_style,
        read_image_ids,
        resolve_shard,
    )
    from uniap.pipeline.engine import LocalEngine
    from uniap.pipeline.plan import PlanError
    from uniap.pipeline.runner import run as run_pipeline
    from uniap.pipeline.sources import InputError

    from .config import ConfigError

    if not args.inputs and not args.file_list:
        raise UsageError("give at least one image, folder, glob, tar shard or --file-list")
    device = args.device
    if device == "auto" and args.shard == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"  # so that LOCAL_RANK can pick the GPU
    shard, device = resolve_shard(args.shard, device)
    check_polygons(args)  # a usage error before the checkpoint is loaded
    options = {k: getattr(args, k) for k in PREDICTOR_FLAGS if getattr(args, k, None) is not None}
    try:
        predictor = Predictor.from_checkpoint(args.checkpoint, device=device, weights=args.weights, **options)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        raise UsageError(" ".join(str(err).split())) from None
    image_ids = read_image_ids(args.image_ids)
    check_viz_style(args)
    try:
        summary = run_pipeline(
            args.inputs, args.out, file_lists=args.file_list or (), format=args.format, viz=args.viz,
            overwrite=args.overwrite, shard=shard, engine=LocalEngine(1, args.batch_size),
            segmenter=CheckpointSegmenter(predictor=predictor), image_ids=image_ids,
            features=predictor.name, extractor_options=predictor.options(),  # the outputs' signature
            refine="none", progress=not args.quiet, max_pixels=args.max_pixels,
            viz_style=args.viz_style or "levels", polygons=args.polygons,
        )
    except (InputError, PlanError) as err:
        raise UsageError(str(err)) from None
    for report in summary.failures:
        print(f"uniap-predict: {report.source}: {report.error}", file=sys.stderr)
    if summary.failures_error:  # the per-image errors above are then the only list
        print(f"uniap-predict: error: {summary.failures_error}", file=sys.stderr)
    if not args.quiet:
        total = summary.written + summary.skipped + len(summary.failures)
        print(f"uniap-predict: {total} image(s): {summary.written} written, {summary.skipped} skipped, "
              f"{len(summary.failures)} failed", file=sys.stderr)
    return 1 if summary.failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    from uniap.cli import parse_args, run_command

    parser = build_parser()
    return run_command(parser, run, parse_args(parser, argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
