"""Tests of uniap.metrics.panoptic (PQ / SQ / RQ, Kirillov et al. 2019)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from uniap.metrics.panoptic import PanopticQuality, panoptic_quality


def _blocks():
    gt = np.zeros((10, 10), int)
    gt[0:5, 0:5] = 1  # 25 px
    gt[0:5, 5:10] = 2  # 25 px
    gt[5:10, :] = 3  # 50 px
    return gt


def test_perfect_prediction():
    gt = _blocks()
    r = panoptic_quality(gt + 100 * (gt > 0), gt)
    assert (r["pq"], r["sq"], r["rq"]) == (1.0, 1.0, 1.0)
    assert (r["tp"], r["fp"], r["fn"]) == (3, 0, 0)


def test_hand_computed_class_agnostic():
    gt = _blocks()
    pred = np.zeros_like(gt)
    pred[0:5, 0:4] = 1  # inside gt 1: IoU 20/25 = 0.8
    pred[0:5, 4:10] = 2  # 5 px of gt 1 + 25 px of gt 2: IoU with gt 2 = 25/30
    pred[5:10, 0:2] = 3  # 10 of gt 3's 50 px: IoU 0.2 -> FP, and gt 3 -> FN
    r = panoptic_quality(pred, gt)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 1, 1)
    iou_sum = 0.8 + 25 / 30
    assert r["sq"] == pytest.approx(iou_sum / 2)
    assert r["rq"] == pytest.approx(2 / (2 + 0.5 + 0.5))
    assert r["pq"] == pytest.approx(iou_sum / 3)
    assert r["pq"] == pytest.approx(r["sq"] * r["rq"])


def test_iou_exactly_half_is_not_a_match():
    gt = np.array([[1, 1, 0, 0]])
    pred = np.array([[1, 1, 1, 1]])  # union excludes the 2 void pixels -> IoU 1
    assert panoptic_quality(pred, gt)["tp"] == 1
    gt = np.array([[1, 1, 2, 2]])
    r = panoptic_quality(pred, gt)  # IoU 1/2 with each
    assert (r["tp"], r["fp"], r["fn"]) == (0, 1, 2)


def test_void_pixels_leave_union_and_excuse_false_positives():
    gt = np.zeros((4, 10), int)
    gt[:, :5] = 1  # 20 px, rest void
    pred = np.zeros_like(gt)
    pred[:, :7] = 1  # 20 px on gt 1 + 8 on void -> IoU 20 / (28 + 20 - 20 - 8) = 1
    pred[:, 7:] = 2  # entirely on void -> ignored, not a false positive
    r = panoptic_quality(pred, gt)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 0)
    assert r["pq"] == 1.0
    pred[0, 4] = 3  # 1-px segment on gt 1: a false positive
    r = panoptic_quality(pred, gt)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 0)


def test_crowd_regions():
    gt = _blocks()
    pred = gt.copy()
    pred[5:10, :] = 0
    pred[5:10, 0:3] = 7  # on the crowd region 3 only
    r = panoptic_quality(pred, gt, gt_crowd=[3])
    assert (r["tp"], r["fp"], r["fn"]) == (2, 0, 0)  # crowd: no FN, and 7 is excused
    r = panoptic_quality(pred, gt)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 1, 1)


def test_class_aware_and_matched_classes():
    gt = _blocks()
    gt_classes = {1: 0, 2: 0, 3: 1}  # two things of class 0, one region of class 1
    pred = gt.copy()
    pred_classes = {1: 5, 2: 5, 3: 9}  # cluster ids
    r = panoptic_quality(pred, gt, pred_classes=pred_classes, gt_classes=gt_classes)
    assert r["pq"] == 0.0 and (r["tp"], r["fp"], r["fn"]) == (0, 3, 3)
    r = panoptic_quality(pred, gt, pred_classes=pred_classes, gt_classes=gt_classes, class_mapping={5: 0, 9: 1})
    assert r["pq"] == 1.0 and r["n_classes"] == 2
    # array lookups work too; an unmapped class can match nothing
    lut = np.array([-1, 0, 0, 1])
    r = panoptic_quality(pred, gt, pred_classes=lut, gt_classes=lut)
    assert r["pq"] == 1.0
    r = panoptic_quality(pred, gt, pred_classes=pred_classes, gt_classes=gt_classes, class_mapping={5: 0})
    assert r["per_class"][0]["pq"] == 1.0 and r["per_class"][1]["pq"] == 0.0
    assert r["pq"] == pytest.approx(0.5) and r["fp_unmapped"] == 1
    with pytest.raises(ValueError):
        panoptic_quality(pred, gt, pred_classes=pred_classes)


def test_accumulator_pools_images():
    gt = _blocks()
    acc = PanopticQuality()
    acc.update(gt, gt)  # 3 TP, IoU 1
    pred = np.zeros_like(gt)
    acc.update(pred, gt)  # 3 FN
    r = acc.compute()
    assert (r["tp"], r["fp"], r["fn"]) == (3, 0, 3)
    assert r["pq"] == pytest.approx(3 / (3 + 1.5))
    assert r["sq"] == 1.0
    acc.reset()
    assert np.isnan(acc.compute()["pq"])


@settings(max_examples=40, deadline=None)
@given(
    gt=arrays(np.int64, (6, 6), elements=st.integers(0, 4)),
    pred=arrays(np.int64, (6, 6), elements=st.integers(0, 4)),
    seed=st.integers(0, 1000),
)
def test_properties(gt, pred, seed):
    r = panoptic_quality(pred, gt)
    if r["n_classes"]:
        assert 0.0 <= r["pq"] <= r["sq"] <= 1.0
        assert r["pq"] == pytest.approx(r["sq"] * r["rq"])
    # renaming predicted segments (void stays void) changes nothing
    perm = np.concatenate([[0], np.random.default_rng(seed).permutation(4) + 11])
    r2 = panoptic_quality(perm[pred], gt)
    assert (r2["tp"], r2["fp"], r2["fn"]) == (r["tp"], r["fp"], r["fn"])
    assert r2["pq"] == pytest.approx(r["pq"], nan_ok=True)
    # a perfect prediction scores 1 whenever something is labelled
    if (gt > 0).any():
        assert panoptic_quality(gt, gt)["pq"] == 1.0
