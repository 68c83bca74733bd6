"""Inputs shared by the benchmark suites."""

from __future__ import annotations

import numpy as np
import pytest

from uniap.synthetic import piecewise_features

SIDES = (28, 64, 128)
CHANNELS = 384


@pytest.fixture(scope="session", params=SIDES, ids=lambda s: f"{s}x{s}x{CHANNELS}")
def grid(request) -> np.ndarray:
    """Smooth ViT-like float32 features: nested regions plus noise (uniap.synthetic)."""
    side = request.param
    return piecewise_features((side, side), channels=CHANNELS, seed=side)


@pytest.fixture(scope="session")
def grid64() -> np.ndarray:
    return piecewise_features((64, 64), channels=CHANNELS, seed=64)
