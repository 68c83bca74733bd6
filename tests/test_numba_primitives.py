"""The Numba backend's engine primitives (components, segment sums, edge cosines) against
the NumPy reference's: the paper's rule runs the generic engine on them (#22)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import uniap

pytestmark = pytest.mark.skipif(uniap.backends.available().get("numba") is not None, reason="Numba is not installed")


def _backends():
    return uniap.backends.get("numba"), uniap.backends.get("numpy")


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 60), m=st.integers(0, 120), seed=st.integers(0, 2**31))
def test_components_are_scipys_canonical_labels(n, m, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, n, m), rng.integers(0, n, m)
    numba, numpy = _backends()
    comp, k = numba.components(n, a, b)
    ref, k_ref = numpy.components(n, a, b)
    assert k == k_ref and comp.dtype == np.int64
    np.testing.assert_array_equal(comp, ref)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 50), c=st.integers(1, 9), m=st.integers(0, 50), bins=st.integers(1, 12),
       seed=st.integers(0, 2**31), with_rows=st.booleans())
def test_segment_sums_are_the_references_bit_for_bit(rows, c, m, bins, seed, with_rows):
    rng = np.random.default_rng(seed)
    # Values of very different magnitudes: any other summation order would show.
    values = rng.normal(size=(rows, c)) * 10.0 ** rng.integers(-8, 9, size=(rows, 1))
    m = min(m, rows) if with_rows else rows
    labels = rng.integers(0, bins, m)
    picked = np.sort(rng.choice(rows, m, replace=False)) if with_rows else None  # increasing, as the engine's
    numba, numpy = _backends()
    out = numba.segment_sum(values, labels, bins, rows=picked)
    np.testing.assert_array_equal(out, numpy.segment_sum(values, labels, bins, rows=picked))
    assert out.shape == (bins, c) and out.dtype == np.float64


def test_segment_sums_of_other_arrays_take_the_references_path():
    numba, numpy = _backends()
    sizes = np.array([1, 2, 3, 4], dtype=np.int64)
    labels = np.array([0, 1, 0, 1])
    np.testing.assert_array_equal(numba.segment_sum(sizes, labels, 2), [4, 6])
    f32 = np.arange(8, dtype=np.float32).reshape(4, 2)
    np.testing.assert_array_equal(numba.segment_sum(f32, labels, 2), numpy.segment_sum(f32, labels, 2))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), c=st.integers(1, 50), m=st.integers(0, 80), seed=st.integers(0, 2**31))
def test_edge_cosines_match_the_gathered_ones(n, c, m, seed):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, c))
    feats[rng.random(n) < 0.2] = 0.0  # zero rows: cosine 0 through the clipped norms
    norms = np.maximum(np.linalg.norm(feats, axis=1), 1e-10)
    a, b = rng.integers(0, n, m), rng.integers(0, n, m)
    numba, numpy = _backends()
    out = numba.edge_cosines(feats, norms, a, b)
    ref = numpy.edge_cosines(feats, norms, a, b)
    assert out.shape == (m,)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-15)
