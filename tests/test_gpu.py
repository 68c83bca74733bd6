"""GPU backends (torch on CUDA, CuPy) against the NumPy reference.

Skipped, with the reason, on a machine without a CUDA device.  Run them alone with
``python -m pytest -m gpu tests/test_gpu.py``.  Scores are float32 on the GPU: with
``exact=True`` the partitions must equal the reference's wherever its margin exceeds 1e-9
(two float64 summation orders), without it wherever the margin exceeds 1e-5 (DESIGN.md 1.5).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import uniap
import uniap.testing
from uniap.synthetic import piecewise_features

from agreement import (
    FLOAT32_MARGIN, MARGIN, check, grids, levels_strategy, mixed_batches, option_sets, training_batch,
)


def _torch_cuda_reason() -> str | None:
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device: torch.cuda.is_available() is False"
    return None


TORCH_REASON = _torch_cuda_reason()
CUPY_REASON = uniap.backends.available().get("cupy", "no cupy backend")

torch_cuda = pytest.mark.skipif(TORCH_REASON is not None, reason=f"torch on CUDA: {TORCH_REASON}")
cupy_device = pytest.mark.skipif(CUPY_REASON is not None, reason=f"CuPy: {CUPY_REASON}")
pytestmark = pytest.mark.gpu


def to_cuda(x):
    import torch

    return torch.from_numpy(np.asarray(x)).cuda()


def to_cupy(x):
    import cupy

    return cupy.asarray(x)


GPUS = [
    pytest.param("torch", to_cuda, marks=torch_cuda, id="torch-cuda"),
    pytest.param("cupy", to_cupy, marks=cupy_device, id="cupy"),
]
# Cluster means are float64 sums on the GPU (atomic, in any order), then the input dtype.
RTOL = 1e-6


def margin_for(exact: bool) -> float:
    return MARGIN if exact else FLOAT32_MARGIN


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("backend, convert", GPUS)
@settings(max_examples=60, deadline=None)
@given(x=grids(), levels=levels_strategy, connectivity=st.sampled_from([4, 8]),
       passes=st.sampled_from(["until_stable", "single"]))
def test_released_rule_agrees(backend, convert, exact, x, levels, connectivity, passes):
    check(x, backend, convert, margin=margin_for(exact), features_rtol=RTOL, exact=exact,
          levels=levels, connectivity=connectivity, passes=passes)


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("backend, convert", GPUS)
@settings(max_examples=30, deadline=None)
@given(x=grids(max_side=16, max_channels=32), levels=levels_strategy, options=option_sets)
def test_every_option_agrees(backend, convert, exact, x, levels, options):
    check(x, backend, convert, margin=margin_for(exact), features_rtol=RTOL, exact=exact,
          levels=levels, **options)


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("backend, convert", GPUS)
@settings(max_examples=20, deadline=None)
@given(batch=mixed_batches(), semantic=st.booleans(), connectivity=st.sampled_from([4, 8]),
       preset=st.sampled_from(["released", "paper"]))
def test_mixed_batches_agree(backend, convert, exact, batch, semantic, connectivity, preset):
    check(batch, backend, convert, margin=margin_for(exact), features_rtol=RTOL, exact=exact,
          semantic=semantic, connectivity=connectivity, preset=preset)


@pytest.mark.parametrize("backend, convert", GPUS)
@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 60), c=st.integers(1, 16), m=st.integers(0, 200), seed=st.integers(0, 2**32 - 1),
       levels=levels_strategy)
def test_graphs_agree(backend, convert, n, c, m, seed, levels):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, c)) + rng.normal(size=(4, c))[rng.integers(0, 4, n)] * 2
    edges = rng.integers(0, n, size=(m, 2))
    ref = uniap.segment_graph(x, edges, levels=levels, backend="numpy", track_margin=True)
    if ref.min_margin <= MARGIN:
        return
    other = uniap.segment_graph(convert(x), edges, levels=levels, backend=backend, exact=True)
    uniap.testing.assert_same_partitions(ref, other, features_rtol=RTOL)


@pytest.mark.parametrize("backend, convert", GPUS)
@pytest.mark.parametrize("seed", range(6))
def test_seeded_vit_sized_grids(backend, convert, seed):
    rng = np.random.default_rng(3000 + seed)
    shape = (int(rng.choice([28, 64, 128])), int(rng.integers(20, 129)))
    x = piecewise_features(shape, channels=int(rng.choice([384, 768])), noise=float(rng.uniform(0.2, 1.4)),
                           seed=rng)
    check(x, backend, convert, features_rtol=RTOL, exact=True,
          reject=lambda ok: ok or pytest.skip("a score within 1e-9 of a threshold"))


@pytest.mark.parametrize("backend, convert", GPUS)
def test_training_shaped_batch_matches_the_reference(backend, convert):
    # 4 images x (2 x 28x28 + 10 x 12x12) crops, one graph, one pass per threshold.
    batch = training_batch(np.random.default_rng(11), images=4, channels=384)
    check(batch, backend, convert, features_rtol=RTOL, exact=True, semantic=True,
          reject=lambda ok: ok or pytest.skip("a score within 1e-9 of a threshold"))


@pytest.mark.parametrize("backend, convert", GPUS)
@pytest.mark.parametrize("delta, merged", [(1e-8, True), (-1e-8, False)])
def test_exact_redecides_scores_next_to_the_threshold(backend, convert, delta, merged):
    t = 0.6
    x = np.zeros((1, 2, 2))
    x[0, 0] = [1.0, 0.0]
    angle = np.arccos(t) - delta
    x[0, 1] = [np.cos(angle), np.sin(angle)]
    h = uniap.segment(convert(x), levels=(t,), min_size=1, backend=backend, exact=True)
    np.testing.assert_array_equal(h.numpy().level(0).labels, [[0, 0]] if merged else [[0, 1]])


@torch_cuda
def test_torch_results_stay_on_the_gpu_and_carry_gradients():
    import torch

    x = to_cuda(piecewise_features((12, 10), channels=16, seed=1)).requires_grad_(True)
    h = uniap.segment(x, min_size=1, semantic=True)  # backend="auto" follows the tensor
    lv = h.level(1)
    for a in (lv.labels, lv.sizes, lv.parents, lv.semantic_labels, lv.features, h.labels):
        assert a.device.type == "cuda"
    assert lv.labels.dtype == torch.int32 and lv.features.dtype == torch.float32
    lv.features.sum().backward()
    per_cell = (1.0 / lv.sizes.to(torch.float64))[lv.labels.long()]
    torch.testing.assert_close(x.grad, per_cell[..., None].expand_as(x).to(x.dtype))
    assert isinstance(h.numpy().level(0).labels, np.ndarray)


@cupy_device
def test_cupy_results_stay_on_the_gpu():
    import cupy

    x = to_cupy(piecewise_features((12, 10), channels=16, seed=1))
    h = uniap.segment(x, min_size=1, semantic=True)
    lv = h.level(0)
    for a in (lv.labels, lv.sizes, lv.parents, lv.semantic_labels, lv.features):
        assert isinstance(a, cupy.ndarray)
    assert lv.labels.dtype == cupy.int32
    assert isinstance(h.numpy().level(0).labels, np.ndarray)


@torch_cuda
def test_nothing_of_size_n_by_n_on_the_gpu():
    import torch

    x = to_cuda(np.random.default_rng(0).standard_normal((128, 128, 768), dtype=np.float32))
    uniap.segment(x[:8, :8])
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    uniap.segment(x).level(0).features
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    n = 128 * 128
    assert peak < n * n * 4 // 2, peak  # one N x N float32 would be 1 GiB
