"""Memory stays linear in the input: nothing of size N x N is ever allocated."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import uniap
import uniap.core.levels
from uniap.synthetic import piecewise_features


def peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_stride4_vit_b_grid_is_linear(backend):
    # 128x128x768: stride-4 ViT-B features of a 512-pixel image (48 MiB as float32).
    x = np.random.default_rng(0).standard_normal((128, 128, 768), dtype=np.float32)
    x += np.repeat(np.repeat(np.random.default_rng(1).standard_normal((8, 8, 768), dtype=np.float32), 16, 0), 16, 1) * 2
    uniap.segment(x[:8, :8], backend=backend)  # compile outside the measurement
    peak = peak_bytes(lambda: uniap.segment(x, backend=backend).level(0).features)
    # a float64 working copy (2x) plus O(N + E) bookkeeping; N x N float64 would be 2 GiB
    assert peak < 2.6 * x.nbytes, peak / x.nbytes


@pytest.mark.parametrize("options", [{"preset": "paper"}, {"preset": "paper", "semantic": True}])
def test_paper_preset_profiles_are_chunked(monkeypatch, options):
    # Profiles beyond uniap.core.levels.PROFILE_BYTES: the chunked products, linear memory.
    n_side = 40  # N = 1600 cells: one N x N float64 array would take 20 MB
    x = piecewise_features((n_side, n_side), channels=16, seed=3, dtype=np.float64)
    monkeypatch.setattr(uniap.core.levels, "CHUNK_ELEMENTS", 1 << 14)
    monkeypatch.setattr(uniap.core.levels, "PROFILE_BYTES", 0)
    peak = peak_bytes(lambda: uniap.segment(x, backend="numpy", **options))
    assert peak < 4_000_000, peak


@pytest.mark.parametrize("options", [{"preset": "paper"}, {"preset": "paper", "semantic": True}])
def test_paper_preset_profiles_take_one_float32_matrix_per_image(monkeypatch, options):
    # Within the budget: one N x N float32 matrix per image (#22), and little beside it.
    n_side = 40
    x = piecewise_features((n_side, n_side), channels=16, seed=3, dtype=np.float64)
    monkeypatch.setattr(uniap.core.levels, "CHUNK_ELEMENTS", 1 << 14)
    peak = peak_bytes(lambda: uniap.segment(x, backend="numpy", **options))
    profiles = (n_side * n_side) ** 2 * 4
    assert profiles < peak < profiles + 4_000_000, (peak, profiles)
