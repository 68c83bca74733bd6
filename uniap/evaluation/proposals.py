"""Mask proposals from a hierarchy of label maps, for class-agnostic COCO AP / AR.

Every region of every level is a candidate. Regions that are the same mask at several levels
(a region that survives a level unchanged) are kept once. Candidates are ranked by a score,
because AR@k and AP only look at each image's k best-scored masks:

``contrast`` (default)
    ``stability * boundary contrast``: the image's gradient on the mask's boundary, relative
    to the image's mean gradient (the gradient magnitude of the CIELab image at sigma 1
    pixel, summed over channels; a mask's boundary pixels are its pixels with a 4-neighbour
    outside it, the image's border excepted).  An object is usually set off from its
    surroundings by an edge all round, a fragment of a uniform or textured area is not (the
    "edge density" and "superpixels straddling" cues of objectness measures, Alexe et al.,
    TPAMI 2012).  Needs the image.  On the COCO dev images it lifted uniap's AR@100 by about
    0.01 over ``stability`` (``docs/quality.md``).
``stability``
    ``persistence * sqrt(area / image area)``: persistent masks first, but a tiny fragment
    that never merges with anything (perfectly persistent, useless as an object) does not
    outrank a large region. Needs nothing but the label maps.
``persistence``
    Mean, over all L levels, of the mask's best IoU with a region of that level. A mask that
    persists unchanged over many levels, or that the other levels nearly reproduce, scores
    high; a mask that exists at one level only and is split or swallowed everywhere else
    scores low. For a nested hierarchy it is a soft count of the levels the region lives in
    (the lifetime of a region in an ultrametric contour map, or the stability of MSER). It
    needs no features, so every segmenter is ranked by the same rule.
``area``
    Pixels: the largest masks first (the whole image, then large parts).
``level``
    Coarser levels first, then larger masks within a level.
``random``
    A fixed pseudo-random order (a baseline for the others).

Masks smaller than ``min_area`` pixels are not proposed.  uniap's contour regions (the coarser
cuts of the watershed hierarchy its superpixels come from, ``contours=``) are a second nested
stack: their masks are proposed beside the levels', once each, ranked by the same rule.
"""

from __future__ import annotations

import numpy as np

from ..scores import best_region_ious, edge_strength  # one definition for the records' score and these rules

__all__ = ["SCORES", "best_ious", "boundary_contrast", "edge_strength", "proposals_from_levels", "rank_value"]

SCORES = ("contrast", "stability", "persistence", "area", "level", "random")
NEEDS_IMAGE = ("contrast",)  # rules that look at the image, not only at the label maps


def _compact(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels renumbered 0..K-1 (order of first value), and K."""
    values, inverse = np.unique(labels.ravel(), return_inverse=True)
    return inverse.reshape(labels.shape).astype(np.int64), len(values)


def best_ious(levels: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """For every region of every level, its best IoU with a region of each level.

    Parameters
    ----------
    levels : ndarray of shape (L, H, W)
        Label maps (any integer labels).

    Returns
    -------
    compact : list of L ndarrays (H, W)
        Each level's labels renumbered 0..K_l-1.
    ious : list of L ndarrays (K_l, L)
        ``ious[l][r, m]``: the best IoU of region r of level l with any region of level m
        (1 at m = l).

    Examples
    --------
    >>> import numpy as np
    >>> fine = np.array([[0, 0, 1, 1]]); coarse = np.zeros((1, 4), int)
    >>> _, ious = best_ious(np.stack([fine, coarse]))
    >>> ious[0].tolist(), ious[1].tolist()
    ([[1.0, 0.5], [1.0, 0.5]], [[0.5, 1.0]])
    """
    compact, sizes = [], []
    for lab in levels:
        c, k = _compact(np.asarray(lab))
        compact.append(c.ravel())
        sizes.append(k)
    ious = best_region_ious(compact, sizes)
    shapes = [np.asarray(lab).shape for lab in levels]
    return [c.reshape(s) for c, s in zip(compact, shapes)], ious



def boundary_contrast(labels: np.ndarray, strength: np.ndarray) -> np.ndarray:
    """Mean ``strength`` on each region's boundary pixels; 1 for a region without any.

    Parameters
    ----------
    labels : ndarray of shape (H, W), labels 0 .. K-1
    strength : ndarray of shape (H, W), e.g. :func:`edge_strength`

    Returns
    -------
    ndarray of shape (K,)

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.array([[0, 0, 1, 1]] * 3)
    >>> boundary_contrast(lab, np.array([[0.0, 2.0, 4.0, 0.0]] * 3)).tolist()
    [2.0, 4.0]
    """
    edge = np.zeros(labels.shape, bool)
    differ = labels[:, 1:] != labels[:, :-1]
    edge[:, 1:] |= differ
    edge[:, :-1] |= differ
    differ = labels[1:] != labels[:-1]
    edge[1:] |= differ
    edge[:-1] |= differ
    k = int(labels.max()) + 1
    total = np.bincount(labels[edge], strength[edge], minlength=k)
    count = np.bincount(labels[edge], minlength=k)
    return np.where(count > 0, total / np.maximum(count, 1), 1.0)


def rank_value(score: str, level: np.ndarray, area: np.ndarray, persistence: np.ndarray,
               num_levels: int, image_area: int, seed: int = 0,
               contrast: np.ndarray | None = None) -> np.ndarray:
    """The ranking value of masks under the rule ``score`` (larger ranks first)."""
    if score == "contrast":
        if contrast is None:
            raise ValueError("score 'contrast' needs the image")
        return persistence * np.sqrt(area / float(image_area)) * contrast
    if score == "stability":
        return persistence * np.sqrt(area / float(image_area))
    if score == "persistence":
        return persistence
    if score == "area":
        return area.astype(np.float64)
    if score == "level":
        # coarser level first; within a level, larger first (area < 2^31 keeps the order)
        return (level + area / 2.0**31) / num_levels
    if score == "random":
        return np.random.default_rng(seed).random(len(area))
    raise ValueError(f"unknown score {score!r}; choose one of {list(SCORES)}")


def _candidates(levels: np.ndarray, strength: np.ndarray | None, min_area: int) -> dict:
    """Every distinct mask of a nested stack of label maps with what ranking needs."""
    compact, ious = best_ious(levels)
    # A region identical to a region of an earlier level is that region again: keep the first.
    # Identical <=> IoU 1 with it (checked exactly through equal areas and the RLE).
    out: dict[str, list] = {k: [] for k in ("level", "area", "stab", "first", "contrast", "rles")}
    for lv, (lab, iou) in enumerate(zip(compact, ious)):
        area = np.bincount(lab.ravel(), minlength=iou.shape[0])
        first = np.unique(lab.ravel(), return_index=True)[1]  # first pixel of each region
        repeat = (iou[:, :lv] >= 1.0 - 1e-12).any(axis=1) if lv else np.zeros(len(area), bool)
        keep = np.flatnonzero(~repeat & (area >= min_area))
        out["level"].append(np.full(len(keep), lv))
        out["area"].append(area[keep])
        out["stab"].append(iou[keep].mean(axis=1))
        out["first"].append(lv * lab.size + first[keep])
        out["rles"] += label_rles(lab, keep)
        if strength is not None:
            out["contrast"].append(boundary_contrast(lab, strength)[keep])
    joined = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in out.items() if k != "rles"}
    joined["rles"] = out["rles"]
    joined["num_levels"] = len(compact)
    return joined


def proposals_from_levels(levels: np.ndarray, score: str = "contrast", min_area: int = 1,
                          seed: int = 0, image: np.ndarray | None = None,
                          contours: np.ndarray | None = None) -> list[dict]:
    """Deduplicated, scored masks of every level of a hierarchy (and of its contour regions).

    Parameters
    ----------
    levels : ndarray of shape (L, H, W)
        Label maps, finest first (any order works).
    score : {"contrast", "stability", "persistence", "area", "level", "random"}
        Ranking rule (module docstring).
    min_area : int
        Smallest mask (pixels) proposed.
    seed : int
        For ``score="random"``.
    image : ndarray of shape (H, W, 3), optional
        The image; needed by ``score="contrast"``.
    contours : ndarray of shape (K, H, W), optional
        A second nested stack, the contour regions of watershed superpixels
        (:meth:`uniap.features.RegionGraph.contour_maps`): their masks are proposed too,
        except those equal to a mask of ``levels``, and all are ranked together by the same
        rule (a contour mask's persistence is taken over the K contour maps, its ``level``
        indexes them).

    Returns
    -------
    list of dict
        ``segmentation`` (COCO RLE, ``counts`` str), ``score``, ``area``, ``level`` (the finest
        level the mask occurs at), ``persistence`` and ``kind`` (``"instance"``, or
        ``"contour"`` for the masks of ``contours``); in decreasing score order.

    Examples
    --------
    >>> import numpy as np
    >>> fine = np.array([[0, 0, 1, 1]] * 2); coarse = np.zeros((2, 4), int)
    >>> props = proposals_from_levels(np.stack([fine, fine, coarse]), "persistence")
    >>> [(p["level"], p["area"], round(p["score"], 3)) for p in props]
    [(0, 4, 0.833), (0, 4, 0.833), (2, 8, 0.667)]
    >>> cut = np.array([[0, 1, 1, 1]] * 2)
    >>> [p["kind"] for p in proposals_from_levels(fine[None], "area", contours=cut[None])]
    ['contour', 'instance', 'instance', 'contour']
    """
    levels = np.asarray(levels)
    if levels.ndim != 3:
        raise ValueError(f"levels must be (L, H, W), got shape {levels.shape}")
    if contours is not None:
        contours = np.asarray(contours)
        if contours.ndim != 3 or contours.shape[1:] != levels.shape[1:]:
            raise ValueError(f"contours must be (K, *{levels.shape[1:]}), got shape {contours.shape}")
    strength = None
    if score in NEEDS_IMAGE:
        if image is None:
            raise ValueError(f"score {score!r} needs the image")
        if np.asarray(image).shape[:2] != levels.shape[1:]:
            raise ValueError(f"image is {np.asarray(image).shape[:2]}, the label maps {levels.shape[1:]}")
        strength = edge_strength(image)
    image_area = levels.shape[1] * levels.shape[2]
    stacks = [("instance", levels)] + ([("contour", contours)] if contours is not None and len(contours) else [])
    columns: dict[str, list] = {k: [] for k in ("value", "first", "level", "area", "stab", "fresh")}
    kinds: list[str] = []
    rles: list[dict] = []
    seen: set = set()
    offset = 0  # pixel index of the stack's first map, after the earlier stacks'
    for kind, stack in stacks:
        c = _candidates(stack, strength, min_area)
        columns["fresh"].append(np.array([r["counts"] not in seen for r in c["rles"]], bool))
        seen.update(r["counts"] for r in c["rles"])
        columns["value"].append(rank_value(score, c["level"], c["area"], c["stab"], c["num_levels"], image_area,
                                           seed, c["contrast"] if strength is not None else None))
        columns["first"].append(c["first"] + offset)
        offset += stack.shape[0] * image_area
        for key in ("level", "area", "stab"):
            columns[key].append(c[key])
        kinds += [kind] * len(c["rles"])
        rles += c["rles"]
    value, first, level, area, stab, fresh = (np.concatenate(columns[k]) for k in
                                              ("value", "first", "level", "area", "stab", "fresh"))
    # ties: finer level first, then the mask's first pixel (row-major; the contour stack's
    # after the levels'), so that the order does not depend on how the maps number regions
    order = [j for j in np.lexsort((first, -value)).tolist() if fresh[j]]
    return [{"segmentation": rles[j], "score": float(value[j]), "area": int(area[j]), "level": int(level[j]),
             "persistence": float(stab[j]), "kind": kinds[j]} for j in order]


def label_rles(labels: np.ndarray, ids) -> list[dict]:
    """COCO RLEs (``counts`` str) of the masks ``labels == i`` for each ``i`` in ``ids``.

    All masks of a label map in one pass: pixels are grouped by label in column-major order
    and each group's runs become an uncompressed RLE, compressed by pycocotools.

    Examples
    --------
    >>> import numpy as np
    >>> from pycocotools import mask as mask_utils
    >>> lab = np.array([[0, 1, 1], [2, 1, 0]])
    >>> rles = label_rles(lab, [0, 1, 2])
    >>> [mask_utils.decode(dict(r, counts=r["counts"].encode())).tolist() for r in rles][1]
    [[0, 1, 1], [0, 1, 0]]
    """
    from pycocotools import mask as mask_utils

    height, width = labels.shape
    flat = np.asarray(labels).ravel(order="F")
    order = np.argsort(flat, kind="stable")
    grouped = flat[order]
    ids = np.asarray(ids, dtype=grouped.dtype)
    starts = np.searchsorted(grouped, ids, side="left")
    ends = np.searchsorted(grouped, ids, side="right")
    out = []
    for s, e in zip(starts.tolist(), ends.tolist()):
        idx = order[s:e]
        if idx.size == 0:
            counts = [height * width]
        else:
            breaks = np.flatnonzero(np.diff(idx) != 1)
            run_start = idx[np.concatenate(([0], breaks + 1))]
            run_end = idx[np.concatenate((breaks, [idx.size - 1]))] + 1
            gaps = run_start - np.concatenate(([0], run_end[:-1]))
            counts = np.empty(2 * run_start.size, np.int64)
            counts[0::2] = gaps
            counts[1::2] = run_end - run_start
            counts = counts.tolist()
            if run_end[-1] < height * width:
                counts.append(height * width - int(run_end[-1]))
        rle = mask_utils.frPyObjects({"counts": counts, "size": [height, width]}, height, width)
        out.append({"size": [height, width], "counts": rle["counts"].decode("ascii")})
    return out
