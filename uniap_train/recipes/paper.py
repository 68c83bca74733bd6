"""The paper's recipe: a mask decoder with semantic and instance queries, Dice-matched QuerySD.

Per training step (B images; view 0 the whole image for the teacher, views 1..N local crops
for the student; the backbone frozen, the neck, decoder and head trained):

1. **Teacher** (EMA of the student, no gradient): the neck's fine map of the whole image
   (:meth:`~uniap_train.decoder.PaperModel.teacher_maps`) goes through UniAP with
   ``semantic=True``, the whole batch in one call (torch backend).  Every level's instance
   clusters and semantic groups of at least ``uniap.min_size`` cells become teacher masks
   (each distinct mask once per set); each mask's query is the mean of the teacher's mask
   features over it, and the teacher head gives its logits.
2. **Student**: the decoder on every local crop gives per query a mask logit map and head
   logits (:meth:`~uniap_train.decoder.PaperModel.forward`).
3. **Cropped matching**: the teacher's masks are resampled on each crop's mask grid
   (:func:`~uniap_train.matching.crop_masks`); those covering less than
   ``loss.min_mask_area`` of the crop are dropped.  [SEM] queries are matched to semantic
   masks and [INS] queries to instance masks by the Hungarian algorithm on Dice.
4. **Loss** over matched pairs of the global batch: ``querysd_weight`` x QuerySD (DINO's
   cross-entropy between the centred, sharpened teacher logits of the teacher mask and the
   student logits of its query) + ``dice_weight`` x Dice + ``bce_weight`` x BCE of the masks at
   ``num_points`` points sampled as Mask2Former does (seeded per sample, so one process and
   several give the same points).  Normalised by the number of pairs summed over processes.
"""

from __future__ import annotations

import zlib
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

import uniap

from ..decoder import PaperModel
from ..loss import QuerySDLoss, distributed_sum
from ..matching import (
    bce_loss,
    crop_masks,
    dice_cost,
    dice_loss,
    hungarian,
    point_sample,
    uncertain_points,
    view_points,
)
from .released import StepOutput

__all__ = ["PaperRecipe", "TeacherMasks", "teacher_masks"]

SEMANTIC, INSTANCE = 0, 1


class TeacherMasks:
    """One image's teacher masks on the padded fine grid and the set each belongs to."""

    def __init__(self, masks: torch.Tensor, kinds: torch.Tensor) -> None:
        self.masks = masks  # (M, H, W) float 0/1
        self.kinds = kinds  # (M,) SEMANTIC or INSTANCE


def _distinct(masks: torch.Tensor) -> torch.Tensor:
    """Rows of a (M, P) boolean mask stack with exact duplicates removed (first kept)."""
    if masks.shape[0] <= 1:
        return masks
    seen, keep = set(), []
    for i, row in enumerate(np.packbits(masks.cpu().numpy(), axis=1)):
        key = row.tobytes()
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return masks[keep]


def teacher_masks(hierarchies: list, shape: tuple[int, int], min_size: int) -> list[TeacherMasks]:
    """Every level's instance clusters and semantic groups as masks on an (H, W) padded grid.

    Parameters
    ----------
    hierarchies : list of uniap.Hierarchy
        With semantic groups, of grids at the top-left of the padded grid.
    shape : (H, W)
    min_size : int
        Smallest cluster or group (cells) that gives a mask.
    """
    out = []
    for h in hierarchies:
        rows, cols = h.shape
        sets = {SEMANTIC: [], INSTANCE: []}
        for lv in h.levels:
            labels = torch.as_tensor(lv.labels).long()
            ids = torch.nonzero(torch.as_tensor(lv.sizes) >= min_size).flatten().to(labels.device)
            sets[INSTANCE].append(labels.reshape(-1)[None] == ids[:, None])
            sem = torch.as_tensor(lv.semantic_labels).long().reshape(-1)
            gids = torch.nonzero(torch.bincount(sem) >= min_size).flatten()
            sets[SEMANTIC].append(sem[None] == gids[:, None])
        stacks, kinds = [], []
        for kind in (SEMANTIC, INSTANCE):
            m = _distinct(torch.cat(sets[kind]))
            stacks.append(m)
            kinds.append(torch.full((m.shape[0],), kind, dtype=torch.long))
        m = torch.cat(stacks).reshape(-1, rows, cols)
        padded = torch.zeros((m.shape[0],) + tuple(shape), dtype=torch.float32, device=m.device)
        padded[:, :rows, :cols] = m.float()
        out.append(TeacherMasks(padded, torch.cat(kinds).to(m.device)))
    return out


def _sample_generator(seed: int, index: int, crops, extra: tuple = ()) -> torch.Generator:
    """A CPU generator seeded by the sample itself (its image, the boxes drawn for it, ``extra``)."""
    text = repr((int(seed), int(index), [(c.box, c.flip) for c in crops], tuple(int(e) for e in extra)))
    return torch.Generator().manual_seed(zlib.crc32(text.encode()))


class PaperRecipe:
    """Builds the paper's student model and loss; computes one step's loss.

    Parameters
    ----------
    cfg : TrainConfig
    in_dim : int
        Backbone feature dimension C.
    """

    name = "paper"
    metric_columns = ("loss_querysd", "loss_dice", "loss_bce", "match_dice", "match_dice_binary",
                      "queries_matched", "teacher_masks", "teacher_masks_in_view")

    def __init__(self, cfg, in_dim: int, backbone=None) -> None:
        self.cfg = cfg
        self.in_dim = int(in_dim)
        self.backbone = backbone
        # backbone.trainable: the student owns a copy of the ViT and gets pixel views
        self.trains_backbone = bool(cfg.backbone.trainable)
        u = cfg.uniap
        self.uniap_options = dict(levels=tuple(u.levels), min_size=u.min_size, preset=u.preset,
                                  connectivity=u.connectivity)

    # -- construction ------------------------------------------------------------------
    def view_sizes(self) -> dict[str, int]:
        """View sides (pixels) that must be multiples of the patch size, by config key."""
        return {"teacher_size": self.cfg.crops.teacher_size, "local_size": self.cfg.crops.local_size}

    def build_dataset(self, paths, backbone, pipeline_extractor):
        from ..data import PaperDataset

        return PaperDataset(paths, self.cfg.crops, self.cfg.seed, self.cfg.data.max_side,
                            pipeline_extractor=pipeline_extractor, crop_features=backbone.crop_features,
                            patch_size=backbone.patch_size)

    def build_student(self) -> nn.Module:
        vit = None
        if self.trains_backbone:
            from ..backbone import TrainableVit

            vit = TrainableVit.from_extractor(self.backbone.extractor)
        return PaperModel(self.in_dim, self.cfg.model, vit)

    def param_groups(self, model: nn.Module) -> list[dict]:
        """AdamW groups; a trainable backbone's at ``backbone.lr_scale`` of the learning rate."""
        from ..utils import get_params_groups

        scales = {"backbone.": self.cfg.backbone.lr_scale} if self.trains_backbone else None
        return get_params_groups(model, scales)

    def build_loss(self) -> nn.Module:
        lc = self.cfg.loss
        return QuerySDLoss(self.cfg.model.out_dim, lc.student_temp, lc.center_momentum, lc.centering)

    # -- the teacher ---------------------------------------------------------------------
    @torch.no_grad()
    def teacher_targets(self, teacher: nn.Module, grid: torch.Tensor, cells: torch.Tensor
                        ) -> tuple[list[TeacherMasks], list[torch.Tensor]]:
        """Teacher masks and their query logits for a batch of whole-image grids.

        Parameters
        ----------
        grid : tensor (B, T, T, C)
            The teacher views' features (zero where padded); uint8 pixels (B, T p, T p, 3)
            with a trainable backbone.
        cells : LongTensor (B, 2)
            Rows and columns of each grid that hold the image.
        """
        fine, mask_features = teacher.teacher_maps(grid)
        scale = 2  # the fine map is the patch grid upsampled twice
        parts = [fine[i, : int(r) * scale, : int(c) * scale].float() for i, (r, c) in enumerate(cells.tolist())]
        backend = "torch" if uniap.backends.available().get("torch") is None else "auto"
        extra = {"exact": True} if fine.is_cuda else {}
        hierarchies = uniap.segment(parts, semantic=True, backend=backend, **extra, **self.uniap_options)
        targets = teacher_masks(hierarchies, tuple(fine.shape[1:3]), self.cfg.uniap.min_size)
        logits = []
        for t, feats in zip(targets, mask_features):
            m = t.masks.to(feats.device).flatten(1)
            pooled = (m @ feats.flatten(1).T.float()) / m.sum(1, keepdim=True).clamp_min(1)
            logits.append(teacher.head(pooled.to(feats.dtype)).float())
        return targets, logits

    # -- one step ----------------------------------------------------------------------
    def loss(self, batch: dict, grids: list[torch.Tensor], student: nn.Module, teacher: nn.Module,
             loss_fn: QuerySDLoss, teacher_temp: float, world_size: int, autocast: Any) -> StepOutput:
        """The loss of one batch (see the module docstring).

        Parameters
        ----------
        batch : dict
            From :func:`uniap_train.data.collate_views` of :class:`~uniap_train.data.PaperDataset`
            samples (``crops``, ``teacher_cells``, ``index``).
        grids : list (1 + N) of tensor (B, h_v, w_v, C)
            Frozen features: the teacher's view, then the local crops.
        """
        lc, cfg = self.cfg.loss, self.cfg
        b = grids[0].shape[0]
        device = grids[0].device
        n_local = len(grids) - 1
        with torch.no_grad(), autocast():
            targets, t_logits = self.teacher_targets(teacher, grids[0], batch["teacher_cells"])
        with autocast():
            out = student(torch.cat(grids[1:]))  # rows v * B + i
        s_masks, s_logits = out["masks"], out["logits"]
        rows_s, cols_s = s_masks.shape[-2:]
        n_sem = cfg.model.num_semantic_queries

        # ---- cropped teacher masks and Hungarian matching, per crop ----
        pairs = []  # (student row, query, image, teacher mask, target map)
        kept = 0
        with torch.no_grad():
            prob = s_masks.detach().float().sigmoid().flatten(2)
            for i in range(b):
                crops = batch["crops"][i]
                points = torch.from_numpy(np.stack([view_points(crops[1 + v], crops[0], rows_s, cols_s)
                                                    for v in range(n_local)])).to(device)
                masks = targets[i].masks.to(device)
                kinds = targets[i].kinds.to(device)
                cropped = (crop_masks(masks, points) > 0.5).float()  # (V, M, h, w)
                area = cropped.flatten(2).mean(-1)
                for v in range(n_local):
                    row = v * b + i
                    keep = area[v] >= max(lc.min_mask_area, 1e-9)
                    kept += int(keep.sum())
                    for kind, queries in ((SEMANTIC, slice(0, n_sem)), (INSTANCE, slice(n_sem, None))):
                        sel = torch.nonzero(keep & (kinds == kind)).flatten()
                        if sel.numel() == 0:
                            continue
                        q_idx, t_idx = hungarian(dice_cost(prob[row, queries], cropped[v, sel].flatten(1)))
                        for q, t in zip(q_idx.tolist(), t_idx.tolist()):
                            pairs.append((row, queries.start + q, i, int(sel[t]), cropped[v, sel[t]]))
            if pairs:
                p_rows = torch.tensor([p[0] for p in pairs], device=device)
                p_queries = torch.tensor([p[1] for p in pairs], device=device)
                target = torch.stack([p[4] for p in pairs]).flatten(1)
                p = prob[p_rows, p_queries]
                soft = (2 * (p * target).sum(-1) + 1) / (p.sum(-1) + target.sum(-1) + 1)
                hard_p = (p > 0.5).float()
                hard = 2 * (hard_p * target).sum(-1) / (hard_p.sum(-1) + target.sum(-1)).clamp_min(1)
                sums = [soft.sum(), hard.sum()]
            else:
                sums = [torch.zeros((), device=device)] * 2
            stats = torch.stack([torch.tensor(float(len(pairs)), device=device), sums[0].float(), sums[1].float(),
                                 torch.tensor(float(kept), device=device),
                                 torch.tensor(float(b * n_local), device=device),
                                 torch.tensor(float(sum(t.masks.shape[0] for t in targets)), device=device),
                                 torch.tensor(float(b), device=device)]).double()
            distributed_sum(stats)
        n_pairs = int(stats[0].item())

        # ---- losses on matched pairs ----
        if pairs:
            rows, queries = p_rows, p_queries
            s_q = s_logits[rows, queries]  # (P, K)
            t_q = torch.stack([t_logits[p[2]][p[3]] for p in pairs])
            sd = loss_fn(s_q[:, None], t_q[:, None], teacher_temp, n_pairs, world_size)
            logits = s_masks[rows, queries]  # (P, h, w)
            target = torch.stack([p[4] for p in pairs])
            coords = []
            for r in range(logits.shape[0]):
                i = pairs[r][2]
                g = _sample_generator(cfg.seed, int(batch["index"][i]), batch["crops"][i], (pairs[r][0] // b, pairs[r][1]))
                coords.append(uncertain_points(logits[r:r + 1], lc.num_points, lc.oversample_ratio,
                                               lc.importance_ratio, g))
            coords = torch.cat(coords)
            point_logits = point_sample(logits.float(), coords)
            point_target = (point_sample(target, coords) > 0.5).float()
            scale = world_size / max(n_pairs, 1)
            dice = dice_loss(point_logits, point_target).sum() * scale
            bce = bce_loss(point_logits, point_target).sum() * scale
            loss = lc.querysd_weight * sd + lc.dice_weight * dice + lc.bce_weight * bce
            t_pts = t_q[:, None]
        else:  # keep every parameter in the graph (DDP expects gradients)
            zero = 0.0 * (s_logits.float().sum() + s_masks.float().sum())
            sd = dice = bce = loss = zero
            t_pts = s_logits.new_zeros((0, 1, s_logits.shape[-1])).float()
        if pairs:
            loss = loss + 0.0 * (s_logits.float().sum() + s_masks.float().sum())
        denominator = max(float(stats[0]), 1.0)
        with torch.no_grad():  # each process holds its share of the global means: add them up
            terms = torch.stack([t.detach().float().reshape(()) for t in (sd, dice, bce)]) / world_size
            terms = distributed_sum(terms).tolist()
        stats_out = {
            "loss_querysd": terms[0],
            "loss_dice": terms[1],
            "loss_bce": terms[2],
            "match_dice": float(stats[1]) / denominator,
            "match_dice_binary": float(stats[2]) / denominator,
            "queries_matched": float(stats[0]) / max(float(stats[4]), 1.0),
            "teacher_masks": float(stats[5]) / max(float(stats[6]), 1.0),
            "teacher_masks_in_view": float(stats[3]) / max(float(stats[4]), 1.0),
            **getattr(loss_fn, "last_stats", {}),
        }
        return StepOutput(loss, stats_out, after_step=lambda: loss_fn.update_center(t_pts))

    # -- evaluation --------------------------------------------------------------------
    def embedder(self, teacher: nn.Module,
                 kind: str = "logits") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``embed(features (h, w, C), queries) -> (h, w, D)``: per pixel, the [SEM] queries'
        head logits (``kind="logits"``) or bottlenecks weighted by ``softmax_q`` of their mask
        logits (the UniAP queries are not used)."""
        n_sem = self.cfg.model.num_semantic_queries

        @torch.no_grad()
        def embed(features: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
            out = teacher(features[None].float())
            masks = out["masks"][0, :n_sem].float()  # (S, 2h, 2w)
            masks = torch.nn.functional.avg_pool2d(masks[None], 2)[0]  # back to the feature grid
            q = out["queries"][0, :n_sem]
            vec = teacher.head(q) if kind == "logits" else teacher.head.bottleneck(q)
            weights = masks.softmax(0)
            return torch.einsum("shw,sd->hwd", weights, vec.float())

        return embed
