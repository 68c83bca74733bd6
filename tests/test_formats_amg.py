"""``--format amg``: segment-anything's ``scripts/amg.py`` folders (issue 25, item 4)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uniap.cli import main as cli_main
from uniap.formats import amg
from uniap.io import read_records
from uniap.merge import main as merge_main
from uniap.records import encode_rle

from cli_helpers import exit_status, save_image

HEADER = ("id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,"
          "stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h")


def cli(*argv) -> int:
    return exit_status(cli_main, [str(a) for a in argv])


def merge(*argv) -> int:
    return exit_status(merge_main, [str(a) for a in argv])


def picture(seed: int = 0) -> np.ndarray:
    x = np.zeros((48, 64, 3), np.uint8)
    x[:, 20 + 5 * seed:] = 200
    x[10:30, 5:20] = [255, 0, 40 * seed]
    x[35:44, 30:60] = [0, 90, 255]
    return x


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """One folder of two images run as amg and as sam with the same settings."""
    root = tmp_path_factory.mktemp("amg")
    save_image(root / "in" / "one.png", picture(0))
    save_image(root / "in" / "sub" / "two.jpg", picture(1))
    assert cli(root / "in", "--out", root / "amg", "--format", "amg", "--quiet") == 0
    assert cli(root / "in", "--out", root / "sam", "--quiet") == 0
    return root


def test_folder_per_image_stem_with_one_png_per_mask_and_metadata(runs):
    sam = read_records(runs / "sam")
    for key, folder in (("one.png", runs / "amg" / "one"), ("sub/two.jpg", runs / "amg" / "sub" / "two")):
        records = sam[key][1]
        assert records, "the picture has masks"
        visible = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        assert visible == sorted([f"{i}.png" for i in range(len(records))] + ["metadata.csv"])
        text = (folder / "metadata.csv").read_bytes()
        assert not text.endswith(b"\n") and b"\r" not in text  # "\n".join, as amg.py writes it
        lines = text.decode().split("\n")
        assert lines[0] == HEADER and len(lines) == len(records) + 1
        for i, (line, rec) in enumerate(zip(lines[1:], records)):
            row = dict(zip(HEADER.split(","), line.split(",")))
            assert row["id"] == str(i) and row["area"] == str(rec["area"])
            assert [row[k] for k in ("bbox_x0", "bbox_y0", "bbox_w", "bbox_h")] == [str(int(v)) for v in rec["bbox"]]
            assert [row["point_input_x"], row["point_input_y"]] == [str(float(v)) for v in rec["point_coords"][0]]
            assert row["predicted_iou"] == str(float(rec["predicted_iou"]))
            assert row["stability_score"] == str(float(rec["stability_score"]))
            assert [row[k] for k in ("crop_box_x0", "crop_box_y0", "crop_box_w", "crop_box_h")] == \
                [str(v) for v in rec["crop_box"]]
            with Image.open(folder / f"{i}.png") as img:
                assert img.mode == "L"
                mask = np.asarray(img)
            assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
            assert encode_rle((mask == 255)[None])[0] == rec["segmentation"]  # exactly the record's mask
            ys, xs = np.nonzero(mask)
            assert [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1] == rec["bbox"]
            assert int((mask == 255).sum()) == rec["area"]


def test_metadata_text_is_amg_py_s_format():
    records = [
        {"area": 12, "bbox": [3.0, 0.0, 4.0, 3.0], "point_coords": [[5.0, 1.0]], "predicted_iou": 0.8125,
         "stability_score": 0.5, "crop_box": [0, 0, 10, 6]},
        {"area": 1, "bbox": [9, 5, 1, 1], "point_coords": [[9, 5]], "predicted_iou": 1,
         "stability_score": 1.0, "crop_box": [0, 0, 10, 6]},
    ]
    assert amg.metadata_text(records) == (
        HEADER + "\n0,12,3,0,4,3,5.0,1.0,0.8125,0.5,0,0,10,6\n1,1,9,5,1,1,9.0,5.0,1.0,1.0,0,0,10,6")
    assert amg.metadata_text([]) == HEADER


def test_reads_back_as_the_sam_run(runs):
    assert read_records(runs / "amg") == read_records(runs / "sam")


def test_a_folder_written_by_amg_py_itself_reads_back(tmp_path):
    """No sidecar: amg.py's own output (its header, its PNGs) reads back with SAM's keys."""
    folder = tmp_path / "sa_1"
    folder.mkdir()
    masks = np.zeros((2, 6, 9), bool)
    masks[0, 1:4, 2:5] = True
    masks[1, 5, 8] = True
    rows = [HEADER]
    for i, (m, box) in enumerate(zip(masks, ([2, 1, 3, 3], [8, 5, 1, 1]))):
        Image.fromarray(m.astype(np.uint8) * 255).save(folder / f"{i}.png")
        rows.append(",".join(map(str, [i, int(m.sum()), *box, 3.5, 2.25, 0.91, 0.97, 0, 0, 9, 6])))
    (folder / "metadata.csv").write_text("\n".join(rows))
    info, records, provenance = amg.read_amg(folder)
    assert info == {"file_name": "sa_1", "height": 6, "width": 9} and provenance is None
    assert [r["segmentation"] for r in records] == encode_rle(masks)
    assert records[0]["bbox"] == [2.0, 1.0, 3.0, 3.0] and records[0]["predicted_iou"] == 0.91
    assert records[1]["point_coords"] == [[3.5, 2.25]] and records[1]["crop_box"] == [0, 0, 9, 6]
    assert set(read_records(tmp_path)) == {"sa_1"}  # found inside a folder tree, named by its path


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "metadata.csv").write_text("id,area\n0,3"), "amg.py's header"),
    (lambda f: (f / "0.png").unlink(), "its mask 0.png is missing"),
    (lambda f: (f / "0.png").write_bytes(b"not a png"), "not a readable PNG"),
    (lambda f: Image.new("L", (3, 3), 255).save(f / "0.png"), "area"),
    (lambda f: (f / "metadata.csv").write_text(HEADER + "\n0,4,x,1,2,2,1.0,1.0,1.0,1.0,0,0,5,4"), "line 2"),
    (lambda f: (f / ".uniap.json").write_text("{"), "is not JSON"),
])
def test_damaged_folders_are_errors_naming_the_file(tmp_path, damage, message, capsys):
    folder = tmp_path / "img"
    mask = np.zeros((1, 4, 5), bool)
    mask[0, 1:3, 1:3] = True
    rec = {"id": 0, "segmentation": encode_rle(mask)[0], "area": 4, "bbox": [1.0, 1.0, 2.0, 2.0],
           "predicted_iou": 1.0, "stability_score": 1.0, "point_coords": [[1.0, 1.0]], "crop_box": [0, 0, 5, 4]}
    amg.write_amg(folder, [rec])
    damage(folder)
    with pytest.raises(ValueError, match=message):
        amg.read_amg(folder)
    if message != "amg.py's header":  # a folder that is no amg.py folder is skipped by a search
        assert merge(tmp_path / "all.json", folder) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("uniap-merge: error:")


def test_a_failed_write_leaves_no_folder_and_keeps_the_old_one(tmp_path, monkeypatch):
    mask = np.zeros((3, 4, 5), bool)
    for i in range(3):
        mask[i, i, i:] = True
    records = [{"id": i, "segmentation": r, "area": int(mask[i].sum()), "bbox": [float(i), float(i), 5.0 - i, 1.0],
                "predicted_iou": 1.0, "stability_score": 1.0, "point_coords": [[float(i), float(i)]],
                "crop_box": [0, 0, 5, 4]} for i, r in enumerate(encode_rle(mask))]
    folder = tmp_path / "img"
    amg.write_amg(folder, records[:1])
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    saved = Image.Image.save
    calls = []

    def failing(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return saved(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing)
    with pytest.raises(OSError, match="No space"):
        amg.write_amg(folder, records)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # the old folder, whole
    assert sorted(os.listdir(tmp_path)) == ["img"]  # no temporary left
    calls.clear()
    with pytest.raises(OSError):
        amg.write_amg(tmp_path / "new", records)
    assert sorted(os.listdir(tmp_path)) == ["img"]
    with pytest.raises(ValueError, match="no 'point_coords'"):  # checked before anything is written
        amg.write_amg(tmp_path / "bad", [{k: v for k, v in records[0].items() if k != "point_coords"}])
    assert not (tmp_path / "bad").exists()


def test_reruns_skip_refuse_or_replace_as_every_format(tmp_path, capsys):
    save_image(tmp_path / "in" / "x.png", picture(2))
    out = tmp_path / "out"
    assert cli(tmp_path / "in", "--out", out, "--format", "amg", "--quiet") == 0
    assert cli(tmp_path / "in", "--out", out, "--format", "amg") == 0
    assert "1 skipped" in capsys.readouterr().err
    assert cli(tmp_path / "in", "--out", out, "--format", "amg", "--levels", "0.7,0.3", "--quiet") == 2
    assert "made with other settings" in capsys.readouterr().err
    (out / "x" / "notes.txt").write_text("mine")
    assert cli(tmp_path / "in", "--out", out, "--format", "amg", "--levels", "0.7,0.3", "--overwrite", "--quiet") == 2
    assert "which uniap did not write" in capsys.readouterr().err
    (out / "x" / "notes.txt").unlink()
    assert cli(tmp_path / "in", "--out", out, "--format", "amg", "--levels", "0.7,0.3", "--overwrite", "--quiet") == 0
    assert json.loads((out / "x" / ".uniap.json").read_text())["uniap"]["thresholds"] == [0.7, 0.3]
    assert oct((out / "x").stat().st_mode & 0o777) == "0o755"
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x").write_text("a file where x's folder goes")
    assert cli(tmp_path / "in", "--out", tmp_path / "flat", "--format", "amg", "--quiet") == 2
    assert "exists and is a file" in capsys.readouterr().err


def test_output_path_rule_and_lock_apply(tmp_path, capsys):
    from uniap.pipeline.locks import lock_outputs

    save_image(tmp_path / "in" / "a.jpg", picture(0))
    save_image(tmp_path / "in" / "a" / "p1.png", picture(1))  # out/a would hold out/a/p1
    assert cli(tmp_path / "in", "--out", tmp_path / "out", "--format", "amg", "--quiet") == 2
    assert "a.jpg" in capsys.readouterr().err and not (tmp_path / "out").exists()
    out = tmp_path / "locked"
    out.mkdir()
    with lock_outputs([(str(out), True)], None):
        assert cli(tmp_path / "in" / "a", "--out", out, "--format", "amg", "--quiet") == 2
        assert "another uniap run is writing to" in capsys.readouterr().err


def test_merge_writes_and_reads_amg(runs, tmp_path, capsys):
    out = tmp_path / "merged"
    assert merge(out, runs / "sam", "--format", "amg") == 0
    assert read_records(out) == read_records(runs / "sam")
    assert (out / "sub" / "two" / "metadata.csv").read_text() == (runs / "amg" / "sub" / "two" / "metadata.csv").read_text()
    assert merge(out, runs / "sam", "--format", "amg") == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert merge(tmp_path / "back.json", runs / "amg") == 0  # amg folders are an input format too
    assert read_records(tmp_path / "back.json") == read_records(runs / "sam")
