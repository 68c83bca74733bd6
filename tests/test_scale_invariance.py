"""Scaling all features by a positive factor never changes a partition (#23).

Cosine's eps (DESIGN.md 1.4) is relative to the run's largest row norm, and features whose
norms would underflow or overflow are first scaled by a power of two: rows far smaller than
the others (here 1e-13 of them, and exact zeros) are treated alike at every scale.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import uniap
from uniap.backends.torch_backend import TorchBackend
from uniap.synthetic import piecewise_features

RUNS = ["numpy"]
if uniap.backends.available()["numba"] is None:
    RUNS.append("numba")
if uniap.backends.available()["torch"] is None:
    RUNS += ["torch", "torch-device-loop"]

SCALES = [1e-12, 1e12, 3.3e-200, 2.0**-1000, 1e200, 7.0]


def _partitions(h):
    h = h.numpy()
    return [(lv.labels.tolist(), None if lv.semantic_labels is None else lv.semantic_labels.tolist())
            for lv in h.levels]


def _segment(x, run, **options):
    if not run.startswith("torch"):
        return uniap.segment(x, backend=run, **options)
    import torch

    saved = TorchBackend.numba_on_cpu
    TorchBackend.numba_on_cpu = run == "torch"
    try:
        return uniap.segment(torch.from_numpy(x), backend="torch", **options)
    finally:
        TorchBackend.numba_on_cpu = saved


@pytest.mark.parametrize("run", RUNS)
@settings(max_examples=15)
@given(seed=st.integers(0, 2**32 - 1), preset=st.sampled_from(["released", "paper"]), semantic=st.booleans(),
       scale=st.sampled_from(SCALES))
def test_scaling_the_features_keeps_the_partitions(run, seed, preset, semantic, scale):
    rng = np.random.default_rng(seed)
    x = piecewise_features((int(rng.integers(2, 15)), int(rng.integers(2, 15))), channels=int(rng.integers(1, 24)),
                           noise=float(rng.uniform(0.2, 1.2)), seed=rng, dtype=np.float64)
    tiny = rng.random(x.shape[:2]) < 0.2
    x[tiny] *= 1e-13  # far below 1e-10 of the largest norm: treated as (almost) zero
    x[rng.random(x.shape[:2]) < 0.05] = 0.0
    # Scaling by a power of two is exact; by other factors it rounds: reject close calls.
    margin = uniap.segment(x, backend="numpy", preset=preset, semantic=semantic, track_margin=True).min_margin
    assume(margin > 1e-9)
    ref = _segment(x, run, preset=preset, semantic=semantic)
    scaled = _segment(x * scale, run, preset=preset, semantic=semantic)
    assert _partitions(scaled) == _partitions(ref)


@pytest.mark.parametrize("run", RUNS)
def test_norms_below_1e_10_are_not_zero_vectors(run):
    # The case: every norm is below the old fixed eps of 1e-10.
    x = np.zeros((1, 3, 2))
    x[0, :2, 0] = 1.0
    x[0, 2, 1] = 1.0
    for scale in (1e-12, 1.0):
        h = _segment(x * scale, run, levels=(0.5,), min_size=1)
        np.testing.assert_array_equal(h.numpy().level(0).labels, [[0, 0, 1]])
