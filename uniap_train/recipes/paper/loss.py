"""Cropped teacher masks, Dice-cost Hungarian matching and Mask2Former's point-sampled mask losses.

* :func:`view_points` maps a student view's mask grid into the teacher's normalised coordinates
  (both views are :class:`~uniap_train.crops.Crop` s of one image), and :func:`crop_masks`
  resamples the teacher's masks there.
* :func:`dice_cost` / :func:`hungarian` pair student masks with teacher masks
  (``scipy.optimize.linear_sum_assignment`` on ``1 - Dice``).
* :func:`uncertain_points` (Mask2Former's ``get_uncertain_point_coords_with_randomness``),
  :func:`point_sample`, :func:`dice_loss` and :func:`bce_loss` are the mask losses.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...crops import Crop

__all__ = ["view_points", "crop_masks", "dice_cost", "hungarian", "point_sample", "uncertain_points",
           "uncertain_points_many", "dice_loss", "bce_loss"]


def view_points(view: Crop, teacher: Crop, rows: int, cols: int) -> np.ndarray:
    """``grid_sample`` coordinates (rows, cols, 2) in the teacher view of a view's cell centres."""
    u = (np.arange(cols) + 0.5) / cols
    v = (np.arange(rows) + 0.5) / rows
    uu, vv = np.meshgrid(u, v)
    x, y = view.to_image(uu, vv)
    tu, tv = teacher.from_image(x, y)
    return (np.stack([tu, tv], axis=-1) * 2 - 1).astype(np.float32)


def crop_masks(masks: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Teacher masks (M, Ht, Wt) resampled (bilinear, zeros outside) at points (V, h, w, 2): (V, M, h, w)."""
    v = points.shape[0]
    if masks.shape[0] == 0:
        return masks.new_zeros((v, 0) + tuple(points.shape[1:3]))
    src = masks[None].to(points.dtype).expand(v, -1, -1, -1)
    return F.grid_sample(src, points, mode="bilinear", padding_mode="zeros", align_corners=False)


def dice_cost(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice ``2 |p t| / (|p| + |t|)`` of every (student, teacher) pair: (Q, P) x (M, P) -> (Q, M)."""
    inter = prob @ target.T
    return (2 * inter + 1) / (prob.sum(-1)[:, None] + target.sum(-1)[None, :] + 1)


def hungarian(dice: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the assignment maximising the total Dice (``linear_sum_assignment``)."""
    from scipy.optimize import linear_sum_assignment

    if dice.shape[0] == 0 or dice.shape[1] == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows, cols = linear_sum_assignment(1.0 - dice.detach().double().cpu().numpy())
    return rows.astype(np.int64), cols.astype(np.int64)


def point_sample(maps: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Values of maps (N, H, W) at points (N, P, 2) in [0, 1] (x, y): (N, P), bilinear."""
    grid = (points * 2 - 1)[:, :, None, :].to(maps.dtype)
    return F.grid_sample(maps[:, None], grid, mode="bilinear", align_corners=False)[:, 0, :, 0]


def uncertain_points(logits: torch.Tensor, num_points: int, oversample_ratio: float, importance_ratio: float,
                     generator: torch.Generator) -> torch.Tensor:
    """Mask2Former's training points: (N, P, 2) in [0, 1].

    ``oversample_ratio * P`` random candidates; the ``importance_ratio * P`` whose logit is
    closest to 0 (most uncertain) are kept, the rest of the P points are drawn uniformly.
    ``generator`` (CPU) makes the points a function of the sample, not of the process.
    """
    n = logits.shape[0]
    candidates = max(num_points, int(num_points * oversample_ratio))
    coords = torch.rand(n, candidates, 2, generator=generator).to(logits.device)
    uncertainty = -point_sample(logits.detach().float(), coords).abs()
    k = int(importance_ratio * num_points)
    top = uncertainty.topk(k, dim=1).indices if k else torch.zeros((n, 0), dtype=torch.long, device=logits.device)
    chosen = torch.gather(coords, 1, top[..., None].expand(-1, -1, 2))
    rest = torch.rand(n, num_points - k, 2, generator=generator).to(logits.device)
    return torch.cat([chosen, rest], dim=1)


def uncertain_points_many(logits: torch.Tensor, num_points: int, oversample_ratio: float, importance_ratio: float,
                          generators: list[torch.Generator]) -> torch.Tensor:
    """:func:`uncertain_points` of every row of ``logits`` (N, H, W), row ``i`` drawing from
    ``generators[i]``, in one pass: equal to ``torch.cat([uncertain_points(logits[i:i + 1], ...,
    generators[i]) for i in range(N)])``, with one host-to-device copy instead of 2N and no sync."""
    n = logits.shape[0]
    candidates = max(num_points, int(num_points * oversample_ratio))
    k = int(importance_ratio * num_points)
    if n == 0:
        return logits.new_zeros((0, num_points, 2), dtype=torch.float32)
    draws = [(torch.rand(1, candidates, 2, generator=g), torch.rand(1, num_points - k, 2, generator=g))
             for g in generators]  # each generator's draws in uncertain_points' order
    host = torch.cat([torch.cat([c.flatten(), r.flatten()]) for c, r in draws]).view(n, -1)
    both = host.to(logits.device, non_blocking=True)
    coords = both[:, : 2 * candidates].reshape(n, candidates, 2)
    rest = both[:, 2 * candidates:].reshape(n, num_points - k, 2)
    uncertainty = -point_sample(logits.detach().float(), coords).abs()
    top = uncertainty.topk(k, dim=1).indices if k else torch.zeros((n, 0), dtype=torch.long, device=logits.device)
    chosen = torch.gather(coords, 1, top[..., None].expand(-1, -1, 2))
    return torch.cat([chosen, rest], dim=1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pair Dice loss (N,) of point logits and 0/1 targets (N, P)."""
    p = logits.float().sigmoid()
    return 1 - (2 * (p * target).sum(-1) + 1) / (p.sum(-1) + target.sum(-1) + 1)


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pair mean binary cross-entropy (N,) of point logits and targets (N, P)."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none").mean(-1)
