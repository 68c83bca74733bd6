"""Hierarchy results: masks, queries, upsampling and SAM/COCO records."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import uniap
from uniap.records import decode_rle
from uniap.synthetic import piecewise_features


@pytest.fixture
def hierarchy(rng):
    return uniap.segment(piecewise_features((12, 16), channels=24, seed=rng), min_size=3, semantic=True)


def test_upsample_nearest_maps_patches_to_pixel_blocks(hierarchy):
    up = hierarchy.upsample((48, 64))  # patch size 4
    assert up.shape == (5, 48, 64) and up.dtype == np.int32
    np.testing.assert_array_equal(up[:, ::4, ::4], hierarchy.labels)
    np.testing.assert_array_equal(up, np.repeat(np.repeat(hierarchy.labels, 4, axis=1), 4, axis=2))
    odd = hierarchy.upsample((37, 50))
    assert odd.shape == (5, 37, 50)
    assert set(np.unique(odd[0])) <= set(np.unique(hierarchy.labels[0]))


def test_upsample_rejects_bad_shapes(hierarchy):
    with pytest.raises(ValueError, match="positive"):
        hierarchy.upsample((0, 5))
    with pytest.raises(ValueError, match="mode must be 'nearest'"):
        hierarchy.upsample((5, 5), mode="cubic")


@pytest.mark.parametrize("unique", [True, False])
def test_records_round_trip(hierarchy, unique):
    image_shape = (48, 64)
    records = hierarchy.to_records(image_shape, unique=unique)
    json.dumps(records)  # JSON-ready: counts are str, numbers are Python numbers
    up = hierarchy.upsample(image_shape)
    instance = [r for r in records if r["kind"] == "instance"]
    expected_count = sum(hierarchy.masks(i).shape[0] for i in range(len(hierarchy)))
    # one record per cluster and level, or one per distinct mask, spanning its levels
    assert sum(len(r["levels"]) for r in instance) == expected_count
    assert [r["id"] for r in records] == list(range(len(records)))
    by_id = {r["id"]: r for r in records}
    for r in instance:
        mask = decode_rle(r["segmentation"])
        assert r["level"] == r["levels"][0] and (unique or r["levels"] == [r["level"]])
        lv = hierarchy.level(r["level"])
        cluster = int(np.bincount(up[r["level"]][mask]).argmax())
        for i in r["levels"]:
            np.testing.assert_array_equal(mask, up[i] == int(np.bincount(up[i][mask]).argmax()))
        assert r["area"] == int(mask.sum())
        assert r["num_patches"] == int(lv.sizes[cluster]) >= hierarchy.min_size
        ys, xs = np.nonzero(mask)
        assert r["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        px, py = r["point_coords"][0]
        assert mask[int(py), int(px)]
        assert -1.0 <= r["score"] <= 1.0 + 1e-9
        assert r["threshold"] == lv.threshold and r["crop_box"] == [0, 0, 64, 48]
        if r["levels"][-1] == len(hierarchy) - 1:
            assert r["parent"] == -1
        else:
            parent = by_id[r["parent"]]
            assert r["levels"][-1] + 1 in parent["levels"]  # the cluster one level up
            parent_mask = decode_rle(parent["segmentation"])
            assert not (mask & ~parent_mask).any()  # nested
            if unique:
                assert parent_mask.sum() > mask.sum()  # the next *different* mask
    semantic = [r for r in records if r["kind"] == "semantic"]
    assert semantic and all(r["parent"] == -1 for r in semantic)
    if unique:
        strings = [r["segmentation"]["counts"] for r in instance]
        assert len(set(strings)) == len(strings)


def test_records_load_in_pycocotools(hierarchy, tmp_path):
    from pycocotools.coco import COCO

    records = hierarchy.to_records((48, 64))
    dataset = {
        "images": [{"id": 1, "height": 48, "width": 64, "file_name": "x.png"}],
        "categories": [{"id": 1, "name": "fg"}],
        "annotations": [
            {**r, "id": r["id"] + 1, "image_id": 1, "category_id": 1, "iscrowd": 0} for r in records
        ],
    }
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(dataset))
    coco = COCO(str(path))
    for ann in coco.loadAnns(coco.getAnnIds()):
        assert coco.annToMask(ann).sum() == ann["area"]


def test_score_of_a_lasting_mask_is_its_area_share_without_the_image():
    # two halves, unchanged over both levels: persistence 1 (stability_score 1), contrast 1
    # without the image, so score = sqrt(area / image area) = sqrt(1/2); the whole image
    # appears at no level, so nothing else is recorded
    f = np.zeros((4, 4, 2))
    f[:, :2, 0] = 1.0
    f[:, 2:, 1] = 2.0
    records = uniap.segment(f, levels=(0.5, 0.4), min_size=1).to_records()
    assert [r["stability_score"] for r in records] == [1.0, 1.0]
    assert [r["score"] for r in records] == pytest.approx([np.sqrt(0.5)] * 2, rel=1e-12)


def test_queries_stack_mask_features(hierarchy):
    q = hierarchy.queries()
    parts = [hierarchy.level(i).features[hierarchy.level(i).sizes >= 3] for i in range(len(hierarchy))]
    np.testing.assert_array_equal(q, np.concatenate(parts))


def test_features_are_member_means(hierarchy, rng):
    x = piecewise_features((12, 16), channels=24, seed=np.random.default_rng(5))
    h = uniap.segment(x)
    for lv in h.levels:
        for k in range(lv.num_clusters):
            np.testing.assert_allclose(lv.features[k], x[lv.labels == k].mean(axis=0), rtol=1e-5, atol=1e-6)


def test_graph_hierarchy_has_flat_labels():
    x = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    h = uniap.segment_graph(x, np.array([[0, 1], [1, 2], [2, 3]]), levels=(0.9, -1.0), min_size=1)
    np.testing.assert_array_equal(h.level(0).labels, [0, 0, 1, 1])
    assert h.masks(0).shape == (2, 4)
    with pytest.raises(ValueError, match="2-D grid"):
        h.to_records()


def test_import_pulls_in_no_heavy_library():
    code = (
        "import sys, uniap; heavy = {'numba', 'torch', 'cupy', 'pycocotools', 'skimage'} & set(sys.modules);"
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_available_reports_every_backend():
    status = uniap.backends.available()
    assert status["numpy"] is None
    assert set(status) >= {"numpy", "numba"}
    assert all(v is None or isinstance(v, str) for v in status.values())


def test_records_of_a_level_with_more_than_255_masks():
    # pycocotools' area()/toBbox() overflow past 255 RLEs under NumPy 2; records must not.
    f = np.zeros((20, 20, 400))
    f[np.arange(20)[:, None], np.arange(20)[None, :], np.arange(400).reshape(20, 20)] = 1.0
    h = uniap.segment(f, levels=(0.5,), min_size=1)
    records = h.to_records((40, 40))
    assert len(records) == 400
    assert all(r["area"] == 4 and r["bbox"][2:] == [2.0, 2.0] for r in records)


def test_mask_boxes_match_pycocotools():
    from pycocotools import mask as mask_utils

    from uniap.records import encode_rle, mask_boxes

    masks = np.random.default_rng(0).random((30, 17, 23)) > 0.97
    masks[3] = False
    rles = encode_rle(masks)
    np.testing.assert_array_equal(mask_boxes(masks), mask_utils.toBbox(rles))
