"""The CuPy backend: CuPy arrays on a CUDA device, the same code paths as torch on CUDA.

CuPy is imported when the backend first runs, never by ``import uniap`` (arrays are
recognised with ``array_api_compat.is_cupy_array``, which does not import CuPy), and a
machine without CuPy or without a CUDA device only sees ``unavailable_reason()`` say so.

The released rule runs the fixed-shape device loop of :mod:`uniap.backends._device` (float32
scores, float64 node sums, one wait for the device per pass); other options run the generic
engine in float64.  The primitives CuPy lacks for int64 (atomic min and add, a compaction
that does not wait for the device) are three one-line elementwise kernels.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
from array_api_compat import is_cupy_array, is_torch_array

from .registry import register
from .base import Backend

if TYPE_CHECKING:
    from ..core.levels import RunResult
    from ..core.graph import Graph
    from ..core.options import Options


def _cupy() -> Any:
    import cupy

    return cupy


@lru_cache(maxsize=None)
def _kernels() -> tuple[Any, Any, Any]:
    cp = _cupy()
    scatter_min = cp.ElementwiseKernel(
        "int64 index, int64 value", "raw int64 target",
        "atomicMin(&target[index], value)", "uniap_scatter_min_i64",
    )
    scatter_add = cp.ElementwiseKernel(
        "int64 index, int64 value", "raw int64 target",
        "atomicAdd((unsigned long long *)&target[index], (unsigned long long)value)",
        "uniap_scatter_add_i64",
    )
    # ``position`` is the inclusive running count of ``mask``: entry i goes to slot position - 1.
    compact = cp.ElementwiseKernel(
        "bool mask, int64 position", "raw int64 out",
        "if (mask) out[position - 1] = i", "uniap_compact",
    )
    return scatter_min, scatter_add, compact


@register
class CupyBackend(Backend):
    """CuPy arrays on a CUDA device; float32 scores, float64 sums (DESIGN.md 1.5)."""

    name = "cupy"
    library = "cupy"

    # -- discovery -------------------------------------------------------------------
    def unavailable_reason(self) -> str | None:
        return _unavailable_reason()

    def accepts(self, x: Any) -> bool:
        return is_cupy_array(x)

    # -- array handling --------------------------------------------------------------
    @property
    def xp(self) -> Any:
        from array_api_compat import cupy as xp

        return xp

    def score_dtype(self, x: Any) -> Any:
        return _cupy().float32

    def is_async(self, x: Any) -> bool:
        return True

    def block_elements(self, x: Any) -> int:
        return 1 << 23  # 32 MiB float32 blocks: few launches, no N x C temporaries

    def prepare_features(self, x: Any) -> Any:
        cp = _cupy()
        with x.device:
            return cp.array(x, dtype=cp.float64, order="C", copy=True)

    def from_any(self, x: Any) -> Any:
        cp = _cupy()
        if is_torch_array(x) and x.device.type == "cuda":
            return cp.from_dlpack(x.detach())  # stays on its GPU
        from ..core.hierarchy import to_numpy

        return cp.asarray(to_numpy(x))

    def all_finite(self, x: Any) -> bool:
        return True  # checked by run(), from the row norms it computes anyway

    def asarray_index(self, a: np.ndarray, like: Any) -> Any:
        cp = _cupy()
        with like.device:
            return cp.asarray(np.asarray(a, dtype=np.int64))

    def to_numpy(self, a: Any) -> np.ndarray:
        return _cupy().asnumpy(a)

    def fetch(self, *scalars: Any) -> list[int]:
        if not scalars:
            return []
        cp = _cupy()
        return cp.stack([cp.asarray(s).astype(cp.int64) for s in scalars]).get().tolist()

    # -- graph primitives ------------------------------------------------------------
    def components(self, num_nodes: int, a: Any, b: Any) -> tuple[Any, int]:
        from ._device import label_components

        cp = _cupy()
        label = label_components(self, self.xp, num_nodes, a, b)
        rank = cp.cumsum(label == cp.arange(num_nodes, dtype=cp.int64), dtype=cp.int64) - 1
        k = int(rank[-1]) + 1 if num_nodes else 0
        return rank[label], k

    def segment_sum(self, values: Any, labels: Any, num: int, rows: Any | None = None) -> Any:
        cp = _cupy()
        # Also called after run() (the cluster means), outside its device context: the sums
        # belong on the values' GPU, not the current one.
        with values.device:
            src = values if rows is None else cp.take(values, rows, axis=0)
            out = cp.zeros((num, *values.shape[1:]), dtype=values.dtype)
            self.index_add_(out, labels, src)
        return out

    def first_occurrences(self, comp: Any, k: int) -> Any:
        cp = _cupy()
        n = comp.shape[0]
        first = cp.full((k,), n, dtype=cp.int64)
        self.scatter_min_(first, comp, cp.arange(n, dtype=cp.int64))
        return first

    def unique_edges(self, a: Any, b: Any, num_nodes: int) -> tuple[Any, Any]:
        cp = _cupy()
        keep = a != b
        lo, hi = cp.minimum(a[keep], b[keep]), cp.maximum(a[keep], b[keep])
        key = cp.unique(lo * num_nodes + hi)  # sorted
        return key // num_nodes, key % num_nodes

    # -- fixed-shape primitives ------------------------------------------------------
    def take(self, x: Any, index: Any, axis: int = 0) -> Any:
        return _cupy().take(x, index, axis=axis)

    def scatter_min_(self, target: Any, index: Any, values: Any) -> None:
        cp = _cupy()
        if target.dtype == cp.int64:
            _kernels()[0](index.astype(cp.int64, copy=False), values.astype(cp.int64, copy=False), target)
        else:
            import cupyx

            cupyx.scatter_min(target, index, values)

    def index_add_(self, target: Any, index: Any, values: Any) -> None:
        cp = _cupy()
        if target.dtype == cp.int64:
            _kernels()[1](index.astype(cp.int64, copy=False), values.astype(cp.int64, copy=False), target)
        else:
            import cupyx

            cupyx.scatter_add(target, index, values)  # float64 rows: atomicAdd, sm_60 and up

    def compact(self, mask: Any, count: int) -> Any:
        cp = _cupy()
        out = cp.empty((count,), dtype=cp.int64)
        if count:
            _kernels()[2](mask, cp.cumsum(mask, dtype=cp.int64), out)
        return out

    # -- a whole run -----------------------------------------------------------------
    def run(
        self, graph: "Graph", options: "Options", track_margin: bool = False, exact: bool = False
    ) -> "RunResult":
        from ._device import check_finite, run_released, wants_device_loop

        with graph.x.device:  # kernels and new arrays on the input's GPU
            if wants_device_loop(options, track_margin):
                return run_released(self, graph, options, exact=exact)  # checks finiteness
            check_finite(self, self.xp, graph.x, name=graph.name)
            return super().run(graph, options, track_margin=track_margin, exact=exact)


@lru_cache(maxsize=1)
def _unavailable_reason() -> str | None:
    if importlib.util.find_spec("cupy") is None:
        return "CuPy is not installed (pip install 'uniap[cupy]')"
    try:
        cp = _cupy()
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, driver too old, CUDA libraries missing
        return f"no CUDA device ({type(exc).__name__}: {exc})"
    if count == 0:
        return "no CUDA device"
    return None
