"""Hand-computed and property tests of uniap.metrics.region (covering, PRI, VI)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from uniap.metrics import region
from uniap.metrics.region import (
    covering,
    covering_counts,
    probabilistic_rand_index,
    rand_index,
    region_counts,
    variation_of_information,
)


def _brute_force(seg, gts):
    """Direct transcription of the benchmark's definitions with Python loops."""
    seg = np.asarray(seg)
    n = seg.size
    cnt_r = 0.0
    sum_r = 0
    best_seg = {}
    ri_sum = vi_sum = 0.0
    for g in gts:
        g = np.asarray(g)
        for lg in np.unique(g[g > 0]):
            mg = g == lg
            best = 0.0
            for ls in np.unique(seg[seg > 0]):
                ms = seg == ls
                iou = (mg & ms).sum() / (mg | ms).sum()
                best = max(best, iou)
                best_seg[ls] = max(best_seg.get(ls, 0.0), iou)
            cnt_r += mg.sum() * best
            sum_r += mg.sum()
        keep = (seg > 0) & (g > 0)
        a, b = seg[keep], g[keep]
        m = a.size
        agree = 0
        for i in range(m):
            for j in range(i + 1, m):
                agree += (a[i] == a[j]) == (b[i] == b[j])
        ri_sum += agree / (m * (m - 1) / 2)
        h = lambda x: -sum((c / m) * math.log2(c / m) for c in np.unique(x, return_counts=True)[1])  # noqa: E731
        joint = h(a.astype(np.int64) * 100000 + b)
        vi_sum += 2 * joint - h(a) - h(b)
    cnt_p = sum((seg == ls).sum() * v for ls, v in best_seg.items())
    sum_p = int((seg > 0).sum())
    k = len(gts)
    return cnt_r / sum_r, cnt_p / sum_p, ri_sum / k, vi_sum / k


def test_perfect_segmentation_scores_one():
    gt = np.array([[1, 1, 2], [3, 3, 2], [3, 3, 2]])
    seg = gt * 7 + 100  # different label values, same partition
    assert covering(seg, [gt]) == 1.0
    assert covering(seg, [gt], reverse=True) == 1.0
    assert probabilistic_rand_index(seg, [gt]) == 1.0
    assert variation_of_information(seg, [gt]) == pytest.approx(0.0, abs=1e-12)


def test_single_region_covering_formula():
    # one machine region: every human region R' gets IoU |R'| / N, so
    # R = sum_k sum_R' |R'|^2 / (K N^2); P = max over all human regions of |R'| / N.
    rng = np.random.default_rng(0)
    gts = [rng.integers(1, 5, size=(6, 7)), rng.integers(1, 3, size=(6, 7))]
    seg = np.ones((6, 7), int)
    n = seg.size
    expected_r = sum((np.bincount(g.ravel())[1:] ** 2).sum() for g in gts) / (len(gts) * n * n)
    expected_p = max(np.bincount(g.ravel())[1:].max() for g in gts) / n
    assert covering(seg, gts) == pytest.approx(expected_r, rel=1e-12)
    assert covering(seg, gts, reverse=True) == pytest.approx(expected_p, rel=1e-12)


def test_hand_computed_two_humans():
    seg = np.array([[1, 1, 2, 2]])
    h1 = np.array([[1, 1, 1, 2]])  # regions of 3 and 1 pixels
    h2 = np.array([[1, 1, 2, 2]])  # identical to seg
    # h1: region {0,1,2} best IoU max(2/3, 1/4) = 2/3 -> 3 * 2/3 = 2; region {3}: IoU 1/2 -> 0.5
    # h2: 4 * 1 = 4  ->  R = (2 + 0.5 + 4) / (2 * 4)
    assert covering(seg, [h1, h2]) == pytest.approx(6.5 / 8)
    # P: both seg regions are matched perfectly by h2
    assert covering(seg, [h1, h2], reverse=True) == 1.0
    c = covering_counts(seg, [h1, h2])
    assert (c.cnt_r, c.sum_r, c.cnt_p, c.sum_p) == pytest.approx((6.5, 8, 4, 4))
    # RI(seg, h1): pairs (6): agree on (0,1) same/same, (2,3) diff/same -> no, (0,2) diff/same no,
    # (1,2) diff/same no, (0,3) diff/diff yes, (1,3) yes -> 3/6
    assert rand_index(seg, h1) == pytest.approx(0.5)
    assert probabilistic_rand_index(seg, [h1, h2]) == pytest.approx(0.75)
    # VI(seg, h1) = H(seg|h1) + H(h1|seg) = 3/4*H(2/3,1/3) + 1/2*H(1/2,1/2)
    hb = lambda p: -(p * math.log2(p) + (1 - p) * math.log2(1 - p))  # noqa: E731
    vi = 0.75 * hb(2 / 3) + 0.5 * hb(0.5)
    assert variation_of_information(seg, h1) == pytest.approx(vi)
    assert variation_of_information(seg, [h1, h2]) == pytest.approx(vi / 2)


def test_void_label_is_not_a_region():
    seg = np.array([[1, 1, 2, 2, 2]])
    gt = np.array([[1, 1, 2, 2, 0]])  # last pixel unlabelled (benchmark convention: void=0)
    # gt region 2 (2 px) vs seg region 2 (3 px, one on void): IoU 2/3
    c = covering_counts(seg, [gt], void=0)
    assert c.sum_r == 4
    assert c.cnt_r == pytest.approx(2 * 1 + 2 * 2 / 3)
    # PRI / VI leave out the void pixel entirely -> perfect
    assert probabilistic_rand_index(seg, [gt], void=0) == 1.0
    assert variation_of_information(seg, [gt], void=0) == pytest.approx(0.0, abs=1e-12)
    # by default (void=None) 0 is an ordinary region, e.g. for 0-based label maps
    assert probabilistic_rand_index(seg, [gt]) < 1.0
    assert covering_counts(seg, [gt]).sum_r == 5
    assert covering(gt, [gt + 1]) == 1.0  # 0-based vs 1-based labelling of one partition
    # any value can be the void label
    assert covering_counts(seg, [np.where(gt == 0, 255, gt)], void=255) == c


def test_label_values_do_not_matter():
    rng = np.random.default_rng(1)
    gt = rng.integers(1, 6, size=(10, 12))
    seg = rng.integers(1, 4, size=(10, 12))
    big = np.where(seg == 1, 10**9, seg * 12345)  # sparse huge labels take the sort path
    for f in (covering, probabilistic_rand_index, variation_of_information):
        assert f(big, [gt]) == pytest.approx(f(seg, [gt]), rel=1e-12)


@settings(max_examples=30, deadline=None)
@given(
    seg=arrays(np.int64, (4, 5), elements=st.integers(1, 4)),
    g1=arrays(np.int64, (4, 5), elements=st.integers(0, 3)),
    g2=arrays(np.int64, (4, 5), elements=st.integers(1, 3)),
)
def test_matches_brute_force(seg, g1, g2):
    if (g1 > 0).sum() < 2:
        g1[0, :2] = 1
    r, p, ri, vi = _brute_force(seg, [g1, g2])  # label 0 of g1 is void
    assert covering(seg, [g1, g2], void=0) == pytest.approx(r, rel=1e-12)
    assert covering(seg, [g1, g2], reverse=True, void=0) == pytest.approx(p, rel=1e-12)
    assert probabilistic_rand_index(seg, [g1, g2], void=0) == pytest.approx(ri, rel=1e-12)
    assert variation_of_information(seg, [g1, g2], void=0) == pytest.approx(vi, rel=1e-9, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(a=arrays(np.int64, (5, 6), elements=st.integers(1, 5)), b=arrays(np.int64, (5, 6), elements=st.integers(1, 5)))
def test_symmetries_and_ranges(a, b):
    assert rand_index(a, b) == pytest.approx(rand_index(b, a))
    assert variation_of_information(a, b) == pytest.approx(variation_of_information(b, a), abs=1e-12)
    assert covering(a, b) == pytest.approx(covering(b, a, reverse=True))
    assert 0.0 <= covering(a, b) <= 1.0
    assert 0.0 <= rand_index(a, b) <= 1.0
    assert variation_of_information(a, b) >= -1e-12


def test_region_counts_hierarchy_and_best_covering():
    gt = np.array([[1, 1, 2, 2], [3, 3, 2, 2]])
    fine = np.arange(8).reshape(2, 4) + 1
    coarse = np.ones_like(gt)
    rc = region_counts([fine, gt, coarse], [gt])
    assert rc.cnt_r.shape == (3,)
    assert rc.cnt_r[1] / rc.sum_r[1] == 1.0
    assert rc.cnt_r_best / rc.sum_r[0] == 1.0
    # fine: each gt region's best IoU is 1/|R'| -> sum = 1 + 1 + 1 = 3 regions... /8 pixels
    assert rc.cnt_r[0] == pytest.approx(3.0)
    assert rc.ri[1] == 1.0 and rc.vi[1] == pytest.approx(0.0, abs=1e-12)


def test_input_validation():
    with pytest.raises(ValueError):
        covering(np.ones((2, 2), int), [np.ones((3, 2), int)])
    with pytest.raises(ValueError):
        covering(np.ones((2, 2), int), [])
    with pytest.raises(TypeError):
        covering(np.ones((2, 2), complex), [np.ones((2, 2), int)])
    # integral floats are accepted (MATLAB-style double label maps)
    assert covering(np.ones((2, 2)), [np.ones((2, 2))]) == 1.0


def test_metrics_import_only_numpy_scipy_skimage():
    """uniap.metrics must not pull torch/numba/pycocotools or other uniap modules."""
    import subprocess
    import sys

    code = (
        "import sys, uniap; before = set(sys.modules);"
        "import uniap.metrics as m; assert not (set(sys.modules) - before - {'uniap.metrics'}), 'lazy';"
        "import uniap.metrics.region, uniap.metrics.boundary, uniap.metrics.bsds;"
        "import uniap.metrics.semantic, uniap.metrics.instance, uniap.metrics.panoptic;"
        "m.covering; m.hungarian_miou;"
        "new = set(sys.modules) - before;"
        "bad = sorted(x for x in new if x.split('.')[0] in ('torch', 'numba', 'pycocotools', 'cupy')"
        " or (x.startswith('uniap.') and not x.startswith('uniap.metrics')));"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", out.stdout
    assert region.__name__ == "uniap.metrics.region"
