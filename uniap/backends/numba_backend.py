"""The fast CPU backend: Numba kernels for the released rule, NumPy for the rest.

The released rule (sum pooling, cosine scores) runs entirely in compiled code
(:mod:`uniap.backends._numba_kernels`).  Options that need the O(N) affinity profiles of the
paper (attention pooling, voting) are matrix products that NumPy's BLAS already does well, so
they take the generic engine, on the NumPy primitives with Numba kernels for the graph and row
steps (components, segment sums, edge cosines, votes), the Gram on the caller's thread count
(:func:`banded_gram` below 8192 rows; on grids only its lower triangle, which the first votes
read as it is: :func:`lower_profile_l1`) and the passes on one BLAS thread
(:func:`one_blas_thread`), as do semantic groupings.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from .registry import register
from .numpy_backend import NumpyBackend

if TYPE_CHECKING:
    from ..core.levels import RunResult
    from ..core.graph import Graph
    from ..core.options import Options


@register
class NumbaBackend(NumpyBackend):
    """Compiled single-threaded CPU kernels; the same partitions as the NumPy reference."""

    name = "numba"
    library = "numpy"

    def unavailable_reason(self) -> str | None:
        return _unavailable_reason()

    def prepare_features(self, x):
        # The kernels read float32 or float64 directly and never write to them; the engine
        # fallback in run() takes its own float64 copy.
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float64)
        return np.ascontiguousarray(x)

    def cluster_sums(self, x, labels, num):
        if x.dtype in (np.float32, np.float64) and x.flags.c_contiguous:
            from . import _numba_kernels as k

            # Reads float32 input as it is: no float64 copy of the whole grid.
            return k.cluster_sums(x, np.ascontiguousarray(labels, dtype=np.int64), num)
        return super().cluster_sums(x, labels, num)

    def components(self, num_nodes, a, b):
        from . import _numba_kernels as k

        # SciPy's sparse graph costs more to build than to label at a pass's few thousand edges.
        comp, num = k.components(int(num_nodes), np.ascontiguousarray(a, np.int64), np.ascontiguousarray(b, np.int64))
        return comp, int(num)

    def edge_cosines(self, feats, norms, a, b, eps=1e-10):
        if norms is None or feats.dtype != np.float64 or not feats.flags.c_contiguous:
            return super().edge_cosines(feats, norms, a, b, eps)
        from . import _numba_kernels as k

        # Reads both rows in place: no gathered (E, C) copies.
        out = np.empty(a.shape[0], np.float64)
        return k.edge_cosines(feats, np.ascontiguousarray(norms, np.float64), np.ascontiguousarray(a, np.int64),
                              np.ascontiguousarray(b, np.int64), out)

    def segment_sum(self, values, labels, num, rows=None):
        if values.ndim != 2 or values.dtype != np.float64 or not values.flags.c_contiguous:
            return super().segment_sum(values, labels, num, rows)
        from . import _numba_kernels as k

        # The reference's order and additions (each bin from zero, its rows in the order given)
        # without building a sparse matrix per call.
        labels = np.ascontiguousarray(labels, np.int64)
        rows = np.arange(labels.shape[0]) if rows is None else np.ascontiguousarray(rows, np.int64)
        return k.segment_sum_rows(values, labels, rows, int(num))

    def gram(self, unit):
        # The one product of the rule large enough for every thread (see one_blas_thread).
        threads = _GRAM_THREADS.get()
        if (GRAM_BANDS and threads is not None and unit.shape[0] < GRAM_BANDS_MAX_ROWS
                and min(threads, unit.shape[0] // GRAM_BAND_ROWS) > 1):
            return banded_gram(unit, threads)
        with gram_threads():
            return symmetric_gram(unit)

    def lower_gram(self, unit, a, b):
        if (not LOWER_VOTES or unit.ndim != 2 or unit.dtype not in (np.float32, np.float64)
                or lower_offsets(a, b, unit.shape[0]) is None):
            return None
        threads = _GRAM_THREADS.get()
        if (GRAM_BANDS and threads is not None and unit.shape[0] < GRAM_BANDS_MAX_ROWS
                and min(threads, unit.shape[0] // GRAM_BAND_ROWS) > 1):
            return banded_gram(unit, threads, fill=False)
        with gram_threads():
            return symmetric_gram(unit, fill=False)

    def lower_profile_l1(self, g, a, b):
        return lower_profile_l1(g, a, b, _GRAM_THREADS.get() or 1)

    def complete_profile_rows(self, g, rows):
        from . import _numba_kernels as k

        rows = np.ascontiguousarray(rows, np.int64)
        if COMPLETE_ROWS_FRACTION * rows.shape[0] > g.shape[0]:  # many: the tiled copy of all
            k.fill_upper(g, GRAM_BLOCK)
        elif rows.shape[0]:
            k.complete_rows(g, rows)

    def row_blocks(self, fn, m, work=1):
        threads = min(_GRAM_THREADS.get() or 1, m, max(1, (m * work) // ROW_BLOCK_WORK)) if ROW_BLOCKS else 1
        if threads <= 1:
            if m:
                fn(0, m)
            return
        on_threads([(fn, (m * j // threads, m * (j + 1) // threads)) for j in range(threads)])

    def profile_l1(self, prof, a, b, wa, wb):
        if prof.dtype not in (np.float32, np.float64) or not prof.flags.c_contiguous:
            return super().profile_l1(prof, a, b, wa, wb)
        from . import _numba_kernels as k

        out = np.empty(a.shape[0], np.float64)
        return k.profile_l1(prof, np.ascontiguousarray(a, np.int64), np.ascontiguousarray(b, np.int64),
                            np.ascontiguousarray(wa, np.float64), np.ascontiguousarray(wb, np.float64), out)

    def all_finite(self, x) -> bool:
        # init_scores checks finiteness while it computes the norms it needs anyway.
        return True

    def run(
        self, graph: "Graph", options: "Options", track_margin: bool = False, exact: bool = False
    ) -> "RunResult":
        # float64 throughout: exact already
        if options.pooling != "sum" or options.vote_weight != 0.0 or track_margin:
            graph.x = NumpyBackend.prepare_features(self, graph.x)
            with one_blas_thread():
                return super().run(graph, options, track_margin=track_margin)
        return _run_released(self, graph, options)


@lru_cache(maxsize=1)
def _unavailable_reason() -> str | None:
    # Asked on every call by the torch backend for CPU tensors; finding the module costs ~40 us.
    if importlib.util.find_spec("numba") is None:
        return "Numba is not installed (pip install numba)"
    return None


def _run_released(be: NumbaBackend, graph: "Graph", options: "Options") -> "RunResult":
    from ..core.levels import LevelResult, RunResult, add_semantic, overflow_scale
    from . import _numba_kernels as k

    def contract(x: np.ndarray):
        return k.contract_all(
            x,
            np.ascontiguousarray(graph.edges[:, 0]),
            np.ascontiguousarray(graph.edges[:, 1]),
            np.asarray(options.levels, dtype=np.float64),
            options.passes == "until_stable",
            options.semantic,
        )

    status, labels, counts, roots, sizes, sums, eps = contract(graph.x)
    scale = 1.0
    if status == k.HUGE:
        # Finite but huge (or tiny) features: scaled by a power of two (exact, no score changes).
        scale = overflow_scale(float(np.max(np.abs(graph.x))))
        status, labels, counts, roots, sizes, sums, eps = contract(np.asarray(graph.x, np.float64) * scale)
    if status >= 0:
        where = "" if graph.name == "x" else f" (row {status} of the flattened (N, C) grid)"
        raise ValueError(
            f"{graph.name} must be finite: node {status}{where} holds NaN or inf; clean or mask the input"
        )
    bounds = np.concatenate([[0], np.cumsum(counts)])
    levels = []
    for i, t in enumerate(options.levels):
        # Cluster means are left to the Hierarchy, computed on first access.
        span = slice(bounds[i], bounds[i + 1])
        level = LevelResult(
            threshold=t, cell_labels=labels[i], roots=roots[span], sizes=sizes[span], features=None
        )
        if options.semantic:
            add_semantic(be, graph, options, level, sums[span], eps=eps)
        levels.append(level)
    return RunResult(levels=levels, min_margin=None, scale=scale)


GRAM_BLOCK = 64  # tile side of the triangle copy (fill_upper)
# SciPy's syrk runs on SciPy's own OpenBLAS, whose threads spin for a while after each call:
# while the passes' products ran on NumPy's two threads, that slowed them, and syrk lost at
# 4096 rows.  With the passes on one thread (one_blas_thread) it won there too (64x64x384,
# load 4: the whole rule 1.11-1.12x the fastest F @ F.T against 1.28-1.30x with NumPy's) and
# still lost at 1024-2304 rows, where the tiled copy and the second pool cost more than the
# halved product saves.
_SYRK_MIN_ROWS = 4096


def symmetric_gram(unit: np.ndarray, min_rows: int | None = None, fill: bool = True) -> np.ndarray:
    """``unit @ unit.T`` through BLAS ``syrk``: half the multiplications of a general product.

    NumPy's ``A @ A.T`` calls ``syrk`` too, then copies the triangle column by column, which at
    4096 rows costs about as much as the product; here the copy is tiled
    (:func:`uniap.backends._numba_kernels.fill_upper`).  The same float32 (or float64) dot
    products, so the profiles' error bound (:func:`uniap.core.levels.float32_profile_tolerance`)
    holds, and the result is exactly symmetric.

    Examples
    --------
    >>> import numpy as np
    >>> unit = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    >>> g = symmetric_gram(unit, min_rows=1)
    >>> bool(np.array_equal(g, g.T)), bool(np.allclose(g, unit @ unit.T, atol=1e-5))
    (True, True)

    ``fill=False`` leaves the upper triangle of a ``syrk`` result unset (:func:`lower_gram`).
    """
    min_rows = _SYRK_MIN_ROWS if min_rows is None else min_rows
    if unit.ndim != 2 or unit.dtype not in (np.float32, np.float64) or unit.shape[0] < min_rows:
        return unit @ unit.T
    from scipy.linalg import blas

    from . import _numba_kernels as k

    syrk = blas.ssyrk if unit.dtype == np.float32 else blas.dsyrk
    # unit.T is Fortran-ordered (C, n): no copy; syrk fills the upper triangle of a
    # Fortran-ordered (n, n), i.e. the lower triangle of its C-ordered transpose.
    lower = syrk(1.0, np.ascontiguousarray(unit).T, trans=1).T
    return k.fill_upper(lower, GRAM_BLOCK) if fill else lower


# Inside one_blas_thread, the Gram runs as bands on Python threads, each BLAS call on its own
# thread alone (banded_gram), instead of on the BLAS library's threads: those spin for a while
# after each call (OpenBLAS: about 2**28 cycles), and on shared cores the worker left spinning
# took CPU from the single-threaded passes that follow.  False: the library's threads.
# Not from 8192 rows (96x96 grids and up), where the diagonal blocks' copies and SciPy's
# single-threaded syrk lost to the library's threads (112x112x384, load 3: the rule 1.68x the
# fastest F @ F.T against 1.22x).
GRAM_BANDS = True
GRAM_BAND_ROWS = 64  # the fewest rows of a band
GRAM_BANDS_MAX_ROWS = 8192


def banded_gram(unit: np.ndarray, threads: int, fill: bool = True) -> np.ndarray:
    """``unit @ unit.T`` computed by ``threads`` Python threads, one band of rows each.

    The lower triangle is cut into bands of equal work (band j ends at row n sqrt(j / T));
    a band is one product with the rows above it and one ``syrk`` of its diagonal block
    (:func:`symmetric_gram`'s choice), each BLAS call on the thread that makes it (the caller
    limits BLAS to one thread); the tiled copy then fills the upper triangle.  The same dot
    products as :func:`symmetric_gram` (float32 ones keep the profiles' error bound), and an
    exactly symmetric result.

    Examples
    --------
    >>> import numpy as np
    >>> unit = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    >>> g = banded_gram(unit, 3)
    >>> bool(np.array_equal(g, g.T)), bool(np.allclose(g, unit @ unit.T, atol=1e-5))
    (True, True)

    ``fill=False`` leaves the upper triangle unset (:func:`lower_gram`).
    """
    from . import _numba_kernels as k

    n = unit.shape[0]
    threads = max(1, min(int(threads), n // GRAM_BAND_ROWS))
    if unit.ndim != 2 or unit.dtype not in (np.float32, np.float64) or threads <= 1:
        return symmetric_gram(unit, fill=fill)
    unit = np.ascontiguousarray(unit)
    out = np.empty((n, n), unit.dtype)
    bounds = equal_work_bounds(n, threads)

    def band(j: int) -> None:
        lo, hi = bounds[j], bounds[j + 1]
        if lo:
            np.matmul(unit[lo:hi], unit[:lo].T, out=out[lo:hi, :lo])
        out[lo:hi, lo:hi] = _lower_gram(unit[lo:hi])

    on_threads([(band, (j,)) for j in range(threads)])
    return k.fill_upper(out, GRAM_BLOCK) if fill else out


# A band's diagonal block goes to SciPy's syrk from this many rows: its upper triangle is never
# read, so NumPy's product (syrk, then a column-by-column copy of the triangle) does the same
# multiplications and a copy more (2896 rows, the first of two bands at 64x64x384: 34 against
# 39 ms on one loaded thread).
_BAND_SYRK_MIN_ROWS = 256


def _lower_gram(block: np.ndarray) -> np.ndarray:
    """A Gram whose lower triangle is ``block @ block.T`` (the upper one is not read)."""
    if block.shape[0] < min(_SYRK_MIN_ROWS, _BAND_SYRK_MIN_ROWS):
        return block @ block.T
    from scipy.linalg import blas

    syrk = blas.ssyrk if block.dtype == np.float32 else blas.dsyrk
    return syrk(1.0, block.T, trans=1).T


# The merged nodes' products of the paper's passes (their exact profiles and attention pooling,
# two float64 (m, C) x (C, N) products) are split between the caller's thread count of Python
# threads (NumbaBackend.row_blocks), each BLAS call on one thread, as the Gram's bands are:
# they take a quarter to a half of a run after the Gram.  A thread gets at least ROW_BLOCK_WORK
# multiply-adds.  On: on idle cores they save 1-2 ms a run at 32x32 (14.0-15.6 -> 12.0-14.3 ms
# median) and 2-14 ms at 64x64; on cores busy with other work (a training run at ~140% of 2)
# they lost 1-15 ms (bench/paper_rule_switch.py, docs/benchmarks.md).
ROW_BLOCKS = True
ROW_BLOCK_WORK = 1 << 22


def equal_work_bounds(n: int, threads: int) -> list[int]:
    """Row bounds cutting a lower triangle of ``n`` rows into ``threads`` bands of equal work
    (band j ends at row n sqrt(j / T))."""
    import math

    return [round(n * math.sqrt(j / threads)) for j in range(threads + 1)]


def on_threads(calls: list) -> None:
    """Run ``fn(*args)`` for each ``(fn, args)``: the first on this thread, the others on
    Python threads, all joined; the first error is raised here (the kernels and BLAS calls
    release the GIL; the caller limits BLAS to one thread each)."""
    import threading

    errors: list[BaseException] = []

    def call(fn: Any, args: tuple) -> None:
        try:
            fn(*args)
        except BaseException as error:  # re-raised by the caller
            errors.append(error)

    workers = [threading.Thread(target=call, args=c, daemon=True) for c in calls[1:]]
    for worker in workers:
        worker.start()
    if calls:
        call(*calls[0])
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]


# -- the first votes from the Gram's lower triangle ----------------------------------------
# The paper's first votes (every edge between two cells) read the Gram's lower triangle as it
# is (_numba_kernels.lower_l1_*) instead of copying it onto the upper one first; the rows of
# the cells still single after the first contraction are completed then (complete_rows).
# False: the full Gram, as before.
LOWER_VOTES = True
# An offset b - a shared by at least 1/DENSE_OFFSET_FRACTION of the cells' count of edges has
# its edges' tails summed row by row (a grid's 1 and W); the Gram stays lower only when the
# other edges, summed edge by edge over two strided columns, are at most 1/SPARSE_EDGE_FRACTION
# of the cells (their strided reads then cost at most that share of the copy they replace).
DENSE_OFFSET_FRACTION = 4
SPARSE_EDGE_FRACTION = 16
# More rows to complete than 1/COMPLETE_ROWS_FRACTION of the cells: the tiled copy of all.
COMPLETE_ROWS_FRACTION = 8
# A thread of lower_profile_l1 gets at least this many rows (about LOWER_THREAD_ROWS^2 numbers
# per offset): at 32x32 (1024 cells, 0.5 ms of work) a second thread cost more than it saved.
LOWER_THREAD_ROWS = 2048


def lower_offsets(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray | None:
    """The offsets b - a whose edges' votes are summed row by row, or None when the edges are
    not regular enough for the lower-triangle votes (too many of no common offset).

    >>> import numpy as np
    >>> a = np.arange(0, 15); b = a + 1                      # a path of 16 cells
    >>> lower_offsets(a, b, 16).tolist()
    [1]
    >>> print(lower_offsets(np.array([0, 1, 2]), np.array([9, 5, 3]), 16))
    None
    """
    d = np.asarray(b, np.int64) - np.asarray(a, np.int64)
    if d.shape[0] and int(d.min()) <= 0:
        return None  # edges are a < b; anything else takes the full Gram
    offsets, counts = np.unique(d, return_counts=True)
    dense = counts * DENSE_OFFSET_FRACTION >= n
    if SPARSE_EDGE_FRACTION * int(counts[~dense].sum()) > n:
        return None
    return offsets[dense].astype(np.int64)


def lower_profile_l1(g: np.ndarray, a: np.ndarray, b: np.ndarray, threads: int = 1) -> np.ndarray:
    """sum_c |G[a[i], c] - G[b[i], c]| for every edge, from ``g``'s lower triangle (G symmetric).

    Edges of a common offset (:func:`lower_offsets`) are summed row by row, the rows split
    between ``threads`` Python threads (equal work: the kernels release the GIL; each BLAS-free),
    the others edge by edge.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> f = rng.standard_normal((30, 4)).astype(np.float32)
    >>> full = f @ f.T
    >>> a = np.array([0, 1, 2, 4, 7]); b = np.array([1, 2, 3, 5, 20])
    >>> l1 = lower_profile_l1(np.tril(full), a, b, threads=2)
    >>> bool(np.allclose(l1, np.abs(full[a] - full[b]).sum(axis=1)))
    True
    """
    from . import _numba_kernels as k

    n = g.shape[0]
    a = np.ascontiguousarray(a, np.int64)
    b = np.ascontiguousarray(b, np.int64)
    out = np.empty(a.shape[0], np.float64)
    offsets = lower_offsets(a, b, n)
    if offsets is None:  # not a caller of lower_gram: every edge on its own
        return k.lower_l1_edges(g, a, b, out)
    d = b - a
    is_dense = np.isin(d, offsets)
    if offsets.shape[0]:
        threads = max(1, min(int(threads), n // LOWER_THREAD_ROWS))
        bounds = equal_work_bounds(n, threads)
        accs = [np.zeros((offsets.shape[0], n), np.float64) for _ in range(threads)]

        def part(j: int) -> None:
            k.lower_l1_tails(g, offsets, accs[j], bounds[j], bounds[j + 1])
            k.lower_l1_heads(g, offsets, accs[j], bounds[j], bounds[j + 1])

        on_threads([(part, (j,)) for j in range(threads)])
        acc = accs[0]
        for other in accs[1:]:
            acc += other
        dense = np.flatnonzero(is_dense)
        out[dense] = acc[np.searchsorted(offsets, d[dense]), a[dense]]
    sparse = np.flatnonzero(~is_dense)
    if sparse.shape[0]:
        out[sparse] = k.lower_l1_edges(g, a[sparse], b[sparse], np.empty(sparse.shape[0], np.float64))
    return out


# -- BLAS threads of the paper's rule ------------------------------------------------------
# The thread count the BLAS pools had when the current run limited them to one (None outside
# a run): the Gram asks for it back.
_GRAM_THREADS: contextvars.ContextVar[int | None] = contextvars.ContextVar("uniap_gram_threads", default=None)


@lru_cache(maxsize=1)
def _blas_pools() -> Any:
    """threadpoolctl's handle on the BLAS libraries NumPy and SciPy load, or None without it.

    Built once (listing the loaded libraries takes about 8 ms; setting their thread counts
    about 50 us), after SciPy's BLAS is loaded, so that both OpenBLAS pools are in it.
    """
    try:
        import scipy.linalg.blas  # noqa: F401  (loads SciPy's own OpenBLAS)
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        return None
    return ThreadpoolController().select(user_api="blas")


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the paper's rule with one BLAS thread, except its Gram (:func:`banded_gram` on the
    caller's thread count, or :func:`gram_threads` from 8192 rows).

    After the Gram, every product of a pass is (m, C) by (C, N) with m merged nodes, a few
    percent of the N cells, between steps of Python and Numba work.  OpenBLAS wakes its
    threads for each such call and lets them spin afterwards; on a machine whose cores are
    shared, a descheduled worker stalls every call: measured at 64x64x384 with two threads
    and load 4, the whole rule took 1.98x the fastest ``F @ F.T`` with every product on two
    threads and 1.30x with the passes on one (docs/benchmarks.md).  The previous counts are
    restored on exit, whatever happens; partitions do not depend on it.

    Examples
    --------
    >>> from threadpoolctl import threadpool_info
    >>> with one_blas_thread():
    ...     sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})
    [1]
    """
    pools = _blas_pools()
    if pools is None or _GRAM_THREADS.get() is not None:
        yield
        return
    before = max([lib["num_threads"] for lib in pools.info()], default=1)
    token = _GRAM_THREADS.set(before)
    limiter = pools.limit(limits=1)
    try:
        yield
    finally:
        limiter.restore_original_limits()
        _GRAM_THREADS.reset(token)


@contextlib.contextmanager
def gram_threads() -> Iterator[None]:
    """Inside :func:`one_blas_thread`: the caller's BLAS thread count back, for the Gram."""
    before = _GRAM_THREADS.get()
    if before is None or before <= 1:
        yield
        return
    limiter = _blas_pools().limit(limits=before)
    try:
        yield
    finally:
        limiter.restore_original_limits()
