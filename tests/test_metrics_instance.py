"""Tests of uniap.metrics.instance (class-agnostic COCO mask AP / AR)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pycocotools")

from uniap.metrics.instance import class_agnostic_mask_ap, encode_mask  # noqa: E402


def _data_root() -> Path:
    env = os.environ.get("UNIAP_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


COCO_JSON = _data_root() / "coco" / "instances.json"

# COCO's 101 recall thresholds; AP of a ranked list that is all-correct up to recall r
RECALL_POINTS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1)


def _squares(n=4, size=64):
    masks = []
    for k in range(n):
        m = np.zeros((size, size), bool)
        r, c = divmod(k, 2)
        m[4 + 30 * r : 24 + 30 * r, 4 + 30 * c : 24 + 30 * c] = True
        masks.append(m)
    gt = {
        "images": [{"id": 7, "height": size, "width": size}],
        "annotations": [
            {"id": k + 1, "image_id": 7, "category_id": 10 + k, "iscrowd": 0, "segmentation": encode_mask(m)}
            for k, m in enumerate(masks)
        ],
        "categories": [{"id": 10 + k, "name": f"c{k}"} for k in range(n)],
    }
    return masks, gt


def test_perfect_predictions_all_categories_collapsed():
    masks, gt = _squares()
    preds = [{"image_id": 7, "score": 0.9 - 0.1 * k, "segmentation": encode_mask(m), "category_id": 99}
             for k, m in enumerate(masks)]
    r = class_agnostic_mask_ap(preds, gt)
    for key in ("AP", "AP50", "AP75", "AR@10", "AR@100", "AR@1000"):
        assert r[key] == pytest.approx(1.0), key
    assert r["AR@1"] == pytest.approx(0.25)  # one detection allowed, 4 objects
    assert r["num_gt"] == 4 and r["num_predictions"] == 4
    # the input ground truth is not modified
    assert [a["category_id"] for a in gt["annotations"]] == [10, 11, 12, 13]


def test_one_missed_object_lowers_ar_and_ap():
    masks, gt = _squares()
    preds = [{"image_id": 7, "score": 0.9 - 0.1 * k, "segmentation": masks[k]} for k in range(3)]  # arrays ok
    r = class_agnostic_mask_ap(preds, gt)
    assert r["AR@1"] == pytest.approx(1 / 4)
    for k in (10, 100, 1000):
        assert r[f"AR@{k}"] == pytest.approx(3 / 4)
    # precision is 1 up to recall 3/4 and 0 after
    expected_ap = np.mean(RECALL_POINTS <= 0.75)
    assert r["AP"] == pytest.approx(expected_ap)
    assert r["AP50"] == pytest.approx(expected_ap)


def test_false_positive_ranked_first_lowers_ap_only():
    masks, gt = _squares()
    junk = np.zeros((64, 64), bool)
    junk[40:44, 0:4] = True
    preds = [{"image_id": 7, "score": 1.0, "segmentation": junk}]
    preds += [{"image_id": 7, "score": 0.9 - 0.1 * k, "segmentation": masks[k]} for k in range(4)]
    r = class_agnostic_mask_ap(preds, gt)
    assert r["AR@100"] == pytest.approx(1.0)
    assert r["AR@1"] == 0.0
    # precision after the k-th true positive is k / (k + 1); interpolated precision is the
    # max to the right -> 4/5 for every recall point
    assert r["AP"] == pytest.approx(0.8)


def test_iou_thresholds_half_overlap():
    masks, gt = _squares(n=1)
    m = np.zeros((64, 64), bool)
    m[4:24, 4:18] = True
    m[4:12, 18] = True  # 288 of the square's 400 pixels: IoU 0.72
    r = class_agnostic_mask_ap([{"image_id": 7, "score": 0.5, "segmentation": m}], gt)
    assert r["AP50"] == pytest.approx(1.0)
    assert r["AP75"] == 0.0
    assert r["AR@100"] == pytest.approx(5 / 10)  # matched at IoU thresholds 0.50 .. 0.70


def test_no_predictions_and_rle_variants():
    masks, gt = _squares()
    r = class_agnostic_mask_ap([], gt)
    assert r["AP"] == 0.0 and r["AR@100"] == 0.0 and r["num_predictions"] == 0
    rle = encode_mask(masks[0])
    rle_bytes = {"size": rle["size"], "counts": rle["counts"].encode()}
    r = class_agnostic_mask_ap([{"image_id": 7, "score": 1.0, "segmentation": rle_bytes}], gt)
    assert r["AR@100"] == pytest.approx(0.25)
    with pytest.raises(ValueError):
        class_agnostic_mask_ap([{"image_id": 8, "score": 1.0, "segmentation": rle}], gt)
    with pytest.raises(ValueError):
        class_agnostic_mask_ap([{"image_id": 7, "score": 1.0, "segmentation": rle}], gt, ap_max_dets=5)


@pytest.fixture(scope="module")
def coco():
    if not COCO_JSON.is_file():
        pytest.skip(f"COCO data not found at {COCO_JSON} (set UNIAP_DATA to the shared data folder)")
    import contextlib
    import io

    from pycocotools.coco import COCO

    with open(COCO_JSON) as fh:
        data = json.load(fh)
    with contextlib.redirect_stdout(io.StringIO()):
        api = COCO(str(COCO_JSON))
    return data, api


def test_coco_ground_truth_as_predictions(coco, tmp_path):
    data, api = coco
    anns = [a for a in data["annotations"] if not a["iscrowd"]]
    rng = np.random.default_rng(0)
    preds = [{"image_id": a["image_id"], "score": float(rng.random()), "segmentation": api.annToRLE(a)}
             for a in anns]
    n = len(anns)
    per_image = np.bincount([a["image_id"] for a in anns])
    per_image = per_image[per_image > 0]

    r = class_agnostic_mask_ap(preds, str(COCO_JSON))  # path input
    assert r["num_gt"] == n
    assert r["AP"] == pytest.approx(1.0) and r["AP50"] == pytest.approx(1.0)
    assert r["AR@100"] == pytest.approx(1.0)
    assert r["AR@1"] == pytest.approx(np.minimum(per_image, 1).sum() / n)
    assert r["AR@10"] == pytest.approx(np.minimum(per_image, 10).sum() / n)

    # drop one object: AR@100 falls by exactly 1 / n
    r2 = class_agnostic_mask_ap(preds[1:], api)  # COCO object input
    assert r2["AR@100"] == pytest.approx((n - 1) / n)
    assert r2["AR@1000"] == pytest.approx((n - 1) / n)
    assert r2["AP"] < 1.0
