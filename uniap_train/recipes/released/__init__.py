"""The released code's recipe: DINO heads on UniAP queries, loss on the views' common region.

Per training step (B images, V = 2 + N views each, the backbone frozen):

1. The views' patch features (from the data pipeline or the backbone) go through UniAP in one
   batched pass (:func:`uniap_train.pooling.pooled_queries`); every view's queries are the
   pooled (mean) features of its clusters at every level.
2. Per view, per-pixel attention ``softmax_q(cos(pixel, query_q) / T)`` over its queries
   (no gradient: features are frozen).
3. Student head on every view's queries, teacher head on the global views' queries:
   per-pixel logits = attention x head(queries).
4. For every (teacher global view, student other view) pair of an image, both logit maps are
   resampled at the same R x R points of their common region and compared with
   :class:`uniap_train.recipes.released.loss.QuerySDLoss`; the teacher output then updates the centre.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ...pooling import pooled_queries
from ..base import Recipe, StepOutput  # noqa: F401  (StepOutput: its old home)
from .loss import QuerySDLoss, build_region_pairs, distributed_sum, sample_maps, view_entropy
from .model import QueryHead, pixel_logits, query_attention

__all__ = ["ReleasedRecipe", "StepOutput"]

NUM_GLOBAL = 2


class ReleasedRecipe(Recipe):
    """Builds the student/teacher heads and the loss; computes one step's loss.

    Parameters
    ----------
    cfg : TrainConfig
    in_dim : int
        Backbone feature dimension C.
    """

    name = "released"

    def __init__(self, cfg, in_dim: int, backbone=None) -> None:  # the backbone stays frozen here
        self.cfg = cfg
        self.in_dim = int(in_dim)
        u = cfg.uniap
        self.uniap_options = dict(levels=tuple(u.levels), min_size=u.min_size, preset=u.preset,
                                  connectivity=u.connectivity)

    # -- construction ------------------------------------------------------------------
    def view_sizes(self) -> dict[str, int]:
        """View sides (pixels) that must be multiples of the patch size, by config key."""
        return {"global_size": self.cfg.crops.global_size, "local_size": self.cfg.crops.local_size}

    def build_dataset(self, paths, backbone, pipeline_extractor):
        from ...data import MultiCropDataset

        return MultiCropDataset(paths, self.cfg.crops, self.cfg.seed, self.cfg.data.max_side,
                                pipeline_extractor=pipeline_extractor, crop_features=backbone.crop_features,
                                patch_size=backbone.patch_size)

    def build_student(self) -> nn.Module:
        """A fresh student head (the teacher is a copy)."""
        return QueryHead(self.in_dim, self.cfg.model)

    def build_loss(self) -> nn.Module:
        lc = self.cfg.loss
        return QuerySDLoss(self.cfg.model.out_dim, lc.student_temp, lc.center_momentum, lc.centering)

    # -- one step ----------------------------------------------------------------------
    def loss(self, batch: dict, grids: list[torch.Tensor], student: nn.Module, teacher: nn.Module,
             loss_fn: QuerySDLoss, teacher_temp: float, world_size: int,
             autocast: Any) -> StepOutput:
        """The loss of one batch.

        Parameters
        ----------
        batch : dict
            From :func:`uniap_train.data.collate_views` (``crops`` is used).
        grids : list (V) of tensor (B, h_v, w_v, C)
            Frozen patch features per view position, on the training device.
        student : module
            The student (maybe wrapped in DDP); called once.
        teacher : module
        teacher_temp : float
        world_size : int
        autocast : context manager factory
            The trainer's mixed-precision context.
        """
        b = grids[0].shape[0]
        device = grids[0].device
        t_attn = self.cfg.model.attention_temp
        with torch.no_grad():
            flat = [g[i] for g in grids for i in range(b)]  # row v * B + i
            queries, qmask, counts = pooled_queries(flat, self.uniap_options)
            attention = []
            for v, g in enumerate(grids):
                rows = slice(v * b, (v + 1) * b)
                attention.append(query_attention(g.reshape(b, -1, g.shape[-1]), queries[rows], qmask[rows], t_attn))
            pairs = build_region_pairs(batch["crops"], NUM_GLOBAL, self.cfg.loss.region_size, device)
            n_global = distributed_sum(torch.tensor([len(pairs)], dtype=torch.float64, device=device))
        with autocast():
            s_query = student(queries)  # (V*B, Q, K)
            with torch.no_grad():
                t_query = teacher(queries[: NUM_GLOBAL * b])
            s_maps = [self._map(attention[v], s_query[v * b:(v + 1) * b], grids[v]) for v in range(len(grids))]
            t_maps = [self._map(attention[v], t_query[v * b:(v + 1) * b], grids[v]) for v in range(NUM_GLOBAL)]
            s_pts = sample_maps(s_maps, pairs.student, pairs.student_grid, b)
            t_pts = sample_maps(t_maps, pairs.teacher, pairs.teacher_grid, b)
            loss = loss_fn(s_pts, t_pts, teacher_temp, int(n_global.item()), world_size)
            if len(pairs) == 0:  # keep every parameter in the graph (DDP expects gradients)
                loss = loss + 0.0 * s_query.float().sum()
        stats = {"pairs": float(n_global.item()), "queries_per_view": sum(counts) / len(counts),
                 **getattr(loss_fn, "last_stats", {}),
                 "teacher_view_entropy": view_entropy(t_maps, loss_fn.center, teacher_temp)}
        return StepOutput(loss, stats, after_step=lambda: loss_fn.update_center(t_pts))

    @staticmethod
    def _map(attention: torch.Tensor, query_logits: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """(B, P, Q) x (B, Q, K) -> logit maps (B, K, h, w)."""
        b, h, w = grid.shape[:3]
        logits = pixel_logits(attention, query_logits)
        return logits.transpose(1, 2).reshape(b, -1, h, w)

    # -- evaluation --------------------------------------------------------------------
    def embedder(self, teacher: nn.Module,
                 kind: str = "logits") -> Callable[..., torch.Tensor]:
        """``embed(features (h, w, C), queries (Q, C), pixels=None) -> (h, w, D)`` per-pixel vectors
        (the pixels are not used).

        ``kind="logits"``: attention x teacher head logits (D = K);
        ``kind="bottleneck"``: attention x the head's L2-normalised bottleneck (D = 256).
        """
        t_attn = self.cfg.model.attention_temp
        head = teacher.head

        @torch.no_grad()
        def embed(features: torch.Tensor, queries: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
            h, w, c = features.shape
            q = queries[None]
            mask = torch.ones(q.shape[:2], dtype=torch.bool, device=q.device)
            att = query_attention(features.reshape(1, -1, c), q, mask, t_attn)
            out = head(q) if kind == "logits" else head.bottleneck(q)
            return pixel_logits(att, out)[0].reshape(h, w, -1)

        return embed
