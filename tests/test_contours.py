"""Contour regions: the coarser cuts of the watershed hierarchy that watershed superpixels are
cut from, recorded beside UniAP's levels (kind "contour") and proposed with them."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils
from scipy import ndimage

import uniap
from uniap import superpixels as sp_module
from uniap.evaluation.proposals import proposals_from_levels
from uniap.evaluation.segmenters import levels_from_records
from uniap.records import contour_records
from uniap.superpixels import superpixel_hierarchy, superpixels


def _image(seed: int, shape=(60, 84)) -> np.ndarray:
    """Discs of random colours on a noisy background: edges of several strengths."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    labels = np.zeros(shape, int)
    for k in range(1, 6):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(4, 20)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = k
    colours = rng.integers(0, 256, size=(6, 3))
    return np.clip(colours[labels] + rng.normal(0, 8, size=shape + (3,)), 0, 255).astype(np.uint8)


def _nested(fine: np.ndarray, coarse: np.ndarray) -> bool:
    """Every region of ``fine`` lies inside one region of ``coarse``."""
    pairs = np.unique(np.stack([fine.ravel(), coarse.ravel()]), axis=1)
    return pairs.shape[1] == np.unique(fine).size


# -- the hierarchy ----------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([20, 60, 150]), st.sampled_from([2, 3, 9]),
       st.sampled_from([2, 3, 5]))
def test_cuts_are_nested_coarser_unions_of_the_superpixels(seed, size, first, factor):
    image = _image(seed)
    regions, cuts, thresholds = superpixel_hierarchy(image, size=size, first=first, factor=factor)
    assert np.array_equal(regions, superpixels(image, size=size))  # the same superpixels
    n = int(regions.max()) + 1
    assert cuts.shape == (len(thresholds), n) and cuts.dtype == np.int32
    counts = [int(c.max()) + 1 for c in cuts]
    assert all(np.array_equal(np.unique(c), np.arange(k)) for c, k in zip(cuts, counts))  # 0 .. R-1
    assert all(a > b for a, b in zip([n] + counts, counts))  # strictly coarser, cut after cut
    assert all(k >= 2 for k in counts) and np.all(np.diff(thresholds) >= 0)
    if counts:
        assert counts[0] <= max(2, round(n / first)) + 1
    chain = [np.arange(n)] + list(cuts)
    assert all(_nested(a, b) for a, b in zip(chain, chain[1:]))
    for c in cuts:  # regions of a watershed cut are connected
        pixels = c[regions]
        for r in range(int(c.max()) + 1):
            assert ndimage.label(pixels == r)[1] == 1


@pytest.mark.parametrize("ties", [False, True], ids=["distinct-weights", "ties"])
def test_the_kernel_is_higras_watershed_hierarchy_by_volume(ties):
    """Same edge weights: the same cuts and altitudes as higra's
    ``watershed_hierarchy_by_volume`` (ties broken in higra's edge order)."""
    hg = pytest.importorskip("higra")
    from uniap import _superpixel_kernels as kernels

    rng = np.random.default_rng(1 if ties else 0)
    for _ in range(6):
        height, width = (int(v) for v in rng.integers(2, 30, size=2))
        graph = hg.get_4_adjacency_graph((height, width))
        sources, targets = graph.edge_list()
        slots = np.where(targets - sources == 1, 2 * sources, 2 * sources + 1)
        weights = np.zeros(2 * height * width, np.float32)
        weights[slots] = rng.integers(0, 10, len(slots)) if ties else rng.permutation(60000)[:len(slots)] / 7
        tree, altitudes = hg.watershed_hierarchy_by_volume(graph, weights[slots].astype(np.float64))
        explorer = hg.HorizontalCutExplorer(tree, altitudes)
        mst, persist = kernels.persistence(weights, height, width)
        for count in (1, 2, 5, 20):
            cut = explorer.horizontal_cut_from_num_regions(count)
            altitude = sp_module._cut_altitude(sp_module._descending(persist), count)
            ours = kernels.tree_cut(height * width, mst[:, 0], mst[:, 1], persist, altitude)
            theirs = cut.labelisation_leaves(tree).ravel()
            assert altitude == pytest.approx(cut.altitude(), rel=1e-9)
            assert _nested(ours, theirs) and _nested(theirs, ours)


def test_cuts_follow_the_strongest_edge():
    image = np.full((40, 80, 3), 30, np.uint8)
    image[:, 40:] = 220  # one strong edge
    image[10:20, 10:20] = 60  # a weak square
    regions, cuts, _ = superpixel_hierarchy(image, size=20)
    last = cuts[-1][regions]
    assert len(cuts) and np.intersect1d(last[:, :40], last[:, 40:]).size == 0


def test_large_images_get_their_cuts_on_the_downscaled_copy(monkeypatch):
    image = _image(4, (90, 120))
    regions, cuts, _ = superpixel_hierarchy(image, max_pixels=2000)
    assert np.array_equal(regions, superpixels(image, max_pixels=2000))
    assert cuts.shape[1] == int(regions.max()) + 1
    assert _nested(regions, cuts[0][regions])


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(8, 70), st.integers(8, 90), st.integers(30, 6000))
def test_the_downscaled_copys_superpixels_upscale_to_the_images_and_touch_where_they_do(seed, h, w, max_pixels):
    """downscaled_hierarchy gives the superpixels of the copy the watershed ran on: upscaled they
    are superpixel_hierarchy's, with the same cuts, and their adjacency is the image's (nearest-
    neighbour upscaling keeps 4-adjacency), so the records may gather the edge strength there."""
    from uniap.superpixels import adjacency, downscaled, downscaled_hierarchy, upscaled

    image = _image(seed, (h, w))
    small, cuts, thresholds = downscaled_hierarchy(image, size=12, max_pixels=max_pixels)
    regions, cuts_full, thresholds_full = superpixel_hierarchy(image, size=12, max_pixels=max_pixels)
    assert small.shape == downscaled(image, max_pixels).shape[:2] and small.size <= max(max_pixels, 1)
    np.testing.assert_array_equal(upscaled(small, image.shape[:2]), regions)
    np.testing.assert_array_equal(cuts, cuts_full)
    np.testing.assert_array_equal(thresholds, thresholds_full)
    np.testing.assert_array_equal(adjacency(small), adjacency(regions))


def test_a_cielab_of_the_copy_is_used_and_one_of_another_shape_is_not():
    from uniap.features.default import _rgb2lab
    from uniap.superpixels import downscaled, downscaled_hierarchy

    image = _image(5, (90, 120))
    want = downscaled_hierarchy(image, size=12, max_pixels=2000)
    for lab in (_rgb2lab(np.ascontiguousarray(downscaled(image, 2000))), _rgb2lab(image)):
        for got, expected in zip(downscaled_hierarchy(image, size=12, max_pixels=2000, lab=lab), want):
            np.testing.assert_array_equal(got, expected)
    lab = _rgb2lab(np.ascontiguousarray(downscaled(image, 2000)))
    lab[:] = 0  # a flat "image": the one given is what the watershed reads
    regions, _, _ = downscaled_hierarchy(image, size=12, max_pixels=2000, lab=lab)
    assert not np.array_equal(regions, want[0])


@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (3, 3)])
def test_tiny_and_flat_images_have_no_cut_or_a_valid_one(shape):
    image = np.zeros(shape + (3,), np.uint8)
    regions, cuts, thresholds = superpixel_hierarchy(image, size=1)
    assert regions.shape == shape and cuts.shape[1] == int(regions.max()) + 1 and len(cuts) == len(thresholds)


@pytest.mark.parametrize("kwargs, match", [({"factor": 1}, "factor"), ({"factor": 2.5}, "factor"),
                                           ({"first": 1}, "first"), ({"first": True}, "first"),
                                           ({"size": 0}, "size")])
def test_hierarchy_options_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        superpixel_hierarchy(_image(0), **kwargs)
    with pytest.raises(ValueError, match="RGB"):
        superpixel_hierarchy(np.zeros((5, 5)))


# -- records ----------------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 5), st.booleans())
def test_contour_records_are_the_maps_masks(seed, min_size, unique):
    image = _image(seed)
    regions, cuts, thresholds = superpixel_hierarchy(image, size=30)
    maps = cuts[:, regions] if len(cuts) else np.zeros((0,) + regions.shape, np.int32)
    features = np.random.default_rng(seed).normal(size=(cuts.shape[1], 5))
    recs = contour_records(cuts, regions, thresholds, node_features=features, min_size=min_size,
                           start=7, unique=unique)
    assert [r["id"] for r in recs] == list(range(7, 7 + len(recs)))
    seen = set()
    for rec in recs:
        mask = mask_utils.decode(rec["segmentation"]).astype(bool)
        assert rec["kind"] == "contour" and rec["area"] == int(mask.sum()) > 0 and rec["parent"] == -1
        assert -1 - 1e-6 <= rec["score"] <= 1 + 1e-6 and rec["num_patches"] >= min_size
        assert rec["level"] == rec["levels"][0] and rec["threshold"] == thresholds[rec["level"]]
        for lv in rec["levels"]:  # the mask is a region of every cut it lists
            ids = np.unique(maps[lv][mask])
            assert len(ids) == 1 and np.array_equal(maps[lv] == ids[0], mask)
        assert unique or len(rec["levels"]) == 1
        seen.add((rec["segmentation"]["counts"], rec["level"]))
    # every region big enough has a record, at every cut
    for lv, cut in enumerate(cuts):
        big = np.flatnonzero(np.bincount(cut) >= min_size)
        spans = sum(lv in r["levels"] for r in recs)
        assert spans == len(big)


def test_contour_records_check_their_input():
    regions = np.zeros((4, 4), int)
    with pytest.raises(ValueError, match="contour cuts"):
        contour_records(np.zeros(4, int), regions, [])
    with pytest.raises(ValueError, match="thresholds"):
        contour_records(np.zeros((2, 1), int), regions, [1.0])
    with pytest.raises(ValueError, match="superpixels 0 .. 0"):
        contour_records(np.zeros((1, 1), int), regions + 1, [1.0])


def test_segment_image_records_contour_regions_after_the_levels():
    image = _image(1, (64, 96))
    result = uniap.segment_image(image, min_size=1)
    kinds = [r["kind"] for r in result.records]
    assert "contour" in kinds and kinds == sorted(kinds, key=lambda k: k == "contour")  # levels first
    graph = result.grid
    assert result.contour_labels.shape == (graph.contours.shape[0],) + image.shape[:2]
    assert graph.describe()["contours"] == graph.contours.shape[0]
    # the saved contour records rebuild the contour maps exactly (up to numbering)
    rebuilt = levels_from_records(result.records, image.shape[:2], kind="contour")
    assert rebuilt.shape == result.contour_labels.shape
    for a, b in zip(rebuilt, result.contour_labels):
        assert _nested(a, b) and _nested(b, a)
    # the levels are UniAP's, whatever the contours
    plain = uniap.segment_image(image, min_size=1, contours=False)
    assert np.array_equal(plain.pixel_labels, result.pixel_labels)
    assert plain.contour_labels is None and all(r["kind"] == "instance" for r in plain.records)
    assert "contours" not in plain.grid.describe()


def test_contours_need_watershed_superpixels():
    image = _image(2)
    assert uniap.segment_image(image, superpixel_method="slic").contour_labels is None
    with pytest.raises(ValueError, match="watershed"):
        uniap.segment_image(image, superpixel_method="slic", contours=True)
    with pytest.raises(ValueError, match="contours applies"):
        uniap.segment_image(image, refine="none", contours=True)


# -- proposals --------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["contrast", "stability", "area", "level"]))
def test_proposals_join_both_stacks_once_each_and_rank_them_together(seed, score):
    image = _image(seed, (40, 56))
    result = uniap.segment_image(image, min_size=1, superpixel_size=40)
    levels, contours = result.pixel_labels, result.contour_labels
    alone = proposals_from_levels(levels, score, image=image)
    both = proposals_from_levels(levels, score, image=image, contours=contours)
    masks = [p["segmentation"]["counts"] for p in both]
    assert len(masks) == len(set(masks))  # one proposal per distinct mask
    instance = [p for p in both if p["kind"] == "instance"]
    assert [p["segmentation"] for p in instance] == [p["segmentation"] for p in alone]  # unchanged, in order
    distinct = {mask_utils.encode(np.asfortranarray((c == r).astype(np.uint8)))["counts"].decode()
                for c in contours for r in np.unique(c)}
    assert {p["segmentation"]["counts"] for p in both if p["kind"] == "contour"} == distinct - set(
        p["segmentation"]["counts"] for p in alone)
    values = [p["score"] for p in both]
    assert values == sorted(values, reverse=True)


def test_proposals_check_the_contour_stack():
    levels = np.zeros((2, 4, 5), int)
    with pytest.raises(ValueError, match="contours"):
        proposals_from_levels(levels, "area", contours=np.zeros((1, 4, 4), int))


# -- command lines ----------------------------------------------------------------------------


def test_cli_writes_contour_records_in_every_format_unless_told_not_to(tmp_path):
    from PIL import Image

    from uniap.cli import main

    Image.fromarray(_image(5, (64, 96))).save(tmp_path / "a.png")
    docs = {}
    for flag in ("--contours", "--no-contours"):
        out = tmp_path / f"{flag}.json"
        assert main([str(tmp_path / "a.png"), "--out", str(out), "--quiet", flag]) == 0
        docs[flag] = json.loads(out.read_text())
    with_c, without = docs["--contours"], docs["--no-contours"]
    assert any(r["kind"] == "contour" for r in with_c["annotations"])
    assert all(r["kind"] == "instance" for r in without["annotations"])
    assert with_c["uniap"]["signature"] != without["uniap"]["signature"]
    inst = [r for r in with_c["annotations"] if r["kind"] == "instance"]
    assert [r["segmentation"] for r in inst] == [r["segmentation"] for r in without["annotations"]]

    # png: one contour_<k>.png per cut, and metadata rows that point at their region there
    folder = tmp_path / "png"
    assert main([str(tmp_path / "a.png"), "--out", str(folder), "--format", "png", "--quiet"]) == 0
    folder = folder / "a"  # one folder per image
    with open(folder / "metadata.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    contour_rows = [row for row in rows if row["kind"] == "contour"]
    assert contour_rows
    for row in contour_rows:
        with Image.open(folder / f"contour_{row['level']}.png") as im:
            labels = np.asarray(im)
        assert int((labels == int(row["label"])).sum()) == int(row["area"])

    # coco: contour regions are foreground masks (category 1)
    coco = tmp_path / "coco.json"
    assert main([str(tmp_path / "a.png"), "--out", str(coco), "--format", "coco", "--quiet"]) == 0
    doc = json.loads(coco.read_text())
    assert {a["category_id"] for a in doc["annotations"]} == {1} and len(doc["annotations"]) == len(
        with_c["annotations"])


def test_contour_flags_are_checked(tmp_path, capsys):
    from PIL import Image

    from uniap.cli import main

    Image.fromarray(_image(6)).save(tmp_path / "a.png")
    out = tmp_path / "m.json"
    assert main([str(tmp_path / "a.png"), "--out", str(out), "--quiet", "--superpixel-method", "slic",
                 "--contours"]) == 2
    assert "watershed" in capsys.readouterr().err and not out.exists()
    assert main([str(tmp_path / "a.png"), "--out", str(out), "--quiet", "--refine", "none",
                 "--no-contours"]) == 2
    assert "contours" in capsys.readouterr().err and not out.exists()


def test_eval_contour_flag_applies_to_uniap_superpixels_only(tmp_path, capsys):
    from uniap.evaluation.cli import main

    args = ["--dataset", "coco", "--data", str(tmp_path), "--out", str(tmp_path / "r.json")]
    assert main([*args, "--segmenter", "felzenszwalb", "--no-contours"]) == 2
    assert "--contours does not apply" in capsys.readouterr().err
    assert main([*args, "--refine", "none", "--contours"]) == 2
    assert "contours" in capsys.readouterr().err


def test_png_refuses_contour_labels_a_16_bit_png_cannot_hold(tmp_path):
    from uniap import io

    levels = np.zeros((1, 4, 4), np.int32)
    contours = np.zeros((1, 4, 4), np.int64)
    contours[0, 0, 0] = 70_000
    with pytest.raises(ValueError, match="65535 contour regions"):
        io.write_png(tmp_path / "out", levels, [], contour_labels=contours)
    assert not (tmp_path / "out").exists()
    io.write_png(tmp_path / "ok", levels, [], contour_labels=np.zeros((2, 4, 4), np.int64))
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == [
        "contour_0.png", "contour_1.png", "level_0.png", "metadata.csv"]
