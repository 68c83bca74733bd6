"""The torch backend: CPU and CUDA tensors, a whole batch in one pass, results on the device.

torch is imported when the backend first runs, never by ``import uniap``: tensors are
recognised with ``array_api_compat.is_torch_array``, which does not import torch.

The released rule (sum pooling, cosine scores) runs the fixed-shape device loop of
:mod:`uniap.backends._device`: one wait for the device per pass.  The paper's options
(attention pooling, voting), semantic groups and ``track_margin`` run the generic engine of
:mod:`uniap.core.levels` on the primitives below, in float64.

On a CPU every score is float64, as in the NumPy reference.  On CUDA, scores are float32
(node sums stay float64); ``exact=True`` re-decides the scores within 1e-5 of a threshold
in float64.  The run works on detached data; cluster means (``Level.features``) are
computed from the caller's tensor, so they are differentiable when it requires grad.
"""

from __future__ import annotations

from dataclasses import replace

import importlib.util
from typing import TYPE_CHECKING, Any

import numpy as np
from array_api_compat import is_cupy_array, is_torch_array

from .registry import register
from .base import Backend

if TYPE_CHECKING:
    from ..core.levels import RunResult
    from ..core.graph import Graph
    from ..core.options import Options


def _torch() -> Any:
    import torch

    return torch


@register
class TorchBackend(Backend):
    """torch tensors on any device; float32 scores on CUDA, float64 on the CPU."""

    name = "torch"
    library = "torch"
    # CPU tensors under the released rule go to the Numba kernels when they are installed
    # (see _run_on_numba); tests switch this off to exercise the device loop on a CPU.
    numba_on_cpu = True

    # -- discovery -------------------------------------------------------------------
    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("torch") is None:
            return "torch is not installed (pip install 'uniap[torch]')"
        return None

    def accepts(self, x: Any) -> bool:
        return is_torch_array(x)

    # -- array handling --------------------------------------------------------------
    @property
    def xp(self) -> Any:
        from array_api_compat import torch as xp

        return xp

    def score_dtype(self, x: Any) -> Any:
        torch = _torch()
        return torch.float64 if x.device.type == "cpu" else torch.float32

    def is_async(self, x: Any) -> bool:
        return x.device.type != "cpu"

    def block_elements(self, x: Any) -> int:
        # CPU: blocks of a few hundred rows stay in cache and avoid page-faulting fresh
        # buffers; CUDA: a block is a few launches, so make it large.
        return 1 << 18 if x.device.type == "cpu" else 1 << 23

    def prepare_features(self, x: Any) -> Any:
        # The engine works on detached data; the caller's tensor (and its graph) is only
        # read again for the cluster means.
        torch = _torch()
        x = x.detach()
        if self._numba_reads(x):
            return x.contiguous()  # read as it is; run() copies it if another path takes it
        return _float64_copy(x)

    def _numba_reads(self, x: Any) -> bool:
        """Whether the Numba kernels would read ``x`` directly (CPU, float32 or float64)."""
        torch = _torch()
        return (self.numba_on_cpu and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
                and _numba_backend() is not None)

    def from_any(self, x: Any) -> Any:
        torch = _torch()
        if is_cupy_array(x):
            return torch.from_dlpack(x)  # stays on its GPU
        from ..core.hierarchy import to_numpy

        return torch.tensor(np.asarray(to_numpy(x)))

    def all_finite(self, x: Any) -> bool:
        # Checked by run(), from the row norms it computes anyway (no extra pass over the
        # input, no extra wait for a GPU).
        return True

    def asarray_index(self, a: np.ndarray, like: Any) -> Any:
        # torch.tensor copies (the grid edge cache is read-only) and sends in one step.
        return _torch().tensor(np.asarray(a, dtype=np.int64), device=like.device)

    def to_numpy(self, a: Any) -> np.ndarray:
        return a.detach().cpu().numpy()

    def fetch(self, *scalars: Any) -> list[int]:
        if len(scalars) < 2:
            return [int(s.tolist()) for s in scalars]  # one 0-d read
        torch = _torch()
        values = [s if s.dtype == torch.int64 else s.to(torch.int64) for s in scalars]
        return torch.stack(values).tolist()  # one transfer

    def edge_cosines(self, feats: Any, norms: Any | None, a: Any, b: Any, eps: float = 1e-10) -> Any:
        m, c = int(a.shape[0]), int(feats.shape[1])
        if feats.device.type != "cpu" or norms is None or m * c <= 1 << 14:
            return super().edge_cosines(feats, norms, a, b, eps)
        # On a CPU, gather into two reused blocks and reduce in place: fresh block-sized
        # temporaries would be page-faulted in on every block.
        torch = _torch()
        out = torch.empty((m,), dtype=feats.dtype)
        step = max(1, min(m, self.block_elements(feats) // max(1, c)))
        buf_a = torch.empty((step, c), dtype=feats.dtype)
        buf_b = torch.empty((step, c), dtype=feats.dtype)
        for s in range(0, m, step):
            ia, ib = a[s : s + step], b[s : s + step]
            k = int(ia.shape[0])
            fa = torch.index_select(feats, 0, ia, out=buf_a[:k])
            fb = torch.index_select(feats, 0, ib, out=buf_b[:k])
            torch.sum(fa.mul_(fb), dim=1, out=out[s : s + k])
        return out.div_(norms.index_select(0, a) * norms.index_select(0, b))

    def shifted_dots(self, feats: Any, lo: int, hi: int, d: int) -> Any:
        if feats.device.type != "cpu":
            return super().shifted_dots(feats, lo, hi, d)
        torch = _torch()
        c = int(feats.shape[1])
        out = torch.empty((hi - lo,), dtype=feats.dtype)
        step = max(1, min(hi - lo, self.block_elements(feats) // max(1, c)))
        buf = torch.empty((step, c), dtype=feats.dtype)
        for s in range(lo, hi, step):
            e = min(hi, s + step)
            prod = torch.mul(feats[s:e], feats[s + d : e + d], out=buf[: e - s])
            torch.sum(prod, dim=1, out=out[s - lo : e - lo])
        return out

    # -- the paper's profiles ---------------------------------------------------------
    def gram(self, unit: Any) -> Any:
        torch = _torch()
        if unit.device.type == "cuda":
            # The float32 profiles' error bound assumes float32 products: never TF32.
            saved = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = False
            try:
                return unit @ unit.T
            finally:
                torch.backends.cuda.matmul.allow_tf32 = saved
        if unit.device.type != "cpu" or not unit.is_contiguous():
            return unit @ unit.T
        # BLAS syrk on the same memory: half the multiplications of torch's gemm.
        from .numba_backend import symmetric_gram

        return torch.from_numpy(symmetric_gram(unit.numpy()))

    def profile_l1(self, prof: Any, a: Any, b: Any, wa: Any, wb: Any) -> Any:
        numba = _numba_backend()
        torch = _torch()
        if (numba is None or prof.device.type != "cpu" or prof.dtype not in (torch.float32, torch.float64)
                or not prof.is_contiguous()):
            return super().profile_l1(prof, a, b, wa, wb)
        # One fused pass over the two rows (the Numba kernel, on NumPy views of the tensors).
        return torch.from_numpy(numba.profile_l1(prof.numpy(), a.numpy(), b.numpy(), wa.numpy(), wb.numpy()))

    # -- graph primitives ------------------------------------------------------------
    def components(self, num_nodes: int, a: Any, b: Any) -> tuple[Any, int]:
        from ._device import label_components

        torch = _torch()
        label = label_components(self, self.xp, num_nodes, a, b)
        is_root = label == torch.arange(num_nodes, device=label.device)
        rank = torch.cumsum(is_root, 0) - 1  # roots in increasing order: canonical numbers
        k = int(rank[-1]) + 1 if num_nodes else 0
        return rank[label], k

    def segment_sum(self, values: Any, labels: Any, num: int, rows: Any | None = None) -> Any:
        torch = _torch()
        if (values.device.type == "cpu" and values.ndim == 2 and not values.requires_grad
                and values.dtype == torch.float64 and values.is_contiguous()):
            # SciPy's CSR product reads only the listed rows, in the given order (the NumPy
            # backend's sum): no gathered copy of the rows (the paper's profile rows are long).
            from .numpy_backend import NumpyBackend

            out = NumpyBackend.segment_sum(self, values.numpy(), labels.numpy(), num,
                                           rows=None if rows is None else rows.numpy())
            return torch.from_numpy(np.ascontiguousarray(out))
        src = values if rows is None else values.index_select(0, rows)
        out = torch.zeros((num, *values.shape[1:]), dtype=values.dtype, device=values.device)
        # Out of place, so that the result carries autograd history (cluster means).
        return out.index_add(0, labels, src)

    def first_occurrences(self, comp: Any, k: int) -> Any:
        torch = _torch()
        n = comp.shape[0]
        first = torch.full((k,), n, dtype=torch.int64, device=comp.device)
        return first.scatter_reduce(0, comp, torch.arange(n, device=comp.device), reduce="amin")

    def unique_edges(self, a: Any, b: Any, num_nodes: int) -> tuple[Any, Any]:
        torch = _torch()
        keep = torch.nonzero(a != b).reshape(-1)
        a, b = a[keep], b[keep]
        key = torch.unique(torch.minimum(a, b) * num_nodes + torch.maximum(a, b))  # sorted
        return key // num_nodes, key % num_nodes

    # -- fixed-shape primitives ------------------------------------------------------
    def take(self, x: Any, index: Any, axis: int = 0) -> Any:
        return x.index_select(axis, index)

    def bincount(self, index: Any, n: int) -> Any:
        if self.is_async(index):  # torch.bincount sizes its result from the data: a wait
            return super().bincount(index, n)
        return _torch().bincount(index, minlength=n)

    def scatter_min_(self, target: Any, index: Any, values: Any) -> None:
        target.scatter_reduce_(0, index, values, reduce="amin")

    def index_add_(self, target: Any, index: Any, values: Any) -> None:
        target.index_add_(0, index, values)

    def compact(self, mask: Any, count: int) -> Any:
        torch = _torch()
        if not self.is_async(mask):  # a NumPy view of a CPU tensor: a third of torch's time
            return torch.from_numpy(np.flatnonzero(mask.numpy()))
        return torch.nonzero_static(mask, size=count).reshape(-1)  # sized: no wait

    # -- a whole run -----------------------------------------------------------------
    def run(
        self, graph: "Graph", options: "Options", track_margin: bool = False, exact: bool = False
    ) -> "RunResult":
        from ._device import check_finite, run_released, wants_device_loop

        if self._numba_reads(graph.x) and (wants_device_loop(options, track_margin) or options.needs_profiles):
            # The paper's profiles too: per-operation overhead (and thread-pool hand-offs) make
            # torch's CPU ops several times slower than the same engine on NumPy views.
            return _run_on_numba(graph, options, track_margin)
        if self._numba_reads(graph.x):
            # prepare_features left the caller's memory as it is for the kernels: the engines
            # below overwrite rows, so they get their own float64 copy.
            graph = replace(graph, x=_float64_copy(graph.x))
        if wants_device_loop(options, track_margin):
            return run_released(self, graph, options, exact=exact)  # checks finiteness
        check_finite(self, self.xp, graph.x, name=graph.name)
        return super().run(graph, options, track_margin=track_margin, exact=exact)


def _float64_copy(x: Any) -> Any:
    """A contiguous float64 copy of a detached tensor, on its device."""
    torch = _torch()
    if x.device.type == "cpu" and x.dtype in (torch.float16, torch.float32, torch.float64):
        # NumPy asks the kernel for huge pages for large buffers, torch's CPU allocator
        # does not: a float64 copy made by NumPy takes a small fraction of the page faults.
        return torch.from_numpy(np.array(x.numpy(), dtype=np.float64, order="C"))
    return x.to(dtype=torch.float64, memory_format=torch.contiguous_format, copy=True)


def _numba_backend() -> Any:
    """The Numba backend when it can run here, else None."""
    from .registry import _REGISTRY

    be = _REGISTRY.get("numba")
    return be if be is not None and be.unavailable_reason() is None else None


def _run_on_numba(graph: "Graph", options: "Options", track_margin: bool = False) -> "RunResult":
    """CPU tensors through the Numba backend on a NumPy view, tensors back.

    Profiling put the fixed-shape device loop at about 11x the Numba kernels on a CPU, where
    it pays per-operation overhead for every pass; the kernels read the tensor's memory
    without a copy and give the same partitions.  The paper's rule (profiles) takes the same
    way: the generic engine on NumPy arrays, about 3-5x faster than on CPU tensors.
    """
    torch = _torch()
    x = graph.x.numpy()
    result = _numba_backend().run(replace(graph, x=x), options, track_margin=track_margin)
    as_tensor = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    for level in result.levels:
        level.cell_labels = as_tensor(level.cell_labels)
        level.roots = as_tensor(level.roots)
        level.sizes = as_tensor(level.sizes)
        # Pooled features in the input's dtype here, in NumPy: torch's cast of a (K, C) tensor
        # wakes its OpenMP threads, which cost milliseconds a level on a busy machine.
        level.features = None if level.features is None else as_tensor(level.features.astype(x.dtype, copy=False))
        level.semantic = as_tensor(level.semantic)
    return result
