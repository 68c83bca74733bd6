"""Peak memory of ``uniap-train`` with 1k and with 1M training images: it should not grow.

* ``shards``: a trainer process (``python -m uniap_train``, 2 DataLoader workers, 3 steps of a
  tiny model) on 10 shards of 100 images and on 1,000 shards of 1,000 images (1x1 PNGs, about
  1 GB of tars written to a temporary folder).  It counts the shards' headers at the start and
  streams them; its peak RSS (the largest process: the trainer) goes in ``extra_info``.
* ``folder``: what the folder kind holds per image, in a process of its own: the data set's
  path array and one epoch of the resumable sampler, for 1k and 1M synthetic paths (no files:
  the listing itself is ``sorted(rglob)``, a list the size of the data set, dropped after).

Run: ``python -m pytest bench/test_train_memory.py -q -s`` (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _peak_rss_mb(code: str, *args: str) -> float:
    """Peak RSS (MB) of the largest process ``code`` starts (``python -c``) and waits for."""
    wrapper = textwrap.dedent("""
        import resource, subprocess, sys
        subprocess.run([sys.executable, "-c", sys.argv[1], *sys.argv[2:]], check=True)
        print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", wrapper, code, *args], env=env, capture_output=True, text=True,
                         timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    return int(out.stdout.strip().splitlines()[-1]) / 1024  # ru_maxrss: KiB


def _write_shards(folder: Path, shards: int, per_shard: int) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (24, 16), (90, 30, 200)).save(buf, format="PNG")
    png = buf.getvalue()
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with tarfile.open(folder / f"sa_{s:06d}.tar", "w") as tf:
            for m in range(per_shard):
                info = tarfile.TarInfo(f"sa_{s * per_shard + m}.png")
                info.size = len(png)
                tf.addfile(info, io.BytesIO(png))


TRAIN = """
import sys
from uniap_train.config import load_config
from uniap_train.trainer import train
root, out = sys.argv[1], sys.argv[2]
train(load_config(None, [
    "data.kind=shards", f"data.root={root}", "data.batch_size=4", "data.num_workers=2", "data.max_side=32",
    "crops.global_size=16", "crops.local_size=8", "crops.num_local=1", "model.hidden_dim=16",
    "model.bottleneck_dim=16", "model.out_dim=16", "loss.region_size=2", "optim.total_steps=100000",
    "optim.max_steps=3", "log.progress=false", "log.tensorboard=false", "device=cpu", "threads=1",
    f"output_dir={out}"]))
"""


@pytest.mark.parametrize("shards, per_shard", [(10, 100), (1000, 1000)], ids=["1k", "1M"])
def test_trainer_peak_rss_on_shards(benchmark, tmp_path, shards, per_shard):
    folder = tmp_path / "shards"
    _write_shards(folder, shards, per_shard)
    peak = benchmark.pedantic(_peak_rss_mb, args=(TRAIN, str(folder / "*.tar"), str(tmp_path / "run")),
                              rounds=1, iterations=1)
    benchmark.extra_info.update(peak_rss_mb=peak, images=shards * per_shard, shards=shards)
    print(f"\nshards: {shards * per_shard} images in {shards} shards: trainer peak RSS {peak:.1f} MB")


FOLDER = """
import sys
import numpy as np
from uniap_train.config import CropConfig
from uniap_train.data import MultiCropDataset, ResumableDistributedSampler
n = int(sys.argv[1])
from pathlib import Path
paths = [Path(f"/data/sa1b/images/sa_{i // 11000:06d}/sa_{i:09d}.jpg") for i in range(n)]  # as list_images
ds = MultiCropDataset(paths, CropConfig(), seed=0, max_side=64)
del paths
sampler = ResumableDistributedSampler(ds, 64, num_replicas=8, rank=3, seed=0)
sampler.set_epoch(1)
count = sum(1 for _ in sampler)
assert count == sampler.batches_per_epoch * 64
"""


@pytest.mark.parametrize("n", [1000, 1_000_000], ids=["1k", "1M"])
def test_folder_index_peak_rss(benchmark, n):
    peak = benchmark.pedantic(_peak_rss_mb, args=(FOLDER, str(n)), rounds=1, iterations=1)
    benchmark.extra_info.update(peak_rss_mb=peak, images=n)
    print(f"\nfolder: {n} paths: peak RSS {peak:.1f} MB (listing, path array, one sampler epoch)")
