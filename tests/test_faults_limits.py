"""Fault suite, limits (issue #23): hostile inputs that control a resource -- pixels, records,
Parquet rows, levels, training steps -- are refused before anything is allocated, in one line.

Every hostile input is built here, in ``tmp_path``, small on disk: a 12000 x 12000 PNG of zeros
(140 KB), a 30-million-row Parquet part (about 1 MB), a prediction spanning level 5000.  Each
test fails on the code before #23 (see the numbers in the issue: 9 GB, 4 GB, 3 GB, tracebacks).
"""

from __future__ import annotations

import json
import re
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uniap.cli import main as cli_main
from uniap.features import image as image_module
from uniap.features import load_image

from cli_helpers import exit_status


def zero_png(path: Path, width: int, height: int) -> Path:
    """A valid 8-bit grey PNG of zeros, streamed row by row: a 12000 x 12000 one is 140 KB and
    costs no more memory to build than one row."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(width + 1)  # filter byte 0, then the pixels
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if not line.startswith(("usage:", " "))]
    assert "Traceback" not in text and len(lines) >= 1, text
    return "\n".join(lines)


# -- #2: pixels, checked on the header before decoding ------------------------------------------

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's decompression-bomb limit: 9459 x 9459


def test_default_pixel_limit_is_documented():
    assert image_module.DEFAULT_MAX_PIXELS == DEFAULT_MAX_PIXELS
    assert DEFAULT_MAX_PIXELS > 8000 * 8000  # real 8000 x 8000 work fits
    docs = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    assert "--max-pixels" in docs and "89478485" in docs


def test_cli_refuses_a_12000x12000_png_before_decoding(tmp_path, capsys):
    bomb = zero_png(tmp_path / "bomb12k.png", 12000, 12000)
    assert bomb.stat().st_size < 500_000
    start = time.perf_counter()
    code = exit_status(cli_main, [str(bomb), "--out", str(tmp_path / "b.json"), "--quiet"])
    assert time.perf_counter() - start < 20  # was 9 GB and killed after 211 s
    err = capsys.readouterr().err
    assert code == 1 and not (tmp_path / "b.json").exists()
    assert f"bomb12k.png': 12000 x 12000 = 144000000 pixels, more than the limit of {DEFAULT_MAX_PIXELS}" in err
    assert "--max-pixels" in err and "Traceback" not in err


def test_max_pixels_option(tmp_path, capsys):
    small = zero_png(tmp_path / "small.png", 40, 30)
    assert exit_status(cli_main, [str(small), "--out", str(tmp_path / "s.json"), "--quiet", "--max-pixels", "1199"]) == 1
    assert "30 x 40 = 1200 pixels, more than the limit of 1199" in capsys.readouterr().err
    assert exit_status(cli_main, [str(small), "--out", str(tmp_path / "s.json"), "--quiet", "--max-pixels", "1200"]) == 0
    assert exit_status(cli_main, [str(small), "--out", str(tmp_path / "t.json"), "--quiet", "--max-pixels", "0"]) == 0
    assert exit_status(cli_main, [str(small), "--out", str(tmp_path / "u.json"), "--max-pixels", "-1"]) == 2
    assert "--max-pixels: expected an integer >= 0" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "JPEG", "BMP"])
def test_library_cap_reads_the_header_of_every_format(tmp_path, fmt):
    path = tmp_path / f"im.{fmt.lower()}"
    Image.new("RGB", (50, 20)).save(path, format=fmt)
    assert load_image(path, max_pixels=1000).shape == (20, 50, 3)
    with pytest.raises(ValueError, match=r"20 x 50 = 1000 pixels, more than the limit of 999"):
        load_image(path, max_pixels=999)
    with pytest.raises(ValueError, match=r"'in a tar': 20 x 50 = 1000 pixels"):
        image_module.load_image_bytes(path.read_bytes(), "in a tar", max_pixels=999)


def test_library_cap_default_and_arrays(tmp_path):
    bomb = zero_png(tmp_path / "bomb.png", 10000, 9000)  # over the default, under Pillow's error limit
    with pytest.raises(ValueError, match="9000 x 10000 = 90000000 pixels"):
        load_image(bomb)
    # an array is already in memory: checked only against a limit given explicitly
    assert load_image(np.zeros((20, 30), np.uint8)).shape == (20, 30, 3)
    with pytest.raises(ValueError, match="'image array': 20 x 30 = 600 pixels"):
        load_image(np.zeros((20, 30), np.uint8), max_pixels=599)
    with pytest.raises(ValueError, match="max_pixels must be an integer >= 0"):
        load_image(bomb, max_pixels=-5)
    assert Image.MAX_IMAGE_PIXELS is not None  # Pillow's own limit is restored


# -- #17: a float image of NaN/inf --------------------------------------------------------------


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_float_tiff_of_nan_is_a_per_image_error(tmp_path, capsys, value):
    path = tmp_path / "nanfloat.tiff"
    Image.fromarray(np.full((24, 32), value, np.float32), mode="F").save(path)
    with pytest.raises(ValueError, match="nanfloat.tiff': the float image holds NaN or inf"):
        load_image(path)
    code = exit_status(cli_main, [str(path), "--out", str(tmp_path / "n.json"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "the float image holds NaN or inf values" in err
    assert "RuntimeWarning" not in err and not (tmp_path / "n.json").exists()


# -- #8: Parquet rows, from the footer; streamed in batches -------------------------------------


def rows_parquet(path: Path, rows: int, record: bool) -> Path:
    """A uniap Parquet part of ``rows`` rows of one image, each one record (``record``: an id
    and RLE counts) or the null row of an image without records; written a million rows at a
    time (about 1 MB for 30 million rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = min(rows, 1_000_000)
    zeros = pa.array(np.zeros(n, np.int32))
    columns = {
        "file_name": pa.array(["a.jpg"]).take(zeros), "image_id": pa.array(np.ones(n, np.int64)),
        "height": pa.array(np.full(n, 4, np.int64)), "width": pa.array(np.full(n, 4, np.int64)),
        "id": pa.array(np.ones(n, np.int64)) if record else pa.nulls(n, pa.int64()),
        "segmentation_counts": pa.array(["04"]).take(zeros) if record else pa.nulls(n, pa.string()),
    }
    chunk = pa.table(columns)
    with pq.ParquetWriter(path, chunk.schema) as writer:
        for start in range(0, rows, n):
            writer.write_table(chunk.slice(0, min(n, rows - start)))
    return path


@pytest.fixture(scope="module")
def parquet_30m(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pq")
    return rows_parquet(folder / "rows30m.parquet", 30_000_000, record=True)


def test_merge_refuses_30m_rows_on_the_footer(parquet_30m, tmp_path, capsys):
    from uniap.merge import main as merge_main

    assert parquet_30m.stat().st_size < 3_000_000
    start = time.perf_counter()
    code = exit_status(merge_main, [str(tmp_path / "out"), str(parquet_30m), "--format", "parquet"])
    assert time.perf_counter() - start < 10  # was 4 GB of Python objects
    assert code == 2 and not (tmp_path / "out").exists()
    err = one_line(capsys.readouterr().err)
    assert "rows30m.parquet holds 30000000 rows, more than the limit of 5000000 records" in err


def test_read_records_limit_counts_rows_before_reading(parquet_30m):
    from uniap import io

    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="holds 30000000 rows, more than the limit of 1000 records"):
            io.read_records(parquet_30m, max_records=1000)
        assert tracemalloc.get_traced_memory()[1] < 5_000_000
    finally:
        tracemalloc.stop()


def test_parquet_is_streamed_in_batches(tmp_path):
    """3 million rows (the null rows of one image without records, under the default limit):
    memory is one batch, not the table as Python lists (to_pydict: 3M x 6 objects, 150 MB)."""
    from uniap import io

    path = rows_parquet(tmp_path / "rows3m.parquet", 3_000_000, record=False)
    tracemalloc.start()
    try:
        read = io.read_records(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert list(read) == ["a.jpg"] and read["a.jpg"][1] == []
    assert peak < 30_000_000, peak


def test_parquet_records_read_back_across_batches(tmp_path, monkeypatch):
    from uniap import io
    from uniap.formats import parquet

    monkeypatch.setattr(parquet, "PARQUET_BATCH_ROWS", 3)  # images across batches
    records = [{"id": i, "segmentation": {"size": [2, 2], "counts": "04"}, "levels": [0, 1], "extra": {"k": i}}
               for i in range(1, 8)]
    items = [({"file_name": "a.jpg", "image_id": 5, "height": 2, "width": 2}, records[:4]),
             ({"file_name": "b.jpg", "image_id": 6, "height": 2, "width": 2}, []),
             ({"file_name": "c.jpg", "image_id": 7, "height": 2, "width": 2}, records[4:])]
    io.write_parquet(tmp_path / "p.parquet", items)
    read = io.read_records(tmp_path / "p.parquet")
    assert [(info, recs) for info, recs in read.values()] == items


# -- #11, #12: malformed COCO for uniap-merge; ids are exact integers ---------------------------


def coco(images, annotations=None) -> dict:
    return {"images": images, "annotations": [] if annotations is None else annotations,
            "categories": [{"id": 1, "name": "fg"}]}


IMAGE = {"file_name": "a.jpg", "height": 2, "width": 2}
RLE = {"size": [2, 2], "counts": "04"}


@pytest.mark.parametrize("document, message", [
    (coco([{**IMAGE, "id": [1]}]), r"images\[0\].\"id\" must be a 64-bit integer .* got \[1\]"),
    (coco([{**IMAGE, "id": "1"}, {**IMAGE, "file_name": "b.jpg", "id": 2}]), r"got '1'"),
    ({"images": [{**IMAGE, "id": 1}], "annotations": "x"}, r"\"annotations\" must be a list, got str"),
    (coco([{**IMAGE, "id": 1}], ["x"]), r"annotations\[0\] must be an object"),
    (coco([{**IMAGE, "id": 1}], [{"id": "q", "image_id": 1, "segmentation": RLE}]), r"annotations\[0\] id must be"),
    (coco([{**IMAGE, "id": 1}], [{"id": 1, "image_id": [1], "segmentation": RLE}]), r"\"image_id\" must be"),
    (coco([{**IMAGE, "id": 2**70}]), r"must be a 64-bit integer .* got 1180591620717411303424"),
    (coco([{**IMAGE, "id": 1.5}]), r"must be a 64-bit integer .* got 1.5"),
    ({"images": {"a": 1}}, r"\"images\" must be a list"),
])
@pytest.mark.parametrize("fmt", ["parquet", "coco", "sam"])
def test_merge_malformed_coco_is_a_usage_error(tmp_path, capsys, document, message, fmt):
    from uniap.merge import main as merge_main

    source = tmp_path / "f.json"
    source.write_text(json.dumps(document))
    out = tmp_path / ("out.json" if fmt == "coco" else "out")
    assert exit_status(merge_main, [str(out), str(source), "--format", fmt]) == 2
    err = one_line(capsys.readouterr().err)
    assert "f.json" in err and re.search(message, err), err
    assert not out.exists()  # no empty folder, no partial file


def test_float_image_id_is_refused_not_truncated(tmp_path, capsys):
    """COCO ids are integers: 1.5 is an error (never 1); 3.0 is exactly 3."""
    from uniap import io
    from uniap.merge import main as merge_main

    source = tmp_path / "f.json"
    source.write_text(json.dumps(coco([{**IMAGE, "id": 1.5}])))
    assert exit_status(merge_main, [str(tmp_path / "pq"), str(source), "--format", "parquet"]) == 2
    assert "got 1.5" in capsys.readouterr().err and not (tmp_path / "pq").exists()
    source.write_text(json.dumps(coco([{**IMAGE, "id": 3.0}], [{"id": 1, "image_id": 3.0, "segmentation": RLE}])))
    assert exit_status(merge_main, [str(tmp_path / "pq"), str(source), "--format", "parquet"]) == 0
    (info, records), = io.read_records(tmp_path / "pq").values()
    assert info["image_id"] == 3 and type(info["image_id"]) is int and records[0]["id"] == 1
    with pytest.raises(ValueError, match="image_id' holds 1.5, which does not fit the int64 column"):
        io.parquet_table([({**IMAGE, "image_id": 1.5}, [])])
    with pytest.raises(ValueError, match="'levels' holds \\[0, 0.5\\]"):
        io.parquet_table([({**IMAGE, "image_id": 1}, [{"id": 1, "levels": [0, 0.5]}])])
    with pytest.raises(ValueError, match="image id must be a 64-bit integer"):
        io.coco_dataset([({**IMAGE, "image_id": 1.5}, [])])


def test_image_ids_file_refuses_ids_beyond_64_bits(tmp_path, capsys):
    ids = tmp_path / "gt.json"
    ids.write_text(json.dumps(coco([{**IMAGE, "file_name": "small.png", "id": 2**70}])))
    small = zero_png(tmp_path / "small.png", 40, 30)
    out = tmp_path / "out"
    code = exit_status(cli_main, [str(small), "--out", str(out), "--format", "parquet", "--image-ids", str(ids)])
    assert code == 2 and "must be a 64-bit integer" in one_line(capsys.readouterr().err)
    assert not out.exists()


def test_record_id_beyond_64_bits_leaves_no_parquet_folder(tmp_path, capsys):
    from uniap.merge import main as merge_main

    source = tmp_path / "s.json"  # a SAM file: record keys the reader does not check
    source.write_text(json.dumps({"image": {**IMAGE, "image_id": 1},
                                  "annotations": [{"id": 1, "area": 2**70, "segmentation": RLE}]}))
    assert exit_status(merge_main, [str(tmp_path / "pq"), str(source), "--format", "parquet"]) == 2
    assert "record key 'area' holds 1180591620717411303424" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "pq").exists()


def test_json_errors_name_the_file(tmp_path, capsys):
    from uniap.merge import main as merge_main

    bad = tmp_path / "latin1.json"
    bad.write_bytes(b'{"images": ["\xe9"]}')
    assert exit_status(merge_main, [str(tmp_path / "o.json"), str(bad)]) == 2
    assert "latin1.json is not JSON" in one_line(capsys.readouterr().err)


# -- #9: uniap-eval --predictions and the number of levels --------------------------------------


def eval_data(root: Path, height: int = 320, width: int = 480) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(np.zeros((height, width), np.uint8)).save(root / "labels" / "a.png")
    return root


def run_predictions(tmp_path: Path, document) -> tuple[int, dict]:
    from uniap.evaluation.cli import main as eval_main

    data = eval_data(tmp_path / "data")
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "a.json").write_text(document if isinstance(document, str) else json.dumps(document))
    out = tmp_path / "r.json"
    code = eval_main(["--dataset", "labelmaps", "--data", str(data), "--num-classes", "1", "--predictions",
                      str(pred), "--out", str(out), "--workers", "1", "--quiet"])
    return code, json.loads(out.read_text()) if out.exists() else {}


def full_mask_rle() -> dict:
    from uniap.records import encode_rle

    return encode_rle(np.ones((1, 320, 480), bool))[0]


def test_eval_prediction_at_level_5000_fails_before_allocating(tmp_path, capsys):
    record = {"id": 1, "segmentation": full_mask_rle(), "area": 320 * 480, "levels": [5000]}
    start = time.perf_counter()
    code, result = run_predictions(tmp_path, {"annotations": [record]})
    assert time.perf_counter() - start < 20  # was 3 GB and 34 s
    assert code == 1 and result == {}  # the one image failed: nothing to summarise
    err = capsys.readouterr().err
    assert "a.json: record 0 (id 1): level 5000 is not an index in [0, 64)" in err


def test_eval_thresholds_bound_the_levels(tmp_path, capsys):
    record = {"id": 1, "segmentation": full_mask_rle(), "area": 320 * 480, "levels": [3]}
    code, _ = run_predictions(tmp_path, {"uniap": {"thresholds": [0.5, 0.4]}, "annotations": [record]})
    assert code == 1 and "level 3 is not an index in [0, 2): beyond the file's 2 levels" in capsys.readouterr().err


def test_eval_too_many_thresholds(tmp_path, capsys):
    thresholds = list(np.linspace(0.9, -0.9, 5000))
    code, _ = run_predictions(tmp_path, {"uniap": {"thresholds": thresholds}, "annotations": []})
    assert code == 1 and "5000 thresholds, more than the limit of 64 levels" in capsys.readouterr().err


def test_eval_prediction_that_is_not_json_names_the_file(tmp_path, capsys):
    code, _ = run_predictions(tmp_path, "{not json")
    assert code == 1 and "a.json is not JSON" in capsys.readouterr().err


def test_levels_from_records_checks_before_allocating():
    from uniap.evaluation import levels_from_records

    with pytest.raises(ValueError, match=r"level 5000 is not an index in \[0, 64\)"):
        levels_from_records([{"segmentation": {}, "levels": [5000]}], (320, 480))
    with pytest.raises(ValueError, match=r"'levels' must be a list"):
        levels_from_records([{"segmentation": {}, "levels": "0"}], (320, 480))
    with pytest.raises(ValueError, match="'label maps': 100000 x 100000"):
        levels_from_records([], (100_000, 100_000))


# -- #15, #16: the trainer's configuration --------------------------------------------------------

MAX_STEPS = 10_000_000  # uniap_train.config.MAX_STEPS: schedules of 4 x 80 MB


def test_max_steps_constant():
    pytest.importorskip("torch")
    from uniap_train import config

    assert getattr(config, "MAX_STEPS", None) == MAX_STEPS


@pytest.mark.parametrize("epochs", ["1e30", "2e8", "1.0e+30"])
def test_epochs_are_bounded_before_schedules(tmp_path, capsys, epochs):
    pytest.importorskip("torch")
    from uniap_train.cli import main as train_main
    from uniap_train.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=f"optim.epochs: gives more than {MAX_STEPS} steps"):
        load_config(None, ["data.root=x", f"optim.epochs={epochs}"])
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  root: {tmp_path}\noutput_dir: {tmp_path / 'run'}\n")
    code = train_main([str(config), "--set", f"optim.epochs={epochs}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "MAX_STEPS" in err and not (tmp_path / "run").exists()


def test_epochs_times_steps_per_epoch_is_bounded(tmp_path):
    pytest.importorskip("torch")
    from uniap_train.config import ConfigError, load_config
    from uniap_train.trainer import Schedules, run_length

    cfg = load_config(None, ["data.root=x", "optim.epochs=1e6"])
    # run_length, not Schedules.build: without the bound that would allocate 4 x 8 GB
    with pytest.raises(ConfigError, match=f"= 1000000000 steps, more than the limit of {MAX_STEPS}"):
        run_length(cfg, 1000)
    assert run_length(cfg, 5) == 5_000_000
    assert Schedules.build(load_config(None, ["data.root=x", "optim.epochs=2"]), 3).total_steps == 6
    with pytest.raises(ConfigError, match=f"optim.total_steps: must be at most {MAX_STEPS}"):
        load_config(None, ["data.root=x", "optim.total_steps=2000000000"])


def test_non_utf8_config_is_exit_2(tmp_path, capsys):
    pytest.importorskip("torch")
    from uniap_train.cli import main as train_main

    path = tmp_path / "binary.yaml"
    path.write_bytes(b"optim:\n  lr: \xff\xfe\x00\x01\n")
    assert train_main([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"uniap-train: error: {path}: not a YAML text file (not UTF-8: byte 0xff at offset 13)"


@pytest.mark.parametrize("text", [b"config:\n  lr: 1\n", b"hello\n"])
def test_text_file_is_not_a_checkpoint(tmp_path, text):
    pytest.importorskip("torch")
    from uniap_train.checkpoint import CheckpointError, read_checkpoint

    path = tmp_path / "c.pt"
    path.write_bytes(text)
    with pytest.raises(CheckpointError, match=r"c.pt: not a checkpoint file \(torch.save writes a zip"):
        read_checkpoint(path)
