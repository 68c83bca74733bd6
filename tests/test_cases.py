"""Small cases derived by hand, and the properties every result must have."""

from __future__ import annotations

import numpy as np
import pytest

import uniap
import uniap.testing
from uniap.synthetic import piecewise_features

from conftest import cpu_backends

BACKENDS = ["numpy", *cpu_backends()]


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_by_three_grid_known_merges(backend):
    # Columns 0-1 point along e0, column 2 along e1: cos = 1 inside, 0 across.
    f = np.zeros((2, 3, 2))
    f[:, :2, 0] = 1.0
    f[:, 2, 1] = 1.0
    h = uniap.segment(f, levels=(0.5, -0.5), min_size=1, backend=backend)
    np.testing.assert_array_equal(h.level(0).labels, [[0, 0, 1], [0, 0, 1]])
    np.testing.assert_array_equal(h.level(0).sizes, [4, 2])
    np.testing.assert_array_equal(h.level(0).parents, [0, 0])
    np.testing.assert_allclose(h.level(0).features, [[1, 0], [0, 1]])
    # cos = 0 > -0.5: everything joins at the second level.
    np.testing.assert_array_equal(h.level(1).labels, np.zeros((2, 3)))
    np.testing.assert_array_equal(h.level(1).parents, [-1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_threshold_is_strict(backend):
    f = np.array([[[1.0, 0.0], [1.0, 1.0]]])  # cos = 1/sqrt(2)
    t = float(np.float64(1.0) / np.sqrt(2.0))
    cos = float(np.dot([1.0, 0.0], [1.0, 1.0]) / (1.0 * np.sqrt(2.0)))
    h = uniap.segment(f, levels=(cos,), min_size=1, backend=backend)
    assert h.level(0).num_clusters == 2  # s == t does not contract
    h = uniap.segment(f, levels=(np.nextafter(t, -1) - 1e-12,), min_size=1, backend=backend)
    assert h.level(0).num_clusters == 1


def _chain_until_stable_differs():
    # Pass 1 joins cells 1 and 2 (cos 0.745); their sum then has cos 0.848 with cell 0,
    # which alone had only cos 0.6 with cell 1.
    return np.array([[[1.0, 0.0], [0.6, 0.8], [1.0, 0.2]]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_until_stable_and_single_differ(backend):
    f = _chain_until_stable_differs()
    single = uniap.segment(f, levels=(0.7,), passes="single", min_size=1, backend=backend)
    stable = uniap.segment(f, levels=(0.7,), passes="until_stable", min_size=1, backend=backend)
    np.testing.assert_array_equal(single.level(0).labels, [[0, 1, 1]])
    np.testing.assert_array_equal(stable.level(0).labels, [[0, 0, 0]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_whole_image_cluster_is_reported(backend):
    # The released code drops a cluster with no neighbour left; every level must report it.
    f = np.ones((6, 5, 3), np.float32)
    h = uniap.segment(f, backend=backend)
    for i in range(len(h)):
        assert h.masks(i).shape == (1, 6, 5)
        assert h.masks(i).all()
    records = h.to_records((12, 10), unique=False)
    assert [r["level"] for r in records] == list(range(len(h)))
    assert all(r["area"] == 120 for r in records)
    (distinct,) = h.to_records((12, 10))  # the same mask at every level: one record
    assert distinct["levels"] == list(range(len(h))) and distinct["area"] == 120


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_square_grid(backend):
    f = np.zeros((3, 5, 4), np.float32)
    f[:, :3, 0] = 1.0
    f[:, 3:, 1] = 1.0
    f[2, :, 2] = 0.2  # a slight tint of the last row keeps cosines above 0.9
    h = uniap.segment(f, levels=(0.9,), min_size=1, backend=backend)
    expected = np.array([[0, 0, 0, 1, 1]] * 3)
    np.testing.assert_array_equal(h.level(0).labels, expected)
    assert h.shape == (3, 5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("connectivity", [4, 8])
def test_disjoint_batch_equals_per_image_runs(backend, connectivity, rng):
    grids = [
        piecewise_features(shape, channels=24, seed=rng)
        for shape in [(7, 9), (12, 5), (1, 1), (16, 16), (3, 1)]
    ]
    batch = uniap.segment(grids, connectivity=connectivity, semantic=True, backend=backend)
    assert isinstance(batch, list) and len(batch) == len(grids)
    for grid, h in zip(grids, batch):
        alone = uniap.segment(grid, connectivity=connectivity, semantic=True, backend=backend)
        uniap.testing.assert_same_partitions(alone, h, features_rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stacked_batch_equals_list(backend, rng):
    stacked = piecewise_features((10, 8), channels=16, seed=rng)[None].repeat(3, axis=0)
    stacked[1] = stacked[1, ::-1]
    stacked[2] += rng.normal(size=stacked[2].shape).astype(np.float32)
    as_array = uniap.segment(stacked, backend=backend)
    as_list = uniap.segment(list(stacked), backend=backend)
    for a, b in zip(as_array, as_list):
        uniap.testing.assert_same_partitions(a, b, features_rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("options", [{}, {"preset": "paper"}, {"semantic": True}, {"connectivity": 8}])
def test_result_properties(backend, options, rng):
    x = piecewise_features((20, 13), channels=32, seed=rng)
    h = uniap.segment(x, min_size=3, backend=backend, **options)
    assert len(h) == 5 and h.labels.shape == (5, 20, 13) and h.labels.dtype == np.int32
    previous = None
    for i, lv in enumerate(h.levels):
        labels = lv.labels.ravel()
        # canonical: clusters numbered by first appearance in row-major order
        _, first = np.unique(labels, return_index=True)
        assert np.all(np.diff(first) > 0) and labels[0] == 0
        np.testing.assert_array_equal(np.bincount(labels), lv.sizes)
        assert lv.features.shape == (lv.num_clusters, 32)
        if previous is not None:
            # nesting: each finer cluster lies inside its parent
            np.testing.assert_array_equal(previous.parents[previous.labels], lv.labels)
        previous = lv
        masks = h.masks(i)
        assert masks.shape[0] == int((lv.sizes >= 3).sum())
        np.testing.assert_array_equal(masks.sum(axis=(1, 2)), lv.sizes[lv.sizes >= 3])
        if lv.semantic_labels is not None:
            # semantic groups are unions of instance clusters
            for k in range(lv.num_clusters):
                assert len(np.unique(lv.semantic_labels[lv.labels == k])) == 1
    np.testing.assert_array_equal(h.level(-1).parents, -1)
    assert h.queries().shape == (sum(h.masks(i).shape[0] for i in range(len(h))), 32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_volume_grid(backend, rng):
    x = piecewise_features((4, 6, 5), channels=8, seed=rng)
    h = uniap.segment(x, spatial_ndim=3, backend=backend)
    assert h.labels.shape == (5, 4, 6, 5)
    batch = uniap.segment(np.stack([x, x]), spatial_ndim=3, backend=backend)
    uniap.testing.assert_same_partitions(h, batch[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_vectors_have_cosine_zero(backend):
    f = np.zeros((1, 3, 2))
    f[0, 2] = [1.0, 0.0]
    h = uniap.segment(f, levels=(0.0,), min_size=1, backend=backend)
    assert h.level(0).num_clusters == 3  # cos(0, anything) = 0, not > 0
    h = uniap.segment(f, levels=(-0.1,), min_size=1, backend=backend)
    assert h.level(0).num_clusters == 1


def test_input_is_not_modified(rng):
    x = piecewise_features((12, 12), channels=8, seed=rng, dtype=np.float64)
    before = x.copy()
    for backend in BACKENDS:
        uniap.segment(x, backend=backend, preset="paper", semantic=True)
        uniap.segment(x, backend=backend)
    np.testing.assert_array_equal(x, before)


def test_integer_features_are_accepted():
    f = np.zeros((2, 2, 2), np.int64)
    f[:, 0, 0] = 3
    f[:, 1, 1] = 2
    h = uniap.segment(f, levels=(0.5,), min_size=1)
    np.testing.assert_array_equal(h.level(0).labels, [[0, 1], [0, 1]])
    assert h.level(0).features.dtype == np.float64


def test_features_keep_input_float_dtype(rng):
    x = piecewise_features((6, 6), channels=4, seed=rng, dtype=np.float32)
    assert uniap.segment(x).level(0).features.dtype == np.float32
    assert uniap.segment(x.astype(np.float64)).level(0).features.dtype == np.float64
