"""Post-processing of predicted masks: IoU, Matrix NMS, greedy NMS, stability and region snapping.

Plain functions on torch tensors.  Everything stays on the input's device: the only host
synchronisations are the ones a result's size depends on (the kept indices of
:func:`mask_nms`, the region count of :func:`snap_to_regions`) and the label check of
:func:`snap_to_regions`.

* :func:`mask_iou` -- pairwise IoU of two stacks of binary masks, by matrix products.
* :func:`matrix_nms` -- SOLOv2's Matrix NMS [1]_: every score decayed by its overlaps with
  the higher-scored masks, in one pass of matrix operations.
* :func:`mask_nms` -- greedy hard NMS on one precomputed IoU matrix.
* :func:`stability_score` -- SAM's stability score [2]_ of mask logits.
* :func:`boundary_contrast` -- the mean edge strength on each mask's boundary.
* :func:`snap_to_regions` -- pixel-accurate masks from coarse probabilities: each superpixel
  (:func:`uniap.superpixels.superpixels`) takes its mean probability, and a mask is the union of
  the regions whose mean exceeds a threshold.

References
----------
.. [1] X. Wang, R. Zhang, T. Kong, L. Li, C. Shen, "SOLOv2: Dynamic and Fast Instance
   Segmentation", NeurIPS 2020.
.. [2] A. Kirillov et al., "Segment Anything", ICCV 2023 (``calculate_stability_score``).
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["mask_iou", "matrix_nms", "mask_nms", "stability_score", "boundary_contrast", "region_means",
           "snap_to_regions"]

#: Default bound on the elements of one float chunk of :func:`mask_iou` (64 MiB of float32).
MAX_ELEMENTS = 2**24


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """A context that turns autocast off on ``device`` (counts in fp16 would not be exact)."""
    kind = device.type
    if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
        return torch.autocast(kind, enabled=False)
    return contextlib.nullcontext()


def _check_stack(name: str, masks: torch.Tensor) -> None:
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(masks).__name__}")
    if masks.ndim != 3:
        raise ValueError(f"{name} must have shape (N, H, W), got {tuple(masks.shape)}")


def _check_scores(masks: torch.Tensor, scores: torch.Tensor) -> None:
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.shape != masks.shape[:1]:
        raise ValueError(f"scores must have shape ({masks.shape[0]},) like the masks' first "
                         f"dimension, got {tuple(scores.shape)}")
    if scores.device != masks.device:
        raise ValueError(f"scores are on {scores.device} but the masks on {masks.device}")


def mask_iou(a: torch.Tensor, b: torch.Tensor, *, max_elements: int = MAX_ELEMENTS) -> torch.Tensor:
    """Pairwise intersection over union of two stacks of binary masks.

    The masks are flattened to float rows and the intersections are one matrix product
    ``A @ B.T``; the pixels are taken in chunks so that the float copies of ``a`` and ``b``
    never hold more than about ``max_elements`` elements together.  Counts are exact (each
    chunk's products are integers below 2**24, summed as int64), also under TF32 or
    reduced-precision float32 matmuls; autocast is turned off inside.

    Parameters
    ----------
    a : Tensor of shape (N, H, W)
        Binary masks: bool, or numbers where anything nonzero is foreground (binarise
        probabilities first).
    b : Tensor of shape (M, H, W)
        Binary masks of the same size, on the same device.
    max_elements : int, default 2**24
        The most elements of one chunk's float copies, ``(N + M) * pixels`` (``N * pixels``
        when ``b is a``); at least one pixel column is taken per chunk.

    Returns
    -------
    Tensor of shape (N, M), float32
        ``|a_i & b_j| / |a_i | b_j|``; a pair of empty masks has IoU 0.

    Raises
    ------
    ValueError
        If the stacks are not 3-D, differ in (H, W), or lie on different devices.

    Examples
    --------
    >>> import torch
    >>> a = torch.zeros(2, 2, 4, dtype=torch.bool)
    >>> a[0, :, :2] = True  # the left half
    >>> a[1, :, 1:] = True  # the three right columns
    >>> mask_iou(a, a)
    tensor([[1.0000, 0.2500],
            [0.2500, 1.0000]])
    >>> mask_iou(a, torch.zeros(1, 2, 4))  # nothing overlaps an empty mask
    tensor([[0.],
            [0.]])
    """
    _check_stack("a", a)
    _check_stack("b", b)
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"the masks differ in size: a is {tuple(a.shape[1:])}, b is {tuple(b.shape[1:])}")
    if a.device != b.device:
        raise ValueError(f"a is on {a.device} but b on {b.device}")
    if max_elements < 1:
        raise ValueError(f"max_elements must be >= 1, got {max_elements}")
    same = b is a
    n, m = a.shape[0], b.shape[0]
    pixels = a.shape[1] * a.shape[2]
    if n == 0 or m == 0 or pixels == 0:
        return torch.zeros((n, m), dtype=torch.float32, device=a.device)
    fa, fb = a.reshape(n, pixels), b.reshape(m, pixels)
    step = max(1, max_elements // (n if same else n + m))
    inter = torch.zeros((n, m), dtype=torch.int64, device=a.device)
    area_a = torch.zeros(n, dtype=torch.int64, device=a.device)
    area_b = area_a if same else torch.zeros(m, dtype=torch.int64, device=a.device)
    with _no_autocast(a.device):
        for start in range(0, pixels, step):
            ca = (fa[:, start:start + step] != 0).to(torch.float32)
            cb = ca if same else (fb[:, start:start + step] != 0).to(torch.float32)
            inter += (ca @ cb.T).to(torch.int64)  # exact: integers below 2**24
            area_a += ca.sum(1).to(torch.int64)
            if not same:
                area_b += cb.sum(1).to(torch.int64)
    union = area_a[:, None] + area_b[None, :] - inter
    return inter.to(torch.float32) / union.clamp_min(1).to(torch.float32)


def matrix_nms(masks: torch.Tensor, scores: torch.Tensor, *, kernel: str = "gaussian",
               sigma: float = 2.0) -> torch.Tensor:
    """SOLOv2's Matrix NMS: scores decayed by the overlaps with higher-scored masks.

    The masks are ranked by score (descending; ties keep their input order).  For a mask ``j``
    and every mask ``i`` ranked above it, the decay of ``j`` by ``i`` is ``f(iou_ij) / f(c_i)``,
    where ``c_i`` is the largest IoU of ``i`` with any mask ranked above ``i`` (0 for the top
    one): the compensation for ``i`` being likely suppressed itself.  ``j``'s score is
    multiplied by the smallest of these decays (1 for the top mask).  This is the
    class-agnostic form of the reference implementation (SOLO's ``matrix_nms``); with
    non-negative scores no score increases, since the top mask's decay ``f(iou_0j)`` is at most 1.

    Parameters
    ----------
    masks : Tensor of shape (N, H, W)
        Binary masks: bool, or 0/1 numbers (anything nonzero is foreground).
    scores : Tensor of shape (N,)
        Their confidences (non-negative), on the same device.
    kernel : {"gaussian", "linear"}, default "gaussian"
        ``f(iou) = exp(-sigma * iou**2)`` or ``1 - iou``.
    sigma : float, default 2.0
        The Gaussian kernel's factor, as in the reference code (the paper's ``exp(-iou**2 / s)``
        with ``s = 1 / sigma``); ignored by the linear kernel.

    Returns
    -------
    Tensor of shape (N,)
        The decayed scores, in the input order (scores' floating dtype, else float32).  Select
        with a threshold afterwards (SOLOv2 keeps those above 0.05).

    Raises
    ------
    ValueError
        For an unknown kernel, a negative ``sigma`` or mismatched shapes.

    Examples
    --------
    >>> import torch
    >>> masks = torch.zeros(3, 2, 4, dtype=torch.bool)
    >>> masks[0, :, :2] = True  # the left half
    >>> masks[1, :, :2] = True  # the same mask again, scored lower
    >>> masks[2, :, 2:] = True  # the right half: no overlap
    >>> scores = torch.tensor([0.5, 0.9, 0.75])
    >>> matrix_nms(masks, scores, kernel="linear")
    tensor([0.0000, 0.9000, 0.7500])
    >>> torch.allclose(matrix_nms(masks, scores)[0], 0.5 * torch.exp(torch.tensor(-2.0)))
    True
    """
    _check_stack("masks", masks)
    _check_scores(masks, scores)
    if kernel not in ("gaussian", "linear"):
        raise ValueError(f'kernel must be "gaussian" or "linear", got {kernel!r}')
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if not scores.is_floating_point():
        scores = scores.to(torch.float32)
    n = masks.shape[0]
    if n == 0:
        return scores.clone()
    order = torch.sort(scores, descending=True, stable=True).indices
    iou = mask_iou(masks, masks)[order][:, order]
    above = torch.ones((n, n), dtype=torch.bool, device=masks.device).triu(diagonal=1)  # i < j
    iou = iou * above  # iou[i, j]: of j with i ranked above it
    compensate = iou.max(dim=0).values[:, None]  # c_i: i's largest IoU with a mask above it
    if kernel == "gaussian":
        # exp(-s iou^2) / exp(-s c^2) in one exponent: no 0 / 0 for large sigma
        decay = torch.exp(-sigma * (iou.square() - compensate.square()))
    else:
        # c_i = 1 (i duplicates a mask above it): 1 - iou_ij over a tiny number; 0 where j
        # duplicates i too (the reference divides 0 by 0 there and returns NaN)
        decay = (1 - iou) / (1 - compensate).clamp_min(torch.finfo(iou.dtype).tiny)
    decay = torch.where(above, decay, torch.ones_like(decay)).amin(dim=0)  # 1 for the top mask
    out = torch.empty_like(scores)
    out[order] = scores[order] * decay.to(scores.dtype)
    return out


def mask_nms(masks: torch.Tensor, scores: torch.Tensor, iou_threshold: float = 0.5) -> torch.Tensor:
    """Greedy hard non-maximum suppression of masks.

    The masks are visited by score (descending; ties keep their input order); a mask is
    dropped when its IoU with a mask already kept exceeds ``iou_threshold``.  The IoU matrix
    is computed once (:func:`mask_iou`); the greedy pass is a loop of ``(N,)``-sized device
    operations on it, with one host synchronisation at the end for the kept indices.

    Parameters
    ----------
    masks : Tensor of shape (N, H, W)
        Binary masks: bool, or 0/1 numbers (anything nonzero is foreground).
    scores : Tensor of shape (N,)
        Their confidences, on the same device.
    iou_threshold : float, default 0.5
        A mask overlapping a kept one by more than this is dropped (so kept masks pairwise
        have IoU at most ``iou_threshold``).  Empty masks overlap nothing and are kept.

    Returns
    -------
    LongTensor of shape (K,)
        Indices of the kept masks into the input, best score first.

    Raises
    ------
    ValueError
        For mismatched shapes.

    Examples
    --------
    >>> import torch
    >>> masks = torch.zeros(3, 2, 4, dtype=torch.bool)
    >>> masks[0, :, :2] = True
    >>> masks[1, :, :3] = True  # IoU 2/3 with mask 0
    >>> masks[2, :, 3:] = True
    >>> mask_nms(masks, torch.tensor([0.5, 0.9, 0.75]))
    tensor([1, 2])
    >>> mask_nms(masks, torch.tensor([0.5, 0.9, 0.75]), iou_threshold=0.7)
    tensor([1, 2, 0])
    """
    _check_stack("masks", masks)
    _check_scores(masks, scores)
    n = masks.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=masks.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    over = (mask_iou(masks, masks)[order][:, order] > iou_threshold).triu(diagonal=1)
    keep = torch.ones(n, dtype=torch.bool, device=masks.device)
    for k in range(n - 1):
        # a kept mask k drops the lower-ranked masks it overlaps (no host sync: keep[k] stays a tensor)
        keep[k + 1:] &= ~(over[k, k + 1:] & keep[k])
    return order[keep]


def stability_score(logits: torch.Tensor, threshold: float = 0.0, offset: float = 1.0) -> torch.Tensor:
    """SAM's stability score: how little a mask changes when its cut moves by ``offset``.

    The IoU between the mask cut at ``logits > threshold + offset`` and the one cut at
    ``logits > threshold - offset``; as the first lies inside the second, it is
    ``area(high) / area(low)`` (segment-anything's ``calculate_stability_score``).

    Parameters
    ----------
    logits : Tensor of shape (N, H, W)
        Mask logits (any leading dimensions: (..., H, W)).
    threshold : float, default 0.0
        The cut, in logit units: a probability cut of 0.5 is logit 0 (``p`` is
        ``log(p / (1 - p))``).
    offset : float, default 1.0
        How far (logits) the cut moves each way; must be >= 0.

    Returns
    -------
    Tensor of shape (N,), float32
        Scores in [0, 1]; a mask empty at the low cut gets 0 (SAM returns NaN there).

    Raises
    ------
    ValueError
        For a negative ``offset`` or fewer than two dimensions.

    Examples
    --------
    >>> import torch
    >>> logits = torch.tensor([[[-3.0, -0.5, 0.5, 3.0]], [[-3.0, -3.0, 3.0, 3.0]],
    ...                        [[-3.0, -3.0, -3.0, -3.0]]])
    >>> stability_score(logits)
    tensor([0.3333, 1.0000, 0.0000])
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.ndim < 2:
        raise ValueError(f"logits must have shape (N, H, W), got {tuple(logits.shape)}")
    if not offset >= 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    high = (logits > threshold + offset).sum(dim=(-2, -1))
    low = (logits > threshold - offset).sum(dim=(-2, -1))
    return high.to(torch.float32) / low.clamp_min(1).to(torch.float32)


def boundary_contrast(masks: torch.Tensor, strength: torch.Tensor, *, chunk: int = 32) -> torch.Tensor:
    """Mean of an edge-strength map on each mask's boundary: how strongly the image bounds it.

    A mask's boundary is its pixels with a 4- or 8-neighbour outside it (a 3 x 3 erosion; the
    image's own border does not count, as an object cut by the frame is not bounded there).
    With :func:`uniap.evaluation.proposals.edge_strength` (the image's gradient over its mean)
    it is the *contrast* that ``uniap``'s own proposals are ranked by: an object stands out
    from its surroundings along its whole outline, a piece of a region does not.

    Parameters
    ----------
    masks : Tensor of shape (N, H, W), bool or 0/1
    strength : Tensor of shape (H, W)
    chunk : int
        Masks eroded at a time (bounds the temporaries to ``chunk`` float images).

    Returns
    -------
    Tensor of shape (N,), float32
        The mean strength on the boundary; 1.0 for a mask without boundary (empty or whole).

    Examples
    --------
    >>> import torch
    >>> m = torch.zeros(1, 5, 5, dtype=torch.bool); m[0, 1:4, 1:4] = True
    >>> strength = torch.ones(5, 5); strength[2, 2] = 9.0  # only the centre is strong
    >>> boundary_contrast(m, strength)  # the 8 boundary pixels of the 3 x 3 square
    tensor([1.])
    """
    import torch.nn.functional as F

    _check_stack("masks", masks)
    if tuple(strength.shape) != tuple(masks.shape[-2:]):
        raise ValueError(f"strength must have the masks' shape {tuple(masks.shape[-2:])}, got {tuple(strength.shape)}")
    out = []
    weights = strength.to(device=masks.device, dtype=torch.float32)
    for start in range(0, masks.shape[0], max(1, int(chunk))):
        m = (masks[start:start + chunk] != 0).float()[:, None]
        eroded = -F.max_pool2d(-m, 3, stride=1, padding=1)  # padding is -inf: the frame keeps pixels
        edge = (m - eroded)[:, 0]
        count = edge.flatten(1).sum(-1)
        total = (edge * weights).flatten(1).sum(-1)
        out.append(torch.where(count > 0, total / count.clamp_min(1), torch.ones_like(total)))
    return torch.cat(out) if out else masks.new_zeros((0,), dtype=torch.float32)


def snap_to_regions(prob: torch.Tensor, regions: torch.Tensor, threshold: float = 0.5, *,
                    num_regions: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-accurate masks: the union of the regions whose mean probability exceeds a threshold.

    Each region of ``regions`` (superpixels, e.g. :func:`uniap.superpixels.superpixels`) takes
    the mean of its pixels' probabilities, per mask (one ``index_add_`` over the flattened
    pixels, summed in float32 at least), and every pixel takes its region's verdict: the masks
    follow the regions' edges, not the probability map's resolution.

    Parameters
    ----------
    prob : Tensor of shape (N, H, W)
        Mask probabilities in [0, 1], floating, at the image's resolution (upsample coarse
        predictions first, e.g. with ``torch.nn.functional.interpolate``).
    regions : Tensor or ndarray of shape (H, W)
        Integer region labels 0 .. R-1; moved to ``prob``'s device.
    threshold : float, default 0.5
        A region joins a mask where its mean probability is greater than this.
    num_regions : int, optional
        R; by default ``regions.max() + 1`` (one host synchronisation, which the label check
        makes anyway).  Labels must be below it; a label without pixels gets probability 0.

    Returns
    -------
    masks : Tensor of shape (N, H, W), bool
        The snapped masks: unions of regions.
    region_prob : Tensor of shape (N, R), float32
        Each region's mean probability in each mask.

    Raises
    ------
    ValueError
        If ``prob`` is not a floating (N, H, W) tensor, ``regions`` not an integer (H, W)
        array of the same H, W, or a label is negative (or not below ``num_regions``).

    Examples
    --------
    >>> import torch
    >>> regions = torch.tensor([[0, 0, 1, 1],
    ...                         [0, 0, 1, 2]])
    >>> prob = torch.tensor([[[0.9, 0.7, 0.6, 0.2],
    ...                       [0.6, 0.4, 0.2, 1.0]]])
    >>> masks, region_prob = snap_to_regions(prob, regions)
    >>> region_prob
    tensor([[0.6500, 0.3333, 1.0000]])
    >>> masks.int()
    tensor([[[1, 1, 0, 0],
             [1, 1, 0, 1]]], dtype=torch.int32)
    """
    region_prob = region_means(prob, regions, num_regions=num_regions)
    labels = torch.as_tensor(regions, device=prob.device).reshape(-1).to(torch.int64)
    masks = (region_prob > threshold)[:, labels].reshape(prob.shape)
    return masks, region_prob


def region_means(prob: torch.Tensor, regions: torch.Tensor, *, num_regions: int | None = None) -> torch.Tensor:
    """Each region's mean of each map: ``prob`` (N, H, W) -> (N, R) float32.

    The step of :func:`snap_to_regions` before its threshold (one ``index_add_`` over the
    flattened pixels, summed in float32 at least), for callers that want the means alone (of
    probabilities or of logits); the same arguments, checks and errors.

    Examples
    --------
    >>> import torch
    >>> region_means(torch.tensor([[[1.0, 3.0, -2.0]]]), torch.tensor([[0, 0, 1]]))
    tensor([[ 2., -2.]])
    """
    if not isinstance(prob, torch.Tensor):
        raise TypeError(f"prob must be a torch.Tensor, got {type(prob).__name__}")
    if prob.ndim != 3:
        raise ValueError(f"prob must have shape (N, H, W), got {tuple(prob.shape)}")
    if not prob.is_floating_point():
        raise ValueError(f"prob must be floating (probabilities in [0, 1]), got {prob.dtype}")
    regions = torch.as_tensor(regions, device=prob.device)
    if regions.ndim != 2 or regions.shape != prob.shape[1:]:
        raise ValueError(f"regions must have shape (H, W) = {tuple(prob.shape[1:])} like prob, "
                         f"got {tuple(regions.shape)}")
    if regions.is_floating_point() or regions.is_complex() or regions.dtype == torch.bool:
        raise ValueError(f"regions must hold integer labels, got {regions.dtype}")
    if num_regions is not None and num_regions < 0:
        raise ValueError(f"num_regions must be >= 0, got {num_regions}")
    n = prob.shape[0]
    labels = regions.reshape(-1).to(torch.int64)
    if labels.numel():
        low, high = (int(v) for v in torch.aminmax(labels))  # the one host synchronisation
        if low < 0:
            raise ValueError(f"region labels must be >= 0, got {low}")
        if num_regions is not None and high >= num_regions:
            raise ValueError(f"region labels must be below num_regions={num_regions}, got {high}")
        count = high + 1 if num_regions is None else num_regions
    else:
        count = 0 if num_regions is None else num_regions
    acc = torch.promote_types(prob.dtype, torch.float32)
    sums = torch.zeros((n, count), dtype=acc, device=prob.device)
    sums.index_add_(1, labels, prob.reshape(n, labels.numel()).to(acc))
    sizes = torch.zeros(count, dtype=torch.int64, device=prob.device)
    sizes.index_add_(0, labels, torch.ones_like(labels))
    return (sums / sizes.clamp_min(1).to(acc)).to(torch.float32)
