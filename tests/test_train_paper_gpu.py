"""The paper recipe and its predictor on a CUDA device: an AMP training step, a predictor batch.

Skipped, with the reason, without a CUDA device.  Run alone with
``python -m pytest -m gpu tests/test_train_paper_gpu.py -s`` (``-s`` prints steps per second and
peak memory).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("yaml")

from test_train_paper import column, paper_small  # noqa: E402
from test_train_run import images, load, read_metrics  # noqa: E402, F401  (images: a fixture)
from uniap_train.config import load_config  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: torch.cuda.is_available() is False"),
]


@pytest.fixture(scope="module")
def gpu_run(images, tmp_path_factory):
    from uniap_train.trainer import train

    out = tmp_path_factory.mktemp("paper_gpu")
    summary = train(load_config(None, paper_small(images, out, "device=cuda", "optim.amp=true", "optim.max_steps=6",
                                                  "checkpoint.keep_every=3")))
    return out, summary


def test_paper_amp_steps_on_the_gpu(gpu_run):
    out, summary = gpu_run
    rows = read_metrics(out / "metrics.csv")
    assert summary["step"] == len(rows) == 6
    assert np.all(np.isfinite(column(rows, "loss"))) and column(rows, "queries_matched").min() >= 1
    memory = column(rows, "gpu_memory_mb")
    assert memory.min() > 0
    ckpt = load(out / "checkpoint_last.pt")
    assert ckpt["scaler"]["scale"] > 0  # the scaler ran and is saved
    assert all(v.dtype == torch.float32 for v in ckpt["student"].values() if v.is_floating_point())
    print(f"\npaper recipe AMP on {torch.cuda.get_device_name()}: "
          f"{1.0 / np.median(column(rows, 'seconds_per_step')[1:]):.1f} steps/s, peak {memory.max():.1f} MiB")


def test_paper_amp_resume_on_the_gpu(gpu_run, images, tmp_path):
    from uniap_train.trainer import train

    out, _ = gpu_run
    resumed = tmp_path / "resumed"
    train(load_config(None, paper_small(images, resumed, "device=cuda", "optim.amp=true", "optim.max_steps=6",
                                        f"resume={out / 'checkpoint_0000003.pt'}")))
    a, b = load(out / "checkpoint_last.pt"), load(resumed / "checkpoint_last.pt")
    for name, value in a["teacher"].items():
        torch.testing.assert_close(b["teacher"][name], value, rtol=1e-3, atol=1e-4)


def test_predictor_batch_on_the_gpu(gpu_run):
    from uniap_train import Predictor

    out, _ = gpu_run
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (48, 64, 3)).astype(np.uint8) for _ in range(3)]
    for img in images:
        img[10:30, 20:50] = (200, 40, 40)
    gpu = Predictor.from_checkpoint(out / "checkpoint_last.pt", device="cuda", min_area=4)
    cpu = Predictor.from_checkpoint(out / "checkpoint_last.pt", device="cpu", min_area=4)
    assert next(gpu.model.parameters()).is_cuda
    batch = gpu.predict(images)
    assert len(batch) == 3
    for image, pg in zip(images, batch):
        pc = cpu(image)
        assert pg.levels.shape == (len(gpu.level_names()),) + image.shape[:2] and pg.records
        # float32 on two devices: the same maps up to pixels at near-ties
        assert (pg.semantic == pc.semantic).mean() > 0.98
        assert abs(len(pg.scores) - len(pc.scores)) <= 1
