"""One training step of the paper recipe, timed part by part, on the CPU and (when there is one) CUDA.

A short ``uniap-train`` run (``recipe: paper``, the embedded default features, generated
images) with timers around each part of a step:

* ``data``: waiting for the next batch (decode, crops and features run in DataLoader workers);
* ``teacher``: the teacher's forward pass (``teacher_maps``, the mask features and query logits);
* ``uniap``: the teacher's UniAP on each image (the paper's rule, ``semantic=True``);
* ``student``: the student's forward pass;
* ``matching``: Hungarian matching of every level and view (:meth:`PaperRecipe._match_levels`);
* ``loss``: the rest of the loss (cropped teacher masks, point sampling, Dice / BCE / QuerySD);
* ``optimizer``: backward, clipping, the optimizer step, the EMA teacher and the centre.

The first steps (warm-up: Numba compiling, caches) are left out.  ``extra_info`` holds the
seconds per step of each part and their shares; ``-s`` prints a table.  Every part is
synchronised on CUDA before its clock stops.

Run: ``python -m pytest bench/test_train_step.py -q -s`` (CPU: about 2 minutes on 2 cores).
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]
PARTS = ("data", "teacher", "uniap", "student", "matching", "loss", "optimizer")
WARMUP, STEPS = 3, 12


def _images(folder, n: int = 16) -> None:
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        img = np.zeros((192, 256, 3), np.uint8)
        img[:] = rng.integers(0, 255, 3)
        for _ in range(6):
            y, x = rng.integers(0, 160), rng.integers(0, 220)
            img[y:y + rng.integers(16, 80), x:x + rng.integers(16, 100)] = rng.integers(0, 255, 3)
        img += rng.integers(0, 12, img.shape, dtype=np.uint8)
        Image.fromarray(img).save(folder / f"img{i:02d}.png")


def _overrides(root, out, device: str) -> list[str]:
    return [
        "recipe=paper", f"data.root={root}", "data.batch_size=4", "data.num_workers=1", "data.max_side=192",
        "crops.teacher_size=96", "crops.local_size=48", "crops.num_local=2", "uniap.levels=[0.95,0.9,0.85,0.8,0.7]",
        "uniap.min_size=4", "model.dim=64", "model.decoder_layers=2", "model.num_heads=4", "model.ffn_dim=128",
        "model.num_semantic_queries=8", "model.num_instance_queries=16", "model.hidden_dim=256",
        "model.bottleneck_dim=64", "model.out_dim=64", "loss.num_points=64", "loss.centering=sinkhorn",
        "loss.warmup_teacher_temp_steps=0", f"optim.total_steps={WARMUP + STEPS}", "optim.warmup_steps=2",
        "log.every_steps=100", "log.progress=false", "log.tensorboard=false", "checkpoint.every_steps=1000",
        f"device={device}", "threads=1" if device == "cpu" else "threads=0", f"output_dir={out}",
    ]


class Clock:
    """Seconds per part, per step (steps after the warm-up only)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.step = 0
        self.total: dict[str, float] = defaultdict(float)
        self.inner: list[float] = []  # time spent in nested parts of the part being timed

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    @contextmanager
    def part(self, name: str):
        """Time ``name``, less what nested parts inside it took."""
        start = self.now()
        self.inner.append(0.0)
        try:
            yield
        finally:
            spent = self.now() - start
            nested = self.inner.pop()
            if self.inner:
                self.inner[-1] += spent
            if self.step >= WARMUP:
                self.total[name] += spent - nested


def _wrap(clock: Clock, name: str, fn):
    def timed(*args, **kwargs):
        with clock.part(name):
            return fn(*args, **kwargs)
    return timed


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_paper_step_parts(benchmark, tmp_path, monkeypatch, device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    import uniap
    import uniap_train.recipes.paper as paper
    import uniap_train.trainer as trainer
    from uniap_train.config import load_config
    from uniap_train.decoder import PaperModel

    _images(tmp_path / "images")
    clock = Clock(device == "cuda")
    recipe = paper.PaperRecipe
    monkeypatch.setattr(recipe, "teacher_targets", _wrap(clock, "teacher", recipe.teacher_targets))
    monkeypatch.setattr(recipe, "_region_targets", _wrap(clock, "teacher", recipe._region_targets))
    monkeypatch.setattr(paper, "teacher_hierarchy", _wrap(clock, "uniap", paper.teacher_hierarchy))
    monkeypatch.setattr(uniap, "segment", _wrap(clock, "uniap", uniap.segment))
    monkeypatch.setattr(PaperModel, "forward", _wrap(clock, "student", PaperModel.forward))
    monkeypatch.setattr(recipe, "_match_levels", staticmethod(_wrap(clock, "matching", recipe._match_levels)))
    monkeypatch.setattr(recipe, "loss", _wrap(clock, "loss", recipe.loss))
    step_fn = trainer.train_one_step
    marks = {"end": None}

    def timed_step(state, batch, step):
        if marks["end"] is not None and clock.step >= WARMUP:
            clock.total["data"] += clock.now() - marks["end"]
        with clock.part("optimizer"):  # what the nested parts leave: backward, optimizer, EMA
            out = step_fn(state, batch, step)
        clock.step += 1
        marks["end"] = clock.now()
        return out

    monkeypatch.setattr(trainer, "train_one_step", timed_step)

    def run():
        trainer.train(load_config(None, _overrides(tmp_path / "images", tmp_path / f"run{clock.step}", device)))

    benchmark.pedantic(run, rounds=1, iterations=1)
    per_step = {p: clock.total[p] / STEPS for p in PARTS}
    total = sum(per_step.values())
    benchmark.extra_info.update({f"{p}_s": v for p, v in per_step.items()})
    benchmark.extra_info.update({f"{p}_share": v / total for p, v in per_step.items()}, step_s=total)
    print(f"\npaper recipe, batch 4, teacher 96 px, {device}: {total * 1000:.0f} ms per step")
    for p in PARTS:
        print(f"  {p:10s} {per_step[p] * 1000:8.1f} ms  {100 * per_step[p] / total:5.1f} %")
    assert clock.step == WARMUP + STEPS and total > 0


def test_paper_data_per_image(benchmark, tmp_path):
    """The data side of one image at the paper's settings (``examples/configs/paper_vitb8.yaml``):
    decode an SA-1B-sized JPEG (1500 x 2250) from a tar shard, downscale to 640, the teacher's
    448 px view, 2 local crops of 224 and the whole view with jitter, and the superpixels of
    ``uniap.nodes: superpixels`` (150 px each) with every view's target ids.  One core; a GPU
    step needs ``data.batch_size / processes`` of these per process, spread over its workers."""
    import io
    import tarfile

    from PIL import Image

    from uniap_train.config import load_config
    from uniap_train.data import PaperDataset
    from uniap_train.shards import ShardStream

    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (30, 45, 3), dtype=np.uint8)  # smooth regions, then texture
    image = np.asarray(Image.fromarray(small).resize((2250, 1500), Image.BICUBIC)).copy()
    image += rng.integers(0, 16, image.shape, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=90)
    shard = tmp_path / "sa_000000.tar"
    with tarfile.open(shard, "w") as tf:
        for i in range(4):
            info = tarfile.TarInfo(f"sa_{i}.jpg")
            info.size = len(buf.getvalue())
            tf.addfile(info, io.BytesIO(buf.getvalue()))
    cfg = load_config(REPO / "examples" / "configs" / "paper_vitb8.yaml", ["data.root=x"])
    dataset = PaperDataset([], cfg.crops, 0, cfg.data.max_side, None, patch_size=8, pixels=True,
                           regions={"size": cfg.uniap.superpixel_size, "contours": False, "target_scale": 2})
    stream = ShardStream([str(shard)], dataset, seed=0, shuffle_buffer=0, max_side=cfg.data.max_side)
    samples = iter(stream)
    next(samples)  # warm-up: Numba, imports
    benchmark.pedantic(lambda: next(samples), rounds=3, iterations=1)
    s = benchmark.stats.stats.median
    benchmark.extra_info.update(seconds_per_image=s, jpeg_bytes=len(buf.getvalue()))
    print(f"\npaper data pipeline, one 1500 x 2250 JPEG from a shard: {s * 1000:.0f} ms per image on one core")
