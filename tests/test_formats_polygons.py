"""Polygons: ``--format coco --polygons`` and ``--format labelme`` (issue 25, item 4).

Round trips are measured as IoU against the RLE mask (pycocotools ``frPyObjects`` for COCO,
LabelMe's own PIL drawing for LabelMe) on generated shapes with and without holes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from uniap.cli import main as cli_main
from uniap.formats.polygons import (labelme_mask, mask_polygons, polygons_to_rle, rle_iou,
                                    rle_polygons)
from uniap.io import read_records
from uniap.records import decode_rle, encode_rle

from cli_helpers import exit_status, save_image


def cli(*argv) -> int:
    return exit_status(cli_main, [str(a) for a in argv])


def shapes() -> dict[str, np.ndarray]:
    """Masks of 120 x 140 pixels: plain shapes, shapes with holes (an island in one)."""
    yy, xx = np.mgrid[:120, :140]
    disc = (yy - 60) ** 2 + (xx - 70) ** 2 < 45 ** 2
    ring = disc & ((yy - 60) ** 2 + (xx - 70) ** 2 >= 20 ** 2)
    holes = disc & ((yy - 60) ** 2 + (xx - 50) ** 2 >= 10 ** 2) & ((yy - 45) ** 2 + (xx - 90) ** 2 >= 7 ** 2)
    island = holes | ((yy - 60) ** 2 + (xx - 50) ** 2 < 4 ** 2)
    rng = np.random.default_rng(0)
    from scipy import ndimage

    blobs = ndimage.gaussian_filter(rng.standard_normal((120, 140)), 6) > 0  # 6 pieces, holed
    ell = np.zeros((120, 140), bool)
    ell[10:100, 10:30] = ell[80:100, 10:120] = True
    return {"disc": disc, "ell": ell, "ring": ring, "two holes": holes, "island in a hole": island,
            "blobs": blobs, "diagonal pixels": np.eye(120, 140, dtype=bool)}


HOLED = {"ring", "two holes", "island in a hole", "blobs"}


def test_the_shapes_cover_holes():
    from scipy import ndimage

    for name, mask in shapes().items():
        assert (ndimage.binary_fill_holes(mask).sum() > mask.sum()) == (name in HOLED), name


@pytest.mark.parametrize("name", list(shapes()))
def test_unsimplified_polygons_rasterise_to_the_mask_exactly(name):
    mask = shapes()[name]
    rle = encode_rle(mask[None])[0]
    polygons = rle_polygons(rle, tolerance=0)
    assert polygons_to_rle(polygons, *mask.shape) == rle


@pytest.mark.parametrize("name", list(shapes()))
def test_simplified_polygons_round_trip_above_the_bound(name):
    mask = shapes()[name]
    rle = encode_rle(mask[None])[0]
    polygons = rle_polygons(rle)  # default tolerance
    iou = rle_iou(rle, polygons_to_rle(polygons, *mask.shape))
    assert iou > (0.95 if name != "diagonal pixels" else 0.99), iou
    corners = len(np.concatenate(rle_polygons(rle, tolerance=0))) // 2
    assert len(np.concatenate(polygons)) // 2 <= corners  # simpler, never more vertices


@pytest.mark.parametrize("name", list(shapes()))
def test_labelme_polygons_draw_the_mask_as_labelme_does(name):
    mask = shapes()[name]
    for tolerance, bound in ((0, 0.995), (1.0, 0.93)):
        drawn = np.zeros_like(mask)
        for points in mask_polygons(mask, tolerance, convention="labelme"):
            drawn |= labelme_mask(points.tolist(), *mask.shape)
        iou = (drawn & mask).sum() / (drawn | mask).sum()
        assert iou > bound, (tolerance, iou)


def test_a_hole_stays_empty_in_one_polygon():
    mask = shapes()["ring"]
    polygons = mask_polygons(mask)
    assert len(polygons) == 1  # outline and hole joined by a zero-width cut
    drawn = decode_rle(polygons_to_rle([polygons[0].ravel().tolist()], *mask.shape))
    assert not drawn[60, 70] and drawn[60, 30]
    island = mask_polygons(shapes()["island in a hole"])
    assert len(island) == 2 and len(island[1]) < len(island[0])  # the island is a piece of its own


def test_bad_inputs_are_errors():
    with pytest.raises(ValueError, match="2-D"):
        mask_polygons(np.zeros((2, 3, 4), bool))
    with pytest.raises(ValueError, match="tolerance"):
        mask_polygons(np.ones((3, 3), bool), tolerance=-1)
    with pytest.raises(ValueError, match="convention"):
        mask_polygons(np.ones((3, 3), bool), convention="cvat")
    with pytest.raises(ValueError, match="at least 3"):
        polygons_to_rle([[0, 0, 1, 1]], 4, 4)
    assert mask_polygons(np.zeros((3, 3), bool)) == []


def picture() -> np.ndarray:
    x = np.zeros((48, 64, 3), np.uint8)
    x[:, 30:] = 200
    x[10:30, 5:20] = [255, 0, 40]
    x[20:25, 10:15] = 0  # a hole in the red block
    return x


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("polygons")
    save_image(root / "in" / "a" / "x.png", picture())
    assert cli(root / "in", "--out", root / "sam", "--quiet") == 0
    return root


def test_coco_polygons_load_in_pycocotools_and_read_back_as_rle(tree, tmp_path):
    from pycocotools.coco import COCO

    out = tmp_path / "coco.json"
    assert cli(tree / "in", "--out", out, "--format", "coco", "--polygons", "--quiet") == 0
    dataset = json.loads(out.read_text())
    assert all(isinstance(a["segmentation"], list) and a["segmentation"] for a in dataset["annotations"])
    coco = COCO(str(out))
    sam = read_records(tree / "sam")["a/x.png"][1]
    back = read_records(out)["a/x.png"][1]
    ious = []
    for ann, rec, again in zip(dataset["annotations"], sam, back):
        drawn = coco.annToMask(ann).astype(bool)
        truth = decode_rle(rec["segmentation"])
        ious.append((drawn & truth).sum() / (drawn | truth).sum())
        assert {k: v for k, v in again.items() if k != "segmentation"} == \
            {k: v for k, v in rec.items() if k != "segmentation"}
        assert np.array_equal(decode_rle(again["segmentation"]), drawn)  # read back: what the polygons draw
    assert np.mean(ious) > 0.9 and min(ious) > 0.5


def test_labelme_files_point_at_the_image_and_group_pieces_by_record(tree, tmp_path, capsys):
    out = tmp_path / "lm"
    assert cli(tree / "in", "--out", out, "--format", "labelme", "--quiet") == 0
    document = json.loads((out / "a" / "x.json").read_text())
    image = (out / "a" / document["imagePath"]).resolve()
    assert image == (tree / "in" / "a" / "x.png").resolve()
    assert document["imageData"] is None and (document["imageHeight"], document["imageWidth"]) == (48, 64)
    sam = read_records(tree / "sam")["a/x.png"][1]
    assert {s["group_id"] for s in document["shapes"]} == {r["id"] for r in sam}
    for shape in document["shapes"]:
        assert shape["shape_type"] == "polygon" and len(shape["points"]) >= 3
        described = json.loads(shape["description"])
        assert shape["label"] == (f"level_{described['level']}" if described["kind"] == "instance"
                                  else f"{described['kind']}_{described['level']}")
    assert cli(tree / "in", "--out", out, "--format", "labelme") == 0
    assert "1 skipped" in capsys.readouterr().err


def test_polygons_outside_coco_is_a_usage_error(tree, tmp_path, capsys):
    assert cli(tree / "in", "--out", tmp_path / "o", "--polygons", "--quiet") == 2
    err = capsys.readouterr().err
    assert "--polygons applies to --format coco only" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_predict_polygons_outside_coco_is_a_usage_error_before_the_checkpoint(tree, tmp_path, capsys):
    """uniap-predict takes --polygons as uniap-cli does; the check comes before the (here
    missing) checkpoint is read."""
    pytest.importorskip("torch")
    from uniap_train.predict import main as predict_main

    argv = [str(tmp_path / "missing.pt"), str(tree / "in"), "--out", str(tmp_path / "o"), "--polygons"]
    assert exit_status(predict_main, argv) == 2
    err = capsys.readouterr().err
    assert "--polygons applies to --format coco only" in err and "missing.pt" not in err
    assert not (tmp_path / "o").exists()


def test_the_registry_holds_amg_and_labelme():
    """The ported formats are registry entries: --format's choices, uniap-merge's rule."""
    from uniap import formats

    assert formats.names() == ["sam", "coco", "png", "amg", "labelme", "parquet"]
    amg, labelme = formats.get("amg"), formats.get("labelme")
    assert (amg.out, amg.image_suffix, amg.image_is_folder, amg.merge is not None) == ("folder", "", True, True)
    assert (labelme.out, labelme.image_suffix, labelme.merge, labelme.read_json) == ("file-or-folder", ".json", None, None)


def test_workers_and_merge_make_the_same_polygons(tmp_path, capsys):
    from uniap.merge import main as merge_main

    for i in range(3):
        image = picture()
        image[:, 30 + 5 * i:] = 120
        save_image(tmp_path / "in" / f"{i}.png", image)
    run = tmp_path / "run.json"
    assert cli(tmp_path / "in", "--out", run, "--format", "coco", "--polygons", "--workers", "2",
               "--batch-size", "1", "--quiet") == 0
    assert cli(tmp_path / "in", "--out", tmp_path / "sam", "--quiet") == 0
    merged = tmp_path / "merged.json"
    assert exit_status(merge_main, [str(merged), str(tmp_path / "sam"), "--polygons"]) == 0
    assert json.loads(run.read_text())["annotations"] == json.loads(merged.read_text())["annotations"]
    assert exit_status(merge_main, [str(tmp_path / "pq"), str(tmp_path / "sam"), "--format", "sam",
                                    "--polygons"]) == 2
    assert "--polygons applies to --format coco only" in capsys.readouterr().err


def test_labelme_of_a_tar_member_names_its_key(tmp_path):
    import io
    import tarfile

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(picture()).save(buf, format="PNG")
    with tarfile.open(tmp_path / "shard.tar", "w") as tf:
        info = tarfile.TarInfo("a/x.png")
        info.size = len(buf.getvalue())
        tf.addfile(info, io.BytesIO(buf.getvalue()))
    assert cli(tmp_path / "shard.tar", "--out", tmp_path / "lm", "--format", "labelme", "--quiet") == 0
    assert json.loads((tmp_path / "lm" / "a" / "x.json").read_text())["imagePath"] == "a/x.png"


def small_masks() -> list[np.ndarray]:
    """Masks that simplifying by two pixels would cut badly: small discs, a thin arc."""
    yy, xx = np.mgrid[:30, :30]
    r2 = (yy - 15) ** 2 + (xx - 15) ** 2
    return [r2 <= 4, r2 <= 9, r2 <= 16, (r2 <= 100) & (r2 > 64) & (yy < 15)]


def test_the_iou_floor_holds_where_simplifying_would_cut_a_small_mask():
    weakest = {"coco": [], "labelme": []}
    for mask in small_masks():
        rle = encode_rle(mask[None])[0]
        for convention in weakest:
            for floor in (0.9, 0.0):
                polygons = rle_polygons(rle, 2.0, convention, min_iou=floor)
                if convention == "coco":
                    iou = rle_iou(rle, polygons_to_rle(polygons, *mask.shape))
                else:
                    drawn = np.zeros_like(mask)
                    for p in polygons:
                        drawn |= labelme_mask(np.reshape(p, (-1, 2)).tolist(), *mask.shape)
                    iou = (drawn & mask).sum() / (drawn | mask).sum()
                if floor:
                    assert iou >= 0.9, (convention, iou)
                else:
                    weakest[convention].append(iou)
    assert min(weakest["coco"]) < 0.9 and min(weakest["labelme"]) < 0.9  # what the floor prevents
    with pytest.raises(ValueError, match="min_iou"):
        rle_polygons(encode_rle(small_masks()[0][None])[0], min_iou=1.5)
