"""The backend interface: one class per array library, one method per primitive."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from ..engine import RunResult
    from ..graph import Graph
    from ..options import Options


class Backend:
    """Primitives UniAP needs from an array library.

    A backend either supplies the primitives below, and the generic level loop of
    :mod:`uniap.engine` runs on them, or overrides :meth:`run` with a whole run of its own
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

    def first_occurrences(self, comp: Any, k: int) -> Any:
        """Index of the first element of each canonical component: shape (k,), increasing."""
        raise NotImplementedError(f"backend {self.name!r} does not implement first_occurrences()")

    def unique_edges(self, a: Any, b: Any, num_nodes: int) -> tuple[Any, Any]:
        """Edges (a[i], b[i]) as ``a < b``, without self-loops or duplicates, sorted by (a, b)."""
        raise NotImplementedError(f"backend {self.name!r} does not implement unique_edges()")

    # -- a whole run -----------------------------------------------------------------
    def run(self, graph: "Graph", options: "Options", track_margin: bool = False) -> "RunResult":
        """Run every level; the default is the generic engine over the primitives above."""
        from ..engine import run_levels

        return run_levels(self, graph, options, track_margin=track_margin)

    def __repr__(self) -> str:
        return f"<uniap backend {self.name!r} ({self.library})>"
