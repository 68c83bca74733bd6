"""The paper's rule (``preset="paper"``) against the ``F @ F.T`` floor of the same grid (#22).

Run (docs/benchmarks.md, "The paper's rule")::

    flock /tmp/heavy.lock python -m pytest bench/test_paper_rule.py --benchmark-only \\
        --benchmark-group-by=param:side --benchmark-json=paper.json
    python bench/paper_rule_ratios.py paper.json

Per side (32, 64, 96, 112; C = 384, ViT-like synthetic features): the floor is ``F @ F.T``
in NumPy and torch, float32 and float64 (the ratio table divides by the fastest of the four
in the same run); the paper rule runs on NumPy input (``backend="auto"``: Numba) and on CPU
tensors (torch), with and without ``semantic=True``.  Torch uses two threads, as NumPy's BLAS.
"""

from __future__ import annotations

import numpy as np
import pytest

import uniap
from uniap.synthetic import piecewise_features

SIDES = (32, 64, 96, 112)
CHANNELS = 384
ROUNDS = {32: 7, 64: 5, 96: 3, 112: 3}


@pytest.fixture(scope="module", params=SIDES, ids=lambda s: f"{s}")
def side(request) -> int:
    return request.param


@pytest.fixture(scope="module")
def features(side) -> np.ndarray:
    return piecewise_features((side, side), channels=CHANNELS, seed=side)


def _torch():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    return torch


@pytest.mark.parametrize("kind", ["numpy-float32", "numpy-float64", "torch-float32", "torch-float64"])
def test_floor(benchmark, features, side, kind):
    """F @ F.T, the all-pairs affinity every profile row is a row of."""
    library, dtype = kind.split("-")
    f = features.reshape(-1, CHANNELS).astype(dtype)
    if library == "torch":
        f = _torch().from_numpy(f)
    benchmark.extra_info.update(side=side, role="floor", kind=kind)
    benchmark.pedantic(lambda: f @ f.T, rounds=ROUNDS[side], iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("semantic", [False, True], ids=["instance", "semantic"])
@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_paper_rule(benchmark, features, side, library, semantic):
    x = features if library == "numpy" else _torch().from_numpy(features)
    benchmark.extra_info.update(side=side, role="paper", kind=f"{library}{'-semantic' if semantic else ''}")
    h = benchmark.pedantic(uniap.segment, args=(x,), kwargs={"preset": "paper", "semantic": semantic},
                           rounds=ROUNDS[side], iterations=1, warmup_rounds=1)
    benchmark.extra_info["clusters"] = [lv.num_clusters for lv in h.levels]
