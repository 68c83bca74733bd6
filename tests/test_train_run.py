"""End-to-end training runs on the CPU: the tiny example, exact resume, DDP, a NaN stop.

Every run here is a few seconds: synthetic images for resume and DDP (so they run anywhere),
the real images of ../shared/data for the example configuration (skipped when absent).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
yaml = pytest.importorskip("yaml")

from uniap_train.cli import main  # noqa: E402
from uniap_train.config import load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "examples" / "configs" / "tiny_cpu.yaml"


def shared_data() -> Path:
    path = Path(os.environ.get("UNIAP_DATA", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip("the real data set ../shared/data is not beside this checkout (set UNIAP_DATA)")
    return path


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return e


def read_metrics(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Eight 64 x 96 images of coloured rectangles and stripes."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(8):
        img = np.zeros((64, 96, 3), np.uint8)
        img[:] = rng.integers(0, 255, 3)
        for _ in range(4):
            y0, x0 = rng.integers(0, 48), rng.integers(0, 80)
            img[y0:y0 + rng.integers(8, 32), x0:x0 + rng.integers(8, 40)] = rng.integers(0, 255, 3)
        img[::4, : 20] = 255
        Image.fromarray(img).save(folder / f"img{i}.png")
    return folder


def small(images: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"data.root={images}", "data.batch_size=4", "data.max_side=96",
        "crops.global_size=32", "crops.local_size=16", "crops.num_local=2",
        "model.hidden_dim=32", "model.bottleneck_dim=32", "model.out_dim=32", "model.attention_temp=0.05",
        "loss.region_size=3", "loss.teacher_temp=0.01", "loss.warmup_teacher_temp=0.01",
        "loss.warmup_teacher_temp_steps=0", "optim.momentum_teacher=0.99",
        "optim.epochs=4", "optim.lr=0.2", "optim.warmup_steps=2", "optim.freeze_last_layer_steps=2",
        "log.every_steps=1", "log.progress=false", "log.tensorboard=false",
        "checkpoint.every_steps=100", "device=cpu", "threads=1", f"output_dir={out}", *extra,
    ]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_tiny_example_cli(tmp_path):
    """`uniap-train examples/configs/tiny_cpu.yaml --set output_dir=DIR`, fewer steps."""
    data = shared_data()
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "uniap_train", str(TINY), "--set", f"output_dir={out}",
           "--set", "optim.epochs=6", "--set", "log.progress=false",
           "--set", f"data.root={data / 'bsds500' / 'images' / 'val'}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = read_metrics(out / "metrics.csv")
    assert {"step", "loss"} <= set(rows[0])
    cfg = load_config(out / "config.yaml")
    assert [int(r["step"]) for r in rows] == list(range(1, len(rows) + 1))
    assert len(rows) == 6 * 4  # 16 images, batch 4, one row per step
    loss = np.array([float(r["loss"]) for r in rows])
    assert np.all(np.isfinite(loss))
    thirds = [part.mean() for part in np.array_split(loss, 3)]
    assert thirds[0] > thirds[1] > thirds[2], thirds  # falls steadily, not by collapse and back
    # no collapse: the teacher keeps several prototypes busy in every view and over the batch
    assert min(float(r["teacher_view_entropy"]) for r in rows) > np.log(3)
    assert min(float(r["teacher_batch_entropy"]) for r in rows) > 0.8 * np.log(cfg.model.out_dim)
    ckpt = load(out / "checkpoint_last.pt")
    assert ckpt["step"] == len(rows) and cfg.output_dir == str(out)
    assert (out / "vocabulary.npz").is_file()


def test_tiny_run_loss_decreases(images, tmp_path):
    from uniap_train.trainer import train

    out = tmp_path / "run"
    summary = train(load_config(None, small(images, out, "optim.epochs=10")))
    rows = read_metrics(out / "metrics.csv")
    loss = np.array([float(r["loss"]) for r in rows])
    assert summary["step"] == len(rows) == 20
    assert np.all(np.isfinite(loss))
    assert loss[-4:].mean() < loss[:4].mean()
    assert (out / "config.yaml").is_file() and (out / "log.jsonl").is_file()


def test_resume_is_bit_identical(images, tmp_path):
    from uniap_train.trainer import train

    full = tmp_path / "full"
    train(load_config(None, small(images, full, "checkpoint.keep_every=3")))
    mid = full / "checkpoint_0000003.pt"  # step 3: inside the second epoch (2 steps each)
    assert load(mid)["sampler"] == {"epoch": 1, "batch": 1, "steps_per_epoch": 2}
    part = tmp_path / "resumed"
    train(load_config(None, small(images, part, f"resume={mid}")))
    a, b = load(full / "checkpoint_last.pt"), load(part / "checkpoint_last.pt")
    assert a["step"] == b["step"] == 8
    for key in ("student", "teacher", "loss"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # the resumed run's log continues the original one: steps 4..8 after the checkpoint
    steps = [int(r["step"]) for r in read_metrics(part / "metrics.csv")]
    assert steps == [4, 5, 6, 7, 8]


def test_resume_auto_continues_in_place(images, tmp_path):
    from uniap_train.trainer import train

    out = tmp_path / "run"
    train(load_config(None, small(images, out, "optim.max_steps=3")))
    assert load(out / "checkpoint_last.pt")["step"] == 3
    train(load_config(None, small(images, out, "resume=auto")))
    assert [int(r["step"]) for r in read_metrics(out / "metrics.csv")] == list(range(1, 9))


@pytest.mark.parametrize("centering", ["ema", "sinkhorn"])
def test_ddp_two_processes_match_one(images, tmp_path, centering):
    """torchrun with 2 gloo processes (batch 2 each) == 1 process with batch 4."""
    from uniap_train.trainer import train

    extra = ("optim.epochs=2", f"loss.centering={centering}")
    one = tmp_path / "one"
    train(load_config(None, small(images, one, *extra)))
    two = tmp_path / "two"
    config = tmp_path / "ddp.yaml"
    cfg = load_config(None, small(images, two, *extra))
    from uniap_train.config import save_config

    save_config(cfg, config)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "uniap_train", str(config)]
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load(one / "checkpoint_last.pt"), load(two / "checkpoint_last.pt")
    assert b["world_size"] == 2 and a["step"] == b["step"] == 4
    for name, ta in a["teacher"].items():
        torch.testing.assert_close(b["teacher"][name], ta, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(b["loss"]["center"], a["loss"]["center"], rtol=1e-4, atol=1e-6)
    la = [float(r["loss"]) for r in read_metrics(one / "metrics.csv")]
    lb = [float(r["loss"]) for r in read_metrics(two / "metrics.csv")]
    np.testing.assert_allclose(lb, la, rtol=1e-4)


def test_nan_loss_stops_with_the_step(images, tmp_path, capsys):
    out = tmp_path / "run"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({}))
    argv = [str(config)]
    for item in small(images, out, "loss.student_temp=1e-45"):
        argv += ["--set", item]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "loss is nan at step 1" in err
    assert not (out / "checkpoint_last.pt").exists()


def tiny_vit(folder: Path) -> list[str]:
    """Overrides for a tiny randomly initialised timm ViT whose weights are saved in ``folder``."""
    timm = pytest.importorskip("timm")
    kw = dict(depth=1, embed_dim=24, num_heads=2, patch_size=8)
    weights = folder / "tiny_vit.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", num_classes=0, **kw).state_dict(), weights)
    options = "{depth: 1, embed_dim: 24, num_heads: 2, patch_size: 8, layer_output: keys}"
    return ["backbone.kind=vit", "backbone.model=vit_tiny_patch16_224", f"backbone.weights={weights}",
            f"backbone.options={options}"]


def test_tiny_random_vit_backbone(images, tmp_path):
    """The per-view path: a tiny randomly initialised timm ViT (weights from a local file)."""
    from uniap_train.trainer import train

    out = tmp_path / "run"
    summary = train(load_config(None, small(images, out, *tiny_vit(tmp_path), "optim.epochs=2")))
    rows = read_metrics(out / "metrics.csv")
    assert summary["step"] == len(rows) == 4
    assert all(np.isfinite(float(r["loss"])) for r in rows)


def test_tensorboard_events_when_installed(images, tmp_path):
    pytest.importorskip("tensorboard")
    from uniap_train.trainer import train

    out = tmp_path / "run"
    train(load_config(None, small(images, out, "log.tensorboard=true", "optim.max_steps=2")))
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_shared_vocabulary_is_saved_and_reused(images, tmp_path, capsys):
    """`backbone.vocabulary: shared` fits words once and writes them; a run reading them matches."""
    from uniap.features import DefaultFeatures, Vocabulary
    from uniap_train.data import list_images, load_resized
    from uniap_train.trainer import train

    fitted = tmp_path / "fitted"
    train(load_config(None, small(images, fitted, "backbone.vocabulary=shared", "optim.max_steps=3",
                                  "backbone.vocabulary_images=5")))
    words = Vocabulary.load(fitted / "vocabulary.npz")
    paths = list_images("folder", str(images), None, 0)[:5]
    assert words == DefaultFeatures().fit(load_resized(q, 96) for q in paths).vocabulary
    reused = tmp_path / "reused"
    train(load_config(None, small(images, reused, f"backbone.vocabulary={fitted / 'vocabulary.npz'}",
                                  "optim.max_steps=3")))
    a, b = load(fitted / "checkpoint_last.pt"), load(reused / "checkpoint_last.pt")
    for name in a["teacher"]:
        assert torch.equal(a["teacher"][name], b["teacher"][name])
    assert not (reused / "vocabulary.npz").exists()
    # resuming keeps the checkpoint's words, even where a refit would now give others
    resumed = tmp_path / "resumed"
    train(load_config(None, small(images, resumed, "backbone.vocabulary=shared", "optim.max_steps=4",
                                  "backbone.vocabulary_images=2", f"resume={fitted / 'checkpoint_last.pt'}")))
    assert Vocabulary.load(resumed / "vocabulary.npz") == words
    assert DefaultFeatures().fit(load_resized(q, 96) for q in paths[:2]).vocabulary != words
    per_image = tmp_path / "per_image"
    train(load_config(None, small(images, per_image, "optim.max_steps=3")))
    c = load(per_image / "checkpoint_last.pt")
    assert any(not torch.equal(a["teacher"][n], c["teacher"][n]) for n in a["teacher"])

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({}))
    argv = [str(config)]
    for item in small(images, tmp_path / "bad", f"backbone.vocabulary={tmp_path / 'missing.npz'}"):
        argv += ["--set", item]
    assert main(argv) == 2
    assert "backbone.vocabulary: vocabulary file not found" in capsys.readouterr().err


def test_mixed_precision_path(images, tmp_path, monkeypatch):
    """optim.amp's float16 autocast and gradient scaler, run on the CPU (the CUDA code path)."""
    from uniap_train import trainer

    full = tmp_path / "fp32"
    trainer.train(load_config(None, small(images, full, "optim.max_steps=6")))
    monkeypatch.setattr(trainer, "AMP_DEVICE_TYPES", ("cuda", "cpu"))
    half = tmp_path / "amp"
    trainer.train(load_config(None, small(images, half, "optim.max_steps=6", "checkpoint.keep_every=3")))
    a = np.array([float(r["loss"]) for r in read_metrics(full / "metrics.csv")])
    b = np.array([float(r["loss"]) for r in read_metrics(half / "metrics.csv")])
    assert np.all(np.isfinite(b)) and len(b) == 6
    assert not np.array_equal(a, b)  # float16 really ran
    # the same first steps; later the sharp teacher (T = 0.01) amplifies rounding differences
    np.testing.assert_allclose(b[:2], a[:2], rtol=1e-2)
    ckpt = load(half / "checkpoint_last.pt")
    assert ckpt["scaler"]["scale"] > 0  # the scaler is enabled and saved
    assert all(v.dtype == torch.float32 for v in ckpt["student"].values())  # master weights stay fp32
    resumed = tmp_path / "amp_resumed"
    trainer.train(load_config(None, small(images, resumed, "optim.max_steps=6",
                                          f"resume={half / 'checkpoint_0000003.pt'}")))
    c = load(resumed / "checkpoint_last.pt")
    for name in ckpt["teacher"]:
        assert torch.equal(ckpt["teacher"][name], c["teacher"][name])


def test_progress_in_a_log_is_plain_lines(images, tmp_path):
    """stderr to a file (a batch job's log): no carriage-return bar, a few complete lines."""
    out = tmp_path / "run"
    args = [a for a in small(images, out, "optim.epochs=2") if a != "log.progress=false"]
    cmd = [sys.executable, "-m", "uniap_train", str(TINY), *(part for arg in args for part in ("--set", arg))]
    log = tmp_path / "stderr.log"
    with log.open("w") as stderr:
        proc = subprocess.run(cmd, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=stderr, timeout=170)
    text = log.read_text()
    assert proc.returncode == 0, text[-2000:]
    assert "\r" not in text
    lines = [line for line in text.splitlines() if line.startswith("train: ")]
    assert 1 <= len(lines) <= 3 and lines[-1].startswith("train: 4/4 steps (100%)"), text[-2000:]
    words = [line for line in text.splitlines() if "vocabulary" in line]  # the shared words' fit, as plain lines
    assert 1 <= len(words) <= 2 and words[-1].startswith("vocabulary: ") and " images in " in words[-1], words
