"""Inputs shared by the benchmark suites."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from uniap.synthetic import piecewise_features

BSDS_VAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bsds500" / "images" / "val"

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


@pytest.fixture(scope="module")
def bsds_images() -> list[np.ndarray]:
    """The first 8 BSDS500 val images (481x321), decoded; skips without ../shared/data."""
    from uniap.features import load_image

    paths = sorted(BSDS_VAL.glob("*.jpg"))[:8]
    if not paths:
        pytest.skip("../shared/data/bsds500 is not beside this checkout")
    return [load_image(p) for p in paths]
