"""``data.kind: shards``: tar shards streamed in place (SA-1B and WebDataset layouts).

Every image read once per pass over 2 ranks x 2 workers; a resumed run reads the same
sequence and ends with bit-identical weights; a corrupt member or shard is skipped and
reported, never a crash.  Synthetic shards of tiny images: a few seconds each.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from uniap_train.config import ConfigError, CropConfig, load_config  # noqa: E402
from uniap_train.data import MultiCropDataset, collate_views  # noqa: E402
from uniap_train.shards import (  # noqa: E402
    ShardStream,
    brace_expand,
    count_images,
    expand_shards,
    iter_members,
    sample_id,
    split_sample_id,
)


def _png(rng: np.random.Generator, h: int = 40, w: int = 56) -> bytes:
    from PIL import Image

    img = np.zeros((h, w, 3), np.uint8)
    img[:] = rng.integers(0, 255, 3)
    y, x = rng.integers(0, h - 10), rng.integers(0, w - 10)
    img[y:y + 10, x:x + 10] = rng.integers(0, 255, 3)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def make_shards(folder: Path, n_shards: int, per_shard: int, layout: str = "sa1b", seed: int = 0) -> list[Path]:
    """``n_shards`` tars of ``per_shard`` images each, with a JSON beside every image."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for s in range(n_shards):
        path = folder / f"sa_{s:06d}.tar"
        with tarfile.open(path, "w") as tf:
            for m in range(per_shard):
                key = f"sa_{s * per_shard + m + 1}" if layout == "sa1b" else f"{s:03d}/{m:05d}"
                _add(tf, f"{key}.jpg" if layout == "sa1b" else f"{key}.png", _png(rng))
                _add(tf, f"{key}.json", json.dumps({"image": {"id": m}}).encode())
        paths.append(path)
    return paths


def tiny_dataset() -> MultiCropDataset:
    crops = CropConfig(global_size=16, local_size=8, num_local=1)
    return MultiCropDataset([], crops, seed=0, max_side=48)


def rank_indices(folder: Path, rank: int, batches: int, *, world: int = 2, workers: int = 2,
                 batch: int = 5, buffer: int = 4, start_step: int = 0, positions=None) -> list[list[int]]:
    from torch.utils.data import DataLoader

    stream = ShardStream(expand_shards(str(folder)), tiny_dataset(), seed=3, rank=rank, world_size=world,
                         num_workers=workers, shuffle_buffer=buffer, max_side=48, start_step=start_step,
                         positions=positions)
    loader = DataLoader(stream, batch_size=batch, num_workers=workers, collate_fn=collate_views)
    out = []
    for b in loader:
        out.append(b["index"].tolist())
        if len(out) == batches:
            break
    return out


# ---------------------------------------------------------------------------------------------
# naming and reading shards


def test_brace_glob_folder_and_file_name_the_same_shards(tmp_path):
    paths = make_shards(tmp_path / "s", 3, 2)
    want = [str(p) for p in paths]
    assert expand_shards(str(tmp_path / "s")) == want
    assert expand_shards(str(tmp_path / "s" / "sa_*.tar")) == want
    assert expand_shards(str(tmp_path / "s" / "sa_{000000..000002}.tar")) == want
    assert expand_shards(f"{paths[2]} {paths[0]} {paths[0]}") == [want[0], want[2]]
    assert brace_expand("x{1..3}{a,b}") == ["x1a", "x1b", "x2a", "x2b", "x3a", "x3b"]


@pytest.mark.parametrize("root, message", [
    ("missing.tar", "shard not found"),
    ("nothing_*.tar", "matches no file"),
])
def test_bad_shard_names_are_one_line_errors(tmp_path, root, message):
    with pytest.raises(ConfigError, match=message):
        expand_shards(str(tmp_path / root))


def test_compressed_tar_is_refused(tmp_path):
    (tmp_path / "a.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(ConfigError, match="compressed tar"):
        expand_shards(str(tmp_path / "*.tar.gz"))


@pytest.mark.parametrize("layout", ["sa1b", "webdataset"])
def test_members_are_the_images_only(tmp_path, layout):
    (path,) = make_shards(tmp_path, 1, 3, layout)
    names = [n for n, _, _ in iter_members(str(path))]
    assert len(names) == 3 and all(n.endswith((".jpg", ".png")) for n in names)
    with open(path, "rb") as f:  # offsets point at the members' bytes
        name, offset, size = next(iter_members(str(path)))
        f.seek(offset)
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert count_images([str(path), str(path)]) == 6


def test_sample_ids_round_trip():
    assert split_sample_id(sample_id(999, 11_000)) == (999, 11_000)


# ---------------------------------------------------------------------------------------------
# splitting over ranks and workers


@pytest.mark.parametrize("n_shards, per_shard", [(8, 5), (2, 20)])
def test_two_ranks_two_workers_read_every_image_once_per_pass(tmp_path, n_shards, per_shard):
    """4 streams; 40 images: each stream's pass is 10 images, 2 batches of 5; a process takes 4
    batches per pass.  With 2 shards for 4 streams each shard is split in two parts."""
    make_shards(tmp_path, n_shards, per_shard)
    every = {sample_id(s, m) for s in range(n_shards) for m in range(per_shard)}
    runs = [rank_indices(tmp_path, rank, 8) for rank in (0, 1)]
    passes = []
    for p in range(2):
        seen = [i for run in runs for b in run[4 * p: 4 * p + 4] for i in b]
        assert len(seen) == len(every) and set(seen) == every  # each image exactly once
        passes.append(seen)
    assert passes[0] != passes[1]  # a new order every pass


def test_stream_order_is_shuffled_and_repeatable(tmp_path):
    make_shards(tmp_path, 4, 10)
    a = rank_indices(tmp_path, 0, 4, world=1, workers=1, batch=10, buffer=8)
    assert a == rank_indices(tmp_path, 0, 4, world=1, workers=1, batch=10, buffer=8)
    flat = [i for b in a for i in b]
    assert flat != sorted(flat)
    plain = [i for b in rank_indices(tmp_path, 0, 4, world=1, workers=1, batch=10, buffer=0) for i in b]
    assert sorted(plain[:10]) == plain[:10] and plain[:10] != flat[:10]  # shard order without a buffer


def test_a_resumed_stream_continues_the_sequence(tmp_path):
    """Stopped after 3 batches (per-stream counts as a checkpoint keeps them), a new loader whose
    workers continue those streams gives batches 4, 5, ... of the uninterrupted loader."""
    make_shards(tmp_path, 6, 5)
    full = rank_indices(tmp_path, 1, 9, batch=3, buffer=5)
    # batch n of a process comes from worker n mod 2: after 3 batches worker 0 gave 2, worker 1 gave 1
    resumed = rank_indices(tmp_path, 1, 6, batch=3, buffer=5, start_step=3, positions=[6, 3])
    assert resumed == full[3:]


# ---------------------------------------------------------------------------------------------
# the trainer on shards


def shard_run(root: str, out: Path, *extra: str) -> list[str]:
    return [
        "data.kind=shards", f"data.root={root}", "data.batch_size=4", "data.max_side=48",
        "data.shuffle_buffer=6", "crops.global_size=16", "crops.local_size=8", "crops.num_local=1",
        "model.hidden_dim=16", "model.bottleneck_dim=16", "model.out_dim=16", "loss.region_size=2",
        "loss.warmup_teacher_temp_steps=0", "optim.total_steps=8", "optim.warmup_steps=1",
        "optim.freeze_last_layer_steps=1", "log.every_steps=1", "log.progress=false", "log.tensorboard=false",
        "checkpoint.every_steps=100", "device=cpu", "threads=1", f"output_dir={out}", *extra,
    ]


from uniap_train.trainer import train_one_step as ORIGINAL_STEP  # noqa: E402


def _train_recording(monkeypatch, overrides: list[str]) -> tuple[dict, list[list[int]]]:
    import uniap_train.trainer as trainer

    seen: list[list[int]] = []
    step_fn = ORIGINAL_STEP

    def record(state, batch, step):
        seen.append(batch["index"].tolist())
        return step_fn(state, batch, step)

    monkeypatch.setattr(trainer, "train_one_step", record)
    summary = trainer.train(load_config(None, overrides))
    return summary, seen


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_resumed_shard_run_reads_the_same_sequence_and_ends_bit_identical(tmp_path, monkeypatch):
    make_shards(tmp_path / "shards", 4, 5)  # 20 images, 2 streams (2 workers), 5 steps per pass
    root = str(tmp_path / "shards" / "sa_{000000..000003}.tar")
    full = tmp_path / "full"
    _, seq_full = _train_recording(monkeypatch, shard_run(root, full, "data.num_workers=2",
                                                          "checkpoint.keep_every=3"))
    assert len(seq_full) == 8
    ckpt = _load(full / "checkpoint_0000003.pt")
    assert ckpt["stream"]["positions"] == [[8, 4]]  # worker 0 gave batches 1 and 3, worker 1 batch 2
    part = tmp_path / "resumed"
    _, seq_part = _train_recording(monkeypatch, shard_run(root, part, "data.num_workers=2",
                                                          f"resume={full / 'checkpoint_0000003.pt'}"))
    assert seq_part == seq_full[3:]
    a, b = _load(full / "checkpoint_last.pt"), _load(part / "checkpoint_last.pt")
    assert a["step"] == b["step"] == 8
    for key in ("student", "teacher", "loss"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)


def test_killed_shard_run_resumes_to_the_same_weights(tmp_path):
    """A run killed (SIGKILL) after a checkpoint, restarted with resume: auto, ends as one that
    was never interrupted."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from uniap_train.config import save_config

    make_shards(tmp_path / "shards", 4, 5)
    root = str(tmp_path / "shards" / "*.tar")
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]))

    def config(out: Path, *extra: str) -> Path:
        path = tmp_path / f"{out.name}.yaml"
        save_config(load_config(None, shard_run(root, out, "data.num_workers=2", "optim.total_steps=30",
                                                "checkpoint.every_steps=2", *extra)), path)
        return path

    whole = tmp_path / "whole"
    subprocess.run([sys.executable, "-m", "uniap_train", str(config(whole))], env=env, check=True,
                   capture_output=True, timeout=300)
    killed = tmp_path / "killed"
    cfg = config(killed, "resume=auto")
    proc = subprocess.Popen([sys.executable, "-m", "uniap_train", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            ckpt = killed / "checkpoint_last.pt"
            if ckpt.is_file():
                try:
                    if 6 <= _load(ckpt)["step"] < 30:
                        break
                except Exception:  # being replaced: read again
                    pass
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its DataLoader workers
        proc.wait()
    stopped = _load(killed / "checkpoint_last.pt")["step"]
    assert stopped < 30, "the run ended before it could be killed"
    subprocess.run([sys.executable, "-m", "uniap_train", str(cfg)], env=env, check=True,
                   capture_output=True, timeout=300)
    a, b = _load(whole / "checkpoint_last.pt"), _load(killed / "checkpoint_last.pt")
    assert a["step"] == b["step"] == 30
    for key in ("student", "teacher", "loss"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)


def test_corrupt_member_and_truncated_shard_are_skipped_and_reported(tmp_path, capsys):
    from uniap_train.trainer import train

    folder = tmp_path / "shards"
    make_shards(folder, 3, 4)
    with tarfile.open(folder / "sa_000003.tar", "w") as tf:  # a member that is not an image
        _add(tf, "broken.jpg", b"not a jpeg at all" * 10)
        for m in range(3):
            _add(tf, f"ok_{m}.png", _png(np.random.default_rng(m)))
    data = (folder / "sa_000001.tar").read_bytes()
    (folder / "sa_000001.tar").write_bytes(data[: len(data) // 2 + 100])  # cut inside a member
    out = tmp_path / "run"
    summary = train(load_config(None, shard_run(str(folder / "*.tar"), out, "optim.total_steps=6")))
    assert summary["step"] == 6
    assert summary["skipped_images"] >= 2
    err = capsys.readouterr().err
    assert "sa_000003.tar:broken.jpg" in err and "sa_000001.tar" in err
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    skipped = [r for r in records if r.get("kind") == "skipped"]
    assert any(r["item"].endswith("sa_000003.tar:broken.jpg") for r in skipped)


def test_shard_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="data.max_images"):
        load_config(None, shard_run("x.tar", tmp_path, "data.max_images=3"))
    with pytest.raises(ConfigError, match="data.shard_images"):
        load_config(None, ["data.root=x", "data.shard_images=3"])
    with pytest.raises(ConfigError, match="data.shuffle_buffer"):
        load_config(None, shard_run("x.tar", tmp_path, "data.shuffle_buffer=-1"))


def test_paper_recipe_trains_on_shards(tmp_path):
    """The paper recipe's samples (teacher view, superpixels, pixels) come from a stream too."""
    from test_train_paper import paper_small

    from uniap_train.trainer import train

    make_shards(tmp_path / "shards", 2, 4, layout="webdataset")
    out = tmp_path / "run"
    summary = train(load_config(None, [*paper_small(tmp_path, out, "optim.max_steps=2"), "data.kind=shards",
                                       f"data.root={tmp_path / 'shards'}", "data.max_images=0"]))
    assert summary["step"] == 2 and summary["skipped_images"] == 0
    ckpt = _load(out / "checkpoint_last.pt")
    assert ckpt["recipe"] == "paper" and ckpt["stream"]["positions"] == [[8]]
