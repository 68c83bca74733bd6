"""The self-distillation loss of the released-code recipe, on the common region of two views.

For every pair (teacher global view g, student view v != g) of the same image, the two views'
per-pixel logit maps are resampled (bilinear ``grid_sample``) at the same ``R x R`` image
points of their common region (:func:`uniap_train.crops.common_region`).  At each point the
loss is DINO's cross-entropy

    H(t, s) = - sum_k softmax((t - c) / T_t)_k  log softmax(s / T_s)_k

between the centred, sharpened teacher logits ``t`` and the student logits ``s``; it is
averaged over points, then over every pair of the *global* batch (the pair count is summed over
processes, so one process with batch B and n processes with batch B / n give the same
gradient).  The centre ``c`` is an EMA of the mean teacher logits over the global batch;
``torch.distributed.all_reduce`` is used only when a process group exists.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...crops import Crop, common_region, region_points

__all__ = ["QuerySDLoss", "RegionPairs", "build_region_pairs", "sample_maps", "distributed_sum", "sinkhorn_knopp",
           "view_entropy"]


def distributed_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over processes (in place); a no-op without a process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t


class RegionPairs:
    """The (teacher view, student view) pairs of a batch and their sample grids.

    Attributes
    ----------
    teacher : LongTensor (P,)
        Row of the teacher map (``view * B + sample`` over the global views).
    student : LongTensor (P,)
        Row of the student map (``view * B + sample`` over all views).
    teacher_grid, student_grid : tensor (P, R, R, 2)
        ``grid_sample`` coordinates in [-1, 1] (align_corners=False).
    """

    def __init__(self, teacher, student, teacher_grid, student_grid) -> None:
        self.teacher = teacher
        self.student = student
        self.teacher_grid = teacher_grid
        self.student_grid = student_grid

    def __len__(self) -> int:
        return int(self.teacher.shape[0])


def build_region_pairs(crops: list[list[Crop]], num_global: int, region_size: int,
                       device: torch.device | str = "cpu") -> RegionPairs:
    """Every (global view g, view v != g) pair of every sample with a common region.

    Parameters
    ----------
    crops : list (B) of list (V) of Crop
        Globals first, as :class:`uniap_train.crops.MultiCrop` returns them.
    num_global : int
        How many leading views the teacher sees.
    region_size : int
        R, sample points per side of the common region.
    """
    b = len(crops)
    t_rows, s_rows, t_grids, s_grids = [], [], [], []
    for i, views in enumerate(crops):
        for g in range(num_global):
            for v in range(len(views)):
                if v == g:
                    continue
                region = common_region(views[g], views[v])
                if region is None:
                    continue
                t_rows.append(g * b + i)
                s_rows.append(v * b + i)
                t_grids.append(region_points(region[0], region_size) * 2 - 1)
                s_grids.append(region_points(region[1], region_size) * 2 - 1)
    r = region_size
    if t_rows:
        tg = torch.from_numpy(np.stack(t_grids)).float()
        sg = torch.from_numpy(np.stack(s_grids)).float()
    else:
        tg = sg = torch.zeros((0, r, r, 2))
    return RegionPairs(
        torch.tensor(t_rows, dtype=torch.int64, device=device),
        torch.tensor(s_rows, dtype=torch.int64, device=device),
        tg.to(device), sg.to(device),
    )


def sample_maps(maps: list[torch.Tensor], rows: torch.Tensor, grids: torch.Tensor,
                batch_size: int) -> torch.Tensor:
    """Sample per-view maps at the given points.

    Parameters
    ----------
    maps : list (V) of tensor (B, K, h_v, w_v)
        One map per view position (views of one position share a size).
    rows : LongTensor (P,)
        ``view * B + sample`` per pair.
    grids : tensor (P, R, R, 2)
        ``grid_sample`` coordinates.

    Returns
    -------
    tensor (P, R * R, K)
    """
    k = maps[0].shape[1]
    r = grids.shape[1]
    view_of = rows // batch_size
    parts, order = [], []
    for v, m in enumerate(maps):
        sel = torch.nonzero(view_of == v).flatten()
        if sel.numel() == 0:
            continue
        src = m[rows[sel] % batch_size]
        parts.append(F.grid_sample(src, grids[sel].to(src.dtype), mode="bilinear", padding_mode="border",
                                   align_corners=False))
        order.append(sel)
    if not parts:
        return maps[0].new_zeros((0, r * r, k))
    sampled = torch.cat(parts)
    order = torch.cat(order)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return sampled[inverse].flatten(2).transpose(1, 2)


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temperature: float, iterations: int = 3) -> torch.Tensor:
    """Teacher targets that use every prototype equally over the global batch (SwAV, DINOv2).

    Starting from ``exp(logits / T)``, alternately rescales each prototype's total over all
    points of every process to ``1 / K`` and each point's row to sum to 1 (``iterations``
    rounds), so the teacher cannot collapse onto a few prototypes; sums run over processes when
    a process group exists.

    Parameters
    ----------
    logits : tensor (..., K)
        Teacher logits, one row per point.
    temperature : float

    Returns
    -------
    tensor (..., K)
        Rows sum to 1.
    """
    shape = logits.shape
    x = logits.detach().float().reshape(-1, shape[-1]) / temperature
    top = x.max() if x.numel() else x.new_zeros(())
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(top, op=torch.distributed.ReduceOp.MAX)
    q = torch.exp(x - top)  # (N, K); the shared maximum keeps exp in range and cancels out
    count = distributed_sum(q.new_tensor([float(q.shape[0])]))
    k = q.shape[-1]
    q /= distributed_sum(q.sum().reshape(1)).clamp_min(1e-30)
    for _ in range(iterations):
        q /= distributed_sum(q.sum(0)).clamp_min(1e-30) * k
        q /= q.sum(1, keepdim=True).clamp_min(1e-30) * count
    return (q * count).reshape(shape)


@torch.no_grad()
def view_entropy(maps: list[torch.Tensor], center: torch.Tensor, temperature: float) -> float:
    """Mean over views of the entropy of a view's average teacher distribution (a monitor).

    Near 0: every pixel of a view goes to the same prototype, so the teacher no longer tells
    regions apart (collapse *within* images, which the batch-level centring cannot see).

    Parameters
    ----------
    maps : list of tensor (B, K, h, w)
        Teacher logit maps.
    center : tensor (1, K)
    temperature : float
    """
    total, count = 0.0, 0
    for m in maps:
        logits = m.detach().float().flatten(2).transpose(1, 2)  # (B, hw, K)
        mean = torch.softmax((logits - center) / temperature, dim=-1).mean(1)  # (B, K)
        total += float(-(mean * torch.log(mean.clamp_min(1e-12))).sum(-1).sum())
        count += mean.shape[0]
    return total / max(count, 1)


class QuerySDLoss(nn.Module):
    """Cross-entropy between centred, sharpened teacher points and student points.

    Parameters
    ----------
    out_dim : int
        K, the number of prototypes (size of the centre).
    student_temp : float
        T_s.
    center_momentum : float
        m of ``c <- m c + (1 - m) mean(teacher logits)``.
    centering : {"ema", "sinkhorn"}
        Teacher targets: ``softmax((t - c) / T_t)`` with the EMA centre (DINO, the released
        code), or :func:`sinkhorn_knopp` of ``t / T_t`` over the global batch.  The centre is
        kept up to date either way (the ``teacher_view_entropy`` monitor reads it).
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9,
                 centering: str = "ema") -> None:
        super().__init__()
        if centering not in ("ema", "sinkhorn"):
            raise ValueError(f"centering must be ema or sinkhorn, got {centering!r}")
        self.student_temp = float(student_temp)
        self.center_momentum = float(center_momentum)
        self.centering = centering
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.last_stats: dict = {}

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, teacher_temp: float,
                num_pairs_global: int | None = None, world_size: int = 1) -> torch.Tensor:
        """Loss of P pairs of R*R points.

        Parameters
        ----------
        student, teacher : tensor (P, R*R, K)
            Logits at matching points; ``teacher`` carries no gradient.
        teacher_temp : float
            T_t at this step.
        num_pairs_global : int, optional
            Pairs in the global batch (default: P, one process).
        world_size : int
            Processes; the local loss is scaled so that DDP's gradient average equals the
            gradient of the global mean.

        Returns
        -------
        scalar tensor
            ``world_size / num_pairs_global * sum over local pairs of the mean CE``.
        """
        n = int(student.shape[0]) if num_pairs_global is None else int(num_pairs_global)
        if self.centering == "sinkhorn":
            t = sinkhorn_knopp(teacher.float(), teacher_temp)
        else:
            t = torch.softmax((teacher.float() - self.center) / teacher_temp, dim=-1)
        s = torch.log_softmax(student.float() / self.student_temp, dim=-1)
        per_pair = -(t * s).sum(-1).mean(-1)
        with torch.no_grad():  # monitors: teacher entropy and mean teacher confidence (local)
            ent = -(t * torch.log(t.clamp_min(1e-12))).sum(-1).mean()
            mean_t = t.reshape(-1, t.shape[-1]).mean(0)
            batch_ent = -(mean_t * torch.log(mean_t.clamp_min(1e-12))).sum()
            # entropy per point (low: confident) and of the batch's mean (low: collapsed)
            self.last_stats = {"teacher_entropy": float(ent), "teacher_batch_entropy": float(batch_ent)}
        return per_pair.sum() * (world_size / max(n, 1))

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        """EMA of the centre with the mean teacher logits over every point of the global batch."""
        flat = teacher.detach().float().reshape(-1, teacher.shape[-1])
        stats = torch.cat([flat.sum(0), flat.new_tensor([flat.shape[0]])])
        distributed_sum(stats)
        count = float(stats[-1])
        if count == 0:
            return
        mean = stats[:-1] / count
        self.center.mul_(self.center_momentum).add_(mean[None], alpha=1 - self.center_momentum)
