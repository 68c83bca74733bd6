"""Synthetic feature grids that behave like ViT patch features, for tests, benchmarks and demos."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def piecewise_features(
    shape: Sequence[int],
    channels: int = 384,
    regions: int | Sequence[int] = (4, 16, 64),
    noise: float = 0.6,
    smooth: float = 0.5,
    seed: int | np.random.Generator | None = 0,
    dtype: type = np.float32,
) -> np.ndarray:
    """A grid of nested region prototypes plus smooth drift and noise: (*shape, channels).

    For each count in ``regions`` (coarse to fine) the cells are split into that many
    Voronoi regions around random seeds, and every region adds a random prototype (entries
    N(0, 1)); then a smooth per-channel ramp across the grid (amplitude ``smooth``) and
    independent noise N(0, noise^2) are added.  Cells sharing more regions have higher
    cosine, so agglomeration at descending thresholds finds the scales in turn, as it does
    on DINO features of objects and their parts.

    Examples
    --------
    >>> piecewise_features((8, 6), channels=16).shape
    (8, 6, 16)
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    coords = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    coords = coords.reshape(-1, len(shape)).astype(np.float64)
    counts = [regions] if isinstance(regions, (int, np.integer)) else list(regions)
    x = noise * rng.normal(size=(coords.shape[0], channels))
    for count in counts:
        count = max(1, min(int(count), coords.shape[0]))
        centres = coords[rng.choice(coords.shape[0], size=count, replace=False)]
        nearest = np.argmin(((coords[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
        x += rng.normal(size=(count, channels))[nearest]
    scale = np.maximum(np.array(shape, dtype=np.float64) - 1, 1)
    x += smooth * (coords / scale) @ rng.normal(size=(len(shape), channels))
    return x.reshape(*shape, channels).astype(dtype)
