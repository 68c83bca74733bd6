"""Throughput options: bfloat16 autocast, activation checkpointing of a trainable ViT, torch.compile."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("yaml")

from test_train_paper import paper_small  # noqa: E402
from test_train_run import images, load, read_metrics, small, tiny_vit  # noqa: E402, F401 (images: a fixture)
from uniap_train.config import ConfigError, load_config  # noqa: E402


def test_bfloat16_autocast_runs_without_a_scaler(images, tmp_path, monkeypatch):
    """optim.amp_dtype bfloat16 (the CUDA code path, run on the CPU): no loss scaling, fp32 master weights."""
    from uniap_train import trainer

    full = tmp_path / "fp32"
    trainer.train(load_config(None, small(images, full, "optim.max_steps=3")))
    monkeypatch.setattr(trainer, "AMP_DEVICE_TYPES", ("cuda", "cpu"))
    bf16 = tmp_path / "bf16"
    trainer.train(load_config(None, small(images, bf16, "optim.max_steps=3", "optim.amp_dtype=bfloat16")))
    a = np.array([float(r["loss"]) for r in read_metrics(full / "metrics.csv")])
    b = np.array([float(r["loss"]) for r in read_metrics(bf16 / "metrics.csv")])
    assert np.all(np.isfinite(b)) and not np.array_equal(a, b)  # bfloat16 really ran
    np.testing.assert_allclose(b[:1], a[:1], rtol=5e-2)
    ckpt = load(bf16 / "checkpoint_last.pt")
    assert not ckpt["scaler"]  # a disabled GradScaler saves an empty state
    assert all(v.dtype == torch.float32 for v in ckpt["student"].values())


def test_amp_dtype_is_validated():
    with pytest.raises(ConfigError, match="optim.amp_dtype"):
        load_config(None, ["data.root=x", "optim.amp_dtype=float8"])


def test_backbone_checkpointing_gives_the_same_weights(images, tmp_path):
    """Recomputing the trainable ViT's activations in backward changes memory, not the result."""
    from uniap_train.trainer import train

    vit = tiny_vit(tmp_path)
    runs = {}
    for flag in ("false", "true"):
        out = tmp_path / f"ckpt_{flag}"
        train(load_config(None, paper_small(images, out, *vit, "backbone.trainable=true", "optim.max_steps=2",
                                            "optim.warmup_steps=0", f"backbone.checkpointing={flag}")))
        runs[flag] = load(out / "checkpoint_last.pt")
    a, b = runs["false"], runs["true"]
    assert not torch.equal(a["student"]["backbone.net.patch_embed.proj.weight"],
                           torch.load(tmp_path / "tiny_vit.pth", weights_only=True)["patch_embed.proj.weight"])
    for name in a["student"]:
        torch.testing.assert_close(b["student"][name], a["student"][name], rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile's CPU code generation needs a C++ compiler")
def test_compiled_student_trains_like_the_eager_one(images, tmp_path):
    from uniap_train.trainer import train

    runs = {}
    for flag in ("false", "true"):
        out = tmp_path / f"compile_{flag}"
        train(load_config(None, small(images, out, "optim.max_steps=2", f"optim.compile={flag}")))
        runs[flag] = load(out / "checkpoint_last.pt")
    a, b = runs["false"], runs["true"]
    assert a["student"].keys() == b["student"].keys()  # compiled in place: the same state-dict keys
    for name in a["student"]:
        torch.testing.assert_close(b["student"][name], a["student"][name], rtol=1e-4, atol=1e-5)
