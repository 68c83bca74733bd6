"""The paper recipe's model: a light multi-scale neck, a Mask2Former-style decoder and a DINO head.

:class:`PaperModel` is the trainable part of the student (and, as an EMA copy, the teacher).
It takes frozen patch features ``(B, h, w, C)`` and gives

* the neck's **fine map** ``(B, 2h, 2w, C)``: the features upsampled twice plus a residual
  adapter whose last convolution starts at zero, so at step 0 the teacher's UniAP sees the
  pretrained features unchanged (bilinearly upsampled);
* three **scales** projected to ``dim`` channels (coarse ``h/2``, ``h``, fine ``2h``: a
  ViTDet-style simple pyramid) and the **mask features** (fine, ``dim`` channels);
* per query (``num_semantic_queries`` [SEM] then ``num_instance_queries`` [INS]) a **mask
  logit map** on the fine grid, the decoder's **query embedding** and the **head logits**
  (DINO head: 3-layer MLP, L2-normalised bottleneck, weight-normed prototypes).

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

import torch
import torch.nn.functional as F
from torch import nn

from .model import DINOHead

__all__ = ["SimpleNeck", "MaskDecoder", "PaperModel", "sine_position"]


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
    """

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        # No bias where a GroupNorm follows (it would cancel it: its exact gradient is 0, and
        # AdamW would turn rounding noise into steps).
        self.adapter = nn.Sequential(nn.Conv2d(in_dim, in_dim, 3, padding=1), nn.GELU(),
                                     nn.Conv2d(in_dim, in_dim, 1, bias=False))
        nn.init.zeros_(self.adapter[-1].weight)
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

    def forward(self, scales: list[torch.Tensor], mask_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries (B, Q, D) and mask logits (B, Q, H, W) of the last layer."""
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
        qn, masks = self.predict(q, mask_features)
        for i, layer in enumerate(self.layers):
            level = i % len(scales)
            attn_mask = self._attn_mask(masks, sizes[level], layer.heads)
            q = layer(q, qpos, memories[level], positions[level], attn_mask)
            qn, masks = self.predict(q, mask_features)
        return qn, masks


class PaperModel(nn.Module):
    """Neck + decoder + head: what the student trains and the teacher follows by EMA.

    Parameters
    ----------
    in_dim : int
        C of the backbone's features.
    cfg : ModelConfig
    backbone : module, optional
        A trainable backbone (:class:`uniap_train.backbone.TrainableVit`) run first on pixel
        views; without it the inputs are frozen features.
    """

    def __init__(self, in_dim: int, cfg, backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.in_dim = int(in_dim)
        self.backbone = backbone  # a trainable ViT: then the inputs are uint8 pixel views
        self.num_semantic = int(cfg.num_semantic_queries)
        self.neck = SimpleNeck(in_dim, cfg.dim)
        self.decoder = MaskDecoder(cfg.dim, cfg.decoder_layers, cfg.num_heads, cfg.ffn_dim,
                                   cfg.num_semantic_queries, cfg.num_instance_queries)
        self.head = DINOHead(cfg.dim, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.norm_last_layer)

    def _channels_first(self, grids: torch.Tensor) -> torch.Tensor:
        if self.backbone is not None:
            grids = self.backbone(grids)
        return grids.permute(0, 3, 1, 2).contiguous()

    def forward(self, grids: torch.Tensor) -> dict:
        """The student's view of (B, h, w, C) features (uint8 (B, H, W, 3) views with a backbone).

        Returns
        -------
        dict
            ``masks`` (B, Q, 2h, 2w) logits, ``queries`` (B, Q, dim), ``logits`` (B, Q, K) of
            the head; queries ``[:num_semantic]`` are [SEM], the rest [INS].
        """
        _, scales, mask_features = self.neck(self._channels_first(grids))
        queries, masks = self.decoder(scales, mask_features)
        return {"masks": masks, "queries": queries, "logits": self.head(queries)}

    def teacher_maps(self, grids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's view: the fine map (B, 2h, 2w, C) UniAP runs on, and the mask
        features (B, dim, 2h, 2w) its masks are pooled from."""
        fine, scales, mask_features = self.neck(self._channels_first(grids))
        return fine.permute(0, 2, 3, 1), mask_features
