"""The paper rule's first votes from the Gram's lower triangle (#22): the kernels give every
edge's L1 distance of the full rows, never read the upper triangle, and the engine gives the
reference's partitions on every path (offsets summed row by row, edges one by one, the full
Gram), also when scores lie right at a threshold.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import uniap
import uniap.core.levels

pytest.importorskip("numba")
import uniap.backends.numba_backend as numba_backend  # noqa: E402
from uniap.backends import _numba_kernels as kernels  # noqa: E402
from uniap.synthetic import piecewise_features  # noqa: E402

from test_backends_agree import MARGIN, grids, levels_strategy  # noqa: E402
from test_paper_rule import BACKENDS, compare  # noqa: E402

CPU_NUMBA = [b for b in BACKENDS if b in ("numba", "torch")]  # both run the Numba backend's engine


def _poisoned_lower(rng, n, c, dtype):
    """A Gram's lower triangle whose strict upper triangle is NaN (any read of it shows)."""
    f = rng.standard_normal((n, c))
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    full = (f @ f.T).astype(dtype)
    g = full.copy()
    g[np.triu_indices(n, 1)] = np.nan
    return full, g


@st.composite
def edge_sets(draw):
    """A matrix size and edges a < b: grid-like offsets (many edges each) plus stray ones."""
    n = draw(st.integers(2, 300))
    offsets = draw(st.lists(st.integers(1, n - 1), min_size=0, max_size=4, unique=True))
    a, b = [], []
    for d in offsets:
        starts = np.arange(n - d)
        keep = draw(st.sampled_from([1, 2, 3]))  # all, every other, every third
        a.append(starts[::keep])
        b.append(starts[::keep] + d)
    stray = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)).filter(lambda t: t[0] != t[1]),
                          max_size=12))
    for i, j in stray:
        a.append(np.array([min(i, j)]))
        b.append(np.array([max(i, j)]))
    if not a:
        a, b = [np.array([0])], [np.array([1])]
    a, b = np.concatenate(a), np.concatenate(b)
    order = np.lexsort((b, a))
    return n, a[order], b[order]


@settings(max_examples=60, deadline=None)
@given(data=edge_sets(), c=st.integers(1, 24), dtype=st.sampled_from([np.float32, np.float64]),
       threads=st.integers(1, 3), seed=st.integers(0, 2**31), dense=st.booleans())
def test_lower_l1_is_the_l1_of_the_full_rows(data, c, dtype, threads, seed, dense):
    """Row-by-row offsets (``dense``: every offset, stray edges too) or some edges on their
    own: the L1 distances of the full rows, the upper triangle never read."""
    n, a, b = data
    full, g = _poisoned_lower(np.random.default_rng(seed), n, c, dtype)
    with pytest.MonkeyPatch.context() as mp:
        if dense:
            mp.setattr(numba_backend, "DENSE_OFFSET_FRACTION", 1 << 30)  # any offset
        mp.setattr(numba_backend, "SPARSE_EDGE_FRACTION", 0)  # any number of stray edges
        mp.setattr(numba_backend, "LOWER_THREAD_ROWS", 1)  # threads on any size
        l1 = numba_backend.lower_profile_l1(g, a, b, threads)
    want = np.abs(full[a].astype(np.float64) - full[b].astype(np.float64)).sum(axis=1)
    np.testing.assert_allclose(l1, want, rtol=1e-12, atol=1e-9)


def test_lower_l1_splits_the_rows_between_threads(monkeypatch):
    """Enough rows for two threads: each gets rows of equal work, and the sums are the same."""
    rng = np.random.default_rng(3)
    full, g = _poisoned_lower(rng, 600, 8, np.float32)
    a = np.concatenate([np.arange(599), np.arange(570)])
    b = np.concatenate([np.arange(1, 600), np.arange(30, 600)])
    monkeypatch.setattr(numba_backend, "LOWER_THREAD_ROWS", 256)
    seen = []
    real = kernels.lower_l1_tails
    monkeypatch.setattr(kernels, "lower_l1_tails", lambda g_, o, acc, lo, hi: seen.append((lo, hi)) or real(g_, o, acc, lo, hi))
    one = numba_backend.lower_profile_l1(g, a, b, 1)
    two = numba_backend.lower_profile_l1(g, a, b, 2)
    assert sorted(seen) == [(0, 424), (0, 600), (424, 600)]
    want = np.abs(full[a].astype(np.float64) - full[b]).sum(axis=1)
    np.testing.assert_allclose(one, want, rtol=1e-12)
    np.testing.assert_allclose(two, want, rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 200), seed=st.integers(0, 2**31), data=st.data())
def test_complete_rows_makes_the_rows_whole_from_the_lower_triangle(n, seed, data):
    full, g = _poisoned_lower(np.random.default_rng(seed), n, 5, np.float32)
    rows = np.array(sorted(data.draw(st.sets(st.integers(0, n - 1), max_size=n))), dtype=np.int64)
    kernels.complete_rows(g, rows)
    np.testing.assert_array_equal(g[rows], full[rows])
    np.testing.assert_array_equal(np.tril(g), np.tril(full))  # the lower triangle is kept


def test_lower_offsets_picks_the_common_offsets():
    w = 10
    a_h = np.array([i for i in range(100) if i % w != w - 1])
    a_v = np.arange(90)
    a = np.concatenate([a_h, a_v])
    b = np.concatenate([a_h + 1, a_v + w])
    assert numba_backend.lower_offsets(a, b, 100).tolist() == [1, 10]
    stray_a, stray_b = np.concatenate([a, [0, 3, 5, 7, 11, 13, 17]]), np.concatenate([b, [50, 60, 70, 80, 90, 95, 99]])
    assert numba_backend.lower_offsets(stray_a, stray_b, 100) is None  # 7 stray edges > 100 / 16
    assert numba_backend.lower_offsets(np.array([3]), np.array([1]), 100) is None  # not a < b


@contextlib.contextmanager
def _lower_path(path):
    """Force the votes' path: "rows" (common offsets row by row), "edges" (each edge on its
    own), "full" (the full Gram).  The strict upper triangle of a lower Gram is set to NaN,
    so that any read of it before its rows are completed changes the result."""
    saved = (numba_backend.LOWER_VOTES, numba_backend.DENSE_OFFSET_FRACTION, numba_backend.SPARSE_EDGE_FRACTION,
             numba_backend.NumbaBackend.lower_gram)
    real = numba_backend.NumbaBackend.lower_gram

    def poisoned(self, unit, a, b):
        g = real(self, unit, a, b)
        if g is not None:
            g[np.triu_indices(g.shape[0], 1)] = np.nan
        return g

    numba_backend.NumbaBackend.lower_gram = poisoned
    numba_backend.LOWER_VOTES = path != "full"
    if path == "edges":
        numba_backend.DENSE_OFFSET_FRACTION = 0
        numba_backend.SPARSE_EDGE_FRACTION = 0
    try:
        yield
    finally:
        (numba_backend.LOWER_VOTES, numba_backend.DENSE_OFFSET_FRACTION, numba_backend.SPARSE_EDGE_FRACTION,
         numba_backend.NumbaBackend.lower_gram) = saved


@pytest.mark.parametrize("path", ["rows", "edges", "full"])
@pytest.mark.parametrize("backend", CPU_NUMBA)
@settings(max_examples=30, deadline=None)
@given(x=grids(max_side=24, max_channels=64), levels=levels_strategy, semantic=st.booleans(),
       passes=st.sampled_from(["single", "until_stable"]))
def test_every_vote_path_gives_the_reference_partitions(backend, path, x, levels, semantic, passes):
    with _lower_path(path):
        compare(x, backend, levels=levels, preset="paper", semantic=semantic, passes=passes)


@pytest.mark.parametrize("path", ["rows", "edges"])
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_batches_and_8_connectivity_on_the_lower_votes(path, data):
    """Parts of several widths (each its own offsets), 8-connected grids (four offsets)."""
    n = data.draw(st.integers(1, 4))
    c = data.draw(st.integers(1, 32))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    batch = [piecewise_features((data.draw(st.integers(1, 16)), data.draw(st.integers(1, 16))), channels=c,
                                noise=float(rng.uniform(0, 1.5)), seed=rng) for _ in range(n)]
    with _lower_path(path):
        compare(batch, "numba", preset="paper", semantic=data.draw(st.booleans()),
                connectivity=data.draw(st.sampled_from([4, 8])))


def _exact_first_scores(x, weight=0.4):
    """The paper's first-level scores of a 4-connected grid's edges, in float64."""
    h, w, c = x.shape
    f = x.reshape(-1, c).astype(np.float64)
    f /= np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-300)
    idx = np.arange(h * w).reshape(h, w)
    a = np.concatenate([idx[:, :-1].ravel(), idx[:-1, :].ravel()])
    b = np.concatenate([idx[:, 1:].ravel(), idx[1:, :].ravel()])
    prof = f @ f.T
    vote = 1.0 - np.abs(prof[a] - prof[b]).mean(axis=1)
    return (1 - weight) * np.sum(f[a] * f[b], axis=1) + weight * vote


@pytest.mark.parametrize("path", ["rows", "edges", "full"])
@pytest.mark.parametrize("gap", [3e-9, 1e-7, 3e-6, -3e-9, -1e-7, -3e-6])
@pytest.mark.parametrize("seed", range(3))
def test_scores_right_at_a_threshold(path, gap, seed):
    """A threshold within the float32 profiles' error bound of an edge's score (adversarial:
    the float32 vote alone could decide it either way): the exact re-scoring decides it as
    the reference does, on every vote path, with and without semantic groups."""
    rng = np.random.default_rng(40 + seed)
    x = piecewise_features((12, 11), channels=48, regions=[6], noise=0.5, seed=rng)
    scores = _exact_first_scores(x)
    target = float(np.sort(scores)[len(scores) // 2])  # a score in the middle: edges on both sides
    levels = (target + gap, -0.5)
    for semantic in (False, True):
        with _lower_path(path):
            compare(x, "numba", reject=lambda ok: ok or pytest.skip("margin"), preset="paper", levels=levels,
                    semantic=semantic)


def test_the_lower_path_is_taken_on_grids(monkeypatch):
    """A grid's profiles are kept lower (its first votes read the triangle), completed for the
    nodes left single by the first contraction."""
    calls = {"l1": 0, "complete": []}
    real_l1, real_complete = numba_backend.NumbaBackend.lower_profile_l1, numba_backend.NumbaBackend.complete_profile_rows
    monkeypatch.setattr(numba_backend.NumbaBackend, "lower_profile_l1",
                        lambda self, g, a, b: calls.__setitem__("l1", calls["l1"] + 1) or real_l1(self, g, a, b))
    monkeypatch.setattr(numba_backend.NumbaBackend, "complete_profile_rows",
                        lambda self, g, rows: calls["complete"].append(len(rows)) or real_complete(self, g, rows))
    x = piecewise_features((20, 18), channels=32, regions=[12], noise=0.6, seed=2)
    compare(x, "numba", reject=lambda ok: ok or pytest.skip("margin"), preset="paper", semantic=True)
    assert calls["l1"] == 1 and len(calls["complete"]) == 1 and calls["complete"][0] < 20 * 18
