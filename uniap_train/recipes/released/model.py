"""Heads and the per-pixel maps of the released-code recipe.

* :class:`DINOHead`: DINO's projection head (3-layer MLP, GELU, hidden 2048, bottleneck 256,
  L2 normalisation, weight-normalised linear layer to K prototypes without bias).
* :func:`query_attention`: ``softmax_k(cos(pixel, query_k) / T)`` over a view's queries.
* :func:`pixel_logits`: per-pixel logits = attention x head(queries).
* :func:`ema_update`: the momentum teacher update.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DINOHead", "QueryHead", "query_attention", "pixel_logits", "ema_update"]


class DINOHead(nn.Module):
    """DINO projection head: MLP -> L2 norm -> weight-normed linear (K prototypes).

    Parameters
    ----------
    in_dim : int
        Query feature dimension C.
    out_dim : int
        K, number of prototypes.
    hidden_dim, bottleneck_dim : int
        MLP widths (DINO: 2048, 256).
    norm_last_layer : bool
        Keep the prototypes' norms fixed at 1 (the weight-norm gain is not trained).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 norm_last_layer: bool = True) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        last = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.last_layer = nn.utils.parametrizations.weight_norm(last)
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1.0)
        if norm_last_layer:
            self.last_layer.parametrizations.weight.original0.requires_grad_(False)

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """The L2-normalised bottleneck features (..., bottleneck_dim), float32.

        The norm is taken in float32: under float16 autocast the squares of a small bottleneck
        (a freshly initialised head on small inputs) underflow to 0 and the normalisation
        would divide 0 by 0.
        """
        return F.normalize(self.mlp(x).float(), dim=-1, p=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.bottleneck(x))


class QueryHead(nn.Module):
    """The trainable part of the released-code recipe: a DINO head applied to UniAP queries.

    ``forward(queries)`` maps (..., C) query features to (..., K) prototype logits; the
    student is wrapped in DistributedDataParallel as a whole.
    """

    def __init__(self, in_dim: int, cfg) -> None:
        super().__init__()
        self.head = DINOHead(in_dim, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.norm_last_layer)

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        return self.head(queries)


def query_attention(pixels: torch.Tensor, queries: torch.Tensor, query_mask: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    """Per-pixel attention over each view's queries.

    Parameters
    ----------
    pixels : tensor (V, P, C)
        Pixel (patch) features of V views.
    queries : tensor (V, Q, C)
        Query features, padded to Q per view.
    query_mask : bool tensor (V, Q)
        True for real queries (every view has at least one).
    temperature : float
        T of ``softmax(cos / T)``.

    Returns
    -------
    tensor (V, P, Q)
        Rows sum to 1 over the real queries; padded queries get exactly 0.
    """
    cos = torch.einsum("vpc,vqc->vpq", F.normalize(pixels, dim=-1), F.normalize(queries, dim=-1))
    cos = cos.masked_fill(~query_mask[:, None, :], float("-inf"))
    return torch.softmax(cos / temperature, dim=-1)


def pixel_logits(attention: torch.Tensor, query_logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel logits = attention x head(queries): (V, P, Q) x (V, Q, K) -> (V, P, K)."""
    return torch.bmm(attention.to(query_logits.dtype), query_logits)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher = momentum * teacher + (1 - momentum) * student``, all parameters at once.

    ``torch._foreach_lerp_``, the update ``torch.optim.swa_utils.get_ema_multi_avg_fn`` makes
    (without ``AveragedModel``'s wrapper, whose ``module.`` names and ``n_averaged`` would change
    the checkpoints): one fused call instead of a loop of two ops per tensor, equal to that loop
    within float rounding and 1.5-1.8x faster (docs/benchmarks.md).

    Examples
    --------
    >>> t, s = nn.Linear(2, 2), nn.Linear(2, 2)
    >>> expected = 0.9 * t.weight.detach() + 0.1 * s.weight.detach()
    >>> ema_update(t, s, 0.9)
    >>> torch.allclose(t.weight, expected)
    True
    """
    teacher_params = list(teacher.parameters())
    student_params = [p.detach() for p in student.parameters()]
    if len(teacher_params) != len(student_params):
        raise ValueError(f"teacher has {len(teacher_params)} parameters, student {len(student_params)}")
    if teacher_params:
        torch._foreach_lerp_(teacher_params, student_params, 1.0 - float(momentum))
