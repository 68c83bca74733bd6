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


def shape_images(
    count: int,
    shape: Sequence[int] = (96, 128),
    objects: int = 5,
    seed: int | np.random.Generator | None = 0,
) -> np.ndarray:
    """Small RGB scenes of textured ellipses and rectangles on a graded background: (N, H, W, 3).

    Each image has a vertical colour gradient as background and ``objects`` shapes, drawn
    back to front (later ones occlude earlier ones), each a random colour, half of them
    striped with a second colour (a texture inside one object).  No pixel noise, so the
    images compress to a few kB as PNG.  Objects and their parts give masks at more than one
    scale, so these images stand in for photos where a run needs images but no data set
    (``examples/images/shapes``, the README's training example).

    Parameters
    ----------
    count : int
        Number of images, >= 1.
    shape : (int, int), default (96, 128)
        Height and width of each image, each >= 8.
    objects : int, default 5
        Shapes per image, >= 1.
    seed : int, Generator or None, default 0
        The random source; equal seeds give equal images.

    Returns
    -------
    numpy.ndarray
        uint8 of shape (count, H, W, 3).

    Examples
    --------
    >>> images = shape_images(2, (32, 48), seed=1)
    >>> images.shape, images.dtype
    ((2, 32, 48, 3), dtype('uint8'))
    >>> bool((shape_images(2, (32, 48), seed=1) == images).all())
    True
    """
    height, width = (int(s) for s in shape)
    if int(count) != count or count < 1 or height < 8 or width < 8 or objects < 1:
        raise ValueError(f"need count >= 1, sides >= 8 and objects >= 1, got count={count!r}, "
                         f"shape={tuple(shape)!r}, objects={objects!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    out = np.empty((int(count), height, width, 3), np.uint8)
    for n in range(int(count)):
        top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        img = top + (bottom - top) * (yy / (height - 1))[..., None]
        for _ in range(int(objects)):
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            ry, rx = rng.uniform(0.1, 0.35) * height, rng.uniform(0.1, 0.35) * width
            if rng.random() < 0.5:
                inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
            else:
                inside = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
            colour = rng.uniform(0, 255, 3)
            img[inside] = colour
            if rng.random() < 0.5:  # stripes of a second colour: a part inside the object
                period = rng.integers(4, 10)
                stripes = inside & (((xx + yy if rng.random() < 0.5 else xx) // period) % 2 == 0)
                img[stripes] = rng.uniform(0, 255, 3)
        out[n] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out
