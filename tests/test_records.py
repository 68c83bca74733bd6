"""Records from label maps: COCO strings, areas, boxes, interior points, distinct masks, memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import uniap
from uniap.features.base import FeatureGrid
from uniap.pixels import pixel_labels
from uniap.evaluation.proposals import best_ious
from uniap.records import cohesion, decode_rle, encode_label_map, hierarchy_records
from uniap.scores import predicted_iou
from uniap.synthetic import piecewise_features

INSTANCE_KEYS = ["id", "segmentation", "area", "bbox", "predicted_iou", "stability_score", "point_coords",
                 "crop_box", "level", "levels", "threshold", "kind", "num_patches", "parent", "score"]
SEMANTIC_KEYS = ["id", "segmentation", "area", "bbox", "predicted_iou", "stability_score", "point_coords",
                 "crop_box", "level", "levels", "threshold", "kind", "parent", "num_patches", "score"]


def coco_strings(labels: np.ndarray, values: np.ndarray) -> list[str]:
    """pycocotools' own encoding of each mask ``labels == v``."""
    from pycocotools import mask as mask_utils

    out = []
    for v in values:
        rle = mask_utils.encode(np.asfortranarray((labels == v).astype(np.uint8)))
        out.append(rle["counts"].decode("ascii"))
    return out


def check_columns(labels: np.ndarray, m) -> None:
    """Every column of ``encode_label_map(labels)`` against brute force and pycocotools."""
    values = np.unique(labels)
    np.testing.assert_array_equal(m.labels, values)
    assert m.size == labels.shape
    assert m.counts == coco_strings(labels, values)
    for j, v in enumerate(values):
        mask = labels == v
        ys, xs = np.nonzero(mask)
        assert m.areas[j] == mask.sum()
        assert m.boxes[j].tolist() == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        px, py = m.points[j]
        assert px == int(px) and py == int(py), "a point is a pixel"
        assert mask[int(py), int(px)], f"the point of label {v} is outside its mask"
        np.testing.assert_array_equal(decode_rle(m.rle(j)), mask)


@st.composite
def label_maps(draw):
    height = draw(st.integers(1, 40))
    width = draw(st.integers(1, 40))
    # a palette with gaps, negatives and values past 255 (up to many labels per map)
    palette = np.array(draw(st.lists(st.integers(-5, 5000), min_size=1, max_size=800, unique=True)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    style = draw(st.sampled_from(["noise", "blocks", "stripes"]))
    if style == "noise":
        idx = rng.integers(0, palette.size, (height, width))
    elif style == "blocks":
        b = draw(st.integers(1, 8))
        coarse = rng.integers(0, palette.size, (height // b + 1, width // b + 1))
        idx = np.repeat(np.repeat(coarse, b, axis=0), b, axis=1)[:height, :width]
    else:
        idx = np.broadcast_to(rng.integers(0, palette.size, (1, width)), (height, width))
        if draw(st.booleans()):
            idx = np.broadcast_to(rng.integers(0, palette.size, (height, 1)), (height, width))
    dtype = draw(st.sampled_from([np.int32, np.int64, np.int16]))
    return palette[idx].astype(dtype)


@given(label_maps())
def test_label_map_columns_match_pycocotools_and_brute_force(labels):
    check_columns(labels, encode_label_map(labels))


@given(label_maps(), st.data())
def test_label_map_subset_of_ids(labels, data):
    values = np.unique(labels).tolist()
    ids = data.draw(st.lists(st.sampled_from(values + [10**6, -99]), max_size=20))
    full = encode_label_map(labels)
    part = encode_label_map(labels, ids)
    wanted = sorted(set(ids) & set(values))
    assert part.labels.tolist() == wanted
    rows = [values.index(v) for v in wanted]
    assert part.counts == [full.counts[r] for r in rows]
    np.testing.assert_array_equal(part.areas, full.areas[rows])
    np.testing.assert_array_equal(part.boxes, full.boxes[rows].reshape(-1, 4))
    np.testing.assert_array_equal(part.points, full.points[rows].reshape(-1, 2))


def test_ids_outside_the_label_dtype():
    labels = np.array([[1, 2], [3, 16960]], np.int16)  # 10**6 would wrap to 16960 in int16
    m = encode_label_map(labels, [10**6, 2, -70000])
    assert m.labels.tolist() == [2] and m.areas.tolist() == [1]
    assert len(encode_label_map(labels, [])) == 0
    wide = np.array([[-30000, 30000, 7], [7, 7, -30000]], np.int16)  # differences overflow int16
    check_columns(wide, encode_label_map(wide))


@pytest.mark.parametrize("shape", [(1, 1), (1, 700), (700, 1), (3, 4)])
def test_degenerate_shapes(shape):
    labels = np.arange(np.prod(shape)).reshape(shape) % 3
    check_columns(labels, encode_label_map(labels))
    check_columns(np.zeros(shape, np.int32), encode_label_map(np.zeros(shape, np.int32)))


def test_long_runs_need_many_chunks():
    # counts of millions take 5 chunks; deltas of both signs and a mask touching the last pixel
    labels = np.zeros((1, 3_000_000), np.int32)
    labels[0, 5:1_000_003] = 1
    labels[0, 2_999_000:] = 2
    labels[0, 1_500_000] = 2
    m = encode_label_map(labels)
    assert m.counts == coco_strings(labels, [0, 1, 2])
    assert m.areas.tolist() == [(labels == v).sum() for v in (0, 1, 2)]
    rng = np.random.default_rng(3)
    big = np.repeat(rng.integers(0, 300, (60, 1)), 2000, axis=1).reshape(400, 300)
    check_columns(big, encode_label_map(big))


def test_interior_point_is_far_from_the_boundary():
    labels = np.zeros((200, 300), np.int32)
    labels[20:180, 30:130] = 1  # a 160 x 100 box
    labels[100:102, 200:290] = 2  # a thin bar
    m = encode_label_map(labels)
    x, y = m.points[1]
    assert min(x - 30, 129 - x, y - 20, 179 - y) >= 45  # at most 50 for this box
    check_columns(labels, m)


def test_large_maps_use_the_subsample_and_the_fallback():
    # 1000 x 1000 > POINT_SAMPLES: single pixels between samples fall back to their run
    rng = np.random.default_rng(1)
    labels = np.repeat(np.repeat(rng.integers(0, 50, (50, 50)), 20, axis=0), 20, axis=1).astype(np.int32)
    labels[rng.integers(0, 1000, 30), rng.integers(0, 1000, 30)] = np.arange(1000, 1030)
    m = encode_label_map(labels)
    values = np.unique(labels)
    np.testing.assert_array_equal(m.labels, values)
    for j, v in enumerate(values):
        px, py = m.points[j]
        assert labels[int(py), int(px)] == v


def test_encode_label_map_rejects_bad_input():
    with pytest.raises(TypeError, match="integer"):
        encode_label_map(np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        encode_label_map(np.zeros((2, 3, 3), np.int32))
    with pytest.raises(ValueError, match="non-empty"):
        encode_label_map(np.zeros((0, 3), np.int32))


def test_boolean_map():
    mask = np.zeros((5, 6), bool)
    mask[1:3, 2:5] = True
    check_columns(mask.astype(np.int32), encode_label_map(mask))


# ------------------------------------------------------------------------- distinct masks


def synthetic_case(seed: int, semantic: bool = True):
    f = piecewise_features((12, 16), channels=24, seed=seed)
    return uniap.segment(f, min_size=2, semantic=semantic), f


def synthetic_maps(seed: int, upsampling: str):
    """A synthetic hierarchy and its pixel label maps on a padded 47 x 62 image."""
    h, f = synthetic_case(seed)
    grid = FeatureGrid(f, 4, (48, 64), "synthetic", original_shape=(47, 62))
    return h, pixel_labels(h, grid, upsampling)


@pytest.fixture(scope="module")
def coffee_cases():
    import skimage.data

    grid = uniap.features.DefaultFeatures()(skimage.data.coffee())
    h = uniap.segment(grid.features, semantic=True).numpy()
    return [("coffee-nearest", h, pixel_labels(h, grid, "nearest")),
            ("coffee-bilinear", h, pixel_labels(h, grid, "bilinear"))]


def check_distinct_records(h, maps) -> None:
    records = hierarchy_records(h, pixel_labels=maps)
    per_level = hierarchy_records(h, pixel_labels=maps, unique=False)
    num_levels = len(h)
    assert [r["id"] for r in records] == list(range(len(records)))
    by_id = {r["id"]: r for r in records}
    masks = {r["id"]: decode_rle(r["segmentation"]) for r in records}
    # the score's persistence, from the pixel maps by an independent route (every pair of
    # pixel maps, uniap.evaluation.proposals.best_ious), and its sqrt(area) factor
    compact, ious = best_ious(np.asarray(maps))
    image_area = maps.shape[1] * maps.shape[2]
    for kind in ("instance", "semantic"):
        mine = [r for r in records if r["kind"] == kind]
        strings = [r["segmentation"]["counts"] for r in mine]
        assert len(set(strings)) == len(strings), f"{kind} masks repeat"
        pairs = {(lv, r["segmentation"]["counts"]) for r in mine for lv in r["levels"]}
        expected = [(r["level"], r["segmentation"]["counts"]) for r in per_level if r["kind"] == kind]
        assert len(set(expected)) == len(expected)
        assert pairs == set(expected)
    for r in records:
        assert list(r) == (INSTANCE_KEYS if r["kind"] == "instance" else SEMANTIC_KEYS)
        assert r["level"] == r["levels"][0] and r["threshold"] == h.level(r["level"]).threshold
        assert r["area"] == masks[r["id"]].sum() > 0
        px, py = r["point_coords"][0]
        assert masks[r["id"]][int(py), int(px)]
        if r["kind"] == "semantic":
            assert r["parent"] == -1 and r["levels"] == sorted(set(r["levels"]))
            continue
        assert r["levels"] == list(range(r["level"], r["levels"][-1] + 1))  # consecutive
        lv = h.level(r["level"])
        cluster = int(maps[r["level"]][int(py), int(px)])
        assert r["num_patches"] == lv.sizes[cluster]
        persistence = ious[r["level"]][int(compact[r["level"]][int(py), int(px)])].mean()
        assert r["stability_score"] == float(np.round(persistence, 6))
        assert r["score"] == pytest.approx(persistence * np.sqrt(r["area"] / image_area), rel=1e-12)
        assert r["predicted_iou"] == float(np.round(predicted_iou(r["score"]), 6))
        for lv in r["levels"]:  # the same cluster's mask at every level it spans
            cluster = maps[lv][int(py), int(px)]
            np.testing.assert_array_equal(maps[lv] == cluster, masks[r["id"]])
        after = r["levels"][-1] + 1
        candidates = [o for o in records if o["kind"] == "instance" and after in o["levels"]
                      and masks[o["id"]][int(py), int(px)]]
        enclosing = [o for o in candidates if not (masks[r["id"]] & ~masks[o["id"]]).any()]
        if after == num_levels:
            assert r["parent"] == -1 and not enclosing
        else:
            smallest = min(enclosing, key=lambda o: o["area"])
            assert r["parent"] == smallest["id"]
            assert by_id[r["parent"]]["area"] > r["area"]  # strictly enclosing


@pytest.mark.parametrize("upsampling", ["nearest", "bilinear"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_distinct_records_synthetic(seed, upsampling):
    check_distinct_records(*synthetic_maps(seed, upsampling))


@pytest.mark.parametrize("upsampling", ["nearest", "bilinear"])
@pytest.mark.parametrize("seed", [0, 1])
def test_distinct_records_of_a_shrunk_image(seed, upsampling):
    # fewer pixels than cells: many clusters get no pixel (no record), and a cluster can keep
    # its parent's pixels while the parent has more cells (pixel areas decide, not cell counts)
    f = np.random.default_rng(seed).normal(size=(12, 16, 3)).astype(np.float32)
    h = uniap.segment(f, min_size=1, levels=(0.9, 0.6, 0.3, 0.0), semantic=True)
    grid = FeatureGrid(f, 4, (48, 64), "random", original_shape=(8, 11), resized_shape=(48, 64))
    maps = pixel_labels(h, grid, upsampling)
    assert (np.bincount(maps[0].ravel(), minlength=h.level(0).num_clusters) == 0).any()
    check_distinct_records(h, maps)


@pytest.mark.parametrize("which", [0, 1])
def test_distinct_records_real_features(coffee_cases, which):
    _, h, maps = coffee_cases[which]
    check_distinct_records(h, maps)


def test_records_per_level_keep_todays_layout():
    h, _ = synthetic_case(4)
    records = h.to_records((48, 64), unique=False)
    by_id = {r["id"]: r for r in records}
    up = h.upsample((48, 64))
    assert sum(r["kind"] == "instance" for r in records) == sum(h.masks(i).shape[0] for i in range(len(h)))
    for r in records:
        assert r["levels"] == [r["level"]]
        if r["kind"] == "instance" and r["level"] + 1 < len(h):
            parent = by_id[r["parent"]]
            assert parent["level"] == r["level"] + 1
            px, py = r["point_coords"][0]
            cluster = up[r["level"]][int(py), int(px)]
            assert up[parent["level"]][int(py), int(px)] == h.level(r["level"]).parents[cluster]
    assert len(h.to_records((48, 64))) < len(records)


def test_zero_area_clusters_have_no_record():
    # a 2 x 2 grid stretched onto 1 x 1 pixels leaves three clusters without a pixel
    f = np.eye(4, dtype=np.float32).reshape(2, 2, 4)
    h = uniap.segment(f, levels=(0.5,), min_size=1)
    records = h.to_records((1, 1))
    assert [r["area"] for r in records] == [1]


def test_hierarchy_records_rejects_bad_pixel_labels():
    h, _ = synthetic_case(0, semantic=False)
    with pytest.raises(ValueError, match="pixel_labels"):
        hierarchy_records(h, pixel_labels=np.zeros((2, 4, 4), np.int32))


def reference_cohesion(x, labels, features):
    """``uniap.records.cohesion`` as it was, with ``np.add.at``."""
    x = np.asarray(x, dtype=np.float64).reshape(labels.size, -1)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = np.divide(x, norms, out=np.zeros_like(x), where=norms > 1e-10)
    k = features.shape[0]
    sums = np.zeros((k, unit.shape[1]))
    np.add.at(sums, labels.ravel(), unit)
    f = np.asarray(features, dtype=np.float64)
    fn = np.linalg.norm(f, axis=1, keepdims=True)
    f_unit = np.divide(f, fn, out=np.zeros_like(f), where=fn > 1e-10)
    sizes = np.bincount(labels.ravel(), minlength=k)
    return np.einsum("kc,kc->k", sums, f_unit) / np.maximum(sizes, 1)


@pytest.mark.parametrize("seed", range(5))
def test_cohesion_matches_add_at(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(19, 17, 33)).astype(np.float32)
    x[0, 0] = 0.0
    labels = rng.integers(0, 40, (19, 17))
    labels[labels == 4] = 5  # an empty cluster
    features = rng.normal(size=(40, 33))
    features[7] = 0.0
    np.testing.assert_array_equal(cohesion(x, labels, features), reference_cohesion(x, labels, features))


# --------------------------------------------------------------------------------- memory


def test_records_of_a_large_image_stay_within_a_few_label_maps():
    f = piecewise_features((100, 100), channels=16, regions=(16, 128, 1024), seed=0)
    h = uniap.segment(f, min_size=1, semantic=True).numpy()
    assert h.level(0).num_clusters > 300
    shape = (2000, 2000)
    map_bytes = shape[0] * shape[1] * np.dtype(np.int32).itemsize
    tracemalloc.start()
    try:
        records = h.to_records(shape)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(records) > 300
    assert peak < 4 * map_bytes, f"peak {peak / 2**20:.0f} MiB for {map_bytes / 2**20:.0f} MiB label maps"

    labels = h.upsample(shape)[0]
    tracemalloc.start()
    try:
        encode_label_map(labels)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * map_bytes


def test_records_at_4096_of_a_512_grid():
    # formerly 65 s and 8.6 GB; now seconds and O(H * W) memory
    base = piecewise_features((64, 64), channels=16, regions=(8, 64, 512), seed=0)
    noise = np.random.default_rng(0).normal(scale=0.5, size=(512, 512, 16)).astype(np.float32)
    h = uniap.segment(np.repeat(np.repeat(base, 8, axis=0), 8, axis=1) + noise)
    assert sum(h.masks(i).shape[0] for i in range(len(h))) > 500
    records = h.to_records((4096, 4096))
    assert records and all(r["segmentation"]["size"] == [4096, 4096] for r in records)
    assert sum(r["area"] for r in records if r["level"] == 0) <= 4096 * 4096
    strings = [r["segmentation"]["counts"] for r in records]
    assert len(set(strings)) == len(strings)
    if (h.level(-1).sizes >= h.min_size).all():  # the last level's records tile the image
        assert sum(r["area"] for r in records if r["levels"][-1] == len(h) - 1) == 4096 * 4096


# ------------------------------------------------------------------------ bilinear voting


def reference_bilinear_vote(labels: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """``uniap.pixels._bilinear_vote`` before it worked in bands (whole-image temporaries)."""
    h, w = labels.shape
    y0 = np.minimum(np.floor(ys).astype(np.int64), h - 1)
    x0 = np.minimum(np.floor(xs).astype(np.int64), w - 1)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    corners = [
        (labels[np.ix_(y0, x0)], (1 - fy) * (1 - fx)),
        (labels[np.ix_(y0, x1)], (1 - fy) * fx),
        (labels[np.ix_(y1, x0)], fy * (1 - fx)),
        (labels[np.ix_(y1, x1)], fy * fx),
    ]
    best_label, best_weight = corners[0][0], np.full(corners[0][0].shape, -1.0)
    for label, _ in corners:
        weight = sum(wt * (other == label) for other, wt in corners)
        better = weight > best_weight + 1e-12  # ties keep the earlier (nearest-first) corner
        best_label = np.where(better, label, best_label)
        best_weight = np.where(better, weight, best_weight)
    return best_label


@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 50), st.integers(1, 50), st.integers(1, 4),
       st.integers(1, 300), st.integers(0, 2**32 - 1), st.booleans())
def test_banded_bilinear_vote_matches_the_reference(h, w, height, width, k, band, seed, regular):
    from uniap import pixels

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, (h, w)).astype(np.int32)
    if regular:  # pixel centres as uniap.pixels computes them (ties at half-cells)
        ys = np.clip((np.arange(height) + 0.5) * h / height - 0.5, 0, h - 1)
        xs = np.clip((np.arange(width) + 0.5) * w / width - 0.5, 0, w - 1)
    else:
        ys, xs = rng.uniform(0, h - 1, height), rng.uniform(0, w - 1, width)
    saved = pixels.BAND_PIXELS
    pixels.BAND_PIXELS = band
    try:
        got = pixels._bilinear_vote(labels, ys, xs)
    finally:
        pixels.BAND_PIXELS = saved
    expected = reference_bilinear_vote(labels, ys, xs)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
