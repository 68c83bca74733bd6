"""uniap-eval end to end (real data, --limit 3) and its parts (segmenters, proposals, layouts)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uniap.cli import main as cli_main
from uniap.evaluation import levels_from_records, proposals_from_levels
from uniap.evaluation.cli import main
from uniap.evaluation.segmenters import Felzenszwalb, HigraWatershed, SlicRag, mean_colour_rag
from uniap.records import decode_rle

LEVELS = "0.7,0.5"  # two levels keep the boundary benchmark quick


def run_eval(tmp_path: Path, *args: str, name: str = "results.json") -> tuple[int, Path]:
    out = tmp_path / name
    code = main([*args, "--out", str(out), "--workers", "1", "--quiet"])
    return code, out


def in_unit(x: float) -> bool:
    return 0.0 <= x <= 1.0


def check_common(result: dict, dataset: str, images: int, levels: int) -> None:
    assert {"dataset", "segmenter", "levels", "metrics", "per_level", "timing", "failed", "command"} <= set(result)
    assert result["dataset"]["name"] == dataset
    assert result["dataset"]["images"] == result["dataset"]["evaluated"] == images
    assert result["failed"] == []
    assert len(result["levels"]) == len(result["per_level"]) == levels
    assert [row["level"] for row in result["per_level"]] == list(range(levels))
    assert all(row["regions"] >= 1 for row in result["per_level"])
    assert result["timing"]["wall_s"] > 0


# -- real data --------------------------------------------------------------------------------


def test_bsds500(shared_data, tmp_path):
    code, out = run_eval(tmp_path, "--dataset", "bsds500", "--data", str(shared_data / "bsds500"),
                         "--limit", "3", "--levels", LEVELS)
    assert code == 0
    r = json.loads(out.read_text())
    check_common(r, "bsds500", 3, 2)
    assert r["dataset"]["splits"] == ["val", "test"]
    assert r["segmenter"] == {"name": "uniap", "params": r["segmenter"]["params"]}
    assert r["segmenter"]["params"]["levels"] == [0.7, 0.5]
    m = r["metrics"]
    for key in ("covering_ods", "covering_ois", "covering_best", "pri_ods", "pri_ois",
                "boundary_ods", "boundary_ois", "boundary_ap"):
        assert in_unit(m[key]), key
    assert m["covering_ods"] <= m["covering_ois"] + 1e-12 <= m["covering_best"] + 2e-12
    assert 0 < m["vi_ois"] <= m["vi_ods"]
    assert m["covering_ods_level"] in r["levels"]
    for row in r["per_level"]:
        assert in_unit(row["covering"]) and in_unit(row["pri"]) and row["vi"] > 0
        assert in_unit(row["boundary_f"]) and in_unit(row["boundary_precision"])
    # a finer first level has more regions
    assert r["per_level"][0]["regions"] > r["per_level"][1]["regions"]


def test_camvid_labelmaps(shared_data, tmp_path):
    code, out = run_eval(tmp_path, "--dataset", "labelmaps", "--data", str(shared_data / "camvid"),
                         "--limit", "3", "--segmenter", "higra_watershed", "--regions", "50,10")
    assert code == 0
    r = json.loads(out.read_text())
    check_common(r, "labelmaps", 3, 2)
    m = r["metrics"]
    assert in_unit(m["miou"]) and in_unit(m["pixel_accuracy"]) and in_unit(m["best_pixel_accuracy"])
    assert m["best_level"] in r["levels"]
    assert m["miou"] == max(row["miou"] for row in r["per_level"])
    assert list(m["class_iou"])[:3] == ["Sky", "Building", "Pole"] and len(m["class_iou"]) == 11
    assert r["levels"] == ["regions=50", "regions=10"]
    assert 50 <= r["per_level"][0]["regions"] < 60 and 10 <= r["per_level"][1]["regions"] < 15


def test_coco(shared_data, tmp_path):
    code, out = run_eval(tmp_path, "--dataset", "coco", "--data", str(shared_data / "coco"), "--limit", "3",
                         "--levels", LEVELS, "--min-area", "64")
    assert code == 0
    r = json.loads(out.read_text())
    check_common(r, "coco", 3, 2)
    m = r["metrics"]
    for key in ("AP", "AP50", "AP75", "AR@1", "AR@10", "AR@100", "AR@1000"):
        assert in_unit(m[key]), key
    assert m["AR@10"] <= m["AR@100"] <= m["AR@1000"]
    assert m["AP75"] <= m["AP50"]
    assert m["proposals_per_image"] > 10
    assert m["num_gt"] > 0


@pytest.mark.parametrize("refine", ["superpixels", "none"])
def test_saved_predictions_match_a_direct_run(shared_data, tmp_path, refine):
    """Masks written by uniap-cli (every cluster a record) score exactly like a direct run,
    with pixel-accurate superpixel levels (the default) and with patch levels."""
    bsds = shared_data / "bsds500"
    images = sorted((bsds / "images" / "val").glob("*.jpg"))[:3]
    masks = tmp_path / "masks"
    flags = ["--refine", refine]
    assert cli_main([*map(str, images), "--out", str(masks), "--levels", LEVELS, "--min-size", "1",
                     "--quiet", *flags]) == 0
    common = ["--dataset", "bsds500", "--data", str(bsds), "--split", "val", "--limit", "3", "--no-boundary"]
    code, direct = run_eval(tmp_path, *common, "--levels", LEVELS, *flags, name="direct.json")
    assert code == 0
    code, saved = run_eval(tmp_path, *common, "--predictions", str(masks), name="saved.json")
    assert code == 0
    a, b = json.loads(direct.read_text()), json.loads(saved.read_text())
    assert b["segmenter"]["name"] == "predictions" and b["levels"] == ["t=0.7", "t=0.5"]
    for key, value in a["metrics"].items():
        assert b["metrics"][key] == pytest.approx(value, abs=1e-12), key

    # COCO: the proposals of the rebuilt levels are the direct run's, so AP/AR agree too.
    # (Coarse levels: pycocotools 2.0.11 with NumPy 2 overflows in area() of more than 255
    # masks at once, which uniap.records hits on a level of that many clusters.)
    coco = shared_data / "coco"
    first = sorted((coco / "images").glob("*.jpg"))[:2]
    cmasks = tmp_path / "coco_masks"
    assert cli_main([*map(str, first), "--out", str(cmasks), "--levels", "0.5,0.4", "--min-size", "1",
                     "--quiet", *flags]) == 0
    kinds = {r["kind"] for f in cmasks.glob("*.json") for r in json.loads(f.read_text())["annotations"]}
    assert ("contour" in kinds) == (refine == "superpixels")  # the contour regions are scored too
    common = ["--dataset", "coco", "--data", str(coco), "--limit", "2"]
    code, direct = run_eval(tmp_path, *common, "--levels", "0.5,0.4", "--min-size", "1", *flags,
                            name="cdirect.json")
    assert code == 0
    code, saved = run_eval(tmp_path, *common, "--predictions", str(cmasks), name="csaved.json")
    assert code == 0
    a, b = json.loads(direct.read_text())["metrics"], json.loads(saved.read_text())["metrics"]
    assert a == pytest.approx(b, abs=1e-12)
    # the records' own scores are the direct run's ranking: the saved masks ranked by them
    # score exactly as the direct run
    code, rec = run_eval(tmp_path, *common, "--predictions", str(cmasks), "--score", "record", name="crec.json")
    assert code == 0
    assert json.loads(rec.read_text())["metrics"] == pytest.approx(a, abs=1e-12)


# -- errors -----------------------------------------------------------------------------------


def test_missing_data_folder_is_a_usage_error(tmp_path, capsys):
    code, out = run_eval(tmp_path, "--dataset", "bsds500", "--data", str(tmp_path / "nowhere"))
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "uniap-eval: error: no such data folder" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--segmenter", "felzenszwalb", "--levels", "0.5"], "--levels does not apply to --segmenter felzenszwalb"),
    (["--scales", "1,2"], "--scales does not apply to --segmenter uniap"),
    (["--levels", "0.5,0.6"], "strictly decreasing"),
    (["--segmenter", "slic_rag", "--score", "record"], "--score record does not apply"),
    (["--num-classes", "3"], "--num-classes applies to --dataset labelmaps only"),
    (["--score", "area"], "for --dataset coco only"),
])
def test_bad_options_are_usage_errors(tmp_path, capsys, args, message):
    labels = tmp_path / "data"
    (labels / "images").mkdir(parents=True)
    code, out = run_eval(tmp_path, "--dataset", "bsds500", "--data", str(labels), *args)
    assert code == 2 and not out.exists()
    assert message in capsys.readouterr().err


def test_layout_and_prediction_errors(shared_data, tmp_path, capsys):
    code, out = run_eval(tmp_path, "--dataset", "bsds500", "--data", str(shared_data / "coco"))
    assert code == 2 and not out.exists() and "is not a BSDS500 folder" in capsys.readouterr().err
    code, out = run_eval(tmp_path, "--dataset", "bsds500", "--data", str(shared_data / "bsds500"),
                         "--split", "train")
    assert code == 2 and not out.exists() and "no split 'train'" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out = run_eval(tmp_path, "--dataset", "bsds500", "--data", str(shared_data / "bsds500"),
                         "--limit", "2", "--predictions", str(empty))
    assert code == 2 and not out.exists()
    assert "2 of 2 images have no predictions" in capsys.readouterr().err
    code, out = run_eval(tmp_path, "--dataset", "coco", "--data", str(shared_data / "coco"),
                         "--predictions", str(empty), "--segmenter", "uniap")
    assert code == 2 and "leave out --segmenter" in capsys.readouterr().err
    out = tmp_path / "no" / "such" / "r.json"
    assert main(["--dataset", "coco", "--data", str(shared_data / "coco"), "--out", str(out)]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_bad_image_fails_with_status_1(tmp_path, capsys):
    data = make_labelmaps(tmp_path / "data")
    (data / "images" / "b.png").write_bytes(b"not an image")
    code, out = run_eval(tmp_path, "--dataset", "labelmaps", "--data", str(data), "--num-classes", "3",
                         "--ignore-index", "255", "--segmenter", "felzenszwalb", "--scales", "100,400")
    assert code == 1
    r = json.loads(out.read_text())  # the other images are still summarised
    assert r["dataset"]["evaluated"] == 1 and [f["image"] for f in r["failed"]] == ["b"]
    assert "uniap-eval: b: " in capsys.readouterr().err


# -- without the shared data ------------------------------------------------------------------


def make_labelmaps(root: Path) -> Path:
    """Two 48x64 images (flat layout) of three coloured bands, and their class maps."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        labels = np.zeros((48, 64), np.uint16)
        labels[16:32] = 1
        labels[32:] = 2
        colours = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]], np.float64)
        image = colours[labels] + rng.normal(0, 5, (48, 64, 3))
        labels[:, :4] = 255  # void
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(labels).save(root / "labels" / f"{name}.png")
    return root


def test_labelmaps_flat_layout_without_manifest(tmp_path):
    data = make_labelmaps(tmp_path / "data")
    code, out = run_eval(tmp_path, "--dataset", "labelmaps", "--data", str(data), "--segmenter",
                         "higra_watershed", "--regions", "30,6,3", "--num-classes", "3", "--ignore-index", "255")
    assert code == 0
    r = json.loads(out.read_text())
    check_common(r, "labelmaps", 2, 3)
    assert r["dataset"]["splits"] == []
    # three clean bands: the 3-region cut finds them exactly
    assert r["metrics"]["miou"] == pytest.approx(1.0) and r["metrics"]["best_level"] == "regions=3"
    assert r["per_level"][0]["miou"] < 1.0  # 30 regions are too many for one-to-one matching
    code, _ = run_eval(tmp_path, "--dataset", "labelmaps", "--data", str(data), "--segmenter", "slic_rag")
    assert code == 2  # no manifest and no --num-classes


# -- parts ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_image() -> np.ndarray:
    import skimage.data

    return np.ascontiguousarray(skimage.data.astronaut()[::4, ::4])


def nested(levels: np.ndarray) -> bool:
    for fine, coarse in zip(levels[:-1], levels[1:]):
        pairs = np.unique(np.stack([fine.ravel(), coarse.ravel()]), axis=1)
        if np.unique(pairs[0]).size != pairs.shape[1]:
            return False
    return True


def test_peer_segmenters(small_image):
    shape = small_image.shape[:2]
    fz = Felzenszwalb((50, 500)).segment(small_image, proposals=True)
    assert fz.levels.shape == (2, *shape) and fz.levels.dtype == np.int32
    assert np.unique(fz.levels[0]).size > np.unique(fz.levels[1]).size
    sr = SlicRag((0, 10, 40), n_segments=100).label_maps(small_image)
    assert sr.shape == (3, *shape) and nested(sr)
    counts = [np.unique(lv).size for lv in sr]
    assert counts[0] > counts[1] > counts[2]
    hw = HigraWatershed((40, 8, 2)).label_maps(small_image)
    sizes = [np.unique(lv).size for lv in hw]  # at least the number asked for (ties)
    assert sizes[2] == 2 and 8 <= sizes[1] < 40 <= sizes[0] and nested(hw)
    with pytest.raises(ValueError, match="increasing"):
        Felzenszwalb((500, 50))
    with pytest.raises(ValueError, match="decreasing"):
        HigraWatershed((2, 8))


def test_mean_colour_rag_is_skimage_rag_mean_color(small_image):
    from skimage.graph import rag_mean_color
    from skimage.segmentation import slic

    img = small_image[:40, :40].astype(np.float64)
    sp = slic(small_image[:40, :40], n_segments=30, start_label=0)
    ref, ours = rag_mean_color(img, sp), mean_colour_rag(img, sp)
    assert sorted(map(sorted, ref.edges())) == sorted(map(sorted, ours.edges()))
    for x, y, d in ref.edges(data=True):
        assert ours[x][y]["weight"] == pytest.approx(d["weight"])
    for n, d in ref.nodes(data=True):
        assert ours.nodes[n]["pixel count"] == d["pixel count"]
        np.testing.assert_allclose(ours.nodes[n]["mean color"], d["mean color"])


def test_proposals_deduplicate_and_rank():
    fine = np.repeat(np.array([[0, 0, 1, 1, 2, 2, 3, 3]]), 4, axis=0)
    mid = np.repeat(np.array([[0, 0, 1, 1, 2, 2, 2, 2]]), 4, axis=0)  # regions 0, 1 persist
    coarse = np.zeros_like(fine)
    levels = np.stack([fine, mid, coarse])
    props = proposals_from_levels(levels, "persistence")
    assert len(props) == 4 + 1 + 1  # fine's 4, mid's merged region, the whole image
    assert [p["level"] for p in props[:2]] == [0, 0]  # the two persistent regions first
    assert props[0]["score"] == pytest.approx((1 + 1 + 0.25) / 3)
    by_area = proposals_from_levels(levels, "area")
    assert by_area[0]["area"] == 32 and by_area[0]["level"] == 2
    stab = proposals_from_levels(levels, "stability")
    assert [p["score"] for p in stab] == sorted((p["score"] for p in stab), reverse=True)
    assert stab[0]["score"] == pytest.approx(props[0]["score"] * math.sqrt(8 / 32)) or stab[0]["level"] == 2
    assert len(proposals_from_levels(levels, "area", min_area=9)) == 2
    # relabelling the levels changes nothing
    perm = proposals_from_levels((levels * 7 + 3) % 11, "stability")
    assert [p["segmentation"] for p in perm] == [p["segmentation"] for p in stab]


def test_contrast_ranks_masks_set_off_by_an_edge_first():
    """Two equally persistent, equally large masks: the one the image sets off by an edge
    (a dark square on grey) outranks the one inside the flat grey (a fragment)."""
    from uniap.evaluation.proposals import boundary_contrast, edge_strength

    image = np.full((32, 32, 3), 128, np.uint8)
    image[4:12, 4:12] = 20  # an object
    levels = np.zeros((2, 32, 32), int)
    levels[:, 4:12, 4:12] = 1  # the object, at both levels
    levels[:, 20:28, 20:28] = 2  # a fragment of the background, same area and persistence
    strength = edge_strength(image)
    assert strength.mean() == pytest.approx(1.0)
    contrast = boundary_contrast(levels[0], strength)
    assert contrast[1] > 2 * contrast[2]
    props = proposals_from_levels(levels, "contrast", image=image)
    masks = [decode_rle(p["segmentation"]).astype(bool) for p in props]
    rank = {name: next(i for i, m in enumerate(masks) if m.sum() == 64 and m[y, y])
            for name, y in (("object", 4), ("fragment", 20))}
    assert rank["object"] < rank["fragment"]
    stab = proposals_from_levels(levels, "stability")
    assert {p["segmentation"]["counts"] for p in stab} == {p["segmentation"]["counts"] for p in props}
    with pytest.raises(ValueError, match="needs the image"):
        proposals_from_levels(levels, "contrast")
    with pytest.raises(ValueError, match="image is"):
        proposals_from_levels(levels, "contrast", image=image[:10])
    flat = np.full((8, 8, 3), 50, np.uint8)  # no gradient anywhere: every contrast is 1
    assert np.all(boundary_contrast(np.eye(8, dtype=int), edge_strength(flat)) == 1.0)


def test_saved_masks_load_the_image_only_for_the_contrast_rule(tmp_path):
    from uniap.evaluation.segmenters import Predictions

    assert Predictions(tmp_path).needs_image
    assert not Predictions(tmp_path, score="stability").needs_image


def test_levels_from_records_fill_holes():
    from uniap.records import encode_rle

    a = np.zeros((6, 6), bool)
    a[:3] = True
    inner = np.zeros((6, 6), bool)
    inner[1, 1:3] = True
    records = [{"segmentation": r, "area": int(m.sum()), "level": lv}
               for r, m, lv in zip(encode_rle(np.stack([inner, a, a])), [inner, a, a], [0, 0, 1])]
    records.append({"segmentation": encode_rle(a[None])[0], "area": 18, "level": 0, "kind": "semantic"})
    levels = levels_from_records(records, (6, 6), num_levels=3)
    assert levels.shape == (3, 6, 6)
    # level 0: the inner mask wins over the larger one; the uncovered bottom is one region
    assert np.unique(levels[0]).size == 3 and np.unique(levels[0][inner]).size == 1
    assert np.unique(levels[0][3:]).size == 1
    assert np.unique(levels[1]).size == 2
    assert np.unique(levels[2]).size == 1  # no record at all: one region


def test_evaluation_workers_keep_to_one_thread(monkeypatch):
    """A worker process of uniap-eval (the workers use every core between them) keeps BLAS to
    one thread and makes the superpixels in turn, not in a thread beside the features."""
    import uniap.features.regions as regions_module
    from uniap.evaluation import scoring

    monkeypatch.setattr(regions_module, "OVERLAP", True)
    monkeypatch.setattr(scoring, "_STATE", {})
    scoring._init(None, None, None, worker=False)
    assert regions_module.OVERLAP is True
    scoring._init(None, None, None, worker=True)
    try:
        assert regions_module.OVERLAP is False
    finally:
        scoring._STATE["threads"].restore_original_limits()
