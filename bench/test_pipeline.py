"""uniap-cli on a folder of 100 BSDS500 images against its own floor, measured in the same run.

* ``test_folder_run[workers=N]``: ``uniap-cli FOLDER --out OUT --workers N`` called in this
  process (imports and compiled kernels warm, as in a long run), every image written anew.
  ``extra_info``: seconds per image and their ratio to the floor.
* ``test_folder_process[workers=N]``: the same as a new process (start-up, imports and
  Numba's kernels included).
* The floor (``floor_s_per_image``): default features + UniAP of every image, in this process,
  with the backend the CLI picks for 100 images (Numba).
* ``test_vit_folder_run``: a tiny timm ViT (``vit_tiny_patch16_224``, random weights saved
  here) with ``--workers 2 --batch-size 4`` against ``batch_grids`` + ``segment`` on batches
  of 4 in this process.

Run alone (another suite that imports torch first makes the default extractor's workers
spawned instead of forked)::

    python -m pytest bench/test_pipeline.py --benchmark-only -s
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import uniap
from uniap.cli import main
from uniap.features import get_extractor, load_image

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bsds500" / "images" / "val"


@pytest.fixture(scope="module")
def folder() -> Path:
    paths = sorted(DATA.glob("*.jpg"))
    if len(paths) < 100:
        pytest.skip("../shared/data/bsds500 is not beside this checkout")
    return DATA


@pytest.fixture(scope="module")
def floor(folder) -> float:
    """Features + pooling per image (Numba, warm), the work the CLI cannot avoid."""
    images = [load_image(p) for p in sorted(folder.glob("*.jpg"))]
    extractor = get_extractor("default")
    uniap.segment(extractor(images[0]).features, backend="numba")
    start = time.perf_counter()
    for image in images:
        uniap.segment(extractor(image).features, backend="numba")
    return (time.perf_counter() - start) / len(images)


def _record(benchmark, floor: float, images: int) -> None:
    per_image = benchmark.stats.stats.median / images
    benchmark.extra_info.update(floor_s_per_image=floor, s_per_image=per_image,
                                ratio_to_floor=per_image / floor, images_per_s=1 / per_image)
    print(f"\n{benchmark.name}: {per_image * 1e3:.1f} ms/image, {1 / per_image:.1f} images/s, "
          f"{per_image / floor:.2f}x the floor ({floor * 1e3:.1f} ms)")


@pytest.mark.parametrize("workers", [1, 2], ids=lambda w: f"workers={w}")
def test_folder_run(benchmark, folder, floor, tmp_path, workers):
    argv = [str(folder), "--out", str(tmp_path / "out"), "--overwrite", "--quiet", "--workers", str(workers)]
    main(argv)
    benchmark.pedantic(main, args=(argv,), rounds=3, iterations=1)
    _record(benchmark, floor, 100)


@pytest.mark.parametrize("workers", [1, 2], ids=lambda w: f"workers={w}")
def test_folder_process(benchmark, folder, floor, tmp_path, workers):
    command = [sys.executable, "-m", "uniap", str(folder), "--out", str(tmp_path / "out"), "--overwrite",
               "--quiet", "--workers", str(workers)]
    subprocess.run(command, check=True)
    benchmark.pedantic(subprocess.run, args=(command,), kwargs={"check": True}, rounds=3, iterations=1)
    _record(benchmark, floor, 100)


def test_vit_folder_run(benchmark, folder, tmp_path):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    weights = tmp_path / "vit_tiny.pt"
    torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0).state_dict(), weights)
    extractor = get_extractor("vit", model="vit_tiny_patch16_224", weights=str(weights))
    images = [load_image(p) for p in sorted(folder.glob("*.jpg"))]
    by_shape: dict = {}
    for image in images:
        by_shape.setdefault(image.shape, []).append(image)
    batches = [group[i:i + 4] for group in by_shape.values() for i in range(0, len(group), 4)]
    uniap.segment([g.features for g, _ in extractor.batch_grids(batches[0])], backend="numba")
    start = time.perf_counter()
    for batch in batches:
        uniap.segment([g.features for g, _ in extractor.batch_grids(batch)], backend="numba")
    floor = (time.perf_counter() - start) / len(images)

    argv = [str(folder), "--out", str(tmp_path / "out"), "--overwrite", "--quiet", "--workers", "2",
            "--batch-size", "4", "--features", "vit", "--model", "vit_tiny_patch16_224", "--weights", str(weights)]
    main(argv)
    benchmark.pedantic(main, args=(argv,), rounds=3, iterations=1)
    _record(benchmark, floor, len(images))
