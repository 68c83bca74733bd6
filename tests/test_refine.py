"""Pixel-accurate levels: superpixels, region features, UniAP on the region graph, and what
follows from it (nesting, records, label maps, command lines)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

import uniap
from uniap import superpixels as sp_module
from uniap.features import DefaultFeatures, FeatureGrid, RegionFeatures, RegionGraph, pool_grid, refined
from uniap.features import default as default_module
from uniap.features.regions import REGION_LEVELS, default_levels
from uniap.superpixels import adjacency, superpixels


def _image(seed: int, shape=(72, 104)) -> np.ndarray:
    """A piecewise-constant colour image with noise: a few regions with edges off the 8-grid."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    labels = np.zeros(shape, int)
    for k in range(1, 4):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(8, 30)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = k
    colours = rng.integers(0, 256, size=(4, 3))
    img = colours[labels] + rng.normal(0, 6, size=shape + (3,))
    return np.clip(img, 0, 255).astype(np.uint8)


# -- superpixels and adjacency ----------------------------------------------------------------


def _textured(seed: int, shape=(96, 128)) -> np.ndarray:
    """Noise at every pixel: the watershed has a minimum nearly everywhere to choose from."""
    return np.random.default_rng(seed).integers(0, 256, size=shape + (3,)).astype(np.uint8)


@pytest.mark.parametrize("method", ["watershed", "slic"])
def test_superpixels_are_consecutive_connected_and_about_the_size_asked(method):
    from scipy import ndimage

    for image in (_image(0, (96, 128)),) + ((_textured(0),) if method == "watershed" else ()):
        for size in (60, 150, 400):
            sp = superpixels(image, size=size, method=method)
            assert sp.shape == image.shape[:2] and sp.dtype == np.int32
            n = int(sp.max()) + 1
            assert np.array_equal(np.unique(sp), np.arange(n))
            if method == "slic" or image.std() > 50:  # the watershed cuts a busy image at H * W / size
                assert 0.3 < (sp.size / n) / size < 3.0
            assert n <= round(sp.size / size) * 3 + 1  # never many more than asked for
            for k in range(n):  # one 4-connected piece each
                assert ndimage.label(sp == k)[1] == 1


def test_watershed_superpixels_are_the_cut_with_the_count_asked():
    """On a busy image the watershed's cut has at least H * W / size regions (higra's
    smallest horizontal cut with at least that many), not fewer."""
    image = _textured(1, (60, 80))
    for size in (20, 100, 300):
        sp = superpixels(image, size=size)
        assert int(sp.max()) + 1 >= round(60 * 80 / size)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 40), st.integers(6, 40), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_watershed_superpixels_never_cross_a_step_edge(h, w, k, seed):
    """Two flat colour blocks with noise: when at least two superpixels are asked for, every
    superpixel lies inside one block, whatever the image's size and wherever the edge falls.
    (A block needs a few pixels of its own: one a pixel wide has no basin of its own, and the
    watershed gives it to a neighbour.)"""
    rng = np.random.default_rng(seed)
    cut = rng.integers(3, w - 2)
    blocks = (np.arange(w)[None, :] >= cut).repeat(h, 0).astype(int)
    colours = np.array([[220, 30, 30], [30, 30, 220]])
    image = np.clip(colours[blocks] + rng.normal(0, k, (h, w, 3)), 0, 255).astype(np.uint8)
    size = int(rng.integers(1, max(2, h * w // 2)))  # at least two superpixels asked for
    sp = superpixels(image, size=size)
    n = int(sp.max()) + 1
    assert np.array_equal(np.unique(sp), np.arange(n))
    for lab in range(n):
        assert len(np.unique(blocks[sp == lab])) == 1


def test_flat_images_get_one_superpixel_not_one_per_pixel():
    assert int(superpixels(np.full((50, 70, 3), 128, np.uint8)).max()) == 0
    assert int(superpixels(np.full((50, 70, 3), 128, np.uint8), method="slic").max()) >= 1


@pytest.mark.parametrize("method", ["watershed", "slic"])
def test_large_images_are_segmented_downscaled_and_mapped_back(method, monkeypatch):
    image = _image(1, (90, 120))
    calls = []
    real = sp_module.METHODS[method]
    monkeypatch.setitem(sp_module.METHODS, method, lambda im, *a: calls.append(im.shape) or real(im, *a))
    sp = superpixels(image, size=100, method=method, max_pixels=2000)  # 10800 pixels > 2000
    assert calls and calls[0][0] * calls[0][1] <= 2000  # segmented at the downscaled copy
    assert sp.shape == (90, 120)
    n = int(sp.max()) + 1
    assert np.array_equal(np.unique(sp), np.arange(n)) and n > 10


@pytest.mark.parametrize("kwargs, match", [
    ({"size": 0}, "size"), ({"size": 1.5}, "size"), ({"compactness": 0.0}, "compactness"),
    ({"compactness": float("nan")}, "compactness"), ({"max_pixels": 0}, "max_pixels"),
    ({"method": "quickshift"}, "method"),
])
def test_superpixel_options_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        superpixels(_image(0), **kwargs)


def test_superpixels_need_an_rgb_image():
    with pytest.raises(ValueError, match="RGB"):
        superpixels(np.zeros((10, 10), np.uint8))


def _brute_adjacency(regions: np.ndarray) -> set:
    pairs = set()
    for a, b in ((regions[:, :-1], regions[:, 1:]), (regions[:-1], regions[1:])):
        for u, v in zip(a.ravel(), b.ravel()):
            if u != v:
                pairs.add((min(u, v), max(u, v)))
    return pairs


@settings(max_examples=60)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_adjacency_matches_a_brute_force_count(h, w, n, seed):
    regions = np.random.default_rng(seed).integers(0, n, size=(h, w))
    edges = adjacency(regions)
    assert edges.dtype == np.int64 and edges.shape[1] == 2
    assert {tuple(e) for e in edges.tolist()} == _brute_adjacency(regions)
    assert np.all(edges[:, 0] < edges[:, 1]) and len(np.unique(edges, axis=0)) == len(edges)


def test_adjacency_equals_every_pair_of_touching_pixels():
    regions = superpixels(_image(3, (80, 60)), size=40)
    pairs = set()
    for a, b in ((regions[:, :-1], regions[:, 1:]), (regions[:-1], regions[1:])):
        differ = a != b
        pairs |= set(zip(np.minimum(a, b)[differ].tolist(), np.maximum(a, b)[differ].tolist()))
    assert adjacency(regions).tolist() == sorted(map(list, pairs))


# -- region features -----------------------------------------------------------------------------


def _patch_regions(shape, p):
    h, w = shape
    return (np.arange(h)[:, None] // p) * ((w + p - 1) // p) + np.arange(w)[None, :] // p


@pytest.mark.parametrize("shape", [(64, 96), (61, 83)])
@pytest.mark.parametrize("options", [{}, {"position_weight": 0.0}, {"texture_weight": 0.0, "centering": 0.0}])
def test_region_features_of_the_patches_are_the_patch_features(shape, options):
    """Regions that are exactly the patches get exactly the patches' features (area 1 patch).

    With a height or width that is not a multiple of 8 the last patches are cut: their
    histograms then cover their own pixels only, so only whole patches are compared."""
    image = _image(4, shape)
    fx = DefaultFeatures(**options)
    grid = fx(image)
    x = fx.region_features(image, _patch_regions(shape, 8))
    h, w = shape[0] // 8, shape[1] // 8
    got = x.reshape(grid.grid_shape + (-1,))[:h, :w]
    if shape[0] % 8 == 0 and shape[1] % 8 == 0:
        np.testing.assert_allclose(got, grid.features, atol=2e-5)
    else:  # the mean histogram differs (padding vs pixels): compare directions of whole patches
        assert got.shape[-1] == grid.dim
        cos = (got * grid.features[:h, :w]).sum(-1) / (
            np.linalg.norm(got, axis=-1) * np.linalg.norm(grid.features[:h, :w], axis=-1))
        assert np.median(cos) > 0.97


def test_region_features_in_bands_equal_one_pass(monkeypatch):
    image = _image(5, (96, 80))
    regions = superpixels(image, size=50)
    fx = DefaultFeatures()
    whole = fx.region_features(image, regions)
    monkeypatch.setattr(default_module, "_CHUNK_PIXELS", 8 * 80 * 2)  # bands of 2 patch rows
    assert not default_module._one_band(default_module._PaddedImage(image, 8), fx)
    np.testing.assert_allclose(fx.region_features(image, regions), whole, rtol=1e-5, atol=1e-6)


def test_region_features_weigh_regions_by_their_area_in_patches():
    image = np.full((32, 32, 3), 120, np.uint8)
    regions = np.zeros((32, 32), np.int64)
    regions[:, 24:] = 1  # 768 and 256 pixels: 12 and 4 patches
    x = DefaultFeatures(position_weight=0.0).region_features(image, regions)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1) / np.sqrt(2), [12.0, 4.0], rtol=1e-5)


def test_region_features_check_the_label_map():
    fx, image = DefaultFeatures(), _image(0)
    with pytest.raises(ValueError, match="shape"):
        fx.region_features(image, np.zeros((5, 5), int))
    with pytest.raises(ValueError, match="integer"):
        fx.region_features(image, np.zeros(image.shape[:2], float))
    with pytest.raises(ValueError, match=">= 0"):
        fx.region_features(image, np.full(image.shape[:2], -1))


def test_regions_the_shrunk_image_misses_get_the_grid_features():
    image = _image(6, (120, 160))
    regions = np.arange(120 * 160).reshape(120, 160) // 7  # 7-pixel slivers, most unsampled
    fx = DefaultFeatures(max_side=40)
    x = fx.region_features(image, regions)
    missing = np.isnan(x).any(axis=1)
    assert missing.any() and not missing.all()
    graph = RegionFeatures(fx, pixel_features=True).graph(image, fx(image))
    assert np.isfinite(graph.features).all()  # the misses are filled from the grid
    assert graph.describe()["pixel_features"] is True


def test_default_nodes_pool_the_patch_grid_and_pixel_features_use_the_pixels():
    image = _image(9, (64, 96))
    fx = DefaultFeatures()
    pooled = RegionFeatures(fx, size=80)(image)
    np.testing.assert_allclose(pooled.features, pool_grid(pooled.grid, pooled.regions))
    assert "pixel_features" not in pooled.describe()
    own = RegionFeatures(fx, size=80, pixel_features=True)(image)
    assert np.array_equal(own.regions, pooled.regions)
    np.testing.assert_allclose(own.features, fx.region_features(image, own.regions))
    assert not np.allclose(own.features, pooled.features)


def test_pool_grid_sums_the_patches_under_each_region():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(3, 4, 5)).astype(np.float32)
    grid = FeatureGrid(feats, 4, (12, 16), original_shape=(11, 16))
    patches = _patch_regions((11, 16), 4)
    pooled = pool_grid(grid, patches)
    # whole patches give their feature; the last row of patches covers 3 of 4 rows
    np.testing.assert_allclose(pooled.reshape(3, 4, 5)[:2], feats[:2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pooled.reshape(3, 4, 5)[2], feats[2] * 0.75, rtol=1e-5, atol=1e-6)
    halves = np.zeros((11, 16), int)
    halves[:, 8:] = 1
    expected = grid.to_image(np.moveaxis(feats, -1, 0)).reshape(5, -1) @ np.eye(2)[halves.ravel()] / 16
    np.testing.assert_allclose(pool_grid(grid, halves), expected.T, rtol=1e-5, atol=1e-5)


class _PatchMeans:
    """A stand-in for a learned extractor (no region_features): mean colour per 4x4 patch."""

    name = "means"
    patch_size = 4

    def __call__(self, image):
        img = np.asarray(image, np.float32)
        h, w = img.shape[0] // 4, img.shape[1] // 4
        feats = img[: h * 4, : w * 4].reshape(h, 4, w, 4, 3).mean((1, 3)) - 128.0
        return FeatureGrid(np.ascontiguousarray(feats), 4, (h * 4, w * 4), name=self.name,
                           original_shape=img.shape[:2], resized_shape=(h * 4, w * 4))


def test_any_extractor_gets_region_features_from_its_grid():
    image = _image(7, (64, 96))
    rf = RegionFeatures(_PatchMeans(), size=80)
    graph = rf(image)
    assert isinstance(graph, RegionGraph) and graph.features.shape[1] == 3
    np.testing.assert_allclose(graph.features, pool_grid(graph.grid, graph.regions))
    assert graph.name == "means" and graph.grid_shape == (graph.features.shape[0],)


def test_refined_wraps_once_and_checks_its_name():
    fx = DefaultFeatures()
    assert refined(fx, "none") is fx
    rf = refined(fx)
    assert isinstance(rf, RegionFeatures) and refined(rf) is rf
    with pytest.raises(ValueError, match="refine"):
        refined(fx, "bilateral")
    with pytest.raises(TypeError):
        RegionFeatures(rf)
    assert default_levels("superpixels") == REGION_LEVELS and default_levels("none") == uniap.DEFAULT_LEVELS


# -- UniAP on the region graph: nesting, label maps, records -------------------------------------


def _nested(labels: np.ndarray) -> bool:
    """Every region of each level lies inside one region of the next (coarser) level."""
    for fine, coarse in zip(labels[:-1], labels[1:]):
        pairs = np.unique(np.stack([fine.ravel(), coarse.ravel()]), axis=1)
        if len(np.unique(pairs[0])) != pairs.shape[1]:
            return False
    return True


@settings(max_examples=12)
@given(st.integers(0, 10_000), st.sampled_from([40, 90, 200]))
def test_refined_levels_nest_and_records_match_the_label_maps(seed, size):
    image = _image(seed, (56, 80))
    result = uniap.segment_image(image, superpixel_size=size, min_size=1)
    labels = result.pixel_labels
    assert labels.shape == (len(REGION_LEVELS),) + image.shape[:2]
    assert _nested(labels)
    # each level is a union of superpixels
    regions = result.grid.regions
    for level in labels:
        assert len(np.unique(np.stack([regions.ravel(), level.ravel()]), axis=1)[0]) == regions.max() + 1
    records = [r for r in result.records if r["kind"] == "instance"]
    assert records
    for rec in records:
        mask = mask_utils.decode(rec["segmentation"]).astype(bool)
        level = rec["level"]
        ids = np.unique(labels[level][mask])
        assert len(ids) == 1 and np.array_equal(labels[level] == ids[0], mask), rec["id"]
        assert rec["area"] == int(mask.sum())
        for lv in rec["levels"]:
            assert np.array_equal(labels[lv] == labels[lv][mask][0], mask)


@settings(max_examples=10)
@given(st.integers(0, 10_000), st.sampled_from([1, 3]), st.booleans())
def test_records_from_the_superpixels_equal_records_from_the_label_maps(seed, min_size, semantic):
    """Records encoded from the superpixel map's runs (no pixel map made) are those of the
    pixel label maps, byte for byte, for the levels and for the contour regions."""
    from uniap.records import contour_records, hierarchy_records

    image = _image(seed, (56, 80))
    result = uniap.segment_image(image, superpixel_size=40, min_size=min_size, semantic=semantic)
    h, graph = result.hierarchy, result.grid
    stack = graph.to_image(np.asarray(h.labels))
    assert hierarchy_records(h, regions=graph.regions) == hierarchy_records(h, pixel_labels=stack)
    from uniap.records import encode_label_map

    cuts = graph.contours
    ours = contour_records(cuts, graph.regions, graph.contour_thresholds, unique=False)
    for i, cut in enumerate(cuts):  # each cut's pixel map, encoded as a plain label map
        m = encode_label_map(cut[graph.regions])
        assert [r["segmentation"]["counts"] for r in ours if r["level"] == i] == m.counts
        assert [r["point_coords"][0] for r in ours if r["level"] == i] == m.points.tolist()


@pytest.mark.parametrize("column", [33, 35, 37, 39])
def test_refined_levels_follow_edges_off_the_patch_grid(column):
    """Two flat halves split off the 8-pixel grid: SLIC nodes put the level's edge where the
    image has it; watershed nodes never cross it, but a thin strip of them inside the patch
    that straddles the edge pools that patch's mixed feature and may join the other side
    (at most 2 columns off, docs/features.md); patch nodes round the edge to the grid."""
    image = np.zeros((64, 96, 3), np.uint8)
    image[:, :column] = (200, 40, 40)
    image[:, column:] = (40, 40, 200)
    image = np.clip(image + np.random.default_rng(0).normal(0, 3, image.shape), 0, 255).astype(np.uint8)
    truth = np.zeros((64, 96), bool)
    truth[:, :column] = True

    def error(**kwargs):
        labels = uniap.segment_image(image, levels=(0.5,), **kwargs).pixel_labels[0]
        left = labels == np.bincount(labels[:, :column].ravel()).argmax()
        return int((left != truth).sum())

    nodes = superpixels(image)
    assert all(len(np.unique(truth[nodes == k])) == 1 for k in range(int(nodes.max()) + 1))
    assert error(superpixel_method="slic") == 0
    assert error() <= 2 * 64
    assert error(refine="none") >= 64 * min(column % 8, 8 - column % 8)  # a patch lies on one side


def test_semantic_groups_on_superpixels():
    result = uniap.segment_image(_image(8), semantic=True, levels=(0.6, 0.3))
    assert result.semantic_labels.shape == result.pixel_labels.shape
    for inst, sem in zip(result.pixel_labels, result.semantic_labels):
        # an instance region lies in one semantic group
        pairs = np.unique(np.stack([inst.ravel(), sem.ravel()]), axis=1)
        assert len(np.unique(pairs[0])) == pairs.shape[1]


def test_segment_image_checks_refine_options():
    image = _image(0)
    with pytest.raises(ValueError, match="upsampling"):
        uniap.segment_image(image, upsampling="bilinear")
    with pytest.raises(ValueError, match="superpixel_size"):
        uniap.segment_image(image, refine="none", superpixel_size=100)
    with pytest.raises(ValueError, match="refine"):
        uniap.segment_image(image, refine="edges")
    assert uniap.segment_image(image, refine="none", upsampling="bilinear").pixel_labels.shape[1:] == image.shape[:2]


def test_info_records_the_refinement():
    result = uniap.segment_image(_image(1))
    info = result.uniap_info()
    assert info["refine"]["method"] == "superpixels" and info["refine"]["nodes"] == result.grid.regions.max() + 1
    assert info["grid"] == list(result.grid.grid.grid_shape) and info["thresholds"] == list(REGION_LEVELS)
    plain = uniap.segment_image(_image(1), refine="none").uniap_info()
    assert plain["refine"] == {"method": "none"}


# -- command lines ------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, message", [
    (["--upsampling", "bilinear"], "upsampling applies to refine 'none' only"),
    (["--connectivity", "8"], "connectivity applies to refine 'none' only"),
    (["--refine", "none", "--superpixel-size", "100"], "size applies to refine 'superpixels' only"),
    (["--superpixel-size", "0"], "--superpixel-size"),
])
def test_cli_refine_conflicts_are_usage_errors(tmp_path, capsys, flags, message):
    from PIL import Image

    from uniap.cli import main

    from cli_helpers import exit_status

    Image.fromarray(_image(0)).save(tmp_path / "a.png")
    out = tmp_path / "a.json"
    assert exit_status(main, [str(tmp_path / "a.png"), "--out", str(out), "--quiet", *flags]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_cli_refine_none_writes_patch_masks_and_superpixels_follow_edges(tmp_path):
    from PIL import Image

    from uniap.cli import main
    from uniap.records import decode_rle

    Image.fromarray(_image(2)).save(tmp_path / "a.png")
    for refine in ("none", "superpixels"):
        out = tmp_path / f"{refine}.json"
        assert main([str(tmp_path / "a.png"), "--out", str(out), "--quiet", "--refine", refine,
                     "--superpixel-size" if refine == "superpixels" else "--min-size",
                     "60" if refine == "superpixels" else "4"]) == 0
        doc = json.loads(out.read_text())
        assert doc["uniap"]["refine"]["method"] == refine
        masks = [decode_rle(r["segmentation"]).astype(bool) for r in doc["annotations"]]
        assert masks
        if refine == "none":  # unions of 8x8 blocks: constant on every full block
            blocks = [m[:64, :104].reshape(8, 8, 13, 8).transpose(0, 2, 1, 3).reshape(8, 13, 64) for m in masks]
            assert all(((b.all(-1)) | (~b.any(-1))).all() for b in blocks)
        else:
            assert doc["uniap"]["refine"]["size"] == 60
            assert doc["uniap"]["thresholds"] == list(REGION_LEVELS)


def test_cli_superpixel_method_is_recorded_and_changes_the_masks(tmp_path):
    from PIL import Image

    from uniap.cli import main

    Image.fromarray(_image(3)).save(tmp_path / "a.png")
    docs = {}
    for method in ("watershed", "slic"):
        out = tmp_path / f"{method}.json"
        assert main([str(tmp_path / "a.png"), "--out", str(out), "--quiet", "--superpixel-method", method]) == 0
        docs[method] = json.loads(out.read_text())
        refine = docs[method]["uniap"]["refine"]
        assert refine["superpixels"] == method and ("compactness" in refine) == (method == "slic")
    assert docs["watershed"]["uniap"]["signature"] != docs["slic"]["uniap"]["signature"]
    assert ([r["segmentation"] for r in docs["watershed"]["annotations"]]
            != [r["segmentation"] for r in docs["slic"]["annotations"]])


def test_naming_the_default_superpixels_keeps_the_signature():
    from uniap.pipeline.stages import Settings

    implicit = Settings(refine="superpixels")
    explicit = Settings(refine="superpixels", refine_options={"method": "watershed", "size": 150})
    slic = Settings(refine="superpixels", refine_options={"method": "slic"})
    assert implicit.signature_fields() == explicit.signature_fields()
    assert implicit.signature_fields() != slic.signature_fields()
    assert slic.refine_fields()["compactness"] == 20.0


def test_superpixel_method_needs_superpixel_nodes(tmp_path, capsys):
    from PIL import Image

    from uniap.cli import main

    Image.fromarray(_image(3)).save(tmp_path / "a.png")
    code = main([str(tmp_path / "a.png"), "--out", str(tmp_path / "m.json"), "--quiet", "--refine", "none",
                 "--superpixel-method", "slic"])
    assert code == 2 and "method" in capsys.readouterr().err and not (tmp_path / "m.json").exists()
    with pytest.raises(ValueError, match="superpixel_method"):
        uniap.segment_image(_image(3), refine="none", superpixel_method="slic")


def test_eval_refine_flags_apply_to_uniap_only(tmp_path, capsys):
    from uniap.evaluation.cli import main

    code = main(["--dataset", "bsds500", "--data", str(tmp_path), "--segmenter", "felzenszwalb",
                 "--refine", "none", "--out", str(tmp_path / "r.json")])
    assert code == 2
    assert "--refine" in capsys.readouterr().err


def test_eval_connectivity_needs_patch_nodes(shared_data, tmp_path, capsys):
    from uniap.evaluation.cli import main

    out = tmp_path / "r.json"
    common = ["--dataset", "bsds500", "--data", str(shared_data / "bsds500"), "--split", "val",
              "--limit", "1", "--no-boundary", "--quiet", "--out", str(out)]
    assert main([*common, "--connectivity", "8"]) == 2
    assert "--connectivity applies to --refine none" in capsys.readouterr().err and not out.exists()
    assert main([*common, "--connectivity", "8", "--refine", "none"]) == 0 and out.exists()


@pytest.mark.parametrize("labels", [70, 4096, 4097, 9000])
def test_adjacency_is_the_same_with_few_labels_and_with_many(labels):
    """Up to 4096 labels the pairs come from a bitmap, above from a sorted buffer: both give
    every touching pair once, sorted (random maps of runs, so pairs repeat along boundaries)."""
    rng = np.random.default_rng(labels)
    regions = np.repeat(rng.integers(0, labels, size=(150, 40)), rng.integers(1, 4, size=40), axis=1)
    regions[0, 0], regions[-1, -1] = 0, labels - 1
    edges = adjacency(regions)
    assert {tuple(e) for e in edges.tolist()} == _brute_adjacency(regions)
    assert edges.tolist() == sorted(edges.tolist()) and len(np.unique(edges, axis=0)) == len(edges)
