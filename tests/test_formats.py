"""Collected formats (COCO with given image ids, Parquet parts), reading records back, uniap-merge."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uniap import io
from uniap.cli import main as cli
from uniap.merge import main as merge
from uniap.formats import parquet as parquet_format
from uniap.pipeline import sinks

pytest.importorskip("pyarrow")

from cli_helpers import exit_status, save_image as _save  # noqa: E402


run = exit_status


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """Real images in nested folders, two of them called img.jpg."""
    import skimage.data

    root = tmp_path_factory.mktemp("formats") / "images"
    _save(root / "a" / "img.jpg", skimage.data.coffee()[::4, ::4])
    _save(root / "b" / "img.jpg", skimage.data.chelsea()[::4, ::4])
    _save(root / "top.png", skimage.data.astronaut()[::8, ::8])
    return root


NAMES = ["a/img.jpg", "b/img.jpg", "top.png"]


@pytest.fixture(scope="module")
def sam_run(tree) -> Path:
    out = tree.parent / "sam"
    assert cli([str(tree), "--out", str(out), "--semantic", "--quiet"]) == 0
    return out


def ground_truth(tree: Path, path: Path, ids=(11, 7, 30)) -> Path:
    """A COCO ground truth of the tree: two synthetic shapes per image (a box and a disc)."""
    from pycocotools import mask as mask_utils

    images, annotations = [], []
    for image_id, name in zip(ids, NAMES):
        height, width = np.asarray(Image.open(tree / name)).shape[:2]
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        yy, xx = np.mgrid[:height, :width]
        shapes = [(yy < height // 2) & (xx < width // 2),
                  (yy - height * 0.6) ** 2 + (xx - width * 0.6) ** 2 < (min(height, width) / 4) ** 2]
        for shape in shapes:
            rle = mask_utils.encode(np.asfortranarray(shape.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "segmentation": rle, "area": int(shape.sum()),
                                "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0})
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "object"}]}))
    return path


# -- coco_image_ids ---------------------------------------------------------------------------

def test_coco_image_ids_maps_file_names_to_ids(tree, tmp_path):
    gt = ground_truth(tree, tmp_path / "gt.json")
    assert io.coco_image_ids(gt) == {"a/img.jpg": 11, "b/img.jpg": 7, "top.png": 30}


@pytest.mark.parametrize("document, message", [
    ({"annotations": []}, "not a COCO file"),
    ([1, 2], "not a COCO file"),
    ({"images": [{"id": 1, "file_name": "x.jpg"}, {"id": 2, "file_name": "x.jpg"}]}, "listed twice"),
    ({"images": [{"id": 1, "file_name": "x.jpg"}, {"id": 1, "file_name": "y.jpg"}]}, "image id 1"),
    ({"images": [{"file_name": "x.jpg"}]}, "integer"),
])
def test_coco_image_ids_rejects_what_is_not_coco(tmp_path, document, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match=message):
        io.coco_image_ids(path)


def test_coco_image_ids_names_a_missing_or_broken_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.json"):
        io.coco_image_ids(tmp_path / "nothere.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json is not JSON"):
        io.coco_image_ids(tmp_path / "broken.json")


def test_cli_image_ids_errors_exit_2(tree, tmp_path, capsys):
    out = tmp_path / "coco.json"
    assert run(cli, [str(tree), "--out", str(out), "--format", "coco", "--image-ids",
                     str(tmp_path / "gt.json"), "--quiet"]) == 2
    assert "gt.json" in capsys.readouterr().err and not out.exists()
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"images": [{"id": 1, "file_name": "a/img.jpg"}]}))
    assert run(cli, [str(tree), "--out", str(out), "--format", "coco", "--image-ids", str(partial),
                     "--quiet"]) == 2
    assert "no image id" in capsys.readouterr().err and not out.exists()


# -- COCO output ------------------------------------------------------------------------------

def test_coco_run_with_ground_truth_ids_evaluates_in_cocoeval(tree, tmp_path, capsys):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_path = ground_truth(tree, tmp_path / "gt.json")
    out = tmp_path / "coco.json"
    assert cli([str(tree), "--out", str(out), "--format", "coco", "--image-ids", str(gt_path),
                "--semantic", "--quiet"]) == 0
    dataset = json.loads(out.read_text())
    assert [(im["id"], im["file_name"]) for im in dataset["images"]] == [(7, "b/img.jpg"),
                                                                         (11, "a/img.jpg"), (30, "top.png")]
    assert dataset["categories"] == [{"id": 1, "name": "fg", "supercategory": "fg"},
                                     {"id": 2, "name": "semantic", "supercategory": "fg"}]
    anns = dataset["annotations"]
    assert [a["id"] for a in anns] == list(range(1, len(anns) + 1))
    assert [(a["image_id"], a["uniap_id"]) for a in anns] == sorted((a["image_id"], a["uniap_id"]) for a in anns)
    assert {a["category_id"] for a in anns if a["kind"] == "semantic"} == {2}
    assert {a["category_id"] for a in anns if a["kind"] == "instance"} == {1}

    gt = COCO(str(gt_path))
    results = gt.loadRes(anns)
    assert set(results.getImgIds()) == set(gt.getImgIds()) == {7, 11, 30}
    evaluation = COCOeval(gt, results, "segm")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats.shape == (12,) and np.isfinite(evaluation.stats).all()
    # the file itself loads as a data set, and its annotations as its own results
    own = COCO(str(out))
    assert own.getCatIds() == [1, 2] and own.loadRes(anns).getImgIds()
    capsys.readouterr()


def test_coco_dataset_orders_by_image_id_then_record_id():
    rec = {"id": 1, "kind": "instance", "score": 0.5}
    items = [({"image_id": 9, "file_name": "z.jpg"}, [dict(rec, id=2), dict(rec, id=0)]),
             ({"image_id": 3, "file_name": "y.jpg"}, [dict(rec, id=0, kind="semantic")])]
    dataset = io.coco_dataset(items)
    assert [im["id"] for im in dataset["images"]] == [3, 9]
    assert [(a["id"], a["image_id"], a["uniap_id"], a["category_id"]) for a in dataset["annotations"]] == [
        (1, 3, 0, 2), (2, 9, 0, 1), (3, 9, 2, 1)]
    assert dataset["categories"] == [io.CATEGORY, io.SEMANTIC_CATEGORY]
    assert io.coco_dataset([items[0]])["categories"] == [io.CATEGORY]  # no semantic record
    with pytest.raises(ValueError, match="image id 9"):
        io.coco_dataset([items[0], ({"image_id": 9, "file_name": "w.jpg"}, [])])


# -- Parquet ----------------------------------------------------------------------------------

def test_parquet_run_reads_back_as_the_json_run(tree, sam_run, tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "pq"
    assert cli([str(tree), "--out", str(out), "--format", "parquet", "--semantic", "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet"]
    table = pq.read_table(out / "part-00000.parquet")
    assert table.column_names[:7] == ["file_name", "image_id", "height", "width", "id",
                                      "segmentation_size", "segmentation_counts"]
    assert {"bbox", "levels", "point_coords", "kind", "parent", "score"} <= set(table.column_names)
    assert set(table.column("file_name").to_pylist()) == set(NAMES)
    assert str(table.schema.field("bbox").type) == "list<element: double>"

    from_json = io.read_records(sam_run)
    assert list(from_json) == sorted(from_json, key=lambda n: from_json[n][0]["image_id"])
    assert set(from_json) == set(NAMES) and all(recs for _, recs in from_json.values())
    assert io.read_records(out) == from_json
    assert io.read_records(out / "part-00000.parquet") == from_json
    name = NAMES[1]
    assert io.read_records(sam_run / "b" / "img.json") == {name: from_json[name]}
    assert from_json[name][1] == json.loads((sam_run / "b" / "img.json").read_text())["annotations"]


def test_parquet_parts_load_in_pandas(tree, tmp_path):
    pd = pytest.importorskip("pandas")
    out = tmp_path / "pq"
    assert cli([str(tree), "--out", str(out), "--format", "parquet", "--quiet"]) == 0
    frame = pd.read_parquet(out)
    assert set(frame["file_name"]) == set(NAMES) and len(frame) == sum(
        len(recs) for _, recs in io.read_records(out).values())


def _items(n: int) -> list[tuple[dict, list[dict], dict]]:
    items = []
    for i in range(n):
        info = {"image_id": 100 - 7 * i, "file_name": f"im{i}.jpg", "height": 4, "width": 5}
        records = [{"id": j, "segmentation": {"size": [4, 5], "counts": f"{j}{i}"}, "area": j + 1,
                    "bbox": [0.0, 0.0, 1.0, 2.0], "point_coords": [[0.5, 1.5]], "levels": [0, j],
                    "kind": "instance", "score": 0.25 * j} for j in range(i % 3)]  # im0: no record
        items.append((info, records, {"signature": f"s{i}"}))
    return items


def test_parquet_parts_are_the_same_whatever_order_images_finish(tmp_path):
    items = _items(7)
    order = [info["image_id"] for info, _, _ in items]  # the plan's order
    digests = []
    for attempt in range(3):
        out = tmp_path / f"run{attempt}"
        out.mkdir()
        writer = sinks.ParquetWriter(str(out), image_ids=order, images_per_part=3)
        shuffled = items[:]
        random.Random(attempt).shuffle(shuffled)
        for info, records, uniap in shuffled:
            writer.add(info, records, uniap)
        writer.close()
        names = sorted(p.name for p in out.iterdir())
        assert names == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
        digests.append([(out / n).read_bytes() for n in names])
    assert digests[0] == digests[1] == digests[2]
    back = io.read_records(tmp_path / "run0")
    assert back == {info["file_name"]: (info, records) for info, records, _ in
                    sorted(items, key=lambda item: item[0]["image_id"])}
    assert back["im0.jpg"][1] == []  # an image without records survives the round trip
    # without the plan's order the writer keeps every image and slices them by id at the end
    unordered = []
    for attempt in range(2):
        out = tmp_path / f"unordered{attempt}"
        writer = sinks.ParquetWriter(str(out), images_per_part=3)
        for info, records, uniap in random.Random(attempt).sample(items, len(items)):
            writer.add(info, records, uniap)
        out.mkdir()
        writer.close()
        unordered.append([p.read_bytes() for p in sorted(out.iterdir())])
    assert unordered[0] == unordered[1] and len(unordered[0]) == 3
    assert io.read_records(tmp_path / "unordered0") == back


def test_parquet_parts_are_written_once_complete_and_failures_release_them(tmp_path):
    items = _items(5)
    writer = sinks.ParquetWriter(str(tmp_path), image_ids=[i["image_id"] for i, _, _ in items],
                                 images_per_part=2)
    writer.add(*items[1])
    assert not list(tmp_path.iterdir())
    writer.add(*items[0])
    assert [p.name for p in tmp_path.iterdir()] == ["part-00000.parquet"]
    writer.add(*items[2])
    writer.discard(items[3][0]["image_id"])  # failed: part 1 is complete without it
    assert (tmp_path / "part-00001.parquet").exists() and writer._pending == {}
    writer.close()  # part 2 (image 4 never came) is written, empty
    back = io.read_records(tmp_path)
    assert set(back) == {"im0.jpg", "im1.jpg", "im2.jpg"}
    with pytest.raises(ValueError, match="not one of"):
        writer.add({"image_id": 12345, "file_name": "x"}, [], {})


def test_parquet_keeps_unknown_keys_as_json(tmp_path):
    info = {"image_id": 1, "file_name": "x.jpg", "height": 2, "width": 2}
    records = [{"id": 0, "segmentation": {"size": [2, 2], "counts": "04"}, "extra": {"a": [1, None]}},
               {"id": 1, "segmentation": {"size": [2, 2], "counts": "13"}}]
    io.write_parquet(tmp_path / "p.parquet", [(info, records)], {"version": "x"})
    assert io.read_records(tmp_path / "p.parquet") == {"x.jpg": (info, records)}
    assert io.read_record_sets(tmp_path / "p.parquet")[0][2] == {"version": "x"}
    with pytest.raises(ValueError, match="COCO RLE"):
        io.parquet_table([(info, [{"id": 0, "segmentation": [[0, 0, 1, 1]]}])])


def test_parquet_shards_name_their_parts_and_add_up(tree, tmp_path, monkeypatch):
    monkeypatch.setattr(parquet_format, "IMAGES_PER_PART", 1)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert cli([str(tree), "--out", str(whole), "--format", "parquet", "--quiet"]) == 0
    assert sorted(p.name for p in whole.iterdir()) == [f"part-0000{k}.parquet" for k in range(3)]
    for i in range(2):
        assert cli([str(tree), "--out", str(parts), "--format", "parquet", "--shard", f"{i}/2",
                    "--quiet"]) == 0
    assert sorted(p.name for p in parts.iterdir()) == [
        "part-00000-of-00002-00000.parquet", "part-00000-of-00002-00001.parquet",
        "part-00001-of-00002-00000.parquet"]
    assert io.read_records(parts) == io.read_records(whole)


def test_parquet_refuses_existing_parts_without_overwrite(tree, tmp_path, monkeypatch, capsys):
    out = tmp_path / "pq"
    monkeypatch.setattr(parquet_format, "IMAGES_PER_PART", 1)
    assert cli([str(tree), "--out", str(out), "--format", "parquet", "--quiet"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert run(cli, [str(tree), "--out", str(out), "--format", "parquet", "--quiet"]) == 2
    assert "part-00000.parquet exists" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # a shard would mix with the unsharded parts: refused too
    assert run(cli, [str(tree), "--out", str(out), "--format", "parquet", "--shard", "0/2", "--quiet"]) == 2
    # --overwrite rewrites them; a run with fewer parts removes the stale ones
    monkeypatch.setattr(parquet_format, "IMAGES_PER_PART", 2)
    assert cli([str(tree), "--out", str(out), "--format", "parquet", "--overwrite", "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert len(io.read_records(out)) == 3
    capsys.readouterr()


def test_parquet_without_pyarrow_says_how_to_install(tree, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r"pip install 'uniap\[parquet\]'"):
        sinks.ParquetWriter(str(tmp_path))
    assert run(cli, [str(tree), "--out", str(tmp_path / "pq"), "--format", "parquet", "--quiet"]) == 2
    assert "uniap[parquet]" in capsys.readouterr().err


# -- read_records -----------------------------------------------------------------------------

def test_read_records_of_coco_equals_the_json_run(tree, sam_run, tmp_path):
    out = tmp_path / "coco.json"
    assert cli([str(tree), "--out", str(out), "--format", "coco", "--semantic", "--quiet"]) == 0
    assert io.read_records(out) == io.read_records(sam_run)
    provenance = io.read_record_sets(out)[0][2]
    assert provenance["signature"] == json.loads((sam_run / "top.json").read_text())["uniap"]["signature"]


def test_read_records_errors(tmp_path, sam_run):
    with pytest.raises(FileNotFoundError, match="missing"):
        io.read_records(tmp_path / "missing")
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="neither a SAM-style file"):
        io.read_records(tmp_path / "other.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .json or .parquet"):
        io.read_records(tmp_path / "empty")
    (tmp_path / "x.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="not a Parquet file"):
        io.read_records(tmp_path / "x.parquet")
    twice = tmp_path / "twice"
    twice.mkdir()
    for name in ("one.json", "two.json"):
        (twice / name).write_text((sam_run / "top.json").read_text())
    with pytest.raises(ValueError, match="'top.png' is listed twice"):
        io.read_records(twice)


def test_foreign_coco_keeps_its_annotations(tree, tmp_path):
    gt = ground_truth(tree, tmp_path / "gt.json")
    back = io.read_records(gt)
    assert list(back) == ["b/img.jpg", "a/img.jpg", "top.png"]  # by image id
    info, records = back["a/img.jpg"]
    assert info["image_id"] == 11 and len(records) == 2
    assert records[0]["category_id"] == 1 and "image_id" not in records[0]


# -- uniap-merge ------------------------------------------------------------------------------

def test_merge_of_coco_shards_is_the_unsharded_file(tree, tmp_path):
    whole = tmp_path / "whole.json"
    assert cli([str(tree), "--out", str(whole), "--format", "coco", "--semantic", "--quiet"]) == 0
    shards = [tmp_path / f"coco-{i}-of-2.json" for i in range(2)]
    for i, shard in enumerate(shards):
        assert cli([str(tree), "--out", str(shard), "--format", "coco", "--semantic",
                    "--shard", f"{i}/2", "--quiet"]) == 0
    merged = tmp_path / "merged.json"
    assert merge([str(merged), str(shards[1]), str(shards[0])]) == 0
    assert merged.read_bytes() == whole.read_bytes()


def test_merge_with_ground_truth_ids_keeps_them(tree, tmp_path):
    gt = ground_truth(tree, tmp_path / "gt.json")
    shards = [tmp_path / f"coco-{i}.json" for i in range(3)]
    for i, shard in enumerate(shards):
        assert cli([str(tree), "--out", str(shard), "--format", "coco", "--image-ids", str(gt),
                    "--shard", f"{i}/3", "--quiet"]) == 0
    merged = tmp_path / "merged.json"
    assert merge([str(merged), *map(str, shards)]) == 0
    dataset = json.loads(merged.read_text())
    assert [im["id"] for im in dataset["images"]] == [7, 11, 30]
    assert [a["id"] for a in dataset["annotations"]] == list(range(1, len(dataset["annotations"]) + 1))


def test_merge_converts_between_every_format(tree, sam_run, tmp_path):
    expected = io.read_records(sam_run)
    coco = tmp_path / "all.json"
    assert merge([str(coco), str(sam_run)]) == 0
    pq = tmp_path / "pq"
    assert merge([str(pq), str(coco), "--format", "parquet", "--images-per-part", "2"]) == 0
    assert sorted(p.name for p in pq.iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    sam = tmp_path / "sam"
    assert merge([str(sam), str(pq), "--format", "sam"]) == 0
    assert sorted(str(p.relative_to(sam)) for p in sam.rglob("*.json")) == ["a/img.json", "b/img.json", "top.json"]
    for path in (coco, pq, sam):
        assert io.read_records(path) == expected
    again = tmp_path / "again.json"
    assert merge([str(again), str(sam)]) == 0
    assert json.loads(again.read_text())["annotations"] == json.loads(coco.read_text())["annotations"]


def test_merge_usage_errors_exit_2_without_traceback(tree, sam_run, tmp_path, capsys):
    whole = tmp_path / "whole.json"
    assert merge([str(whole), str(sam_run)]) == 0
    before = whole.read_bytes()

    def refused(argv: list[str], message: str) -> None:
        assert run(merge, argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err

    refused([str(tmp_path / "m.json"), str(whole), str(sam_run)], "is in both")
    refused([str(tmp_path / "m.json"), str(whole), str(whole)], "named twice")
    refused([str(whole), str(sam_run)], "exists; pass --overwrite")
    refused([str(whole), str(whole), "--overwrite"], "would be written over the input")
    refused([str(sam_run / "x"), str(sam_run), "--format", "sam"], "would be written over the input")
    refused([str(tmp_path / "m.json"), str(tmp_path / "nothing")], "nothing")
    refused([str(tmp_path), str(whole)], "is a folder")
    refused([str(tmp_path / "m.json"), str(whole), "--images-per-part", "2"], "--format parquet only")
    refused([str(tmp_path / "m.json")], "required")
    sam = tmp_path / "sam"
    assert merge([str(sam), str(whole), "--format", "sam"]) == 0
    refused([str(sam), str(whole), "--format", "sam"], "exists; pass --overwrite")
    assert merge([str(sam), str(whole), "--format", "sam", "--overwrite"]) == 0
    assert whole.read_bytes() == before
    assert not [p for p in tmp_path.rglob(".*") if p.name.endswith(".tmp")]
