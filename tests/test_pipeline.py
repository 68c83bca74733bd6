"""The streaming pipeline behind uniap-cli: output layout, file safety, resuming, workers, kills."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import uniap
from uniap.cli import main
from uniap.pipeline import run
from uniap.records import decode_rle

from cli_helpers import exit_status, save_image as _save


def run_cli(argv: list[str]) -> int:
    return exit_status(main, argv)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Images with the same name in different folders, and one at the top."""
    import skimage.data

    root = tmp_path / "images"
    _save(root / "a" / "img.jpg", skimage.data.coffee()[::4, ::4])
    _save(root / "b" / "img.jpg", skimage.data.chelsea()[::4, ::4])
    _save(root / "top.png", skimage.data.astronaut()[::8, ::8])
    return root


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if p.name.endswith((".tmp", ".old"))]


def masks_of(path: Path) -> list[np.ndarray]:
    return [decode_rle(a["segmentation"]) for a in json.loads(path.read_text())["annotations"]]


# -- layout -----------------------------------------------------------------------------------

def test_outputs_mirror_input_paths(tree, tmp_path):
    out = tmp_path / "out"
    assert main([str(tree), "--out", str(out), "--viz", str(tmp_path / "viz"), "--quiet"]) == 0
    assert files_under(out) == {"a/img.json", "b/img.json", "top.json"}
    assert files_under(tmp_path / "viz") == {"a/img.png", "b/img.png", "top.png"}
    doc = json.loads((out / "b" / "img.json").read_text())
    assert doc["image"]["file_name"] == "b/img.jpg"
    assert doc["image"]["image_id"] == uniap.pipeline.plan.stable_image_ids(["b/img.jpg"])[0]


def test_shards_mirror_names_and_complete_the_set(tree, tmp_path):
    out = tmp_path / "out"
    for i in range(3):
        assert main([str(tree), "--out", str(out), "--shard", f"{i}/3", "--quiet"]) == 0
    assert files_under(out) == {"a/img.json", "b/img.json", "top.json"}
    whole = tmp_path / "whole"
    assert main([str(tree), "--out", str(whole), "--quiet"]) == 0
    for name in files_under(whole):
        assert (out / name).read_bytes() == (whole / name).read_bytes()


@pytest.mark.parametrize("spelling", ["trailing-slash", "existing-folder"])
def test_folder_out_for_one_image(tree, tmp_path, spelling):
    out = tmp_path / "masks"
    if spelling == "existing-folder":
        out.mkdir()
    arg = str(out) + ("/" if spelling == "trailing-slash" else "")
    assert main([str(tree / "top.png"), "--out", arg, "--quiet"]) == 0
    assert files_under(out) == {"top.json"}


def test_folder_with_one_image_writes_a_folder(tmp_path):
    import skimage.data

    folder = tmp_path / "one"
    _save(folder / "x.png", skimage.data.astronaut()[::8, ::8])
    out = tmp_path / "out" / "x"
    (tmp_path / "out").mkdir()
    assert main([str(folder), "--out", str(out), "--quiet"]) == 0
    assert out.is_dir() and files_under(out) == {"x.json"}


def test_png_format_writes_one_folder_per_image(tree, tmp_path):
    out = tmp_path / "labels"
    assert main([str(tree / "top.png"), "--out", str(out), "--format", "png", "--quiet"]) == 0
    assert {"top/level_0.png", "top/metadata.csv", "top/uniap.json"} <= files_under(out)


def test_file_list_and_tar_shards(tree, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("# inputs\nimages/a/img.jpg\n\nimages/top.png\n")
    out = tmp_path / "from_list"
    assert main(["--file-list", str(listing), "--out", str(out), "--quiet"]) == 0
    assert files_under(out) == {"images/a/img.json", "images/top.json"}

    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as tar:
        tar.add(tree / "a" / "img.jpg", arcname="sa_1.jpg")
        tar.add(tree / "top.png", arcname="sub/sa_2.png")
        info = tarfile.TarInfo("sa_1.json")
        info.size = 2
        tar.addfile(info, __import__("io").BytesIO(b"{}"))
    out = tmp_path / "from_tar"
    assert main([str(shard), "--out", str(out), "--quiet"]) == 0
    assert files_under(out) == {"sa_1.json", "sub/sa_2.json"}
    # a member gives the same masks as the file it was made from
    assert (out / "sa_1.json").exists()
    same = tmp_path / "same.json"
    assert main([str(tree / "a" / "img.jpg"), "--out", str(same), "--quiet"]) == 0
    from_tar = json.loads((out / "sa_1.json").read_text())["annotations"]
    from_file = json.loads(same.read_text())["annotations"]
    assert [a["segmentation"] for a in from_tar] == [a["segmentation"] for a in from_file]


def test_same_stem_with_other_suffix_is_a_usage_error(tmp_path, capsys):
    import skimage.data

    _save(tmp_path / "in" / "x.jpg", skimage.data.astronaut()[::8, ::8])
    _save(tmp_path / "in" / "x.png", skimage.data.astronaut()[::8, ::8])
    assert run_cli([str(tmp_path / "in"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "x.jpg" in err and "x.png" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# -- file safety ------------------------------------------------------------------------------

def test_viz_never_writes_over_an_input_or_the_json(tree, tmp_path, capsys):
    image = tree / "top.png"
    before = image.read_bytes()
    assert run_cli([str(image), "--out", str(tmp_path / "m.json"), "--viz", str(image), "--overwrite"]) == 2
    assert "input" in capsys.readouterr().err
    assert image.read_bytes() == before
    same = tmp_path / "same.json"
    assert run_cli([str(image), "--out", str(same), "--viz", str(same)]) == 2
    assert "both write" in capsys.readouterr().err and not same.exists()
    # --out over an input image
    assert run_cli([str(image), "--out", str(image), "--overwrite"]) == 2
    assert image.read_bytes() == before


def test_existing_viz_is_kept_without_overwrite(tree, tmp_path, capsys):
    viz = tmp_path / "picture.png"
    viz.write_bytes(b"precious")
    assert run_cli([str(tree / "top.png"), "--out", str(tmp_path / "m.json"), "--viz", str(viz)]) == 2
    assert viz.read_bytes() == b"precious" and not (tmp_path / "m.json").exists()
    assert "--overwrite" in capsys.readouterr().err


def test_png_overwrite_replaces_only_that_images_outputs(tree, tmp_path):
    out = tmp_path / "labels"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "other").mkdir()
    (out / "other" / "level_0.png").write_bytes(b"someone else's")
    for _ in range(2):
        assert main([str(tree / "top.png"), "--out", str(out), "--format", "png", "--overwrite", "--quiet"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "other" / "level_0.png").read_bytes() == b"someone else's"
    assert (out / "top" / "level_0.png").is_file()


def test_overwrite_in_a_folder_run_touches_only_its_images(tree, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "unrelated.json").write_text("keep")
    assert main([str(tree), "--out", str(out), "--overwrite", "--quiet"]) == 0
    assert (out / "unrelated.json").read_text() == "keep"


def test_resume_writes_only_missing_outputs(tree, tmp_path, capsys):
    out, viz = tmp_path / "out", tmp_path / "viz"
    assert main([str(tree), "--out", str(out), "--viz", str(viz), "--quiet"]) == 0
    (viz / "b" / "img.png").unlink()  # as if the run had been killed between the two files
    json_before = {n: (out / n).stat().st_mtime_ns for n in files_under(out)}
    assert main([str(tree), "--out", str(out), "--viz", str(viz)]) == 0
    assert (viz / "b" / "img.png").is_file()
    assert {n: (out / n).stat().st_mtime_ns for n in files_under(out)} == json_before
    err = capsys.readouterr().err
    assert "1 written" in err and "2 skipped" in err


def test_other_settings_are_refused_then_replaced_with_overwrite(tree, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(tree), "--out", str(out), "--quiet"]) == 0
    before = (out / "top.json").read_bytes()
    assert run_cli([str(tree), "--out", str(out), "--levels", "0.9,0.5", "--quiet"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert (out / "top.json").read_bytes() == before
    assert main([str(tree), "--out", str(out), "--levels", "0.9,0.5", "--overwrite", "--quiet"]) == 0
    assert json.loads((out / "top.json").read_text())["uniap"]["thresholds"] == [0.9, 0.5]
    # the same settings again: every image is done
    assert main([str(tree), "--out", str(out), "--levels", "0.9,0.5"]) == 0
    assert "3 skipped" in capsys.readouterr().err


def test_failures_manifest(tree, tmp_path):
    (tree / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    assert main([str(tree), "--out", str(out), "--quiet"]) == 1
    lines = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [line["key"] for line in lines] == ["broken.jpg"] and "broken.jpg" in lines[0]["path"]
    assert lines[0]["error"]
    (tree / "broken.jpg").unlink()
    assert main([str(tree), "--out", str(out), "--quiet"]) == 0
    assert not (out / "failures.jsonl").exists()


def test_stale_temporaries_of_this_runs_outputs_are_removed(tree, tmp_path):
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / ".img.json.k1ll3d.tmp").write_text("half")
    (out / ".someone.json.x.tmp").write_text("a concurrent run's")
    assert main([str(tree), "--out", str(out), "--quiet"]) == 0
    assert not (out / "a" / ".img.json.k1ll3d.tmp").exists()
    assert (out / ".someone.json.x.tmp").exists()


# -- engine -----------------------------------------------------------------------------------

def test_workers_and_batches_write_the_same_bytes(tree, tmp_path):
    serial = tmp_path / "serial"
    assert main([str(tree), "--out", str(serial), "--quiet", "--batch-size", "1"]) == 0
    parallel = tmp_path / "parallel"
    assert main([str(tree), "--out", str(parallel), "--quiet", "--workers", "2", "--batch-size", "2"]) == 0
    assert files_under(serial) == files_under(parallel)
    for name in files_under(serial):
        assert (serial / name).read_bytes() == (parallel / name).read_bytes()


def test_auto_workers_follow_the_cores_the_chunks_the_memory_and_the_device(monkeypatch):
    import uniap.pipeline.engine as engine_module
    from uniap.pipeline.engine import AUTO_WORKER_MEMORY, auto_workers

    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform: auto is always one process")
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # (only read: is a torch extractor loaded)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(engine_module, "_cores", lambda: 4)
    monkeypatch.setattr(engine_module, "available_memory", lambda: 10 * AUTO_WORKER_MEMORY)
    assert [auto_workers(chunks, False) for chunks in (1, 2, 3, 4, 50)] == [1, 2, 3, 4, 4]
    assert auto_workers(50, True) == 1  # an accelerator's features: this process's threads
    monkeypatch.setattr(engine_module, "available_memory", lambda: 3 * AUTO_WORKER_MEMORY - 1)
    assert auto_workers(50, False) == 2
    monkeypatch.setattr(engine_module, "available_memory", lambda: AUTO_WORKER_MEMORY // 2)
    assert auto_workers(50, False) == 1
    monkeypatch.setattr(engine_module, "available_memory", lambda: None)
    assert auto_workers(50, False) == 4
    monkeypatch.setattr(sys, "platform", "darwin")  # no fork by default there
    assert auto_workers(50, False) == 1
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setitem(sys.modules, "torch", object())  # spawned workers would import everything again
    assert auto_workers(50, False) == 1
    memory = engine_module.available_memory()
    assert memory is None or memory > 0


def test_the_cli_runs_a_folder_with_auto_workers_by_default(tree, tmp_path, monkeypatch):
    """``--workers`` defaults to ``auto`` (resolved per run from its chunks), takes ``auto`` or N,
    and a bad count is a usage error naming the flag."""
    import uniap.pipeline.engine as engine_module

    asked = []
    resolve = engine_module.auto_workers

    def recorded(chunks, on_device):
        asked.append((chunks, on_device))
        return resolve(chunks, on_device)

    monkeypatch.setattr(engine_module, "auto_workers", recorded)
    assert main([str(tree), "--out", str(tmp_path / "auto"), "--quiet", "--batch-size", "1"]) == 0
    assert asked == [(3, False)]
    assert main([str(tree), "--out", str(tmp_path / "AUTO"), "--quiet", "--workers", "AUTO"]) == 0
    assert asked == [(3, False), (1, False)]
    assert main([str(tree), "--out", str(tmp_path / "one"), "--quiet", "--workers", "1"]) == 0
    assert len(asked) == 2  # a number is taken as it is
    for name in files_under(tmp_path / "one"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "auto" / name).read_bytes()
    assert run_cli([str(tree), "--out", str(tmp_path / "bad"), "--workers", "0"]) == 2
    assert not (tmp_path / "bad").exists()


def test_the_last_chunks_are_split_into_single_images():
    """Workers hold up to two chunks each: the last ones go image by image, in order, so this
    process is not left idle while a worker finishes two whole chunks."""
    from collections import deque

    from uniap.pipeline.engine import _split_the_tail

    chunks = deque([[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11]])
    _split_the_tail(chunks, helpers=1)  # 4 chunks left > 2 x 1 + 1: kept
    assert list(chunks) == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11]]
    chunks.popleft()
    _split_the_tail(chunks, helpers=1)
    assert list(chunks) == [[4], [5], [6], [7], [8], [9], [10], [11]]
    _split_the_tail(chunks, helpers=1)  # singles already
    assert len(chunks) == 8
    chunks = deque([[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]])
    _split_the_tail(chunks, helpers=2)  # 5 <= 2 x 2 + 1
    assert [job for chunk in chunks for job in chunk] == list(range(1, 11)) and len(chunks) == 10


def _run_engine(tree, out, engine):
    from uniap.pipeline import Stages
    from uniap.pipeline.plan import plan_jobs

    items = uniap.pipeline.expand_inputs([str(tree)])
    stages = Stages(uniap.pipeline.Settings())
    plan = plan_jobs(items, out=str(out), format="sam", viz=None, overwrite=False,
                     settings_signature=stages.signature, single=False)
    out.mkdir()
    return list(engine.run(plan.jobs, stages))


@pytest.mark.parametrize("cores", [1, 2])
def test_overlapped_work_gives_the_same_files(tree, tmp_path, monkeypatch, cores):
    """Records and files in a thread while the next batch is segmented (the accelerator's path,
    and the CPU's by default when this process is the only worker and has a spare core), and
    the superpixels in a thread beside the features: the same bytes as all in turn."""
    import uniap.features.regions as regions_module
    import uniap.pipeline.engine as engine_module
    from uniap.pipeline import LocalEngine

    writers = []  # the thread each image's records and files were made in
    write = engine_module.encode_and_write

    def recorded(*args):
        writers.append(threading.current_thread().name)
        return write(*args)

    monkeypatch.setattr(engine_module, "encode_and_write", recorded)
    monkeypatch.setattr(regions_module, "OVERLAP", False)
    serial = tmp_path / "serial"
    reports = _run_engine(tree, serial, LocalEngine(batch_size=1, overlap=False))
    assert [r.status for r in reports] == ["ok"] * 3 and not any(w.startswith("uniap-write") for w in writers)
    monkeypatch.setattr(regions_module, "OVERLAP", True)
    writers.clear()
    reports = _run_engine(tree, tmp_path / "overlap", LocalEngine(batch_size=1, overlap=True))
    assert [r.status for r in reports] == ["ok"] * 3 and all(r.timings["writing"] > 0 for r in reports)
    # the first image in turn (its lazy imports in one thread), the others in the writer
    assert [w.startswith("uniap-write") for w in writers] == [False, True, True]
    monkeypatch.setattr(engine_module, "_cores", lambda: cores)  # the default follows the cores
    writers.clear()
    reports = _run_engine(tree, tmp_path / "default", LocalEngine(batch_size=1))
    assert [r.status for r in reports] == ["ok"] * 3
    assert [w.startswith("uniap-write") for w in writers] == [False] + [cores > 1] * 2
    for name in files_under(serial):
        assert (serial / name).read_bytes() == (tmp_path / "overlap" / name).read_bytes()
        assert (serial / name).read_bytes() == (tmp_path / "default" / name).read_bytes()


def test_worker_threads_of_one_keep_the_superpixels_in_turn(monkeypatch):
    """A worker given one thread (the cores shared by processes) starts no superpixel thread;
    the undo gives the setting back."""
    import uniap.features.regions as regions_module
    from uniap.pipeline.engine import _limit_threads

    monkeypatch.setattr(regions_module, "OVERLAP", True)
    undo = _limit_threads(1)
    assert regions_module.OVERLAP is False
    undo()
    assert regions_module.OVERLAP is True
    _limit_threads(2)()
    assert regions_module.OVERLAP is True


def test_library_run_matches_segment_image(tree, tmp_path):
    summary = run([str(tree)], str(tmp_path / "out"), progress=False, segment_options={"levels": (0.8, 0.5)})
    assert summary.written == 3 and not summary.failures
    assert set(summary.timings) >= {"decode", "features", "pooling", "records", "writing"}
    doc = json.loads((tmp_path / "out" / "top.json").read_text())
    expected = uniap.segment_image(tree / "top.png", levels=(0.8, 0.5)).records
    assert [a["segmentation"] for a in doc["annotations"]] == [r["segmentation"] for r in expected]


def test_vit_with_workers_and_batches(tree, tmp_path):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    weights = tmp_path / "tiny.pt"
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    torch.save(model.state_dict(), weights)
    vit = ["--features", "vit", "--model", "vit_tiny_patch16_224", "--weights", str(weights), "--quiet"]
    one = tmp_path / "one"
    assert main([str(tree), "--out", str(one), "--batch-size", "1", *vit]) == 0
    many = tmp_path / "many"
    # spawned workers (torch is loaded here): each builds its own model from the weights
    assert main([str(tree), "--out", str(many), "--workers", "2", "--batch-size", "4", *vit]) == 0
    assert files_under(one) == files_under(many) == {"a/img.json", "b/img.json", "top.json"}
    for name in files_under(one):
        a, b = json.loads((one / name).read_text()), json.loads((many / name).read_text())
        assert a["uniap"]["features"] == "vit:vit_tiny_patch16_224:tokens"
        assert len(a["annotations"]) > 0
        # batching changes float summation order only: masks agree almost everywhere
        assert abs(len(a["annotations"]) - len(b["annotations"])) <= max(2, len(a["annotations"]) // 10)


# -- kills ------------------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the workers")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_run_resumes_and_leaves_no_temporaries(tmp_path, sig):
    import skimage.data

    source = skimage.data.astronaut()
    for i in range(16):
        _save(tmp_path / "in" / f"{i:02d}.png", np.roll(source, 37 * i, axis=1)[::2, ::2])
    out, viz = tmp_path / "out", tmp_path / "viz"
    command = [sys.executable, "-m", "uniap", str(tmp_path / "in"), "--out", str(out), "--viz", str(viz),
               "--workers", "2", "--batch-size", "1", "--quiet"]
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.rglob("*.json"))) < 2:
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert workers, "no worker process was started"
    proc.send_signal(sig)
    proc.wait(timeout=60)
    if sig == signal.SIGTERM:
        assert proc.returncode == 143, log.read_text()
        assert not any(_alive(w) for w in workers), "the main process exited before its workers"
        assert not temporaries(tmp_path)
    end = time.monotonic() + 20
    while time.monotonic() < end and any(_alive(w) for w in workers):
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "workers outlived their main process"
    written = len(list(out.rglob("*.json")))
    assert written < 16, "the run finished before it was killed; the test proves nothing"

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert files_under(out) == {f"{i:02d}.json" for i in range(16)}
    assert files_under(viz) == {f"{i:02d}.png" for i in range(16)}
    assert not temporaries(tmp_path)
    for path in out.iterdir():
        assert masks_of(path)  # every file is whole and decodes


WORKER_STOPPED_IN_A_CALLBACK = """
import ctypes, os, signal, time
from uniap.pipeline.engine import _raise_on_sigterm

_raise_on_sigterm()  # as a worker of the local engine does
# SIGTERM lands while C code calls back into Python (llvmlite compiling Numba's kernels):
# Python ignores the SystemExit raised there and the callback's caller carries on.
callback = ctypes.CFUNCTYPE(None)(lambda: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(0.2)))
callback()
print("carried on", flush=True)
time.sleep(30)
print("still running", flush=True)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_worker_stopped_inside_a_c_callback_still_exits_quietly():
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", WORKER_STOPPED_IN_A_CALLBACK], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 128 + signal.SIGTERM
    assert done.stdout.split() == ["carried", "on"]  # ended by the deadline, not after 30 s
    assert time.monotonic() - start < 20
    assert "SystemExit" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr


@pytest.mark.skipif(sys.platform.startswith("win"), reason="POSIX signals")
@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_signals_in_the_main_process_wait_for_its_chunk_then_raise(name):
    """While the main process works on a chunk of its own (Numba compiling on a cold cache,
    a kernel's C code calling back into Python), SIGTERM and SIGINT are held; they are raised
    once the chunk is done (raised inside a kernel, Ctrl-C became one image's failure)."""
    from uniap.cli import _on_sigint, _on_sigterm, _Terminated
    from uniap.pipeline.engine import _signals_deferred

    signum = getattr(signal, name)
    handler, raised = (_on_sigterm, _Terminated) if name == "SIGTERM" else (_on_sigint, KeyboardInterrupt)
    previous = signal.signal(signum, handler)
    steps = []
    try:
        with pytest.raises(raised):
            with _signals_deferred():
                os.kill(os.getpid(), signum)
                for _ in range(1000):  # bytecodes run: a raising handler would have raised here
                    steps.append(1)
                steps.append("chunk done")
            steps.append("after")  # never: raised on leaving the block
    finally:
        signal.signal(signum, previous)
    assert steps[-1] == "chunk done" and len(steps) == 1001
