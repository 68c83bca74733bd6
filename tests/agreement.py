"""Shared checks of a backend against the NumPy reference (torch CPU, CUDA and CuPy tests).

Not a test module: ``test_torch_backend.py`` and ``test_gpu.py`` import it.  The random input
families are those of ``test_backends_agree.py``; a draw whose reference margin (the smallest
|s - t| of any decision) is too small for the backend's arithmetic is rejected, not failed:
1e-9 for float64 scores (two summation orders), 1e-5 for float32 scores (DESIGN.md 1.5).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

import uniap
import uniap.testing
from uniap.synthetic import piecewise_features
from test_backends_agree import MARGIN, grids, levels_strategy  # noqa: F401  (re-exported)

FLOAT32_MARGIN = 1e-5


def reference(x: Any, **options: Any) -> list[uniap.Hierarchy]:
    ref = uniap.segment(x, backend="numpy", track_margin=True, **options)
    return ref if isinstance(ref, list) else [ref]


def check(
    x: Any,
    backend: str,
    convert: Callable[[np.ndarray], Any],
    margin: float = MARGIN,
    reject: Callable[[bool], None] = assume,
    features_rtol: float = 1e-12,
    **options: Any,
) -> list[uniap.Hierarchy]:
    """Run ``backend`` on ``convert(x)`` (x a grid, a stacked batch or a list) and compare."""
    refs = reference(x, **options)
    reject(all(r.min_margin > margin for r in refs))
    inputs = [convert(g) for g in x] if isinstance(x, list) else convert(x)
    other = uniap.segment(inputs, backend=backend, **options)
    others = other if isinstance(other, list) else [other]
    assert len(others) == len(refs)
    for r, o in zip(refs, others):
        uniap.testing.assert_same_partitions(r, o, features_rtol=features_rtol)
    return others


@st.composite
def mixed_batches(draw, max_images: int = 6, max_side: int = 24, max_channels: int = 64):
    """A list of grids of different shapes, one shared channel count."""
    n = draw(st.integers(1, max_images))
    c = draw(st.integers(1, max_channels))
    shapes = [(draw(st.integers(1, max_side)), draw(st.integers(1, max_side))) for _ in range(n)]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return [piecewise_features(s, channels=c, noise=float(rng.uniform(0, 1.5)), seed=rng) for s in shapes]


option_sets = st.fixed_dictionaries(
    {
        "pooling": st.sampled_from(["sum", "attention"]),
        "vote_weight": st.sampled_from([0.0, 0.4, 1.0]),
        "semantic": st.booleans(),
        "passes": st.sampled_from(["until_stable", "single"]),
    }
)


def training_batch(rng: np.random.Generator, images: int, channels: int = 64) -> list[np.ndarray]:
    """Multi-crop shaped: per image 2 global 28x28 and 10 local 12x12 views."""
    shapes = [(28, 28)] * 2 + [(12, 12)] * 10
    return [
        piecewise_features(s, channels=channels, noise=float(rng.uniform(0.3, 1.2)), seed=rng)
        for _ in range(images)
        for s in shapes
    ]
