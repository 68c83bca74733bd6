"""Every bad input DESIGN.md 2 lists gets a clear error naming the problem."""

from __future__ import annotations

import numpy as np
import pytest

import uniap

GOOD = np.zeros((4, 4, 3), np.float32)


@pytest.mark.parametrize(
    "features, error, match",
    [
        (np.zeros((4, 3)), ValueError, r"3 or 4 dimensions, got 2"),
        (np.zeros((2, 2, 2, 2, 2)), ValueError, r"got 5"),
        (np.zeros((0, 4, 3)), ValueError, r"empty grid"),
        (np.zeros((4, 0, 3)), ValueError, r"empty grid"),
        (np.zeros((4, 4, 0)), ValueError, r"no channels"),
        (np.zeros((0, 4, 4, 3)), ValueError, r"empty batch"),
        ([], ValueError, r"empty list"),
        ([np.zeros((2, 2, 3)), np.zeros((2, 2, 4))], ValueError, r"same channels"),
        ([np.zeros((2, 2, 3)), np.zeros((2, 3))], ValueError, r"features\[1\] must have 3"),
        (np.zeros((2, 2, 2), bool), TypeError, r"real numbers"),
        (np.zeros((2, 2, 2), complex), TypeError, r"real numbers"),
        ("not an array", TypeError, r"NumPy array"),
        ([[1, 2], [3, 4]], TypeError, r"NumPy array"),
    ],
)
def test_bad_features(features, error, match):
    with pytest.raises(error, match=match):
        uniap.segment(features)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_are_an_error(backend, bad):
    x = np.ones((5, 6, 3), np.float32)
    x[3, 2, 1] = bad
    with pytest.raises(ValueError, match="finite"):
        uniap.segment(x, backend=backend)


@pytest.mark.parametrize(
    "levels, match",
    [
        ((0.5, 0.7), "strictly decreasing"),
        ((0.5, 0.5), "strictly decreasing"),
        ((1.5, 0.5), r"in \[-1, 1\]"),
        ((0.5, -1.01), r"in \[-1, 1\]"),
        ((0.5, float("nan")), r"in \[-1, 1\]"),
        ((), "at least one"),
    ],
)
def test_bad_levels(levels, match):
    with pytest.raises(ValueError, match=match):
        uniap.segment(GOOD, levels=levels)


def test_levels_of_wrong_type():
    with pytest.raises(TypeError, match="levels must be a sequence of numbers"):
        uniap.segment(GOOD, levels=("a", "b"))


def test_single_float_level_is_accepted():
    assert len(uniap.segment(GOOD, levels=0.5)) == 1


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"min_size": 0}, ValueError, "min_size must be >= 1"),
        ({"min_size": 2.5}, TypeError, "min_size must be an integer"),
        ({"connectivity": 6}, ValueError, "connectivity must be 4 or 8"),
        ({"passes": "twice"}, ValueError, "passes must be one of"),
        ({"pooling": "max"}, ValueError, "pooling must be one of"),
        ({"preset": "fast"}, ValueError, "preset must be one of"),
        ({"vote_weight": 1.5}, ValueError, r"vote_weight must lie in \[0, 1\]"),
        ({"temperature": 0.0}, ValueError, "temperature must be a positive"),
        ({"backend": "tensorflow"}, ValueError, "unknown backend 'tensorflow'"),
        ({"spatial_ndim": 0}, ValueError, "spatial_ndim must be a positive integer"),
    ],
)
def test_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        uniap.segment(GOOD, **kwargs)


def test_unavailable_backend_says_why(monkeypatch):
    be = uniap.backends.get("numba")
    monkeypatch.setattr(type(be), "unavailable_reason", lambda self: "Numba is not installed")
    with pytest.raises(ValueError, match="backend 'numba' is not available: Numba is not installed"):
        uniap.segment(GOOD, backend="numba")


@pytest.mark.parametrize(
    "edges, error, match",
    [
        (np.array([[0, 5]]), ValueError, r"node 5, outside \[0, 3\)"),
        (np.array([[-1, 2]]), ValueError, r"node -1"),
        (np.array([[0, 1, 2]]), ValueError, r"shape \(E, 2\)"),
        (np.array([[0.0, 1.0]]), TypeError, "integers"),
    ],
)
def test_bad_edges(edges, error, match):
    with pytest.raises(error, match=match):
        uniap.segment_graph(np.ones((3, 2)), edges)


def test_graph_features_shape():
    with pytest.raises(ValueError, match=r"x must have shape \(N, C\)"):
        uniap.segment_graph(np.ones((3, 2, 1)), [[0, 1]])
    with pytest.raises(ValueError, match="at least one node"):
        uniap.segment_graph(np.ones((0, 2)), np.zeros((0, 2), int))
