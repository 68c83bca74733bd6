"""Tests of uniap.metrics.boundary: seg2bdry, pixel correspondence, boundary P/R/F."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from uniap.metrics.boundary import (
    boundary_counts,
    boundary_prf,
    correspond_pixels,
    f_measure,
    segmentation_boundaries,
    thin_boundaries,
)


def _seg2bdry_loops(seg):
    """Literal port of the benchmark's seg2bdry.m (1-based indices kept as comments)."""
    tx, ty = seg.shape
    b = np.zeros((2 * tx + 1, 2 * ty + 1))
    ev = np.zeros((tx, ty))
    eh = np.zeros((tx, ty))
    for i in range(tx - 1):
        for j in range(ty):
            ev[i, j] = seg[i, j] != seg[i + 1, j]
    for i in range(tx):
        for j in range(ty - 1):
            eh[i, j] = seg[i, j] != seg[i, j + 1]
    b[2::2, 1::2] = ev  # bdry(3:2:end, 2:2:end)
    b[1::2, 2::2] = eh  # bdry(2:2:end, 3:2:end)
    for i in range(tx - 1):
        for j in range(ty - 1):
            b[2 + 2 * i, 2 + 2 * j] = max(eh[i, j], eh[i + 1, j], ev[i, j], ev[i, j + 1])
    b[0, :] = b[1, :]
    b[:, 0] = b[:, 1]
    b[-1, :] = b[-2, :]
    b[:, -1] = b[:, -2]
    return b[2::2, 2::2], b


def test_segmentation_boundaries_matches_loop_port():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (2, 3), (7, 5), (12, 16)]:
        seg = rng.integers(1, 4, size=shape)
        small, big = _seg2bdry_loops(seg)
        np.testing.assert_array_equal(segmentation_boundaries(seg), small.astype(bool))
        np.testing.assert_array_equal(segmentation_boundaries(seg, doubled=True), big.astype(bool))


def test_segmentation_boundaries_constant_is_empty():
    assert not segmentation_boundaries(np.ones((9, 11), int)).any()


def _brute_match(b1, b2, max_dist):
    """Max-cardinality then min-cost matching with a dense assignment (reference)."""
    y1, x1 = np.nonzero(b1)
    y2, x2 = np.nonzero(b2)
    if y1.size == 0 or y2.size == 0:
        return 0, 0
    radius = max_dist * np.hypot(*b1.shape)
    d2 = (y1[:, None] - y2[None, :]) ** 2 + (x1[:, None] - x2[None, :]) ** 2
    ok = d2 <= radius * radius
    cost = np.rint(np.sqrt(d2) * 100).astype(np.int64)
    big = 10**7
    cost = np.where(ok, cost, big)
    r, c = linear_sum_assignment(cost)
    real = ok[r, c]
    return int(real.sum()), int(cost[r, c][real].sum())


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), p1=st.floats(0.02, 0.3), p2=st.floats(0.02, 0.3))
def test_correspondence_is_max_cardinality_min_cost(seed, p1, p2):
    rng = np.random.default_rng(seed)
    b1 = rng.random((24, 30)) < p1
    b2 = rng.random((24, 30)) < p2
    max_dist = 0.06  # 2.3 px on this 24 x 30 grid
    m = correspond_pixels(b1, b2, max_dist)
    n_ref, cost_ref = _brute_match(b1, b2, max_dist)
    assert int(m.match1.sum()) == int(m.match2.sum()) == m.pairs.shape[0] == n_ref
    # one-to-one, within tolerance, same optimal (integer, 1/100 px) cost
    assert np.unique(m.pairs[:, 0]).size == np.unique(m.pairs[:, 1]).size == n_ref
    w = b1.shape[1]
    dy = m.pairs[:, 0] // w - m.pairs[:, 1] // w
    dx = m.pairs[:, 0] % w - m.pairs[:, 1] % w
    d = np.hypot(dy, dx)
    assert np.all(d <= max_dist * np.hypot(*b1.shape) + 1e-12)
    assert int(np.rint(d * 100).sum()) == cost_ref
    assert m.cost == pytest.approx(d.sum())
    assert np.all(b1.ravel()[m.pairs[:, 0]]) and np.all(b2.ravel()[m.pairs[:, 1]])


def test_correspondence_prefers_cardinality_over_distance():
    # tolerance 2.12 px.  Machine a=(5,10) can reach humans x=(5,12) and y=(5,8) (d=2),
    # machine b=(5,14) only x.  Both machines are matched only with a-y, b-x.
    b1 = np.zeros((200, 200), bool)
    b2 = np.zeros((200, 200), bool)
    b1[5, 10] = b1[5, 14] = True
    b2[5, 12] = b2[5, 8] = True
    m = correspond_pixels(b1, b2)
    assert m.match1.sum() == 2 and m.match2.sum() == 2


def test_correspondence_tolerance_scales_with_diagonal():
    a = np.zeros((300, 400), bool)
    a[50:250, 100] = True
    r = 0.0075 * 500  # 3.75 px
    for shift, expect in [(3, True), (4, False)]:
        b = np.roll(a, shift, axis=1)
        m = correspond_pixels(a, b)
        assert bool(m.match1.sum() == 200) is expect, (shift, r)
    m = correspond_pixels(a, np.roll(a, 4, axis=1), max_dist=0.01)
    assert m.match1.sum() == 200


def test_correspondence_empty_maps():
    z = np.zeros((10, 10), bool)
    o = z.copy()
    o[3, 3] = True
    for a, b in [(z, z), (z, o), (o, z)]:
        m = correspond_pixels(a, b)
        assert m.pairs.shape == (0, 2) and not m.match1.any() and not m.match2.any()
    with pytest.raises(ValueError):
        correspond_pixels(np.zeros((3, 3)), np.zeros((3, 4)))


def test_boundary_prf_perfect_and_partial():
    seg = np.zeros((200, 300), int)
    seg[:, 150:] = 1
    b = segmentation_boundaries(seg)  # one straight 1-px contour (200 px)
    assert b.sum() == 200 and thin_boundaries(b).sum() == 200
    r = boundary_prf(b, [b, b])
    assert (r.precision, r.recall, r.f) == (1.0, 1.0, 1.0)
    # a human with an extra contour far from the machine lowers recall by exactly that much
    extra = b.copy()
    extra[10, 10:60] = True
    r = boundary_prf(b, [extra])
    assert r.precision == 1.0
    assert (r.counts.cnt_r, r.counts.sum_r) == (200, 250)
    assert r.recall == pytest.approx(200 / 250)
    # 100 extra machine pixels, 50 of them 1 px from the second human's extra contour:
    # precision pools the humans (a machine pixel counts if any human matches it)
    machine = b.copy()
    machine[11, 10:110] = True
    r = boundary_prf(machine, [b, extra])
    assert (r.counts.cnt_p, r.counts.sum_p) == (250, 300)
    assert (r.counts.cnt_r, r.counts.sum_r) == (200 + 250, 450)
    assert r.f == pytest.approx(f_measure(1.0, 250 / 300))


def test_boundary_counts_thins_thick_maps():
    b = np.zeros((100, 100), bool)
    b[40:43, 10:90] = True  # 3 px thick line
    human = np.zeros((100, 100), bool)
    human[41, 10:90] = True
    c = boundary_counts(b, [human], thin=True)
    assert c.sum_p == thin_boundaries(b).sum() < b.sum()
    assert c.precision == 1.0
    c = boundary_counts(b, [human], thin=False)
    assert c.sum_p == b.sum() and c.cnt_p == 80


def test_f_measure():
    assert f_measure(0.0, 0.0) == 0.0
    assert f_measure(1.0, 1.0) == 1.0
    np.testing.assert_allclose(f_measure(np.array([0.5, 0.0]), np.array([1.0, 0.0])), [2 / 3, 0.0])
