"""Tests of uniap.metrics.semantic (Hungarian-matched mIoU / pixel accuracy)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from uniap.metrics.semantic import (
    HungarianMIoU,
    confusion_matrix,
    hungarian_match,
    hungarian_miou,
    scores_from_confusion,
)


def test_perfect_prediction():
    gt = np.array([[0, 0, 1], [2, 2, 1]])
    r = hungarian_miou(gt, gt)
    assert r["miou"] == 1.0 and r["pixel_accuracy"] == 1.0
    np.testing.assert_array_equal(r["iou"], [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(r["cluster_to_class"], [0, 1, 2])


@settings(max_examples=40, deadline=None)
@given(gt=arrays(np.int64, (6, 7), elements=st.integers(0, 4)), perm_seed=st.integers(0, 2**32 - 1))
def test_permuted_labels_score_one(gt, perm_seed):
    perm = np.random.default_rng(perm_seed).permutation(5)
    pred = perm[gt]
    r = hungarian_miou(pred, gt, num_classes=5, num_clusters=5)
    assert r["pixel_accuracy"] == 1.0
    assert r["miou"] == 1.0
    present = np.unique(gt)
    np.testing.assert_array_equal(r["cluster_to_class"][perm[present]], present)


def test_more_clusters_than_classes_count_as_wrong():
    gt = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    pred = np.array([5, 5, 5, 7, 2, 2, 2, 2])  # cluster 7 unmatched: one wrong pixel of class 0
    r = hungarian_miou(pred, gt)
    assert r["cluster_to_class"][5] == 0 and r["cluster_to_class"][2] == 1
    assert r["cluster_to_class"][7] == -1
    assert r["pixel_accuracy"] == 7 / 8
    np.testing.assert_allclose(r["iou"], [3 / 4, 1.0])
    assert r["miou"] == pytest.approx(0.875)
    # the unmatched cluster's pixels land in the last column of the matched table
    assert r["matched_confusion"][0, -1] == 1


def test_fewer_clusters_than_classes():
    gt = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 1, 1, 1, 1])
    r = hungarian_miou(pred, gt, num_classes=3)
    # class 2 unmatched -> IoU 0; class 1 matched to cluster 1 -> IoU 2/4
    np.testing.assert_allclose(r["iou"], [1.0, 0.5, 0.0])
    assert r["pixel_accuracy"] == pytest.approx(4 / 6)


def test_ignore_index_is_excluded():
    gt = np.array([[0, 0, 255, 1], [1, 255, 255, 0]])
    pred = np.array([[3, 3, 0, 1], [1, 3, 1, 3]])
    r = hungarian_miou(pred, gt, ignore_index=255)
    assert r["pixel_accuracy"] == 1.0 and r["miou"] == 1.0
    assert r["confusion"].sum() == 5
    # without ignore_index, 255 would be a class
    with pytest.raises(ValueError):
        hungarian_miou(pred, gt, num_classes=2)


def test_absent_class_is_nan_and_skipped():
    gt = np.array([0, 0, 1, 1])
    r = hungarian_miou(gt, gt, num_classes=3, num_clusters=2)
    assert np.isnan(r["iou"][2])
    assert r["miou"] == 1.0


def test_dataset_accumulator_matches_once():
    # image 1 alone would match cluster 0 -> class 0; image 2 has the opposite majority.
    acc = HungarianMIoU(num_classes=2)
    acc.update(np.array([0, 0, 1]), np.array([0, 0, 1]))
    acc.update(np.array([0, 0, 0, 1, 1, 1, 1]), np.array([1, 1, 1, 0, 0, 0, 0]))
    r = acc.compute()
    # pooled confusion [[2, 4], [3, 1]]: 4 + 3 > 2 + 1 -> cluster 0 -> class 1, cluster 1 -> class 0
    np.testing.assert_array_equal(acc.confusion, [[2, 4], [3, 1]])
    np.testing.assert_array_equal(r["cluster_to_class"], [1, 0])
    assert r["pixel_accuracy"] == pytest.approx(7 / 10)
    np.testing.assert_allclose(r["iou"], [4 / (6 + 5 - 4), 3 / (4 + 5 - 3)])
    # per-image matching would give 1.0 for both images
    assert hungarian_miou(np.array([0, 0, 1]), np.array([0, 0, 1]))["miou"] == 1.0
    acc.reset()
    assert acc.confusion.sum() == 0


def test_accumulator_grows_cluster_count():
    acc = HungarianMIoU(num_classes=2, ignore_index=255)
    acc.update(np.array([0, 1]), np.array([0, 1]))
    acc.update(np.array([4, 9]), np.array([1, 255]))  # cluster 9 only on void
    assert acc.confusion.shape == (2, 5)
    r = acc.compute()
    assert r["pixel_accuracy"] == pytest.approx(2 / 3)


def test_batched_input_equals_sum_of_images():
    rng = np.random.default_rng(3)
    gt = rng.integers(0, 4, size=(5, 16, 16))
    pred = rng.integers(0, 6, size=(5, 16, 16))
    acc = HungarianMIoU(num_classes=4, num_clusters=6)
    for p, g in zip(pred, gt):
        acc.update(p, g)
    whole = hungarian_miou(pred, gt, num_classes=4, num_clusters=6)
    np.testing.assert_array_equal(acc.confusion, whole["confusion"])
    assert acc.compute()["miou"] == whole["miou"]


def test_iou_matching_objective():
    conf = np.array([[50, 40], [0, 10]])
    # pixel objective: diag 50 + 10 = 60 vs 40 + 0
    assert hungarian_match(conf).tolist() == [0, 1]
    r = scores_from_confusion(conf, match="iou")
    assert r["cluster_to_class"].tolist() == [0, 1]
    with pytest.raises(ValueError):
        hungarian_match(conf, match="nope")


def test_confusion_matrix_validation():
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 1]), np.array([0, 1, 1]))
    with pytest.raises(ValueError):
        confusion_matrix(np.array([-1, 1]), np.array([0, 1]))
    with pytest.raises(TypeError):
        confusion_matrix(np.array([0.5, 1]), np.array([0, 1]))
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), num_clusters=2)
