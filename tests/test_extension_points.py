"""The worked examples of docs/architecture.md: each extension point is one definition plus one
registration, and the rest of uniap picks it up.

Each toy below is what the document shows; the test runs it through the commands and functions
that read the registry (``uniap-cli``, :func:`uniap.formats.read_records`, ``uniap-eval``'s
:func:`build_segmenter`, :func:`uniap.pipeline.run`, ``uniap_train``'s recipes).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cli_helpers import exit_status


def _images(root: Path, count: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        yy, xx = np.mgrid[:40, :48]
        image = np.zeros((40, 48, 3), np.uint8)
        image[yy < 20] = (200, 40, 40)
        image[(yy >= 20) & (xx < 24)] = (40, 200, 40)
        image[(yy >= 20) & (xx >= 24)] = (40, 40, 200)
        image[..., 2] += ((xx * 5 + yy * 3 + i) % 17).astype(np.uint8)
        Image.fromarray(image).save(root / f"img{i}.png")
    return root


# ----------------------------------------------------------------------------------- format
# docs/architecture.md, "A format": one CSV of the records' boxes per image.

def write_boxes(path: str, out: Any) -> None:
    """One image's records as ``id,level,area,x,y,w,h`` rows; the settings' digest first."""
    from uniap.formats.files import atomic_path

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        f.write(f"# {out.info['file_name']} {out.info['image_id']} {out.uniap['signature']}\n")
        rows = csv.writer(f)
        for rec in out.encoded.records:
            rows.writerow([rec["id"], rec["level"], rec["area"], *rec["bbox"]])


def boxes_signature(path: str) -> str | None:
    with open(path) as f:
        return f.readline().split()[-1]


def read_boxes(path: Path, max_records: int) -> list:
    with open(path) as f:
        _, name, image_id, _ = f.readline().split()
        records = [{"id": int(r[0]), "level": int(r[1]), "area": int(r[2]), "bbox": [float(v) for v in r[3:]]}
                   for r in csv.reader(f)]
    return [({"file_name": name, "image_id": int(image_id)}, records, None)]


@pytest.fixture
def boxes_format(monkeypatch):
    from uniap.formats import Format, registry

    fmt = Format(name="boxes", help="one CSV of boxes per image", out="file-or-folder", image_suffix=".csv",
                 write_image=write_boxes, read_signature=boxes_signature, read_file=read_boxes,
                 suffixes=(".csv",))
    monkeypatch.setitem(registry._REGISTRY, fmt.name, fmt)  # the one entry (register(fmt) in a module)
    return fmt


def test_a_new_format_is_one_module_and_one_entry(tmp_path, boxes_format, capsys):
    from uniap.cli import main as cli
    from uniap.formats import read_records

    images = _images(tmp_path / "images")
    out = tmp_path / "boxes"
    assert exit_status(cli, [str(images), "--out", str(out), "--format", "boxes", "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["img0.csv", "img1.csv"]
    # the reference: the same run as SAM JSON holds the same boxes
    assert exit_status(cli, [str(images), "--out", str(tmp_path / "sam"), "--quiet"]) == 0
    back = read_records(out)
    for name in ("img0.png", "img1.png"):
        sam = json.loads((tmp_path / "sam" / name.replace(".png", ".json")).read_text())
        assert [r["bbox"] for r in back[name][1]] == [r["bbox"] for r in sam["annotations"]]
        assert back[name][0]["image_id"] == sam["image"]["image_id"]
    # the planner reads the signature: a rerun skips both images, other settings are refused
    assert exit_status(cli, [str(images), "--out", str(out), "--format", "boxes"]) == 0
    assert "2 skipped" in capsys.readouterr().err
    assert exit_status(cli, [str(images), "--out", str(out), "--format", "boxes", "--levels", "0.5"]) == 2
    assert "made with other settings" in capsys.readouterr().err


def test_a_format_entry_is_checked():
    from uniap.formats import Format

    with pytest.raises(ValueError, match="exactly one of write_image and collector"):
        Format(name="x", help="x")
    with pytest.raises(ValueError, match="out must be"):
        Format(name="x", help="x", out="files", write_image=write_boxes, image_suffix=".x")
    with pytest.raises(ValueError, match="format must be one of"):
        __import__("uniap.formats", fromlist=["get"]).get("nope")


# -------------------------------------------------------------------------------- extractor
# docs/architecture.md, "An extractor": mean colour per 8 x 8 patch.

class MeanColour:
    """A feature extractor: any object with ``name``, ``patch_size`` and ``__call__(image) -> FeatureGrid``."""

    name = "mean-colour"
    patch_size = 8

    def __call__(self, image):
        from uniap.features import FeatureGrid, load_image

        rgb = load_image(image).astype(np.float32) / 255.0
        h, w = rgb.shape[0] // 8, rgb.shape[1] // 8
        cells = rgb[: h * 8, : w * 8].reshape(h, 8, w, 8, 3).mean(axis=(1, 3)) - 0.5
        return FeatureGrid(np.ascontiguousarray(cells, np.float32), 8, (h * 8, w * 8), self.name,
                           original_shape=rgb.shape[:2], resized_shape=(h * 8, w * 8))


def test_a_new_extractor_is_one_class_and_one_entry(tmp_path, monkeypatch):
    import uniap
    from uniap.features import EXTRACTORS, get_extractor

    monkeypatch.setitem(EXTRACTORS, "mean-colour", MeanColour)
    image = np.asarray(Image.open(_images(tmp_path / "images", 1) / "img0.png"))
    for refine in ("none", "superpixels"):
        result = uniap.segment_image(image, extractor=get_extractor("mean-colour"), refine=refine,
                                     levels=(0.9, 0.5), min_size=1)
        assert result.pixel_labels.shape == (2, 40, 48)
        assert result.uniap_info()["features"] == "mean-colour"
    # the top band (red) and the bottom-left block (green) are different masks at t=0.9
    labels = result.pixel_labels[0]
    assert labels[5, 5] != labels[35, 5]


def test_uniap_cli_features_are_the_registry(tmp_path, monkeypatch, capsys):
    """``--features`` lists the registry; a registered extractor runs from the command line, and
    a flag its constructor does not take is a usage error naming both."""
    from uniap.cli import build_parser, main
    from uniap.features import EXTRACTORS

    monkeypatch.setitem(EXTRACTORS, "mean-colour", MeanColour)
    features = next(a for a in build_parser()._actions if a.dest == "features")
    assert tuple(features.choices) == tuple(EXTRACTORS) and "mean-colour" in features.choices
    assert "mean-colour: A feature extractor" in features.help
    images = _images(tmp_path / "images", 1)
    assert main([str(images / "img0.png"), "--out", str(tmp_path / "m.json"), "--features", "mean-colour",
                 "--refine", "none", "--quiet"]) == 0
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["uniap"]["features"] == "mean-colour" and doc["uniap"]["patch_size"] == 8
    assert exit_status(main, [str(images / "img0.png"), "--out", str(tmp_path / "n.json"),
                              "--features", "mean-colour", "--model", "x"]) == 2
    assert "--model does not apply to --features mean-colour" in capsys.readouterr().err


# -------------------------------------------------------------------------------- segmenter
# docs/architecture.md, "A segmenter": two levels, halves then quadrants.

def test_a_new_segmenter_is_one_class_and_one_entry(monkeypatch, tmp_path):
    from uniap.evaluation.segmenters import SEGMENTERS, Segmenter, build_segmenter
    from uniap.pipeline import run

    class Quadrants(Segmenter):
        name = "quadrants"

        def level_names(self):
            return ["quadrants", "halves"]

        def label_maps(self, image):
            h, w = image.shape[:2]
            yy, xx = np.mgrid[:h, :w]
            top = (yy >= h // 2).astype(np.int32)
            return np.stack([top * 2 + (xx >= w // 2), top]).astype(np.int32)

    monkeypatch.setitem(SEGMENTERS, "quadrants", Quadrants)  # or an entry point of uniap.segmenters
    segmenter = build_segmenter("quadrants", score="area")
    out = segmenter.segment(np.zeros((10, 12, 3), np.uint8), proposals=True)
    assert out.levels.shape == (2, 10, 12) and len(np.unique(out.levels[0])) == 4
    assert out.proposals and {p["area"] for p in out.proposals} <= {30, 60}
    # the pipeline runs it as it runs UniAP: label maps per level (PNG), records scored on the image
    images = _images(tmp_path / "images")
    summary = run([str(images)], str(tmp_path / "png"), format="png", segmenter=segmenter, progress=False)
    assert summary.written == 2 and not summary.failures
    levels = [np.asarray(Image.open(tmp_path / "png" / "img0" / f"level_{k}.png")) for k in range(2)]
    assert [len(np.unique(lv)) for lv in levels] == [4, 2]
    assert all(len(np.unique(levels[1][levels[0] == a])) == 1 for a in np.unique(levels[0]))  # nested


# ----------------------------------------------------------------------------------- engine
# docs/architecture.md, "An engine": one image at a time, in this process.

class OneByOne:
    """An engine: ``run(jobs, stages, collect)`` yields a report per job; it only schedules."""

    def run(self, jobs, stages, collect=False):
        from concurrent.futures import ThreadPoolExecutor

        from uniap.pipeline.engine import finished, process_chunk

        with ThreadPoolExecutor(1) as decoder:
            for job in jobs:
                yield from finished(process_chunk(stages, [job], collect, decoder))


def test_a_new_engine_schedules_the_same_stages(tmp_path):
    from uniap.pipeline import run

    images = _images(tmp_path / "images", 3)
    mine = run([str(images)], str(tmp_path / "mine"), engine=OneByOne(), progress=False)
    local = run([str(images)], str(tmp_path / "local"), progress=False)
    assert mine.written == local.written == 3
    for name in ("img0.json", "img1.json", "img2.json"):
        assert (tmp_path / "mine" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()


# ----------------------------------------------------------------------------------- recipe
# docs/architecture.md, "A recipe": the released recipe with its loss halved.

def test_a_new_recipe_is_one_class_and_one_entry(monkeypatch):
    pytest.importorskip("torch")
    from uniap_train.recipes import RECIPES, ReleasedRecipe, get_recipe

    class Halved(ReleasedRecipe):
        name = "halved"

        def loss(self, *args, **kwargs):
            out = super().loss(*args, **kwargs)
            out.loss = out.loss * 0.5
            return out

    monkeypatch.setitem(RECIPES, "halved", Halved)
    assert get_recipe("halved") is Halved
    for method in ("view_sizes", "build_dataset", "build_student", "build_loss", "loss", "embedder",
                   "param_groups"):
        assert callable(getattr(Halved, method)), method
    # the protocol's defaults (uniap_train/recipes/base.py): a recipe serves the predictor only
    # when it says so, as the paper's mask decoder does
    assert Halved.trains_backbone is False and Halved.metric_columns == ()
    assert not Halved.serves_predictor and RECIPES["paper"].serves_predictor
    with pytest.raises(NotImplementedError, match="gives no masks"):
        Halved.predictor_model(8, None, None)
