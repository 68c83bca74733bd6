"""The paper rule's Gram (``syrk`` and a tiled triangle copy) against NumPy's product."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from uniap.backends._numba_kernels import fill_upper
from uniap.backends.numba_backend import symmetric_gram


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 700), c=st.integers(1, 40), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**31), min_rows=st.sampled_from([1, 256]))
def test_gram_equals_the_product_and_is_exactly_symmetric(n, c, dtype, seed, min_rows):
    unit = np.random.default_rng(seed).standard_normal((n, c)).astype(dtype)
    g = symmetric_gram(unit, min_rows=min_rows)
    assert g.shape == (n, n) and g.dtype == dtype and g.flags.c_contiguous
    assert np.array_equal(g, g.T)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(g, unit.astype(np.float64) @ unit.T.astype(np.float64), rtol=tol, atol=tol * c)


@pytest.mark.parametrize("n, block", [(1, 4), (5, 4), (64, 64), (130, 64), (257, 16)])
def test_fill_upper_copies_the_lower_triangle_and_keeps_it(n, block):
    rng = np.random.default_rng(n)
    lower = np.tril(rng.standard_normal((n, n)))
    g = fill_upper(lower.copy(), block)
    np.testing.assert_array_equal(g, lower + np.tril(lower, -1).T)


def test_other_dtypes_and_small_inputs_take_the_plain_product():
    x = np.arange(12, dtype=np.int64).reshape(4, 3)
    np.testing.assert_array_equal(symmetric_gram(x), x @ x.T)
