"""What a new user hits first (issue #14): array layouts, bad input, huge values, big-endian
arrays, and the command lines' answers to mistakes.  Each test fails on the code before #14.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import uniap
import uniap.testing
from uniap.synthetic import piecewise_features

from cli_helpers import exit_status
from test_backends_agree import MARGIN, grids, levels_strategy

torch = pytest.importorskip("torch")
from uniap.backends.torch_backend import TorchBackend  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "images" / "coffee.jpg"


@pytest.fixture
def torch_device_loop():
    """CPU tensors through the fixed-shape device loop (the CUDA/CuPy code path) instead of
    the Numba kernels."""
    TorchBackend.numba_on_cpu = False
    yield
    TorchBackend.numba_on_cpu = True


# -- channel_axis ---------------------------------------------------------------------------


def _backend_runs():
    """(backend, convert, device loop?) for every CPU code path that has its own layout handling."""
    runs = [("numpy", np.asarray, False), ("torch", torch.from_numpy, False), ("torch", torch.from_numpy, True)]
    if uniap.backends.available()["numba"] is None:
        runs.insert(1, ("numba", np.asarray, False))
    return runs


@pytest.mark.parametrize("backend,convert,device_loop", _backend_runs())
@settings(max_examples=40)
@given(x=grids(max_side=12, max_channels=24), levels=levels_strategy,
       axis=st.sampled_from([0, 1, -3, -2]), batch=st.integers(0, 3))
def test_channel_axis_gives_the_channels_last_partitions(backend, convert, device_loop, x, levels, axis, batch):
    ref = uniap.segment(x, levels=levels, backend="numpy", track_margin=True)
    assume(ref.min_margin > MARGIN)
    TorchBackend.numba_on_cpu = not device_loop
    try:
        if batch:  # (B, C, H, W)-like: channels at `axis` of each grid, batch axis first
            moved = np.ascontiguousarray(np.stack([np.moveaxis(x, -1, axis)] * batch))
            out = uniap.segment(convert(moved), levels=levels, backend=backend,
                                channel_axis=axis + 1 if axis >= 0 else axis)
        else:
            moved = np.ascontiguousarray(np.moveaxis(x, -1, axis))
            out = [uniap.segment(convert(moved), levels=levels, backend=backend, channel_axis=axis)]
    finally:
        TorchBackend.numba_on_cpu = True
    for h in out:
        uniap.testing.assert_same_partitions(ref, h, features_rtol=1e-12)


def test_channels_first_torch_tensor_is_read_with_channel_axis():
    x = piecewise_features((16, 20), channels=384, seed=0, dtype=np.float32)
    nchw = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 0)))[None]  # (1, 384, 16, 20)
    out = uniap.segment(nchw, channel_axis=1)
    assert isinstance(out, list) and out[0].labels.shape == (5, 16, 20)
    assert torch.equal(out[0].labels, torch.from_numpy(uniap.segment(x).labels))
    single = uniap.segment(nchw[0], channel_axis=0)
    assert single.labels.shape == (5, 16, 20)
    # a list of (C, H_i, W_i) grids: the axis of each grid
    mixed = uniap.segment([nchw[0], nchw[0, :, :8]], channel_axis=0)
    assert [tuple(h.labels.shape) for h in mixed] == [(5, 16, 20), (5, 8, 20)]


def test_channel_axis_moves_by_a_view():
    x = piecewise_features((12, 10), channels=8, seed=1)
    chw = np.ascontiguousarray(np.moveaxis(x, -1, 0))
    h = uniap.segment(chw, channel_axis=0)
    # the (N, C) features the hierarchy keeps are the caller's memory, not a copy
    assert np.shares_memory(h.input_features, chw)
    np.testing.assert_array_equal(h.level(1).features, uniap.segment(x).level(1).features)


@pytest.mark.parametrize("axis,error,match", [
    (3, ValueError, r"channel_axis 3 is out of range for features of shape \(4, 5, 6\)"),
    (-4, ValueError, "use -3 to 2"),
    (1.0, TypeError, "channel_axis must be an integer"),
    ("0", TypeError, "channel_axis must be an integer"),
])
def test_bad_channel_axis(axis, error, match):
    with pytest.raises(error, match=match):
        uniap.segment(np.ones((4, 5, 6)), channel_axis=axis)


# -- options --------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,error,match", [
    ({"levels": "0"}, TypeError, "levels must be a sequence of numbers .* got the string '0'"),
    ({"levels": "0.8,0.5"}, TypeError, "got the string"),
    ({"levels": ["0.8", "0.5"]}, TypeError, "levels must be a sequence of numbers"),
    ({"temperature": "abc"}, TypeError, "temperature must be a number, got 'abc'"),
    ({"temperature": None}, TypeError, "temperature must be a number, got None"),
    ({"vote_weight": "0.4"}, TypeError, "vote_weight must be a number"),
])
def test_options_are_named_in_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        uniap.segment(np.ones((3, 3, 2)), **kwargs)


# -- huge finite features -------------------------------------------------------------------


def _huge_runs():
    runs = [dict(backend="numpy"), dict(backend="numpy", pooling="attention"), dict(backend="numpy", vote_weight=0.4),
            dict(backend="numpy", semantic=True), dict(backend="numpy", track_margin=True)]
    if uniap.backends.available()["numba"] is None:
        runs += [dict(backend="numba"), dict(backend="numba", semantic=True)]
    return runs


@pytest.mark.parametrize("factor", [2.0**600, 1e200, 1e300])
@pytest.mark.parametrize("options", _huge_runs(), ids=str)
def test_huge_features_give_the_rescaled_result(factor, options):
    x = piecewise_features((20, 24), channels=16, regions=[6], noise=0.3, seed=2, dtype=np.float64)
    ref = uniap.segment(x, **options)
    h = uniap.segment(x * factor, **options)
    assert ref.level(0).num_clusters < 20 * 24 / 4  # a real partition, not singletons
    np.testing.assert_array_equal(h.labels, ref.labels)
    # cluster means are those of the input, finite (their float64 sums would overflow);
    # attention-pooled features are unit vectors, the same at any scale
    unit = options.get("pooling") == "attention"
    np.testing.assert_allclose(h.level(2).features / (1 if unit else factor), ref.level(2).features, rtol=1e-12)
    assert np.isfinite(h.level(len(h) - 1).features).all()


@pytest.mark.parametrize("device_loop", [False, True])
def test_huge_torch_features_give_the_rescaled_result(device_loop):
    x = piecewise_features((20, 24), channels=16, regions=[6], noise=0.3, seed=2, dtype=np.float64)
    ref = uniap.segment(x)
    TorchBackend.numba_on_cpu = not device_loop
    try:
        h = uniap.segment(torch.from_numpy(x * 2.0**700))
    finally:
        TorchBackend.numba_on_cpu = True
    np.testing.assert_array_equal(h.labels.numpy(), ref.labels)


def test_power_of_two_scaling_is_exact():
    x = piecewise_features((16, 16), channels=8, seed=3, dtype=np.float64)
    a, b = uniap.segment(x, backend="numpy", track_margin=True), uniap.segment(x * 2.0**900, backend="numpy",
                                                                              track_margin=True)
    assert a.min_margin == b.min_margin  # the very same scores


# -- graphs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("edges,error,match", [
    (np.zeros((0, 3), int), ValueError, r"edges must have shape \(E, 2\).*\(0, 3\)"),
    (np.zeros((5, 0), int), ValueError, r"edges must have shape \(E, 2\).*\(5, 0\)"),
    ([[0, 1], [2]], ValueError, r"edges\[1\] = \[2\] has 1"),
    ([[0, 1], [1, 2, 3]], ValueError, r"edges\[1\] = \[1, 2, 3\] has 3"),
])
def test_bad_edges(edges, error, match):
    with pytest.raises(error, match=match):
        uniap.segment_graph(np.ones((4, 2)), edges)
    for none in ([], np.zeros((0, 2), np.int64)):  # what "no edges" looks like still works
        assert uniap.segment_graph(np.eye(3), none, min_size=1).level(0).labels.tolist() == [0, 1, 2]


def test_nan_in_graph_features_is_named_x():
    for backend, reason in uniap.backends.available().items():
        if reason is not None:
            continue
        x = np.ones((4, 2))
        x[2, 1] = np.nan
        with pytest.raises(ValueError, match=r"^x must be finite"):
            uniap.segment_graph(x, [[0, 1], [1, 2], [2, 3]], backend=backend)
        g = np.ones((3, 3, 2))
        g[1, 1, 0] = np.inf
        with pytest.raises(ValueError, match=r"^features must be finite"):
            uniap.segment(g, backend=backend)


# -- array types ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [">f4", ">f8", ">i4"])
def test_big_endian_arrays(dtype):
    x = (piecewise_features((10, 12), channels=6, seed=4) * 10).astype(dtype)
    native = x.astype(x.dtype.newbyteorder("="))
    for backend, reason in uniap.backends.available().items():
        if reason is None:
            h = uniap.segment(x, backend=backend)
            np.testing.assert_array_equal(uniap.hierarchy.to_numpy(h.labels), uniap.segment(native).labels)


def test_torch_input_is_never_modified():
    # A float64 CPU tensor is read in place by the Numba kernels; every other path must copy.
    for options in (dict(pooling="attention"), dict(semantic=True), dict(track_margin=True), dict(vote_weight=0.4)):
        for dtype in (torch.float64, torch.float32):
            x = torch.from_numpy(piecewise_features((10, 12), channels=6, seed=5)).to(dtype)
            before = x.clone()
            uniap.segment(x, **options)
            assert torch.equal(x, before), (options, dtype)


def test_py_typed_is_shipped():
    import re

    assert (REPO / "uniap" / "py.typed").is_file()
    text = (REPO / "pyproject.toml").read_text()
    assert '[tool.setuptools.package-data]' in text
    assert re.search(r'^uniap = \[[^\]\n]*"py\.typed"', text, re.M)


# -- uniap-cli ------------------------------------------------------------------------------


def run_cli(*argv, cwd=None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "uniap", *map(str, argv)], capture_output=True, text=True,
                          cwd=cwd, timeout=300, **kwargs)


def test_levels_with_spaces_are_all_kept(tmp_path):
    from uniap.cli import build_parser

    parser = build_parser()
    for text in ("0.6 0", "0.6, 0", "0.6,0"):
        assert parser.parse_args(["a.jpg", "--out", "m.json", "--levels", text]).levels == (0.6, 0.0)


@pytest.mark.parametrize("flag", ["--levels", "--min-size", "--format", "--vote-weight"])
def test_flag_given_double_dash_is_a_usage_error(flag, tmp_path, capsys):
    from uniap.cli import main

    code = exit_status(main, [str(EXAMPLE), "--out", str(tmp_path / "m.json"), f"{flag}=--"])
    assert code == 2
    assert f"argument {flag}: expected a value" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_help_shows_the_levels_default():
    out = run_cli("--help").stdout
    text = "".join(out.split())  # argparse may wrap inside the list of numbers
    assert "(default0.9,0.8,0.7,0.6,0.5,0.4,0.3,0.2withsuperpixels,0.8,0.7,0.6,0.5,0.4with--refinenone)" in text


@pytest.mark.parametrize("command", [["uniap"], ["uniap.evaluation"], ["uniap_train"], ["uniap_train.predict"]])
def test_version(command):
    res = subprocess.run([sys.executable, "-m", *command, "--version"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    assert res.stdout.strip().endswith(uniap.__version__) and res.stdout.startswith("uniap-")


def _unwritable(tmp_path: Path) -> Path:
    """A folder nobody can write in: read-only permissions, or a read-only file system for root."""
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o500)
        return folder
    for candidate in (Path("/sys"), Path("/proc")):
        try:
            (candidate / ".uniap-probe").mkdir()
        except OSError:
            return candidate
        (candidate / ".uniap-probe").rmdir()
    pytest.skip("no read-only folder to test with")


def test_unwritable_parent_of_out_folder_is_a_usage_error(tmp_path):
    locked = _unwritable(tmp_path)
    res = run_cli(EXAMPLE, EXAMPLE.with_name("chelsea.jpg"), "--out", locked / "masks" / "out", "--quiet")
    assert res.returncode == 2, res.stderr
    assert f"cannot write to {locked}" in res.stderr and "Errno" not in res.stderr and "Traceback" not in res.stderr


def test_unwritable_viz_leaves_no_out_folder(tmp_path):
    locked = _unwritable(tmp_path)
    out = tmp_path / "new" / "masks"
    res = run_cli(EXAMPLE, EXAMPLE.with_name("chelsea.jpg"), "--out", f"{out}/", "--viz", locked / "viz" / "",
                  "--quiet")
    assert res.returncode == 2, res.stderr
    assert "Errno" not in res.stderr
    assert not (tmp_path / "new").exists()


def test_progress_off_a_terminal_is_a_few_lines(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    from PIL import Image

    image = np.asarray(Image.open(EXAMPLE))[::8, ::8]
    for i in range(12):
        Image.fromarray(image).save(folder / f"im{i:02d}.png")
    res = run_cli(folder, "--out", tmp_path / "out" / "", "--backend", "numpy")
    assert res.returncode == 0, res.stderr
    assert "\r" not in res.stderr  # no redrawn bar in a log
    lines = [line for line in res.stderr.splitlines() if line.startswith("uniap: ")]
    assert 1 <= len(lines) <= 3 and lines[-1].startswith("uniap: 12/12 images (100%)")


def test_sigint_exits_130_without_a_traceback(tmp_path):
    # Already true before #14 (a guard, not a regression test): Ctrl-C on a run with workers.
    folder = tmp_path / "images"
    folder.mkdir()
    from PIL import Image

    image = Image.open(EXAMPLE)
    for i in range(200):
        image.save(folder / f"im{i:03d}.jpg")
    out = tmp_path / "out"
    # --backend numpy: a worker caught compiling Numba kernels (a cold cache) by the SIGTERM
    # that follows Ctrl-C prints llvmlite's "Exception ignored" traceback (reported apart).
    proc = subprocess.Popen([sys.executable, "-m", "uniap", str(folder), "--out", f"{out}/", "--workers", "2",
                             "--backend", "numpy"],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (out.is_dir() and any(out.glob("*.json"))) and time.monotonic() < deadline:
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C: the whole process group
        err = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err, err
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left


# -- uniap-eval -----------------------------------------------------------------------------


@pytest.fixture
def labelmaps(tmp_path: Path) -> Path:
    """A 'labelmaps' data set of two 24x32 images, and predictions for it."""
    from PIL import Image

    from uniap.records import encode_rle

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    labels = np.zeros((24, 32), np.uint8)
    labels[:, 16:] = 1
    image = np.zeros((24, 32, 3), np.uint8)
    image[:, 16:] = 200
    preds = tmp_path / "preds"
    preds.mkdir()
    for key in ("a", "b"):
        Image.fromarray(image).save(data / "images" / f"{key}.png")
        Image.fromarray(labels).save(data / "labels" / f"{key}.png")
        records = [{"id": i + 1, "segmentation": rle, "area": int((labels == i).sum()), "level": 0}
                   for i, rle in enumerate(encode_rle(np.stack([labels == 0, labels == 1])))]
        (preds / f"{key}.json").write_text(json.dumps(records))
    return tmp_path


def run_eval_process(root: Path, *extra: str, out: str = "r.json") -> tuple[int, str]:
    res = subprocess.run([sys.executable, "-m", "uniap.evaluation", "--dataset", "labelmaps", "--data",
                          str(root / "data"), "--num-classes", "2", "--predictions", str(root / "preds"),
                          "--out", str(root / out), "--workers", "1", "--quiet", *extra],
                         capture_output=True, text=True, timeout=300)
    return res.returncode, res.stderr


def test_eval_out_is_not_overwritten_without_overwrite(labelmaps):
    code, err = run_eval_process(labelmaps)
    assert code == 0, err
    first = (labelmaps / "r.json").read_text()
    (labelmaps / "r.json").write_text("keep me")
    code, err = run_eval_process(labelmaps)
    assert code == 2 and "exists; pass --overwrite" in err
    assert (labelmaps / "r.json").read_text() == "keep me"
    code, err = run_eval_process(labelmaps, "--overwrite")
    assert code == 0, err
    assert json.loads((labelmaps / "r.json").read_text()).keys() == json.loads(first).keys()


@pytest.mark.parametrize("segmentation,message", [
    ({"size": [60000, 60000], "counts": "0"}, r"RLE size \[60000, 60000\] differs from the image's \[24, 32\]"),
    ({"size": [24, 32], "counts": ""}, "RLE counts decode to 0 pixels, but size"),
    ({"size": [24, 32], "counts": "0"}, "RLE counts decode to 0 pixels"),
    ({"size": [24, 32], "counts": "0Q"}, "truncated"),
    ({"size": [24, 32], "counts": "\x7f"}, "invalid character"),
    ({"size": [24, 32], "counts": "0" * 100000}, "too long"),
    ({"size": [24, 32], "counts": [10, -2, 760]}, "negative run"),
    ({"size": [24, "32"], "counts": [768]}, "two non-negative integers"),
])
def test_eval_rejects_bad_rles_naming_image_and_record(labelmaps, segmentation, message):
    preds = labelmaps / "preds" / "b.json"
    records = json.loads(preds.read_text())
    records[1]["segmentation"] = segmentation
    preds.write_text(json.dumps(records))
    start = time.perf_counter()
    code, err = run_eval_process(labelmaps)
    assert time.perf_counter() - start < 60  # no 7 GB allocation
    assert code == 1, err
    import re

    assert re.search(r"b\.json: record 1 \(id 2\): .*" + message, err), err
    assert "Traceback" not in err


def test_check_rle_agrees_with_pycocotools():
    from pycocotools import mask as mask_utils

    from uniap.records import _rle_string_counts, check_rle

    rng = np.random.default_rng(6)
    for trial in range(200):
        h, w = (int(v) for v in rng.integers(1, 50, 2))
        mask = np.asfortranarray(rng.random((h, w)) < rng.random() * (trial % 4 != 0))
        rle = mask_utils.encode(mask.astype(np.uint8))
        check_rle({"size": [h, w], "counts": rle["counts"].decode()}, (h, w))
        runs = _rle_string_counts(rle["counts"], h * w)
        flat = mask.ravel(order="F").astype(np.int8)
        edges = np.flatnonzero(np.diff(flat)) + 1
        expect = np.diff(np.concatenate([[0], edges, [flat.size]]))
        if flat[0]:
            expect = np.concatenate([[0], expect])
        np.testing.assert_array_equal(runs, expect)


# -- the SAM image block --------------------------------------------------------------------


def test_sam_document_has_an_image_id(tmp_path):
    from uniap import io
    from uniap.pipeline.plan import stable_image_ids

    doc = io.sam_document({"file_name": "a/b.jpg", "height": 4, "width": 6}, {}, [])
    assert list(doc["image"]) == ["image_id", "file_name", "height", "width"]
    assert doc["image"]["image_id"] == stable_image_ids(["a/b.jpg"])[0]
    assert io.sam_document({"image_id": 7, "file_name": "x", "height": 1, "width": 1}, {}, [])["image"]["image_id"] == 7
    res = subprocess.run([sys.executable, str(REPO / "examples" / "segment_image.py"), str(EXAMPLE), "--out",
                          str(tmp_path / "m.json")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert isinstance(json.loads((tmp_path / "m.json").read_text())["image"]["image_id"], int)
