"""The paper recipe's model: a neck, a pixel decoder, a Mask2Former-style decoder and heads.

:class:`PaperModel` is the trainable part of the student (and, as an EMA copy, the teacher).
It takes frozen patch features ``(B, h, w, C)`` (and, with ``model.pixel_stem``, the view's
pixels) and gives

* the neck's **fine map** ``(B, 2h, 2w, C)``: the features upsampled twice plus a residual
  adapter whose last convolution starts at zero, so at step 0 the teacher's UniAP sees the
  pretrained features unchanged (bilinearly upsampled);
* three **scales** of ``dim`` channels (coarse ``h/2``, ``h``, fine ``2h``) and the **mask
  features** (fine, ``dim`` channels), from one of two pixel decoders (``model.pixel_decoder``):
  ``fpn``, a feature pyramid (:class:`torchvision.ops.FeaturePyramidNetwork`, top-down with
  lateral connections, as Mask2Former's FPN baseline) over the three scales, whose finest input
  is the fine map joined with a small convolution stem on the pixels (:class:`PixelStem`: the
  edges that 8-pixel patches blur); or ``simple``, the ViTDet-style simple pyramid of
  per-scale projections (no top-down path, no pixels);
* per query (``num_semantic_queries`` [SEM] then ``num_instance_queries`` [INS]) a **mask
  logit map** on the fine grid, a **score** logit (the query's predicted IoU with the teacher
  mask it matches, as SAM's ``predicted_iou``), the decoder's **query embedding** and the
  **head logits** (DINO head: 3-layer MLP, L2-normalised bottleneck, weight-normed
  prototypes); with ``model.deep_supervision`` also the masks and scores predicted before the
  first layer and after every layer but the last (``aux``), each of which gets the mask
  losses (Mask2Former's auxiliary losses).

The decoder follows Mask2Former (Cheng et al., CVPR 2022, ``mask2former/modeling/
transformer_decoder/mask2former_transformer_decoder.py``): learnable query features and
positional embeddings, per layer masked cross-attention to one scale (round robin, coarse
first; a query attends only where its previous mask prediction is above 0.5, everywhere when
that is empty), then self-attention and a feed-forward layer, each residual and
post-LayerNorm; masks are ``mask_embed(norm(q)) . mask_features``.  It is written on
``torch.nn.MultiheadAttention``: see docs/training.md for why not ``transformers``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..released.model import DINOHead

__all__ = ["SimpleNeck", "PixelStem", "PixelDecoder", "MaskDecoder", "PaperModel", "sine_position"]


def _groups(channels: int) -> int:
    for g in (32, 16, 8, 4, 2):
        if channels % g == 0:
            return g
    return 1


class SimpleNeck(nn.Module):
    """Frozen features (B, C, h, w) -> fine map (B, C, 2h, 2w), three scales and mask features.

    Parameters
    ----------
    in_dim : int
        C, the backbone's feature dimension.
    dim : int
        Width of the projected scales and of the mask features.
    pyramid : bool
        Also build the simple pyramid's projections (``model.pixel_decoder: simple``); without
        them the neck gives the fine map only (:meth:`fine`) and a :class:`PixelDecoder` the rest.
    """

    def __init__(self, in_dim: int, dim: int, pyramid: bool = True) -> None:
        super().__init__()
        # No bias where a GroupNorm follows (it would cancel it: its exact gradient is 0, and
        # AdamW would turn rounding noise into steps).
        self.adapter = nn.Sequential(nn.Conv2d(in_dim, in_dim, 3, padding=1), nn.GELU(),
                                     nn.Conv2d(in_dim, in_dim, 1, bias=False))
        nn.init.zeros_(self.adapter[-1].weight)
        if pyramid:
            self.proj = nn.ModuleList([
                nn.Sequential(nn.Conv2d(in_dim, dim, 1, bias=False), nn.GroupNorm(_groups(dim), dim))
                for _ in range(3)
            ])
            self.mask_features = nn.Conv2d(dim, dim, 3, padding=1)

    def fine(self, x: torch.Tensor) -> torch.Tensor:
        """The fine map (B, C, 2h, 2w): upsampled features plus the (zero-initialised) adapter."""
        up = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return up + self.adapter(up)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """``(fine, [coarse, mid, fine] projected, mask_features)`` of (B, C, h, w) features."""
        fine = self.fine(x)
        coarse = F.avg_pool2d(x, 2, ceil_mode=True) if min(x.shape[-2:]) >= 2 else x
        scales = [p(s) for p, s in zip(self.proj, (coarse, x, fine))]
        return fine, scales, self.mask_features(scales[-1])


class PixelStem(nn.Module):
    """A small convolution stem on a view's pixels: uint8 (B, S, S, 3) -> (B, channels, S/4, S/4).

    Two stride-2 3x3 convolutions and one at stride 1 (GroupNorm, GELU), on pixels scaled to
    [0, 1] and normalised with ImageNet's mean and deviation.  Patch features of 8 pixels blur
    every edge inside a patch; the stem gives the pixel decoder's finest scale the image's own
    edges (as the convolutional stem of ViT-Adapter or the stride-4 stage of a ResNet does).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = max(channels // 2, 1)
        self.layers = nn.Sequential(
            nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False), nn.GroupNorm(_groups(half), half), nn.GELU(),
            nn.Conv2d(half, channels, 3, stride=2, padding=1, bias=False), nn.GroupNorm(_groups(channels), channels),
            nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.GroupNorm(_groups(channels), channels),
            nn.GELU(),
        )
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float() / 255.0
        return self.layers((x - self.mean) / self.std)


class PixelDecoder(nn.Module):
    """A feature pyramid over the coarse, patch and fine scales: Mask2Former's pixel decoder role.

    :class:`torchvision.ops.FeaturePyramidNetwork` (1x1 lateral projections, nearest top-down
    upsampling and addition, 3x3 output convolutions; GroupNorm) on the features pooled to
    ``h/2``, the features at ``h`` and the fine map at ``2h`` (joined with a :class:`PixelStem`
    of the pixels when ``stem`` channels are given); the mask features are a 3x3 convolution of
    the finest output.

    Parameters
    ----------
    in_dim : int
        C, the backbone's feature dimension.
    dim : int
        Output channels of every scale and of the mask features.
    stem : int
        Channels of the pixel stem (0: none, the decoder sees features only).
    """

    def __init__(self, in_dim: int, dim: int, stem: int = 0) -> None:
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork

        self.stem = PixelStem(stem) if stem else None
        self.fpn = FeaturePyramidNetwork([in_dim + stem, in_dim, in_dim], dim,
                                         norm_layer=lambda c: nn.GroupNorm(_groups(c), c))
        self.mask_features = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor, fine: torch.Tensor, pixels: torch.Tensor | None = None
                ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``([coarse, mid, fine], mask_features)`` of features (B, C, h, w) and their fine map."""
        if self.stem is not None:
            if pixels is None:
                raise ValueError("this model has a pixel stem (model.pixel_stem): it needs the view's pixels")
            edges = self.stem(pixels)
            if edges.shape[-2:] != fine.shape[-2:]:  # patch sizes other than 8
                edges = F.interpolate(edges, size=fine.shape[-2:], mode="bilinear", align_corners=False)
            fine = torch.cat([fine, edges.to(fine.dtype)], dim=1)
        coarse = F.avg_pool2d(x, 2, ceil_mode=True) if min(x.shape[-2:]) >= 2 else x
        out = self.fpn(OrderedDict(fine=fine, mid=x, coarse=coarse))
        return [out["coarse"], out["mid"], out["fine"]], self.mask_features(out["fine"])


def sine_position(h: int, w: int, dim: int, device, dtype=torch.float32) -> torch.Tensor:
    """DETR's normalised sine position encoding of an (h, w) grid: (h * w, dim)."""
    half = dim // 2
    y = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h * 2 * math.pi
    x = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w * 2 * math.pi
    t = 10000 ** (2 * (torch.arange(half, device=device) // 2).float() / half)
    py = y[:, None] / t  # (h, half)
    px = x[:, None] / t  # (w, half)
    py = torch.stack([py[:, 0::2].sin(), py[:, 1::2].cos()], dim=2).flatten(1)
    px = torch.stack([px[:, 0::2].sin(), px[:, 1::2].cos()], dim=2).flatten(1)
    pos = torch.cat([py[:, None, :].expand(h, w, -1), px[None, :, :].expand(h, w, -1)], dim=-1)
    if pos.shape[-1] < dim:  # odd dim
        pos = F.pad(pos, (0, dim - pos.shape[-1]))
    return pos.reshape(h * w, dim).to(dtype)


class _MLP(nn.Module):
    def __init__(self, dim: int, layers: int = 3) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i + 1 < len(self.layers):
                x = F.relu(x)
        return x


class DecoderLayer(nn.Module):
    """Masked cross-attention, self-attention, feed-forward; each residual + post-LayerNorm."""

    def __init__(self, dim: int, heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.cross = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Linear(ffn_dim, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))

    def forward(self, q: torch.Tensor, qpos: torch.Tensor, memory: torch.Tensor, mpos: torch.Tensor,
                attn_mask: torch.Tensor) -> torch.Tensor:
        out, _ = self.cross(q + qpos, memory + mpos, memory, attn_mask=attn_mask, need_weights=False)
        q = self.norms[0](q + out)
        qk = q + qpos
        out, _ = self.self_attn(qk, qk, q, need_weights=False)
        q = self.norms[1](q + out)
        return self.norms[2](q + self.ffn(q))


class MaskDecoder(nn.Module):
    """Mask2Former's transformer decoder with [SEM] and [INS] queries.

    Parameters
    ----------
    dim, layers, heads, ffn_dim : int
    num_semantic, num_instance : int
        Queries of each type; semantic queries come first.
    """

    def __init__(self, dim: int, layers: int, heads: int, ffn_dim: int, num_semantic: int,
                 num_instance: int) -> None:
        super().__init__()
        self.num_semantic, self.num_instance = int(num_semantic), int(num_instance)
        q = self.num_semantic + self.num_instance
        self.query_feat = nn.Embedding(q, dim)
        self.query_pos = nn.Embedding(q, dim)
        self.type_embed = nn.Embedding(2, dim)  # 0 = [SEM], 1 = [INS]
        self.register_buffer("query_type", torch.cat([torch.zeros(self.num_semantic, dtype=torch.long),
                                                      torch.ones(self.num_instance, dtype=torch.long)]),
                             persistent=False)
        self.level_embed = nn.Embedding(3, dim)
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, ffn_dim) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.mask_embed = _MLP(dim, 3)

    def predict(self, q: torch.Tensor, mask_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised queries (B, Q, D) and mask logits (B, Q, H, W)."""
        qn = self.norm(q)
        masks = torch.einsum("bqd,bdhw->bqhw", self.mask_embed(qn), mask_features)
        return qn, masks

    def _attn_mask(self, masks: torch.Tensor, size: tuple[int, int], heads: int) -> torch.Tensor:
        """True where attention is *not* allowed: (B * heads, Q, h * w)."""
        m = F.interpolate(masks.detach().float(), size=size, mode="bilinear", align_corners=False)
        blocked = (m.sigmoid() < 0.5).flatten(2)
        blocked[blocked.all(-1)] = False  # an empty mask attends everywhere
        return blocked.repeat_interleave(heads, dim=0)

    def forward(self, scales: list[torch.Tensor], mask_features: torch.Tensor
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every prediction, first to last: normalised queries (B, Q, D) and mask logits
        (B, Q, H, W) before the first layer and after each layer (``layers + 1`` pairs)."""
        b = mask_features.shape[0]
        types = self.type_embed(self.query_type)
        q = (self.query_feat.weight + types)[None].expand(b, -1, -1)
        qpos = (self.query_pos.weight + types)[None].expand(b, -1, -1)
        memories, positions, sizes = [], [], []
        for level, s in enumerate(scales):
            h, w = s.shape[-2:]
            memories.append(s.flatten(2).transpose(1, 2))
            positions.append((sine_position(h, w, s.shape[1], s.device, s.dtype)
                              + self.level_embed.weight[level].to(s.dtype))[None])
            sizes.append((h, w))
        predictions = [self.predict(q, mask_features)]
        for i, layer in enumerate(self.layers):
            level = i % len(scales)
            attn_mask = self._attn_mask(predictions[-1][1], sizes[level], layer.heads)
            q = layer(q, qpos, memories[level], positions[level], attn_mask)
            predictions.append(self.predict(q, mask_features))
        return predictions


class PaperModel(nn.Module):
    """Neck, pixel decoder, decoder and heads: what the student trains and the teacher follows by EMA.

    Parameters
    ----------
    in_dim : int
        C of the backbone's features.
    cfg : ModelConfig
        ``pixel_decoder`` (``fpn`` or ``simple``), ``pixel_stem`` (channels of the pixel stem,
        0 for none), ``deep_supervision``, and the decoder and head sizes.
    backbone : module, optional
        A trainable backbone (:class:`uniap_train.backbone.TrainableVit`) run first on pixel
        views; without it the inputs are frozen features.
    """

    def __init__(self, in_dim: int, cfg, backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.in_dim = int(in_dim)
        self.backbone = backbone  # a trainable ViT: then the inputs are uint8 pixel views
        self.num_semantic = int(cfg.num_semantic_queries)
        self.deep_supervision = bool(cfg.deep_supervision)
        fpn = cfg.pixel_decoder == "fpn"
        self.neck = SimpleNeck(in_dim, cfg.dim, pyramid=not fpn)
        self.pixel_decoder = PixelDecoder(in_dim, cfg.dim, cfg.pixel_stem) if fpn else None
        self.decoder = MaskDecoder(cfg.dim, cfg.decoder_layers, cfg.num_heads, cfg.ffn_dim,
                                   cfg.num_semantic_queries, cfg.num_instance_queries)
        self.score_head = nn.Linear(cfg.dim, 1)
        self.head = DINOHead(cfg.dim, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.norm_last_layer)

    @property
    def needs_pixels(self) -> bool:
        """Whether the model reads the views' pixels besides their features (a pixel stem)."""
        return self.pixel_decoder is not None and self.pixel_decoder.stem is not None

    def _channels_first(self, grids: torch.Tensor) -> torch.Tensor:
        if self.backbone is not None:
            grids = self.backbone(grids)
        return grids.permute(0, 3, 1, 2).contiguous()

    def _maps(self, grids: torch.Tensor, pixels: torch.Tensor | None
              ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """The fine map, the decoder's scales and the mask features of a batch of views."""
        x = self._channels_first(grids)
        if self.pixel_decoder is None:
            return self.neck(x)
        if self.backbone is not None and pixels is None:
            pixels = grids  # a trainable ViT's inputs are the pixels
        fine = self.neck.fine(x)
        scales, mask_features = self.pixel_decoder(x, fine, pixels)
        return fine, scales, mask_features

    def forward(self, grids: torch.Tensor | list[torch.Tensor], pixels: Any = None) -> dict | list[dict]:
        """The student's view of (B, h, w, C) features (uint8 (B, H, W, 3) views with a backbone).

        Parameters
        ----------
        grids : tensor (B, h, w, C), or a list of them
            Frozen features of the views (uint8 pixels with a trainable backbone).  A list
            (views of several sizes) gives a list of outputs, in one call (DistributedDataParallel
            expects one forward per backward).
        pixels : uint8 tensor (B, h p, w p, 3), optional (a list with a list of grids)
            The views' pixels, for a model with a pixel stem.

        Returns
        -------
        dict (a list of them for a list of grids)
            ``masks`` (B, Q, 2h, 2w) logits, ``scores`` (B, Q) score logits, ``queries``
            (B, Q, dim), ``logits`` (B, Q, K) of the head; queries ``[:num_semantic]`` are
            [SEM], the rest [INS].  ``aux``: a list of ``{"masks", "scores"}`` of the earlier
            predictions (empty without deep supervision).
        """
        if isinstance(grids, (list, tuple)):
            pixels = [None] * len(grids) if pixels is None else pixels
            return [self.forward(g, p) for g, p in zip(grids, pixels)]
        _, scales, mask_features = self._maps(grids, pixels)
        predictions = self.decoder(scales, mask_features)
        queries, masks = predictions[-1]
        aux = [{"masks": m, "scores": self.score_head(q)[..., 0]} for q, m in predictions[:-1]] \
            if self.deep_supervision else []
        return {"masks": masks, "scores": self.score_head(queries)[..., 0], "queries": queries,
                "logits": self.head(queries), "aux": aux}

    def teacher_maps(self, grids: torch.Tensor, pixels: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's view: the fine map (B, 2h, 2w, C) UniAP runs on, and the mask
        features (B, dim, 2h, 2w) its masks are pooled from."""
        fine, _, mask_features = self._maps(grids, pixels)
        return fine.permute(0, 2, 3, 1), mask_features
