"""The torch and CuPy backends: torch on the CPU against Numba, and both on a GPU.

CPU (torch against Numba on the core sizes)::

    python -m pytest bench/test_gpu.py --benchmark-only -k "test_cpu and 64x64"

Numba is single-threaded, so ``torch-1-thread`` is the like-for-like comparison; the
``torch-default-threads`` case uses torch's default intra-op threads as a user would.

GPU (skipped without CUDA): a training-shaped batch of 32 images x (2 global 28x28 + 10 local
12x12 crops) x 384 channels, one 128x128x768 grid, and 32 x 64x64x768 grids, each one graph
contracted in one pass per threshold::

    python -m pytest bench/test_gpu.py --benchmark-only -m gpu

(``-k gpu`` would also select the CPU cases, whose module is test_gpu.py, and ``-k 64x64``
the 32x64x64x768 GPU case.)

Every GPU timing ends with a device synchronisation inside the timed function; images/s and
ms per image are in ``extra_info`` (``--benchmark-json``), a batch counting its images, not
its crops.  See docs/gpu.md.
"""

from __future__ import annotations

import contextlib
import importlib.util
from functools import lru_cache

import numpy as np
import pytest

import uniap
from uniap.synthetic import piecewise_features

torch = pytest.importorskip("torch")


@contextlib.contextmanager
def torch_threads(threads: int | None):
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


CPU_CASES = [
    pytest.param("numba", None, id="numba"),
    pytest.param("torch", 1, id="torch-1-thread"),
    pytest.param("torch", None, id="torch-default-threads"),
]


@pytest.mark.parametrize("backend, threads", CPU_CASES)
def test_cpu(benchmark, grid, backend, threads):
    """Default levels on the core sizes: torch on CPU tensors against the Numba kernels."""
    side = grid.shape[0]
    benchmark.group = f"cpu {side}x{side}x{grid.shape[-1]}"
    features = torch.from_numpy(grid) if backend == "torch" else grid
    with torch_threads(threads if backend == "torch" else None) as used:
        uniap.segment(features, backend=backend)  # compile / warm caches outside the timing
        h = benchmark(uniap.segment, features, backend=backend)
    benchmark.extra_info["threads"] = used if backend == "torch" else 1
    benchmark.extra_info["clusters"] = [lv.num_clusters for lv in h.levels]


# -- GPU ----------------------------------------------------------------------------------


def _gpu_reason(library: str) -> str | None:
    if library == "torch":
        return None if torch.cuda.is_available() else "no CUDA device: torch.cuda.is_available() is False"
    if importlib.util.find_spec("cupy") is None:
        return "CuPy is not installed"
    return uniap.backends.available().get("cupy")


@lru_cache(maxsize=None)
def _host_case(case: str):
    """(features on the host, number of images) of a GPU case; a list is a mixed batch."""
    rng = np.random.default_rng(0)
    if case == "train-32x(2x28x28+10x12x12)x384":
        shapes = [(28, 28)] * 2 + [(12, 12)] * 10
        crops = [piecewise_features(s, channels=384, seed=rng) for _ in range(32) for s in shapes]
        return crops, 32
    if case == "128x128x768":
        return piecewise_features((128, 128), channels=768, seed=rng), 1
    if case == "32x64x64x768":
        return np.stack([piecewise_features((64, 64), channels=768, seed=rng) for _ in range(32)]), 32
    raise KeyError(case)


GPU_CASES = ["train-32x(2x28x28+10x12x12)x384", "128x128x768", "32x64x64x768"]


@pytest.mark.gpu
@pytest.mark.parametrize("exact", [False, True], ids=["fast", "exact"])
@pytest.mark.parametrize("library", ["torch", "cupy"])
@pytest.mark.parametrize("case", GPU_CASES)
def test_gpu(benchmark, case, library, exact):
    reason = _gpu_reason(library)
    if reason is not None:
        pytest.skip(reason)
    host, images = _host_case(case)
    if library == "torch":
        to_device = lambda a: torch.from_numpy(a).cuda()  # noqa: E731
        synchronize = torch.cuda.synchronize
    else:
        import cupy

        to_device = cupy.asarray
        synchronize = cupy.cuda.get_current_stream().synchronize
    features = [to_device(g) for g in host] if isinstance(host, list) else to_device(host)
    benchmark.group = f"gpu {case}"

    def run():
        out = uniap.segment(features, backend=library, exact=exact)
        synchronize()
        return out

    run()  # CUDA context, kernels, allocator caches
    result = benchmark(run)
    if benchmark.stats is None:  # --benchmark-disable: run once, nothing timed
        return
    median = benchmark.stats.stats.median
    hs = result if isinstance(result, list) else [result]
    benchmark.extra_info.update(
        images=images,
        crops=len(hs),
        images_per_s=images / median,
        ms_per_image=1e3 * median / images,
        clusters_first_image=[lv.num_clusters for lv in hs[0].levels],
    )
