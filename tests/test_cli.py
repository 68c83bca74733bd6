"""uniap-cli end to end: formats round-trip, errors exit with the right code and leave no file."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uniap.cli import main
from uniap.features.regions import REGION_LEVELS
from uniap.records import decode_rle

from cli_helpers import exit_status


@pytest.fixture
def images(tmp_path: Path) -> Path:
    import skimage.data

    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(skimage.data.coffee()[::2, ::2]).save(folder / "coffee.jpg")
    Image.fromarray(skimage.data.chelsea()[::2, ::2]).save(folder / "chelsea.png")
    Image.fromarray(skimage.data.camera()[::3, ::3]).save(folder / "camera.png")  # grey
    return folder


def check_sam_document(doc: dict, image_path: Path) -> None:
    height, width = np.asarray(Image.open(image_path)).shape[:2]
    assert {k: doc["image"][k] for k in ("file_name", "height", "width")} == {
        "file_name": image_path.name, "height": height, "width": width}
    assert isinstance(doc["image"]["image_id"], int)
    assert doc["uniap"]["thresholds"] == list(REGION_LEVELS)  # the superpixel default
    assert doc["uniap"]["refine"]["method"] == "superpixels" and doc["uniap"]["refine"]["nodes"] > 0
    assert doc["uniap"]["patch_size"] >= 1 and len(doc["uniap"]["grid"]) == 2
    anns = doc["annotations"]
    assert anns, "no masks"
    by_id = {a["id"]: a for a in anns}
    required = {"id", "segmentation", "area", "bbox", "predicted_iou", "stability_score",
                "point_coords", "crop_box", "level", "threshold", "kind", "num_patches", "parent", "score"}
    for ann in anns:
        assert required <= set(ann)
        mask = decode_rle(ann["segmentation"])
        assert mask.shape == (height, width)
        assert ann["area"] == int(mask.sum()) > 0
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        if ann["parent"] >= 0:
            parent = decode_rle(by_id[ann["parent"]]["segmentation"])
            assert not (mask & ~parent).any(), "a mask is not inside its parent"
    # each level's instance masks are disjoint (a record belongs to every level it spans)
    spans = {a["id"]: a.get("levels", [a["level"]]) for a in anns}
    for level in {lv for span in spans.values() for lv in span}:
        stack = [decode_rle(a["segmentation"]) for a in anns if level in spans[a["id"]] and a["kind"] == "instance"]
        assert np.sum(stack, axis=0).max() <= 1


def test_single_image_sam(images, tmp_path):
    out = tmp_path / "masks.json"
    viz = tmp_path / "masks.png"
    assert main([str(images / "coffee.jpg"), "--out", str(out), "--viz", str(viz), "--quiet"]) == 0
    check_sam_document(json.loads(out.read_text()), images / "coffee.jpg")
    picture = np.asarray(Image.open(viz))
    assert picture.ndim == 3 and picture.shape[0] > 100 and picture.std() > 10


def test_folder_run_with_options(images, tmp_path):
    out = tmp_path / "out"
    code = main([str(images), "--out", str(out), "--levels", "0.9,0.6,0.3", "--min-size", "2",
                 "--semantic", "--refine", "none", "--upsampling", "bilinear", "--quiet"])
    assert code == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["camera.json", "chelsea.json", "coffee.json"]
    doc = json.loads((out / "chelsea.json").read_text())
    assert doc["uniap"]["thresholds"] == [0.9, 0.6, 0.3]
    assert doc["uniap"]["options"]["semantic"] is True
    assert {a["kind"] for a in doc["annotations"]} == {"instance", "semantic"}


def test_coco_format_loads_in_pycocotools(images, tmp_path):
    from pycocotools.coco import COCO

    out = tmp_path / "dataset.json"
    assert main([str(images), "--out", str(out), "--format", "coco", "--quiet"]) == 0
    coco = COCO(str(out))
    assert len(coco.getImgIds()) == 3 and coco.getCatIds() == [1]
    for ann in coco.loadAnns(coco.getAnnIds()[:50]):
        assert coco.annToMask(ann).sum() == ann["area"]
    results = coco.loadRes(json.loads(out.read_text())["annotations"])
    assert len(results.getAnnIds()) == len(coco.getAnnIds())


def test_png_format(images, tmp_path):
    root = tmp_path / "labels"
    assert main([str(images / "coffee.jpg"), "--out", str(root), "--format", "png", "--quiet"]) == 0
    out = root / "coffee"  # a folder per image below --out, as SAM's amg.py
    level_maps = sorted(out.glob("level_*.png"), key=lambda p: int(p.stem.split("_")[1]))
    assert [p.name for p in level_maps] == [f"level_{i}.png" for i in range(len(REGION_LEVELS))]
    maps = [np.asarray(Image.open(p)) for p in level_maps]
    height, width = np.asarray(Image.open(images / "coffee.jpg")).shape[:2]
    assert all(m.shape == (height, width) for m in maps)
    for fine, coarse in zip(maps, maps[1:]):  # nested: each fine label lies in one coarse label
        pairs = np.unique(np.stack([fine.ravel(), coarse.ravel()]), axis=1)
        assert len(np.unique(pairs[0])) == pairs.shape[1]
    with open(out / "metadata.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows
    for row in rows[:40]:
        mask = maps[int(row["level"])] == int(row["label"])
        assert int(row["area"]) == int(mask.sum())


def test_existing_outputs_are_kept_unless_overwrite(images, tmp_path, capsys):
    out = tmp_path / "masks.json"
    out.write_text("keep me")
    assert main([str(images / "coffee.jpg"), "--out", str(out), "--quiet"]) == 2
    assert out.read_text() == "keep me"
    assert "--overwrite" in capsys.readouterr().err
    assert main([str(images / "coffee.jpg"), "--out", str(out), "--overwrite", "--quiet"]) == 0
    assert json.loads(out.read_text())["annotations"]
    # in a folder run, outputs made with the same settings are skipped, others written
    folder = tmp_path / "many"
    assert main([str(images / "coffee.jpg"), "--out", str(folder) + "/", "--quiet"]) == 0
    done = (folder / "coffee.json").read_bytes()
    assert main([str(images), "--out", str(folder)]) == 0
    assert (folder / "coffee.json").read_bytes() == done
    assert (folder / "chelsea.json").exists()
    assert "1 skipped" in capsys.readouterr().err
    # a file uniap did not make is never replaced without --overwrite
    (folder / "camera.json").write_text("old")
    assert main([str(images), "--out", str(folder)]) == 2
    assert (folder / "camera.json").read_text() == "old"


def test_bad_image_in_folder_is_reported_and_skipped(images, tmp_path, capsys):
    (images / "broken.jpg").write_bytes(b"this is not a jpeg")
    out = tmp_path / "out"
    assert main([str(images), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "1 failed" in err and "3 written" in err
    assert not (out / "broken.json").exists()
    assert sorted(p.name for p in out.iterdir()) == ["camera.json", "chelsea.json", "coffee.json", "failures.jsonl"]


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["missing.jpg", "--out", "{tmp}/o.json"], 2, "no such file"),
        (["{img}", "--out", "{tmp}/o.json", "--levels", "0.5,0.7"], 2, "strictly decreasing"),
        (["{img}", "--out", "{tmp}/o.json", "--levels", "high,low"], 2, "comma-separated numbers"),
        (["{img}", "--out", "{tmp}/nowhere/o.json"], 2, "no such folder"),
        (["{img}", "--out", "{tmp}/o.json", "--shard", "3/2"], 2, "0 <= i < n"),
        (["{img}", "--out", "{tmp}/o.json", "--features", "vit", "--weights", "{tmp}/none.pth"], 2, "none.pth"),
        (["{img}", "--out", "{tmp}/o.json", "--weights", "{tmp}/w.pth"], 2, "--features vit only"),
        (["{tmp}/text.jpg", "--out", "{tmp}/o.json"], 1, "text.jpg"),
        (["{tmp}/*.nothing", "--out", "{tmp}/o.json"], 2, "no file matches"),
        (["{img}", "--out", "{tmp}/o.json", "--vocabulary", "{tmp}/none.npz"], 2, "vocabulary file not found"),
        (["{img}", "--out", "{tmp}/o.json", "--vocabulary", "{tmp}/text.jpg"], 2, "not a saved vocabulary"),
        (["{img}", "--out", "{tmp}/o.json", "--features", "vit", "--vocabulary", "{tmp}/text.jpg"], 2,
         "--features default only"),
    ],
)
def test_errors_exit_cleanly_and_write_nothing(images, tmp_path, capsys, argv, code, message):
    (tmp_path / "text.jpg").write_text("not an image")
    argv = [a.format(tmp=tmp_path, img=images / "coffee.jpg") for a in argv]
    before = set(tmp_path.rglob("*"))
    assert run_cli(argv) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    after = set(tmp_path.rglob("*"))
    # nothing written, no temporary left behind; a failed image is listed in failures.jsonl
    assert after == before | ({tmp_path / "failures.jsonl"} if code == 1 else set())


def run_cli(argv: list[str]) -> int:
    """main(argv), counting argparse's own usage exits (status 2) as return codes."""
    return exit_status(main, argv)


def test_shared_vocabulary(images, tmp_path):
    """--vocabulary FILE: every image's features use the saved words (same masks as the library)."""
    from uniap.features import DefaultFeatures
    from uniap.pipeline import segment_image

    paths = sorted(images.iterdir())
    shared = DefaultFeatures().fit(paths)
    words = tmp_path / "words.npz"
    shared.vocabulary.save(words)
    out = tmp_path / "out"
    assert main([str(images), "--out", str(out), "--vocabulary", str(words), "--quiet"]) == 0
    per_image = tmp_path / "per_image"
    assert main([str(images), "--out", str(per_image), "--quiet"]) == 0
    differs = 0
    for path in paths:
        doc = json.loads((out / f"{path.stem}.json").read_text())
        check_sam_document(doc, path)
        expected = segment_image(path, extractor=shared).records
        assert [a["segmentation"] for a in doc["annotations"]] == [r["segmentation"] for r in expected]
        other = json.loads((per_image / f"{path.stem}.json").read_text())
        differs += [a["segmentation"] for a in doc["annotations"]] != [a["segmentation"] for a in other["annotations"]]
    assert differs > 0


def test_shard_and_workers(images, tmp_path):
    out = tmp_path / "shard"
    assert main([str(images), "--out", str(out), "--shard", "1/2", "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["chelsea.json"]  # sorted: camera, chelsea, coffee
    parallel = tmp_path / "parallel"
    assert main([str(images), "--out", str(parallel), "--workers", "2", "--quiet"]) == 0
    serial = tmp_path / "serial"
    assert main([str(images), "--out", str(serial), "--quiet"]) == 0
    for name in ("camera.json", "chelsea.json", "coffee.json"):
        assert json.loads((parallel / name).read_text()) == json.loads((serial / name).read_text())


def test_console_script_and_help():
    out = subprocess.run([sys.executable, "-m", "uniap", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--levels" in out.stdout and "--format" in out.stdout


def test_real_bsds_image(shared_data, tmp_path):
    image = sorted((shared_data / "bsds500" / "images" / "val").glob("*.jpg"))[0]
    out = tmp_path / "bsds.json"
    proc = subprocess.run([sys.executable, "-m", "uniap", str(image), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    check_sam_document(json.loads(out.read_text()), image)
