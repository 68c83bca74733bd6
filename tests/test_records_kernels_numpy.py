"""The compiled parts of the records (uniap._record_kernels) against the NumPy / SciPy code
they replaced, kept here as the reference: the superpixel map's column-major runs, the
distances of the point samples to the boundaries, the interior points, and a level's map
encoded from the superpixels' runs in one call."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from uniap.records import (
    RegionRuns,
    _encode_runs,
    _index_in,
    _label_points,
    _map_runs,
    _point_stride,
    _sample_distances,
)

_TAXICAB = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)


def _map_runs_numpy(labels):
    flat = labels.T.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1])
    starts = np.empty(change.size + 1, np.int64)
    starts[0] = 0
    starts[1:] = change + 1
    return starts, flat[starts]


def _sample_distances_scipy(subs):
    from scipy import ndimage

    sh, sw = subs[0].shape
    inner = np.zeros((len(subs), sh, sw), bool)
    if sh >= 3 and sw >= 3:
        for i, sub in enumerate(subs):
            c = sub[1:-1, 1:-1]
            inner[i, 1:-1, 1:-1] = ((c == sub[:-2, 1:-1]) & (c == sub[2:, 1:-1])
                                    & (c == sub[1:-1, :-2]) & (c == sub[1:-1, 2:]))
    if not inner.any():
        return [np.zeros(sh * sw, np.int32) for _ in subs]
    dist = ndimage.distance_transform_cdt(inner.reshape(len(subs) * sh, sw), metric=_TAXICAB)
    return list(dist.reshape(len(subs), sh * sw))


def _label_points_numpy(uniq, starts, lengths, group, first, height, samples):
    stride, sub, dist = samples
    k = uniq.size
    sw = sub.shape[1]
    where = _index_in(sub.ravel(), uniq)
    pixel = np.flatnonzero(where >= 0)
    best = np.full(k, -1, np.int64)
    np.maximum.at(best, where[pixel], dist[pixel].astype(np.int64) * sub.size + pixel)
    points = np.empty((k, 2))
    found = best >= 0
    sy, sx = np.divmod(best[found] % sub.size, sw)
    points[found, 0], points[found, 1] = sx * stride, sy * stride
    if not found.all():
        longest = np.maximum.reduceat(lengths, first)
        is_longest = np.flatnonzero(lengths == longest[group])
        g = group[is_longest]
        pick = is_longest[np.r_[True, g[1:] != g[:-1]]]
        col, row = np.divmod(starts[pick] + lengths[pick] // 2, height)
        points[~found, 0], points[~found, 1] = col[~found], row[~found]
    return points


def _blocky(rng, height, width, labels, block):
    small = rng.integers(0, labels, size=(-(-height // block), -(-width // block)))
    return np.kron(small, np.ones((block, block), np.int64))[:height, :width]


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**31), height=st.integers(1, 40), width=st.integers(1, 40),
       labels=st.integers(1, 6), block=st.integers(1, 6), offset=st.integers(-5, 2**40),
       dtype=st.sampled_from([np.int8, np.uint8, np.int32, np.uint32, np.int64]),
       layout=st.sampled_from(["c", "f", "strided"]))
def test_column_runs_equal_numpy(seed, height, width, labels, block, offset, dtype, layout):
    m = _blocky(np.random.default_rng(seed), height, width, labels, block)
    if np.dtype(dtype).itemsize == 8:
        m = m + offset
    m = m.astype(dtype)
    if layout == "f":
        m = np.asfortranarray(m)
    elif layout == "strided":
        m = m[::2, ::-1]
    got, want = _map_runs(m), _map_runs_numpy(m)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**31), height=st.integers(1, 30), width=st.integers(1, 30),
       maps=st.integers(1, 4), labels=st.integers(1, 5), block=st.integers(1, 8),
       dtype=st.sampled_from([np.int32, np.int64, np.uint8]))
def test_sample_distances_equal_scipy(seed, height, width, maps, labels, block, dtype):
    rng = np.random.default_rng(seed)
    subs = [_blocky(rng, height, width, labels, block).astype(dtype) for _ in range(maps)]
    got, want = _sample_distances(subs), _sample_distances_scipy(subs)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def _runs_and_samples(rng, height, width, labels, block):
    m = _blocky(rng, height, width, labels, block) * 3 - 4  # gaps and negatives
    stride = int(rng.integers(1, 5))
    sub = np.ascontiguousarray(m[::stride, ::stride])
    return m, (stride, sub, _sample_distances([sub])[0])


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**31), height=st.integers(1, 40), width=st.integers(1, 40),
       labels=st.integers(1, 12), block=st.integers(1, 12), wanted=st.integers(0, 14))
def test_label_points_equal_numpy(seed, height, width, labels, block, wanted):
    """Ties (farthest, then the last sample; the first longest run) broken as before, labels
    that no sample hits included (a large stride, small blocks)."""
    from uniap._record_kernels import encode_runs

    rng = np.random.default_rng(seed)
    m, samples = _runs_and_samples(rng, height, width, labels, block)
    starts, run_labels = _map_runs_numpy(m)
    ids = None if wanted == 0 else np.sort(rng.choice(np.arange(-4, 3 * labels), size=min(wanted, 3 * labels + 4), replace=False))
    keys = np.unique(run_labels if ids is None else ids)
    present, g_starts, g_ends, group, first, *_ = encode_runs(
        starts, _index_in(run_labels, keys), keys.size, m.size, m.shape[0])
    uniq = keys[present]
    if not uniq.size:
        return
    got = _label_points(uniq, g_starts, g_ends, first, m.shape[0], samples)
    want = _label_points_numpy(uniq, g_starts, g_ends - g_starts, group, first, m.shape[0], samples)
    np.testing.assert_array_equal(got, want)
    # and through a search where the labels span too much for a table
    far = uniq.astype(np.int64) * 10**9
    stride, sub, dist = samples
    got = _label_points(far, g_starts, g_ends, first, m.shape[0], (stride, sub.astype(np.int64) * 10**9, dist))
    np.testing.assert_array_equal(got, want)


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**31), height=st.integers(1, 40), width=st.integers(1, 40),
       nodes=st.integers(1, 40), groups=st.integers(1, 10), block=st.integers(1, 6),
       wanted=st.integers(-1, 10), offset=st.integers(-3, 5),
       dtype=st.sampled_from([np.int32, np.int64, np.uint16]))
def test_region_runs_encode_equals_the_joined_runs(seed, height, width, nodes, groups, block, wanted, offset,
                                                   dtype):
    """RegionRuns.encode in one compiled call against the NumPy path it replaced: the node
    labels gathered on the runs, equal neighbours joined, encoded by _encode_runs."""
    rng = np.random.default_rng(seed)
    regions = _blocky(rng, height, width, nodes, block)
    node_labels = (rng.integers(0, groups, size=nodes) + (offset if dtype != np.uint16 else 0)).astype(dtype)
    ids = None if wanted < 0 else rng.choice(np.arange(-2, groups + 6), size=min(wanted, groups + 8), replace=False)
    stride = _point_stride(height, width) if rng.random() < 0.5 else int(rng.integers(1, 6))
    sub = np.ascontiguousarray(node_labels[regions[::stride, ::stride]])
    samples = (stride, sub, _sample_distances([sub])[0])
    runs = RegionRuns(regions)
    assert runs._wanted(node_labels, ids) is not None  # the compiled path
    got = runs.encode(node_labels, ids, samples)
    labels = node_labels[runs.nodes]
    keep = np.r_[True, labels[1:] != labels[:-1]]
    want = _encode_runs(runs.starts[keep], labels[keep], runs.shape, ids, samples)
    assert got.size == want.size and got.counts == want.counts
    for a, b in ((got.labels, want.labels), (got.areas, want.areas), (got.boxes, want.boxes),
                 (got.points, want.points)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_region_runs_encode_keeps_numpy_for_labels_it_cannot_table():
    regions = np.array([[0, 0, 1], [2, 2, 1]])
    runs = RegionRuns(regions)
    assert runs._wanted(np.array([0, 10**12, 5]), None) is None  # too wide a span
    assert runs._wanted(np.array([0, 1]), None) is None  # a node without a label: NumPy's IndexError
    assert runs._wanted(np.array([0.0, 1.0, 2.0]), None) is None
