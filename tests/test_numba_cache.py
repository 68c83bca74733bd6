"""The Numba kernels compile once and are loaded from the disk cache by later processes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("numba")

PROBE = """
import json, numpy as np, uniap
from uniap.backends import _numba_kernels as k
uniap.segment(np.random.default_rng(0).normal(size=(9, 7, 5)).astype(np.float32), backend="numba")
uniap.segment(np.random.default_rng(0).normal(size=(9, 7, 5)), backend="numba")
stats = k.contract_all.stats
print(json.dumps({"hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values())}))
"""


def run_probe() -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_loads_compiled_kernels_from_cache():
    run_probe()  # compiles (or loads) and writes the cache
    second = run_probe()
    assert second["misses"] == 0 and second["hits"] == 2, second
