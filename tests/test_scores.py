"""Scores with meaning (uniap.scores): the records' score is uniap-eval's ranking rule, computed
on the nodes; COCOeval on a written file gives uniap-eval's numbers; SAM's filters."""

from __future__ import annotations

import contextlib
import io as stdio
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import uniap
from uniap import scores
from uniap.cli import main as cli
from uniap.evaluation.cli import main as eval_main
from uniap.evaluation.proposals import best_ious, boundary_contrast, proposals_from_levels
from uniap.features.default import _rgb2lab
from uniap.records import filter_records

from cli_helpers import exit_status  # noqa: E402


# ------------------------------------------------------------------------- edge strength


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (2, 3), (5, 7), (37, 53), (120, 31)])
@pytest.mark.parametrize("band_rows", [1, 3, 1000])
def test_edge_strength_is_scipys_gradient_magnitude_bit_for_bit(shape, band_rows, monkeypatch):
    """The compiled kernel, in bands of any height, equals scipy.ndimage's filters exactly."""
    from scipy.ndimage import gaussian_gradient_magnitude

    monkeypatch.setattr(scores, "BAND_PIXELS", band_rows * shape[1])
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    image[: shape[0] // 2] //= 3  # an edge across the image as well as noise
    raw = sum(gaussian_gradient_magnitude(channel, 1.0) for channel in _rgb2lab(image))
    got = np.concatenate([scores._strength_rows(image, a, b) for a, b in scores._bands(*shape)])
    np.testing.assert_array_equal(got, raw)
    strength = scores.edge_strength(image)
    assert strength.dtype == np.float64
    if raw.mean() > 1e-9:
        np.testing.assert_allclose(strength, raw / raw.mean(dtype=np.float64), rtol=1e-12)
    else:
        np.testing.assert_array_equal(strength, 1.0)


def test_edge_strength_of_a_flat_image_is_one_and_bad_images_are_refused():
    np.testing.assert_array_equal(scores.edge_strength(np.full((4, 5, 3), 9, np.uint8)), 1.0)
    with pytest.raises(ValueError, match="image must be"):
        scores.edge_strength(np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match="regions"):
        scores.BoundaryStrength(np.zeros((3, 3), int), np.zeros((4, 3, 3), np.uint8))


# ------------------------------------------------------------- scores on nodes = on pixels


@st.composite
def node_maps(draw):
    """A random map of nodes and a nested stack of labellings of those nodes."""
    height, width = draw(st.integers(1, 14)), draw(st.integers(1, 14))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    n = draw(st.integers(1, 12))
    regions = rng.integers(0, n, (height, width))
    regions = np.unique(regions, return_inverse=True)[1].reshape(height, width)  # every node used
    n = int(regions.max()) + 1
    stack, labels = [], np.arange(n)
    for _ in range(draw(st.integers(1, 4))):
        labels = rng.integers(0, max(1, labels.max() + 1 - rng.integers(0, 3)), n) if not stack else \
            rng.integers(0, max(1, int(stack[-1].max())), int(stack[-1].max()) + 1)[stack[-1]]
        stack.append(labels)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return regions, stack, image


@given(node_maps())
@settings(max_examples=80, deadline=None)
def test_scores_on_nodes_equal_the_pixel_definitions(case):
    """Contrast and persistence from the nodes equal uniap-eval's pixel-level definitions."""
    regions, stack, image = case
    boundary = scores.BoundaryStrength(regions, image)
    strength = scores.edge_strength(image)
    pixel_maps = np.stack([m[regions] for m in stack])
    compact, ious = best_ious(pixel_maps)
    area = np.bincount(regions.ravel())
    persist = scores.persistence(stack, area)
    for m, lab, c_lab, iou, p in zip(stack, pixel_maps, compact, ious, persist):
        want = boundary_contrast(lab, strength)
        got = boundary.contrast(m)
        present = np.unique(m)
        np.testing.assert_allclose(got[present], want[present], rtol=1e-12)
        first = np.unique(c_lab.ravel(), return_index=True)[1]  # compact label -> original label
        np.testing.assert_array_equal(p[lab.ravel()[first]], iou.mean(axis=1))


def real_image() -> np.ndarray:
    import skimage.data

    return skimage.data.astronaut()[::4, ::4]


@pytest.mark.parametrize("refine", ["superpixels", "none"])
def test_records_rank_exactly_as_uniap_evals_contrast_rule(refine):
    """Every record's score is the contrast rule's value of its mask over all regions of the
    same label maps (uniap.evaluation.proposals, on the pixels), and with min_size 1 the records
    are exactly those proposals, in the same order."""
    image = real_image()
    result = uniap.segment_image(image, refine=refine, min_size=1)
    records = [r for r in result.records if r["kind"] != "semantic"]
    props = proposals_from_levels(result.pixel_labels, "contrast", image=image, contours=result.contour_labels)
    assert len(records) == len(props) > 20
    by_mask = {p["segmentation"]["counts"]: p for p in props}
    for r in records:
        p = by_mask[r["segmentation"]["counts"]]
        assert r["score"] == pytest.approx(p["score"], rel=1e-9)
        assert r["stability_score"] == pytest.approx(p["persistence"], abs=1e-6)
        assert 0.0 < r["predicted_iou"] < 1.0
    ranked = sorted(records, key=lambda r: -r["score"])
    assert [r["segmentation"]["counts"] for r in ranked] == [p["segmentation"]["counts"] for p in props]
    # predicted_iou ranks as the score does
    ious = [r["predicted_iou"] for r in ranked]
    assert ious == sorted(ious, reverse=True)


def test_contour_regions_equal_to_a_level_mask_are_not_recorded_twice():
    result = uniap.segment_image(real_image())
    counts = [r["segmentation"]["counts"] for r in result.records if r["kind"] != "semantic"]
    assert any(r["kind"] == "contour" for r in result.records)
    assert len(counts) == len(set(counts))


def test_without_the_image_the_contrast_is_one():
    from uniap.synthetic import piecewise_features

    h = uniap.segment(piecewise_features((24, 24), channels=8, regions=(4, 16), seed=3), min_size=1)
    records = h.to_records()
    assert len({r["stability_score"] for r in records}) > 1
    for r in records:
        assert r["score"] == pytest.approx(r["stability_score"] * np.sqrt(r["area"] / 24**2), abs=1e-6)


def test_predicted_iou_is_a_monotone_probability():
    s = np.array([0.0, 1e-6, 0.01, 0.1, 1.0, 10.0])
    p = scores.predicted_iou(s)
    assert p[0] == 0.0 and np.all(np.diff(p) > 0) and np.all(p < 1.0)


# ------------------------------------------------------------- COCOeval on a written file


def shapes_image(path: Path, seed: int) -> list[np.ndarray]:
    """A generated photo-like image of a few objects on a textured background; their masks."""
    rng = np.random.default_rng(seed)
    height, width = 96 + 8 * seed, 128
    yy, xx = np.mgrid[:height, :width]
    image = rng.normal(120, 12, (height, width, 3))
    masks = []
    for k in range(3):
        cy, cx = rng.uniform(0.25, 0.75) * height, rng.uniform(0.2, 0.8) * width
        ry, rx = rng.uniform(8, 22), rng.uniform(8, 26)
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1 if k != 1 else \
            (abs(yy - cy) < ry) & (abs(xx - cx) < rx)
        image[mask] = rng.uniform(0, 255, 3) + rng.normal(0, 6, (int(mask.sum()), 3))
        masks.append(mask)
    for k in range(len(masks)):  # what later shapes covered is not the earlier object's
        for later in masks[k + 1:]:
            masks[k] = masks[k] & ~later
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path)
    return [m for m in masks if m.sum() > 30]


def generated_coco(folder: Path) -> Path:
    from pycocotools import mask as mask_utils

    images, annotations = [], []
    for seed in range(3):
        name = f"shapes{seed}.png"
        masks = shapes_image(folder / name, seed)
        h, w = masks[0].shape
        images.append({"id": 100 + seed, "file_name": name, "height": h, "width": w})
        for m in masks:
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            annotations.append({"id": len(annotations) + 1, "image_id": 100 + seed, "category_id": 1 + len(annotations) % 3,
                                "iscrowd": 0, "area": float(mask_utils.area(rle)),
                                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    gt = folder / "instances.json"
    gt.write_text(json.dumps({"images": images, "annotations": annotations,
                              "categories": [{"id": i, "name": f"c{i}"} for i in (1, 2, 3)]}))
    return gt


def cocoeval_of_file(gt_path: Path, written: Path) -> dict[str, float]:
    """What a user does: COCOeval(gt, gt.loadRes(the file's annotations), 'segm'), class-agnostic."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(stdio.StringIO()):
        gt = COCO(str(gt_path))
        anns = json.loads(written.read_text())["annotations"]
        ev = COCOeval(gt, gt.loadRes(anns), "segm")
        ev.params.useCats = 0
        ev.params.maxDets = [1, 10, 100, 1000]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"AP": ev.stats[0], "AR@1": ev.stats[6], "AR@10": ev.stats[7], "AR@100": ev.stats[8]}


def coco_folder(root: Path, gt: Path) -> Path:
    """A folder as uniap-eval's coco data set reads it: images/ and instances.json."""
    data = root / "coco_data"
    (data / "images").mkdir(parents=True)
    for path in gt.parent.glob("*.png"):
        (data / "images" / path.name).write_bytes(path.read_bytes())
    (data / "instances.json").write_bytes(gt.read_bytes())
    return data


def check_written_file_scores_as_uniap_eval(tmp_path: Path, data: Path, limit: int | None = None) -> dict:
    gt = data / "instances.json"
    truth = json.loads(gt.read_text())
    names = sorted(i["file_name"] for i in truth["images"])[:limit]
    inputs = [str(data / "images" / n) for n in names]
    written = tmp_path / "masks.json"
    assert exit_status(cli, [*inputs, "--out", str(written), "--format", "coco", "--image-ids", str(gt),
                             "--quiet"]) == 0
    result = tmp_path / "eval.json"
    args = ["--dataset", "coco", "--data", str(data), "--out", str(result), "--workers", "1", "--quiet"]
    assert eval_main(args + (["--limit", str(limit)] if limit else [])) == 0
    metrics = json.loads(result.read_text())["metrics"]
    # only the evaluated images' ground truth
    subset = tmp_path / "gt_subset.json"
    ids = {i["id"] for i in truth["images"] if i["file_name"] in names}
    subset.write_text(json.dumps({**truth, "images": [i for i in truth["images"] if i["id"] in ids],
                                  "annotations": [a for a in truth["annotations"] if a["image_id"] in ids]}))
    mine = cocoeval_of_file(subset, written)
    for key, value in mine.items():
        assert value == pytest.approx(metrics[key], abs=1e-12), key
    return mine


def test_cocoeval_on_the_written_file_gives_uniap_evals_numbers(tmp_path):
    """Generated images with annotated objects: uniap-cli --format coco, then COCOeval as a user
    runs it, equals uniap-eval --dataset coco on the same images (AP and every AR)."""
    gt = generated_coco(tmp_path)
    mine = check_written_file_scores_as_uniap_eval(tmp_path, coco_folder(tmp_path, gt))
    assert mine["AR@100"] > 0.2  # the objects are found, and found among the first 100


def test_cocoeval_on_the_written_file_of_coco_images(shared_data, tmp_path):
    """The same on real COCO images (the dev set's first 6)."""
    check_written_file_scores_as_uniap_eval(tmp_path, shared_data / "coco", limit=6)


# --------------------------------------------------------------------------- filters


def test_filter_records_keeps_a_tree_and_renumbers():
    result = uniap.segment_image(real_image())
    records = result.records
    kept = filter_records(records, pred_iou_thresh=0.3, stability_score_thresh=0.5)
    want = [r for r in records if r["predicted_iou"] >= 0.3 and r["stability_score"] >= 0.5]
    assert 0 < len(kept) == len(want) < len(records)
    assert [r["id"] for r in kept] == list(range(len(kept)))
    assert [r["segmentation"] for r in kept] == [r["segmentation"] for r in want]
    old_of = {k["id"]: w["id"] for k, w in zip(kept, want)}
    parent_of = {r["id"]: r["parent"] for r in records}
    for k, w in zip(kept, want):
        # the new parent is the nearest kept ancestor of the old record
        p = w["parent"]
        while p != -1 and p not in old_of.values():
            p = parent_of[p]
        assert (k["parent"] == -1) == (p == -1)
        if p != -1:
            assert old_of[k["parent"]] == p
    assert filter_records(records) == records and filter_records(records) is not records
    with pytest.raises(ValueError, match="pred_iou_thresh"):
        filter_records(records, pred_iou_thresh=1.5)


def test_max_masks_keeps_the_best_scored_in_order_as_a_tree():
    records = uniap.segment_image(real_image()).records
    n = len(records) // 3
    kept = filter_records(records, max_masks=n)
    best = sorted(records, key=lambda r: (-r["score"], r["id"]))[:n]
    want = [r for r in records if r in best]  # the best n, in the records' order
    assert len(kept) == n and [r["segmentation"] for r in kept] == [r["segmentation"] for r in want]
    assert min(r["score"] for r in kept) >= max(r["score"] for r in records if r not in best)
    assert [r["id"] for r in kept] == list(range(n))
    assert all(-1 <= r["parent"] < n for r in kept)
    # with a threshold, the cap counts what the threshold kept
    both = filter_records(records, pred_iou_thresh=0.3, max_masks=5)
    assert len(both) == 5 and all(r["predicted_iou"] >= 0.3 for r in both)
    assert filter_records(records, max_masks=len(records) + 5) == records
    for bad in (-1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="max_masks"):
            filter_records(records, max_masks=bad)


def test_cli_filters_as_amg(tmp_path):
    image = tmp_path / "a.png"
    Image.fromarray(real_image()).save(image)
    full, part = tmp_path / "full.json", tmp_path / "part.json"
    assert exit_status(cli, [str(image), "--out", str(full), "--quiet"]) == 0
    assert exit_status(cli, [str(image), "--out", str(part), "--quiet", "--pred-iou-thresh", "0.3",
                             "--stability-score-thresh", "0.6"]) == 0
    a = json.loads(full.read_text())["annotations"]
    b = json.loads(part.read_text())["annotations"]
    assert 0 < len(b) < len(a)
    assert all(r["predicted_iou"] >= 0.3 and r["stability_score"] >= 0.6 for r in b)
    assert len(b) == sum(r["predicted_iou"] >= 0.3 and r["stability_score"] >= 0.6 for r in a)
    for bad in ("1.5", "-0.1", "nan", "x"):
        assert exit_status(cli, [str(image), "--out", str(tmp_path / "bad.json"), "--pred-iou-thresh", bad]) == 2
        assert not (tmp_path / "bad.json").exists()


def test_cli_max_masks_writes_the_best_scored(tmp_path):
    image = tmp_path / "a.png"
    Image.fromarray(real_image()).save(image)
    full, part = tmp_path / "full.json", tmp_path / "part.json"
    assert exit_status(cli, [str(image), "--out", str(full), "--quiet"]) == 0
    assert exit_status(cli, [str(image), "--out", str(part), "--quiet", "--max-masks", "10"]) == 0
    a = json.loads(full.read_text())["annotations"]
    b = json.loads(part.read_text())["annotations"]
    best = sorted(a, key=lambda r: (-r["score"], r["id"]))[:10]
    assert [r["segmentation"] for r in b] == [r["segmentation"] for r in a if r in best]
    assert json.loads(part.read_text())["uniap"]["signature"] != json.loads(full.read_text())["uniap"]["signature"]
    for bad in ("-1", "2.5", "x"):
        assert exit_status(cli, [str(image), "--out", str(tmp_path / "bad.json"), "--max-masks", bad]) == 2
        assert not (tmp_path / "bad.json").exists()


def test_the_watersheds_cielab_gives_the_records_edge_strength_once():
    """The default region graph carries the edge strength from the CIELab image the watershed
    converts anyway (not converted twice); it equals the strength computed from the image, and
    an image the superpixels downscale gets none (the records compute it from the image)."""
    from uniap.features import get_extractor, refined

    image = real_image()
    graph = refined(get_extractor("default"), "superpixels")(image)
    assert graph.edge_strength is not None and graph.edge_strength.dtype == np.float32
    np.testing.assert_array_equal(graph.edge_strength, scores._strength_rows(image, 0, image.shape[0]))
    np.testing.assert_array_equal(graph.edge_strength, scores.raw_edge_strength(_rgb2lab(image)))
    shared = scores.BoundaryStrength(graph.regions, image, strength=graph.edge_strength)
    direct = scores.BoundaryStrength(graph.regions, image)
    labels = graph.contours[0]
    np.testing.assert_array_equal(shared.contrast(labels), direct.contrast(labels))
    with pytest.raises(ValueError, match="strength"):
        scores.BoundaryStrength(graph.regions, strength=graph.edge_strength[1:])


def _downscaled_graph(monkeypatch, max_pixels: int):
    """The default region graph of the full astronaut (512 x 512) with the superpixels made on
    a copy of ``max_pixels`` pixels, as a 4000 x 4000 image gets them on one of 2**22."""
    import skimage.data

    import uniap.features.regions as regions_module
    from uniap.features import get_extractor, refined

    monkeypatch.setattr(regions_module, "SUPERPIXEL_MAX_PIXELS", max_pixels)
    image = skimage.data.astronaut()
    return image, refined(get_extractor("default"), "superpixels")(image)


def test_a_downscaled_watershed_gives_the_strength_on_its_copy(monkeypatch):
    """An image the superpixels downscale gets its edge strength from the copy's CIELab, with
    the copy's superpixels to gather it on: they upscale to the graph's, and touch where they do."""
    from uniap.superpixels import adjacency, downscaled, upscaled

    image, graph = _downscaled_graph(monkeypatch, 1 << 16)
    copy = downscaled(image, 1 << 16)
    assert copy.shape == (256, 256, 3)
    assert graph.edge_strength.shape == graph.strength_regions.shape == copy.shape[:2]
    np.testing.assert_array_equal(graph.edge_strength, scores.raw_edge_strength(_rgb2lab(copy)))
    np.testing.assert_array_equal(upscaled(graph.strength_regions, image.shape[:2]), graph.regions)
    np.testing.assert_array_equal(adjacency(graph.strength_regions), graph.edges)
    np.testing.assert_array_equal(adjacency(graph.regions), graph.edges)
    # the records gather it on the copy's superpixels, whatever image they are given
    cut = graph.contours[0]
    on_copy = scores.BoundaryStrength(graph.strength_regions, strength=graph.edge_strength).contrast(cut)
    np.testing.assert_array_equal(graph.boundary_strength(image).contrast(cut), on_copy)
    np.testing.assert_array_equal(graph.boundary_strength().contrast(cut), on_copy)


def test_scores_of_a_downscaled_image_rank_as_at_full_resolution(monkeypatch):
    """Gathered on the downscaled copy, the records' scores rank the masks as the edge strength
    of the full image does (Spearman > 0.95, the same best masks), and the masks are the same."""
    import dataclasses

    from scipy.stats import spearmanr

    from uniap.pipeline.stages import UniapSegmenter, encode

    image, graph = _downscaled_graph(monkeypatch, 1 << 16)
    full = dataclasses.replace(graph, edge_strength=None, strength_regions=None)  # the image's own
    hierarchy = UniapSegmenter().nodes(graph)
    copy, pixels = (encode(g, hierarchy, image=image).records for g in (graph, full))
    assert [r["segmentation"] for r in copy] == [r["segmentation"] for r in pixels]
    a, b = (np.array([r["score"] for r in recs]) for recs in (copy, pixels))
    assert len(a) > 100 and not np.array_equal(a, b)  # not the same numbers ...
    assert spearmanr(a, b).statistic > 0.95  # ... but the same ranking
    best = 20
    assert len(set(np.argsort(-a)[:best]) & set(np.argsort(-b)[:best])) >= 0.75 * best


@given(st.integers(1, 40), st.integers(1, 4), st.integers(0, 2**31 - 1))
@settings(max_examples=60, deadline=None)
def test_persistence_of_stacks_that_do_not_nest(n, count, seed):
    """Any stack (nested or not; the nested ones take a shortcut) equals best_ious' means."""
    rng = np.random.default_rng(seed)
    stack = [rng.integers(0, rng.integers(1, 6), n) for _ in range(count)]
    area = rng.integers(1, 9, n)
    got = scores.persistence(stack, area)
    # pixels: node i repeated area[i] times
    pixel_maps = np.stack([np.repeat(m, area) for m in stack])[:, None, :]
    compact, ious = best_ious(pixel_maps)
    for m, c, iou, p in zip(stack, compact, ious, got):
        first = np.unique(c.ravel(), return_index=True)[1]
        np.testing.assert_array_equal(p[np.repeat(m, area)[first]], iou.mean(axis=1))
