"""UniAP on every view of a batch, in one pass, and the queries it pools.

:func:`segment_views` is the one place the training code calls :func:`uniap.segment`.  CUDA
tensors go to uniap's ``torch`` backend (results stay on the device); CPU tensors and NumPy
arrays go to the default CPU backend (Numba), which is faster than torch on a CPU and gives the
same partitions.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

import uniap

__all__ = ["segment_views", "pooled_queries"]


def _torch_backend_ready() -> bool:
    return uniap.backends.available().get("torch", "missing") is None


def segment_views(grids: Sequence[Any], options: dict) -> list[uniap.Hierarchy]:
    """UniAP hierarchies of many (h_i, w_i, C) grids, run as one disjoint graph.

    Parameters
    ----------
    grids : sequence of tensor or ndarray
        Patch features per view (sizes may differ).
    options : dict
        Keyword arguments of :func:`uniap.segment` (levels, min_size, preset, connectivity).
    """
    first = grids[0]
    if isinstance(first, torch.Tensor) and first.is_cuda and _torch_backend_ready():
        return uniap.segment([g.detach() for g in grids], backend="torch", **options)
    arrays = [g.detach().cpu().numpy() if isinstance(g, torch.Tensor) else np.asarray(g) for g in grids]
    return uniap.segment(arrays, **options)


def pooled_queries(grids: Sequence[torch.Tensor], options: dict) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Every view's UniAP queries (all levels' mask features), padded into one tensor.

    Parameters
    ----------
    grids : sequence of tensor (h_i, w_i, C)
        Frozen patch features (no gradient is needed through the queries).
    options : dict
        :func:`uniap.segment` options.

    Returns
    -------
    queries : tensor (V, Q, C)
        Queries of view v in rows ``[:counts[v]]``, zeros after.
    mask : bool tensor (V, Q)
        True for real queries.
    counts : list of int
        Queries per view.  A view whose clusters are all smaller than ``min_size`` gets one
        query, the mean of its cells.
    """
    device = grids[0].device
    hierarchies = segment_views(grids, options)
    per_view = []
    for g, h in zip(grids, hierarchies):
        q = h.queries()
        q = q if isinstance(q, torch.Tensor) else torch.from_numpy(np.asarray(q))
        q = q.to(device=device, dtype=g.dtype)
        if q.shape[0] == 0:
            q = g.reshape(-1, g.shape[-1]).mean(0, keepdim=True)
        per_view.append(q)
    counts = [int(q.shape[0]) for q in per_view]
    qmax = max(counts)
    c = grids[0].shape[-1]
    queries = grids[0].new_zeros((len(per_view), qmax, c))
    mask = torch.zeros((len(per_view), qmax), dtype=torch.bool, device=device)
    for v, q in enumerate(per_view):
        queries[v, : q.shape[0]] = q
        mask[v, : q.shape[0]] = True
    return queries, mask, counts
