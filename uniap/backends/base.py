"""The backend interface: one class per array library, one method per primitive."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from array_api_compat import device as array_device

if TYPE_CHECKING:
    from ..core.levels import RunResult
    from ..core.graph import Graph
    from ..core.options import Options


class Backend:
    """Primitives UniAP needs from an array library.

    A backend either supplies the primitives below, and the generic level loop of
    :mod:`uniap.core.levels` runs on them, or overrides :meth:`run` with a whole run of its own
    (the Numba kernels do, for the released rule).  Defaults raise ``NotImplementedError``
    naming the backend and the missing primitive.

    Class attributes
    ----------------
    name : str
        The name users pass as ``backend=``.
    library : str
        The array library results live in: "numpy", "torch" or "cupy".
    """

    name: ClassVar[str] = "abstract"
    library: ClassVar[str] = "numpy"

    # -- discovery -------------------------------------------------------------------
    def unavailable_reason(self) -> str | None:
        """None when this backend can run here, else a sentence saying why not."""
        return None

    def accepts(self, x: Any) -> bool:
        """Whether ``x`` is an array of this backend's library (checked without importing it)."""
        raise NotImplementedError(f"backend {self.name!r} does not implement accepts()")

    # -- array handling --------------------------------------------------------------
    @property
    def xp(self) -> Any:
        """The array-API namespace the generic engine calls."""
        raise NotImplementedError(f"backend {self.name!r} does not provide an array namespace")

    @property
    def sum_dtype(self) -> Any:
        """The dtype cluster sums are accumulated in (float64 unless a backend says otherwise)."""
        return self.xp.float64

    def prepare_features(self, x: Any) -> Any:
        """(N, C) features in the work dtype, contiguous, on the input's device.

        The generic engine overwrites the rows of what this returns: it must be a new array,
        never a view of the caller's input.
        """
        raise NotImplementedError(f"backend {self.name!r} does not implement prepare_features()")

    def from_any(self, x: Any) -> Any:
        """Convert an array of another library (for an explicitly named backend)."""
        raise NotImplementedError(f"backend {self.name!r} cannot convert {type(x).__name__}")

    def all_finite(self, x: Any) -> bool:
        raise NotImplementedError(f"backend {self.name!r} does not implement all_finite()")

    def asarray_index(self, a: np.ndarray, like: Any) -> Any:
        """A NumPy int64 array as an index array beside ``like``."""
        raise NotImplementedError(f"backend {self.name!r} does not implement asarray_index()")

    def to_numpy(self, a: Any) -> np.ndarray:
        """The one exit to the host."""
        raise NotImplementedError(f"backend {self.name!r} does not implement to_numpy()")

    # -- graph primitives ------------------------------------------------------------
    def components(self, num_nodes: int, a: Any, b: Any) -> tuple[Any, int]:
        """Connected components of the edges (a[i], b[i]) over ``num_nodes`` nodes.

        Returns ``(comp, k)``: ``comp[i]`` in ``[0, k)`` numbered canonically, in the order
        of each component's smallest node.
        """
        raise NotImplementedError(f"backend {self.name!r} does not implement components()")

    def segment_sum(self, values: Any, labels: Any, num: int, rows: Any | None = None) -> Any:
        """Sum rows of ``values`` into ``num`` bins by ``labels``.

        With ``rows``, row ``rows[i]`` goes to bin ``labels[i]`` (no gathered copy);
        without, row ``i`` does.  Each bin adds its rows in the order given, starting from
        zero: CPU backends promise that order, so sums are reproducible bit for bit.
        """
        raise NotImplementedError(f"backend {self.name!r} does not implement segment_sum()")

    def cluster_sums(self, x: Any, labels: Any, num: int) -> Any:
        """Float64 (``sum_dtype``) sums of the rows of ``x`` per label, in increasing row order.

        The default converts ``x`` and calls :meth:`segment_sum`; a backend may read ``x`` as
        it is instead of making the converted copy.
        """
        return self.segment_sum(self.xp.astype(x, self.sum_dtype), labels, num)

    def first_occurrences(self, comp: Any, k: int) -> Any:
        """Index of the first element of each canonical component: shape (k,), increasing."""
        raise NotImplementedError(f"backend {self.name!r} does not implement first_occurrences()")

    def unique_edges(self, a: Any, b: Any, num_nodes: int) -> tuple[Any, Any]:
        """Edges (a[i], b[i]) as ``a < b``, without self-loops or duplicates, sorted by (a, b)."""
        raise NotImplementedError(f"backend {self.name!r} does not implement unique_edges()")

    # -- the paper's profiles (uniap.core.levels, PROFILE_BYTES) --------------------------
    def gram(self, unit: Any) -> Any:
        """``unit @ unit.T``: every cell's affinity profile, (n, n) for (n, C) features."""
        return unit @ unit.T

    def lower_gram(self, unit: Any, a: Any, b: Any) -> Any | None:
        """``unit @ unit.T`` of which only the lower triangle (diagonal included) need hold
        the products, for the votes of the edges ``(a[i], b[i])`` (``a < b``, rows of ``unit``)
        by :meth:`lower_profile_l1`; or None, the default: the engine then takes :meth:`gram`.
        A backend that returns one also implements :meth:`complete_profile_rows`."""
        return None

    def lower_profile_l1(self, g: Any, a: Any, b: Any) -> Any:
        """sum_c |G[a[i], c] - G[b[i], c]| for every i, G the symmetric matrix whose lower
        triangle ``g`` holds (a :meth:`lower_gram` result)."""
        raise NotImplementedError(f"backend {self.name!r} does not implement lower_profile_l1()")

    def complete_profile_rows(self, g: Any, rows: Any) -> None:
        """In place: make the given rows of a :meth:`lower_gram` result whole (the symmetric
        matrix's rows), reading only its lower triangle; other rows of the upper triangle may
        change too."""
        raise NotImplementedError(f"backend {self.name!r} does not implement complete_profile_rows()")

    def row_blocks(self, fn: Any, m: int, work: int = 1) -> None:
        """Call ``fn(r0, r1)`` on blocks of rows covering ``range(m)``, each row once; ``work``
        is the cost of a row (multiply-adds).  The default makes one call; a CPU backend may
        split the rows between threads (``fn`` writes only its own rows)."""
        if m:
            fn(0, m)

    def profile_l1(self, prof: Any, a: Any, b: Any, wa: Any, wb: Any) -> Any:
        """sum_c |wa[i] prof[a[i], c] - wb[i] prof[b[i], c]| for every i: shape (m,).

        The default gathers blocks of rows with the array namespace; a CPU backend may fuse
        it into one pass over the two rows.
        """
        xp = self.xp
        m, n = a.shape[0], prof.shape[1]
        out = xp.empty((m,), dtype=prof.dtype, device=array_device(prof))
        step = max(1, self.block_elements(prof) // max(1, n))
        for s in range(0, m, step):
            ra = xp.take(prof, a[s : s + step], axis=0) * wa[s : s + step, None]
            rb = xp.take(prof, b[s : s + step], axis=0) * wb[s : s + step, None]
            out[s : s + step] = xp.sum(xp.abs(ra - rb), axis=1)
        return out

    # -- fixed-shape primitives (the device loop of uniap.backends._device) ----------
    def score_dtype(self, x: Any) -> Any:
        """The dtype edge scores are computed in for features ``x`` (float64 unless fast
        float32 hardware makes the backend choose float32; partitions then differ from the
        reference only where a score lies within ``EXACT_TOLERANCE`` of a threshold)."""
        return self.xp.float64

    def block_elements(self, x: Any) -> int:
        """Elements per block of gathered rows when scoring edges: cache-sized on a CPU,
        large on a GPU where each block is a kernel launch."""
        return 1 << 16

    def is_async(self, x: Any) -> bool:
        """Whether work on ``x`` runs asynchronously on a device, so that reading a value
        back to the host waits for all queued work (the device loop then fetches rarely)."""
        return False

    def edge_cosines(self, feats: Any, norms: Any | None, a: Any, b: Any, eps: float = 1e-10) -> Any:
        """cos(v_a, v_b) = <v_a, v_b> / (norms[a] norms[b]) for the row pairs (a[i], b[i]).

        ``norms`` (rows of max(|v_k|, eps)) may be None: the norms of the gathered rows are
        computed then, clipped at ``eps`` (for the few float64 re-decisions of ``exact=True``).
        """
        from ._device import cosine

        return cosine(self, self.xp, feats, norms, a, b, self.block_elements(feats), eps)

    def take(self, x: Any, index: Any, axis: int = 0) -> Any:
        """``xp.take``; a backend may skip the namespace's handling of negative indices."""
        return self.xp.take(x, index, axis=axis)

    def shifted_dots(self, feats: Any, lo: int, hi: int, d: int) -> Any:
        """<x_i, x_{i+d}> for the rows i in [lo, hi) of ``feats`` (initial grid scores)."""
        from ._device import shifted_dots

        return shifted_dots(self, self.xp, feats, lo, hi, d)

    def bincount(self, index: Any, n: int) -> Any:
        """How often each value in [0, n) occurs in the int64 array ``index``: shape (n,)."""
        xp = self.xp
        counts = xp.zeros((n,), dtype=xp.int64, device=array_device(index))
        self.index_add_(counts, index, xp.ones(index.shape, dtype=xp.int64, device=array_device(index)))
        return counts

    def scatter_min_(self, target: Any, index: Any, values: Any) -> None:
        """In place: ``target[index[i]] = min(target[index[i]], values[i])`` for every i."""
        raise NotImplementedError(f"backend {self.name!r} does not implement scatter_min_()")

    def index_add_(self, target: Any, index: Any, values: Any) -> None:
        """In place: add row ``values[i]`` to row ``target[index[i]]`` for every i (CPU
        backends in the order of i, so that sums are reproducible)."""
        raise NotImplementedError(f"backend {self.name!r} does not implement index_add_()")

    def compact(self, mask: Any, count: int) -> Any:
        """Indices of the ``count`` true entries of ``mask``, increasing.  ``count`` is known
        already, so a device backend need not wait for the device to size the result."""
        raise NotImplementedError(f"backend {self.name!r} does not implement compact()")

    def fetch(self, *scalars: Any) -> list[int]:
        """Several 0-d integer or boolean arrays as Python ints, in one transfer to the host."""
        return [int(s) for s in scalars]

    # -- a whole run -----------------------------------------------------------------
    def run(
        self, graph: "Graph", options: "Options", track_margin: bool = False, exact: bool = False
    ) -> "RunResult":
        """Run every level; the default is the generic engine over the primitives above.

        ``exact`` asks a backend that scores in float32 to re-decide every score within
        ``EXACT_TOLERANCE`` of its threshold in float64; backends that score in float64
        (the default) are exact already and ignore it.
        """
        from ..core.levels import run_levels

        return run_levels(self, graph, options, track_margin=track_margin)

    def __repr__(self) -> str:
        return f"<uniap backend {self.name!r} ({self.library})>"
