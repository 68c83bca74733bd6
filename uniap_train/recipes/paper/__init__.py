"""The paper's recipe: a mask decoder with semantic and instance queries, Dice-matched QuerySD.

Per training step (B images; view 0 the whole image for the teacher, views 1..N local crops
for the student and, with ``crops.student_whole``, the whole image once more for the student;
the backbone frozen, the neck, pixel decoder, decoder and heads trained):

1. **Teacher** (EMA of the student, no gradient): UniAP with ``semantic=True`` on the teacher's
   fine map (:meth:`~uniap_train.decoder.PaperModel.teacher_maps`), either on its cells
   (``uniap.nodes: fine``) or on the image's watershed superpixels, each pooling the fine map
   under it (``superpixels``, :mod:`uniap_train.regions`: pixel-accurate masks).  Every level's
   instance clusters and semantic groups of at least ``uniap.min_size`` nodes (and, with
   ``uniap.contours``, the watershed's contour regions) become teacher masks, each distinct
   mask once per set; each mask's query is the mean of the teacher's mask features over it, and
   the teacher head gives its logits.
2. **Student**: the model on every student view (local crops in one batch, the whole views in
   another): per query and per prediction (every decoder layer with ``model.deep_supervision``,
   else the last) mask logits and a score logit, and head logits of the last.
3. **Matching** per view and prediction: the teacher's masks in the view's frame
   (:class:`TeacherMasks`), those covering less than ``loss.min_mask_area`` of it dropped;
   [SEM] queries are matched to semantic masks (every level's groups, or with
   ``loss.semantic_targets: partition`` one level's) and [INS] queries to instance masks by the
   Hungarian algorithm on Dice.
4. **Loss** over the global batch: ``querysd_weight`` x QuerySD (DINO's cross-entropy between
   the centred, sharpened teacher logits of a teacher mask and the student logits of its
   query, last prediction) + per prediction ``dice_weight`` x Dice + ``bce_weight`` x BCE of
   the matched masks (at every target point, or at ``num_points`` points sampled as
   Mask2Former does, seeded per sample) + ``score_weight`` x BCE of every query's score
   against the IoU of its binarised mask with its match (0 for an unmatched query: SAM's
   ``predicted_iou`` and Mask2Former's no-object class in one), or with
   ``loss.score_target: matched`` against 1 for every matched query (the no-object class
   alone, which does not rank large, easily matched masks first).  Mask terms are normalised by
   the number of matched pairs, the score term by the number of views, both summed over
   processes.
"""

from __future__ import annotations

import zlib
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import uniap

from ...teacher import calibrated_levels, cell_edges, superpixel_features, teacher_hierarchy
from ..base import Recipe, StepOutput
from ..released.loss import QuerySDLoss, distributed_sum
from .model import PaperModel
from .loss import (
    bce_loss,
    crop_masks,
    dice_cost,
    dice_loss,
    hungarian,
    point_sample,
    uncertain_points_many,
    view_points,
)

__all__ = ["PaperRecipe", "TeacherMasks", "teacher_masks", "region_masks"]

SEMANTIC, INSTANCE = 0, 1
TARGET_SCALE = 2  # superpixel targets: points per mask cell and side (sharper than the mask grid)


class TeacherMasks:
    """One image's teacher masks and the set (semantic or instance) each belongs to.

    Either ``masks`` (M, H, W) on the teacher's padded fine grid (``uniap.nodes: fine``; a view's
    targets are resampled from it) or ``members`` (M, N): the superpixels each mask holds
    (``superpixels``; a view's targets are looked up at its points' superpixels).
    """

    def __init__(self, kinds: torch.Tensor, masks: torch.Tensor | None = None,
                 members: torch.Tensor | None = None) -> None:
        self.kinds = kinds  # (M,) SEMANTIC or INSTANCE
        self.masks = masks  # (M, H, W) float 0/1
        self.members = members  # (M, N) float 0/1

    def __len__(self) -> int:
        return int(self.kinds.shape[0])

    def in_view(self, view, teacher, rows: int, cols: int, ids: torch.Tensor | None = None,
                min_area: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """The masks covering at least ``min_area`` of a student view, in the view's frame.

        ``ids`` (rows, cols): the superpixel under each target point (-1 outside the image)
        for superpixel masks; otherwise the fine-grid masks are resampled at the view's cells
        (``view``, ``teacher``: their :class:`~uniap_train.crops.Crop` s).

        Returns
        -------
        maps : tensor (K, rows, cols), float 0/1
        index : LongTensor (K,)
            Which of the masks they are.
        """
        if self.members is not None:
            inside = ids >= 0
            # a mask's share of the view from the superpixels' point counts: no map is built for
            # the (many) masks that miss the view or barely touch it
            counts = torch.bincount(ids[inside].long(), minlength=self.members.shape[1]).to(self.members.dtype)
            index = torch.nonzero(self.members @ counts >= max(min_area * ids.numel(), 1e-9)).flatten()
            padded = F.pad(self.members[index], (0, 1))  # column N: outside the image, in no mask
            where = torch.where(inside, ids, torch.full_like(ids, self.members.shape[1]))
            return padded[:, where.long()], index
        points = torch.from_numpy(view_points(view, teacher, rows, cols)).to(self.masks.device)
        maps = (crop_masks(self.masks, points[None])[0] > 0.5).float()
        index = torch.nonzero(maps.flatten(1).mean(-1) >= max(min_area, 1e-9)).flatten()
        return maps[index], index


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


def _partition_level(h, limit: int, weights: np.ndarray | None, min_share: float) -> int:
    """The finest level of ``h`` with at most ``limit`` semantic groups covering ``min_share`` of
    the nodes' total weight (``weights``: pixels per node; None: one per node), else the coarsest."""
    for k, lv in enumerate(h.levels):
        sem = np.asarray(lv.semantic_labels).reshape(-1)
        mass = np.bincount(sem, weights=None if weights is None else np.asarray(weights, np.float64).reshape(-1))
        if int(np.count_nonzero(mass >= min_share * mass.sum())) <= limit:
            return k
    return len(h.levels) - 1


def _hierarchy_sets(h, min_size: int, extra_instances: list[torch.Tensor] = (), *, partition: int = 0,
                    weights: np.ndarray | None = None, min_share: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct semantic then instance masks (M, P) bool over a hierarchy's nodes, and their kinds.

    The semantic masks are every level's groups, or with ``partition`` > 0 one level's: the
    finest whose groups covering ``min_share`` of the image (nodes weighted by ``weights``) are at
    most ``partition`` (:func:`_partition_level`), so the [SEM] queries learn a partition."""
    sets = {SEMANTIC: [], INSTANCE: list(extra_instances)}
    semantic_levels = range(len(h.levels)) if partition <= 0 else \
        [_partition_level(h, partition, weights, min_share)]
    for k, lv in enumerate(h.levels):
        labels = torch.as_tensor(np.asarray(lv.labels)).long().reshape(-1)
        ids = torch.nonzero(torch.as_tensor(np.asarray(lv.sizes)) >= min_size).flatten()
        sets[INSTANCE].append(labels[None] == ids[:, None])
        if k in semantic_levels:
            sem = torch.as_tensor(np.asarray(lv.semantic_labels)).long().reshape(-1)
            gids = torch.nonzero(torch.bincount(sem) >= min_size).flatten()
            sets[SEMANTIC].append(sem[None] == gids[:, None])
    stacks, kinds = [], []
    for kind in (SEMANTIC, INSTANCE):
        m = _distinct(torch.cat(sets[kind]))
        stacks.append(m)
        kinds.append(torch.full((m.shape[0],), kind, dtype=torch.long))
    return torch.cat(stacks), torch.cat(kinds)


def teacher_masks(hierarchies: list, shape: tuple[int, int], min_size: int, *, partition: int = 0,
                  min_share: float = 0.0) -> list[TeacherMasks]:
    """Every level's instance clusters and semantic groups as masks on an (H, W) padded grid.

    Parameters
    ----------
    hierarchies : list of uniap.Hierarchy
        With semantic groups, of grids at the top-left of the padded grid.
    shape : (H, W)
    min_size : int
        Smallest cluster or group (cells) that gives a mask.
    partition, min_share :
        The semantic masks of one level only (:func:`_hierarchy_sets`).
    """
    out = []
    for h in hierarchies:
        rows, cols = h.shape
        m, kinds = _hierarchy_sets(h, min_size, partition=partition, min_share=min_share)
        m = m.reshape(-1, rows, cols)
        padded = torch.zeros((m.shape[0],) + tuple(shape), dtype=torch.float32)
        padded[:, :rows, :cols] = m.float()
        out.append(TeacherMasks(kinds, masks=padded))
    return out


def region_masks(h, min_size: int, contours: np.ndarray | None = None, *, partition: int = 0,
                 sizes: np.ndarray | None = None, min_share: float = 0.0) -> TeacherMasks:
    """A superpixel graph's hierarchy as teacher masks (sets of superpixels), plus the contour
    regions (``contours`` (K, N): a label per superpixel per cut) as instance masks; with
    ``partition`` > 0 the semantic masks of one level (``sizes``: pixels per superpixel;
    :func:`_hierarchy_sets`)."""
    extra = []
    for cut in ([] if contours is None else contours):
        cut = torch.as_tensor(np.asarray(cut)).long()
        extra.append(cut[None] == torch.arange(int(cut.max()) + 1)[:, None])
    members, kinds = _hierarchy_sets(h, min_size, extra, partition=partition, weights=sizes, min_share=min_share)
    return TeacherMasks(kinds, members=members.float())


def _sample_generator(seed: int, index: int, crops, extra: tuple = ()) -> torch.Generator:
    """A CPU generator seeded by the sample itself (its image, the boxes drawn for it, ``extra``)."""
    text = repr((int(seed), int(index), [(c.box, c.flip) for c in crops], tuple(int(e) for e in extra)))
    return torch.Generator().manual_seed(zlib.crc32(text.encode()))


class PaperRecipe(Recipe):
    """Builds the paper's student model and loss; computes one step's loss.

    Parameters
    ----------
    cfg : TrainConfig
    in_dim : int
        Backbone feature dimension C.
    """

    name = "paper"
    serves_predictor = True  # a mask decoder: uniap-predict and uniap-eval --segmenter checkpoint
    metric_columns = ("loss_querysd", "loss_dice", "loss_bce", "loss_score", "match_dice", "match_dice_binary",
                      "match_dice_whole", "score_iou_error", "queries_matched", "teacher_masks",
                      "teacher_masks_in_view")

    def __init__(self, cfg, in_dim: int, backbone=None) -> None:
        self.cfg = cfg
        self.in_dim = int(in_dim)
        self.backbone = backbone
        # backbone.trainable: the student owns a copy of the ViT and gets pixel views
        self.trains_backbone = bool(cfg.backbone.trainable)
        u = cfg.uniap
        self.uniap_options = dict(levels=tuple(u.levels), min_size=u.min_size, preset=u.preset,
                                  connectivity=u.connectivity)
        m = cfg.model
        self.needs_pixels = m.pixel_decoder == "fpn" and m.pixel_stem > 0

    # -- construction ------------------------------------------------------------------
    def view_sizes(self) -> dict[str, int]:
        """View sides (pixels) that must be multiples of the patch size, by config key."""
        return {"teacher_size": self.cfg.crops.teacher_size, "local_size": self.cfg.crops.local_size}

    def build_dataset(self, paths, backbone, pipeline_extractor):
        from ...data import PaperDataset

        u = self.cfg.uniap
        regions = ({"size": u.superpixel_size, "contours": u.contours, "target_scale": TARGET_SCALE}
                   if u.nodes == "superpixels" else None)
        return PaperDataset(paths, self.cfg.crops, self.cfg.seed, self.cfg.data.max_side,
                            pipeline_extractor=pipeline_extractor, crop_features=backbone.crop_features,
                            patch_size=backbone.patch_size, pixels=self.needs_pixels, regions=regions)

    def build_student(self) -> nn.Module:
        vit = None
        if self.trains_backbone:
            from ...backbone import TrainableVit

            vit = TrainableVit.from_extractor(self.backbone.extractor)
        return PaperModel(self.in_dim, self.cfg.model, vit)

    @classmethod
    def predictor_model(cls, in_dim: int, cfg, vit: nn.Module | None) -> nn.Module:
        """The EMA teacher's model, for :class:`uniap_train.predict.Predictor`."""
        return PaperModel(in_dim, cfg.model, vit)

    def param_groups(self, model: nn.Module) -> list[dict]:
        """AdamW groups; a trainable backbone's at ``backbone.lr_scale`` of the learning rate."""
        from ...utils import get_params_groups

        scales = {"backbone.": self.cfg.backbone.lr_scale} if self.trains_backbone else None
        return get_params_groups(model, scales)

    def build_loss(self) -> nn.Module:
        lc = self.cfg.loss
        return QuerySDLoss(self.cfg.model.out_dim, lc.student_temp, lc.center_momentum, lc.centering)

    # -- the teacher ---------------------------------------------------------------------
    @torch.no_grad()
    def teacher_targets(self, teacher: nn.Module, grid: torch.Tensor, cells: torch.Tensor,
                        pixels: torch.Tensor | None = None, regions: list[dict] | None = None
                        ) -> tuple[list[TeacherMasks], list[torch.Tensor]]:
        """Teacher masks and their query logits for a batch of whole-image grids.

        Parameters
        ----------
        grid : tensor (B, T, T, C)
            The teacher views' features (zero where padded); uint8 pixels (B, T p, T p, 3)
            with a trainable backbone.
        cells : LongTensor (B, 2)
            Rows and columns of each grid that hold the image.
        pixels : uint8 tensor (B, T p, T p, 3), optional
            The teacher views' pixels (a model with a pixel stem).
        regions : list (B) of dict, optional
            The images' superpixels (``uniap.nodes: superpixels``; :class:`~uniap_train.data.PaperDataset`).
        """
        fine, mask_features = teacher.teacher_maps(grid, pixels)
        if regions is not None:
            return self._region_targets(teacher, fine, mask_features, regions)
        scale = 2  # the fine map is the patch grid upsampled twice
        parts = [fine[i, : int(r) * scale, : int(c) * scale].float() for i, (r, c) in enumerate(cells.tolist())]
        u = self.cfg.uniap
        if u.edge_fractions:  # thresholds of each image's own similarities: one call per image
            hierarchies = []
            for part in parts:
                x = part.reshape(-1, part.shape[-1]).cpu().numpy()
                edges = cell_edges(*part.shape[:2])
                levels = calibrated_levels(x, edges, u.edge_fractions, preset=u.preset)
                h = teacher_hierarchy(x, edges, levels, min_size=u.min_size, preset=u.preset)
                hierarchies.append(_on_grid(h, part.shape[:2]))
        else:
            backend = "torch" if uniap.backends.available().get("torch") is None else "auto"
            extra = {"exact": True} if fine.is_cuda else {}
            hierarchies = uniap.segment(parts, semantic=True, backend=backend, **extra, **self.uniap_options)
        targets = teacher_masks(hierarchies, tuple(fine.shape[1:3]), self.cfg.uniap.min_size,
                                **self._semantic_options())
        logits = []
        for t, feats in zip(targets, mask_features):
            t.masks = t.masks.to(feats.device)
            t.kinds = t.kinds.to(feats.device)
            m = t.masks.flatten(1)
            pooled = (m @ feats.flatten(1).T.float()) / m.sum(1, keepdim=True).clamp_min(1)
            logits.append(teacher.head(pooled.to(feats.dtype)).float())
        return targets, logits

    def _region_targets(self, teacher: nn.Module, fine: torch.Tensor, mask_features: torch.Tensor,
                        regions: list[dict]) -> tuple[list[TeacherMasks], list[torch.Tensor]]:
        """UniAP on each image's superpixels, each the sum of the fine map under its pixels."""
        u = self.cfg.uniap
        targets, logits = [], []
        for i, r in enumerate(regions):
            sizes = torch.as_tensor(r["sizes"], device=fine.device)
            n = int(sizes.shape[0])
            x = superpixel_features(fine[i].reshape(-1, fine.shape[-1]).float(), r["pool"], n).cpu().numpy()
            levels = (calibrated_levels(x, r["edges"], u.edge_fractions, preset=u.preset) if u.edge_fractions
                      else u.levels)
            h = teacher_hierarchy(x, r["edges"], levels, min_size=u.min_size, preset=u.preset)
            t = region_masks(h, u.min_size, r.get("contours"), **self._semantic_options(sizes))
            t.members, t.kinds = t.members.to(fine.device), t.kinds.to(fine.device)
            sums = superpixel_features(mask_features[i].flatten(1).T.float(), r["pool"], n)  # (N, D)
            pooled = (t.members @ sums) / (t.members @ sizes).clamp_min(1)[:, None]
            logits.append(teacher.head(pooled.to(mask_features.dtype)).float())
            targets.append(t)
        return targets, logits

    def _semantic_options(self, sizes: torch.Tensor | None = None) -> dict:
        """``loss.semantic_targets``: every level's semantic groups, or one level's partition
        (of nodes weighted by ``sizes``, the superpixels' pixels; None: cells, one each)."""
        lc = self.cfg.loss
        if lc.semantic_targets != "partition":
            return {}
        options = {"partition": int(self.cfg.model.num_semantic_queries), "min_share": float(lc.min_mask_area)}
        if sizes is not None:
            options["sizes"] = sizes.cpu().numpy()
        return options

    # -- one step ----------------------------------------------------------------------
    def _student_groups(self, batch: dict, grids: list[torch.Tensor]) -> list[dict]:
        """The student's views grouped by size: the local crops, then the whole views."""
        n_views = len(grids) - 1
        n_local = self.cfg.crops.num_local
        pixels = _pixels(batch) if self.needs_pixels else None
        if pixels is not None:
            pixels = [p.to(grids[0].device, non_blocking=True) for p in pixels]
        groups = []
        for views in (list(range(1, 1 + n_local)), list(range(1 + n_local, 1 + n_views))):
            if not views:
                continue
            groups.append({
                "views": views,
                "grids": torch.cat([grids[v] for v in views]),
                "pixels": torch.cat([pixels[v] for v in views]) if pixels is not None else None,
            })
        return groups

    def _frames(self, batch: dict, targets: list[TeacherMasks], groups: list[dict], outputs: list[dict],
                regions: list[dict] | None, device) -> list["_Frame"]:
        """Every student view's teacher masks in its own frame (those covering ``loss.min_mask_area`` of it)."""
        frames = []
        min_area = max(self.cfg.loss.min_mask_area, 1e-9)
        b = len(batch["crops"])
        for gi, (group, out) in enumerate(zip(groups, outputs)):
            rows, cols = out["masks"].shape[-2:]
            for k, v in enumerate(group["views"]):
                for i in range(b):
                    crops = batch["crops"][i]
                    if regions is not None:
                        ids = torch.as_tensor(regions[i]["ids"][v - 1], device=device)
                        sharp, index = targets[i].in_view(crops[v], crops[0], *ids.shape, ids=ids, min_area=min_area)
                        soft = F.adaptive_avg_pool2d(sharp, (rows, cols)) if sharp.shape[0] else \
                            sharp.new_zeros((0, rows, cols))
                    else:
                        sharp, index = targets[i].in_view(crops[v], crops[0], rows, cols, min_area=min_area)
                        soft = sharp
                    frames.append(_Frame(gi, k * b + i, i, v, soft, sharp, targets[i].kinds[index], index))
        return frames

    @staticmethod
    @torch.no_grad()
    def _match(frames: list["_Frame"], masks: list[torch.Tensor], num_semantic: int, score_target: str = "iou"
               ) -> tuple[list[tuple], list[torch.Tensor]]:
        """Hungarian matching of one prediction's masks (per group (rows, Q, h, w)) in every frame.

        Returns the matches ``(frame, queries, teacher masks)`` (LongTensors) and, per group,
        each query's score target (rows, Q): the IoU of its binarised mask with its match
        (``score_target="iou"``) or 1 (``"matched"``), 0 for a query left unmatched."""
        matches, scores = PaperRecipe._match_levels(frames, [masks], num_semantic, score_target)
        return matches[0], scores[0]

    @staticmethod
    @torch.no_grad()
    def _match_levels(frames: list["_Frame"], levels: list[list[torch.Tensor]], num_semantic: int,
                      score_target: str = "iou") -> tuple[list[list[tuple]], list[list[torch.Tensor]]]:
        """:meth:`_match` of every prediction level at once: the Dice matrices of all levels and
        frames (and the masks' kinds) reach the host in one copy and the assignments return in
        one, instead of a copy and a sync per frame, kind and level (64+ a step at the paper's batch)."""
        device = levels[0][0].device if levels and levels[0] else torch.device("cpu")
        blocks, shapes = [], []
        for masks in levels:
            for f in frames:
                prob = masks[f.group][f.row].detach().float().sigmoid().flatten(1)
                d = dice_cost(prob, f.soft.flatten(1))  # (Q, M): every teacher mask, split by kind on the host
                blocks.append(d.flatten())
                shapes.append(tuple(d.shape))
        kinds = [f.kinds.reshape(-1) for f in frames]
        flat = torch.cat([b.double() for b in blocks] + [k.double() for k in kinds]) if blocks else \
            torch.zeros(0, dtype=torch.float64)
        host = flat.cpu().numpy()  # the one device-to-host copy
        offset, dice_host = 0, []
        for shape in shapes:
            size = shape[0] * shape[1]
            dice_host.append(host[offset: offset + size].reshape(shape))
            offset += size
        kinds_host = []
        for k in kinds:
            kinds_host.append(host[offset: offset + k.numel()].astype(np.int64))
            offset += k.numel()
        from scipy.optimize import linear_sum_assignment

        plan, pieces = [], []  # (level, frame, count) and the matched query / mask indices
        for li in range(len(levels)):
            for fi, f in enumerate(frames):
                dice = dice_host[li * len(frames) + fi]
                for kind, first, last in ((SEMANTIC, 0, num_semantic), (INSTANCE, num_semantic, dice.shape[0])):
                    sel = np.flatnonzero(kinds_host[fi] == kind)
                    if sel.size == 0 or last == first:
                        continue
                    rows, cols = linear_sum_assignment(1.0 - dice[first:last][:, sel])
                    if rows.size == 0:
                        continue
                    pieces += [rows.astype(np.int64) + first, sel[cols].astype(np.int64)]
                    plan.append((li, fi, rows.size))
        index = torch.from_numpy(np.concatenate(pieces) if pieces else np.zeros(0, np.int64))
        index = index.to(device, non_blocking=True)  # the one host-to-device copy
        out_matches: list[list[tuple]] = [[] for _ in levels]
        out_scores = [[m.new_zeros(m.shape[:2], dtype=torch.float32) for m in masks] for masks in levels]
        start = 0
        for (li, fi, n), j in zip(plan, range(0, len(pieces), 2)):
            f = frames[fi]
            q, t = index[start: start + n], index[start + n: start + 2 * n]
            start += 2 * n
            prob = levels[li][f.group][f.row].detach().float().sigmoid().flatten(1)
            hard, truth = prob[q] > 0.5, f.soft.flatten(1)[t] > 0.5
            iou = (hard & truth).sum(-1).float() / (hard | truth).sum(-1).clamp_min(1).float()
            # "matched": Mask2Former's object class, whatever the mask's size or IoU
            out_scores[li][f.group][f.row, q] = torch.ones_like(iou) if score_target == "matched" else iou
            out_matches[li].append(_Match(f, q, t, pieces[j]))
        return out_matches, out_scores

    def loss(self, batch: dict, grids: list[torch.Tensor], student: nn.Module, teacher: nn.Module,
             loss_fn: QuerySDLoss, teacher_temp: float, world_size: int, autocast: Any) -> StepOutput:
        """The loss of one batch (see the module docstring).

        Parameters
        ----------
        batch : dict
            From :func:`uniap_train.data.collate_views` of :class:`~uniap_train.data.PaperDataset`
            samples (``crops``, ``teacher_cells``, ``index``, maybe ``pixels`` and ``regions``).
        grids : list (1 + V) of tensor (B, h_v, w_v, C)
            Frozen features: the teacher's view, then the student's views.
        """
        lc, cfg = self.cfg.loss, self.cfg
        b = grids[0].shape[0]
        device = grids[0].device
        pixels = _pixels(batch) if self.needs_pixels else None
        regions = batch.get("regions")
        with torch.no_grad(), autocast():
            t_pixels = pixels[0].to(device) if pixels is not None else None
            targets, t_logits = self.teacher_targets(teacher, grids[0], batch["teacher_cells"], t_pixels, regions)
        groups = self._student_groups(batch, grids)
        with autocast():
            outputs = student([g["grids"] for g in groups], [g["pixels"] for g in groups])
        frames = self._frames(batch, targets, groups, outputs, regions, device)

        # ---- per prediction (the last first, then the earlier ones): matching, mask and score terms ----
        predictions = [[(o["masks"], o["scores"])] + [(a["masks"], a["scores"]) for a in o["aux"]] for o in outputs]
        n_levels = len(predictions[0])
        level_matches, level_scores = self._match_levels(
            frames, [[p[level][0] for p in predictions] for level in range(n_levels)], cfg.model.num_semantic_queries,
            lc.score_target)
        with torch.no_grad():
            counts = [float(sum(len(q) for _, q, _ in m)) for m in level_matches]
            monitors = _match_monitors(level_matches[0], [p[0][0] for p in predictions], len(groups) - 1
                                       if cfg.crops.student_whole else -1)
            score_error = sum(float((p[0][1].detach().float().sigmoid() - level_scores[0][gi]).abs().sum())
                              for gi, p in enumerate(predictions))
            score_count = sum(p[0][1].numel() for p in predictions)
            stats = torch.tensor(counts + monitors + [score_error, float(score_count), float(sum(len(f.index) for f in frames)),
                                                      float(len(frames)), float(sum(len(t) for t in targets)), float(b)],
                                 device=device, dtype=torch.float64)
            distributed_sum(stats)
        pairs_global = stats[:n_levels].tolist()
        soft_dice, hard_dice, whole_dice, whole_n, score_error, score_count, kept, n_frames, n_masks, n_images = \
            stats[n_levels:].tolist()

        # every output in the graph, so DDP sees a gradient for every parameter
        zero = 0.0 * sum(o["masks"].float().sum() + o["scores"].float().sum() + o["logits"].float().sum()
                         + sum(a["masks"].float().sum() + a["scores"].float().sum() for a in o["aux"])
                         for o in outputs)
        dice_total = bce_total = score_total = zero
        for level in range(n_levels):
            scale = world_size / max(pairs_global[level], 1.0)
            for gi, pred in enumerate(predictions):
                matches = [m for m in level_matches[level] if m[0].group == gi]
                if matches:
                    logits, target = self._matched(pred[level][0], matches, batch, level)
                    dice_total = dice_total + dice_loss(logits, target).sum() * scale
                    bce_total = bce_total + bce_loss(logits, target).sum() * scale
                scores = pred[level][1].float()
                score_total = score_total + F.binary_cross_entropy_with_logits(
                    scores, level_scores[level][gi], reduction="none").mean(-1).sum() * (world_size / max(n_frames, 1.0))
        final = level_matches[0]
        if final:
            s_q = torch.cat([_gather(outputs[gi]["logits"], [m for m in final if m[0].group == gi])
                             for gi in range(len(outputs))])
            final = [m for gi in range(len(outputs)) for m in final if m[0].group == gi]  # in s_q's order
            t_q = torch.cat([t_logits[f.image][f.index[t]] for f, _, t in final])
            sd = loss_fn(s_q[:, None], t_q[:, None], teacher_temp, int(pairs_global[0]), world_size)
            t_pts = t_q[:, None]
        else:
            sd = zero
            t_pts = outputs[0]["logits"].new_zeros((0, 1, outputs[0]["logits"].shape[-1])).float()
        loss = (lc.querysd_weight * sd + lc.dice_weight * dice_total + lc.bce_weight * bce_total
                + lc.score_weight * score_total + zero)
        with torch.no_grad():  # each process holds its share of the global means: add them up
            parts = torch.stack([t.detach().float().reshape(()) for t in (sd, dice_total, bce_total, score_total)])
            parts = distributed_sum(parts / world_size).tolist()
        n_final = max(pairs_global[0], 1.0)
        stats_out = {
            "loss_querysd": parts[0],
            "loss_dice": parts[1],
            "loss_bce": parts[2],
            "loss_score": parts[3],
            "match_dice": soft_dice / n_final,
            "match_dice_binary": hard_dice / n_final,
            "match_dice_whole": whole_dice / whole_n if whole_n else float("nan"),
            "score_iou_error": score_error / max(score_count, 1.0),
            "queries_matched": pairs_global[0] / max(n_frames, 1.0),
            "teacher_masks": n_masks / max(n_images, 1.0),
            "teacher_masks_in_view": kept / max(n_frames, 1.0),
            **getattr(loss_fn, "last_stats", {}),
        }
        return StepOutput(loss, stats_out, after_step=lambda: loss_fn.update_center(t_pts))

    def _matched(self, masks: torch.Tensor, matches: list[tuple], batch: dict, level: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and targets of the matched pairs of one group, at the points the mask losses use:
        every cell of the mask grid against the teacher mask's share of it (``loss.num_points: 0``),
        or Mask2Former's sampled points (seeded per sample, so processes agree)."""
        lc = self.cfg.loss
        logits = _gather(masks, matches).float()  # (P, h, w)
        if not lc.num_points:
            target = torch.cat([f.soft[t] for f, _, t in matches])
            return logits.flatten(1), target.flatten(1)
        sharp = torch.cat([f.sharp[t] for f, _, t in matches])
        generators = []  # one per matched query, seeded by the sample: processes agree
        for m in matches:
            f, q = m[0], m[1]
            i = f.image
            queries = m.host_queries if isinstance(m, _Match) else q.tolist()
            for query in queries:
                generators.append(_sample_generator(self.cfg.seed, int(batch["index"][i]), batch["crops"][i],
                                                    (f.view, int(query), level)))
        coords = uncertain_points_many(logits, lc.num_points, lc.oversample_ratio, lc.importance_ratio, generators)
        return point_sample(logits, coords), (point_sample(sharp, coords) > 0.5).float()

    # -- evaluation --------------------------------------------------------------------
    def embedder(self, teacher: nn.Module,
                 kind: str = "logits") -> Callable[..., torch.Tensor]:
        """``embed(features (h, w, C), queries, pixels=None) -> (h, w, D)``: per pixel, the
        [SEM] queries' head logits (``kind="logits"``) or bottlenecks weighted by ``softmax_q``
        of their mask logits (the UniAP queries are not used; ``pixels`` (h p, w p, 3) for a
        model with a pixel stem)."""
        n_sem = self.cfg.model.num_semantic_queries

        @torch.no_grad()
        def embed(features: torch.Tensor, queries: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
            out = teacher(features[None].float(), None if pixels is None else pixels[None])
            masks = out["masks"][0, :n_sem].float()  # (S, 2h, 2w)
            masks = torch.nn.functional.avg_pool2d(masks[None], 2)[0]  # back to the feature grid
            q = out["queries"][0, :n_sem]
            vec = teacher.head(q) if kind == "logits" else teacher.head.bottleneck(q)
            weights = masks.softmax(0)
            return torch.einsum("shw,sd->hwd", weights, vec.float())

        return embed


def _on_grid(h, shape: tuple[int, int]):
    """A graph hierarchy of a grid's cells seen as a grid hierarchy (``h.shape`` the grid's)."""
    from types import SimpleNamespace

    return SimpleNamespace(shape=tuple(shape), levels=h.levels)


def _gather(values: torch.Tensor, matches: list[tuple]) -> torch.Tensor:
    """``values[row, query]`` of every match (frame, queries, teacher masks) of one group, in one
    indexing: one per frame would make the backward pass zero-fill a gradient of ``values``'
    whole size for each (most of a CPU step's time with hundreds of queries)."""
    if not matches:
        return values.new_zeros((0,) + tuple(values.shape[2:]))
    rows = torch.cat([torch.full_like(q, f.row) for f, q, _ in matches])
    return values[rows, torch.cat([q for _, q, _ in matches])]


def _pixels(batch: dict) -> list[torch.Tensor] | None:
    """The views' pixels: beside their features (``pixels``), or the views themselves (a ViT's)."""
    return batch.get("pixels", batch.get("views"))


class _Match(tuple):
    """A match ``(frame, queries, teacher masks)`` (unpacks as a 3-tuple) that also keeps its
    queries on the host (``host_queries``), so that point sampling needs no copy back."""

    def __new__(cls, frame: "_Frame", queries: torch.Tensor, masks: torch.Tensor, host_queries: np.ndarray):
        obj = super().__new__(cls, (frame, queries, masks))
        obj.host_queries = host_queries
        return obj


class _Frame:
    """One student view (``row`` of its size ``group``) of image ``image`` and the teacher's masks
    large enough in it: ``soft`` (K, h, w) on the view's mask grid (the share of each cell they
    cover), ``sharp`` at the target points, their ``kinds`` and ``index`` among the image's masks."""

    __slots__ = ("group", "row", "image", "view", "soft", "sharp", "kinds", "index")

    def __init__(self, group, row, image, view, soft, sharp, kinds, index) -> None:
        self.group, self.row, self.image, self.view = group, row, image, view
        self.soft, self.sharp, self.kinds, self.index = soft, sharp, kinds, index


@torch.no_grad()
def _match_monitors(matches: list[tuple], masks: list[torch.Tensor], whole_group: int) -> list[float]:
    """Sums over the matched pairs of their soft and binary Dice, and the whole view's soft Dice and count."""
    sums = []  # summed on the device, read back once
    whole_n = 0.0
    for f, q, t in matches:
        p = masks[f.group][f.row, q].detach().float().sigmoid().flatten(1)
        target = f.soft[t].flatten(1)
        soft = (2 * (p * target).sum(-1) + 1) / (p.sum(-1) + target.sum(-1) + 1)
        hp = (p > 0.5).float()
        hard = 2 * (hp * target).sum(-1) / (hp.sum(-1) + target.sum(-1)).clamp_min(1)
        whole = soft.sum() if f.group == whole_group else soft.new_zeros(())
        sums.append(torch.stack([soft.sum().double(), hard.sum().double(), whole.double()]))
        if f.group == whole_group:
            whole_n += len(q)
    soft_sum, hard_sum, whole_sum = torch.stack(sums).sum(0).tolist() if sums else (0.0, 0.0, 0.0)
    return [soft_sum, hard_sum, whole_sum, whole_n]
