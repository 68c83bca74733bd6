"""The trainer on a CUDA device: AMP, resume from a GPU checkpoint, a ViT backbone on the GPU.

Skipped, with the reason, without a CUDA device.  Run alone with
``python -m pytest -m gpu tests/test_train_gpu.py``; ``-s`` prints steps per second and peak
memory of the AMP run (the figures docs/training.md asks a GPU session to report).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("yaml")

from test_train_run import images, load, read_metrics, small, tiny_vit  # noqa: E402, F401  (images: a fixture)
from uniap_train.config import load_config  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: torch.cuda.is_available() is False"),
]


def on_gpu(images, out, *extra):
    return small(images, out, "device=cuda", "optim.amp=true", *extra)


def test_amp_run_resumes_on_the_gpu(images, tmp_path):
    from uniap_train.trainer import train

    full = tmp_path / "full"
    summary = train(load_config(None, on_gpu(images, full, "optim.max_steps=6", "checkpoint.keep_every=3")))
    rows = read_metrics(full / "metrics.csv")
    assert summary["step"] == len(rows) == 6
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    memory = [float(r["gpu_memory_mb"]) for r in rows]
    assert min(memory) > 0
    ckpt = load(full / "checkpoint_last.pt")  # loads on the CPU
    assert ckpt["scaler"]["scale"] > 0
    steps_per_second = 1.0 / np.median([float(r["seconds_per_step"]) for r in rows[1:]])
    print(f"\nAMP run on {torch.cuda.get_device_name()}: {steps_per_second:.1f} steps/s, "
          f"peak memory {max(memory):.1f} MiB")

    resumed = tmp_path / "resumed"
    train(load_config(None, on_gpu(images, resumed, "optim.max_steps=6",
                                   f"resume={full / 'checkpoint_0000003.pt'}")))
    again = load(resumed / "checkpoint_last.pt")
    for name, value in ckpt["teacher"].items():
        torch.testing.assert_close(again["teacher"][name], value, rtol=1e-3, atol=1e-5)


def test_vit_backbone_on_the_gpu(images, tmp_path):
    from uniap_train.trainer import train

    out = tmp_path / "run"
    summary = train(load_config(None, on_gpu(images, out, *tiny_vit(tmp_path), "optim.max_steps=3")))
    rows = read_metrics(out / "metrics.csv")
    assert summary["step"] == len(rows) == 3
    assert all(np.isfinite(float(r["loss"])) for r in rows)
