"""Cosine scores and row norms, written once for the level loop and the device loop.

Both loops score an edge (a, b) as <v_a, v_b> / (max(|v_a|, eps) max(|v_b|, eps)); these are
the two array-API primitives they share (:mod:`uniap.core.levels`,
:mod:`uniap.backends._device`).
"""

from __future__ import annotations

from typing import Any, Callable

from array_api_compat import device as _device

# Cosine's eps, relative to the largest input row norm of the run (``levels.run_eps``):
# scaling all features by any positive factor gives the same partitions (#23), and a zero
# row has cosine 0 with everything.
EPS = 1e-10


def row_norms(xp: Any, v: Any, eps: float = EPS) -> Any:
    """max(|v_k|, eps) for each row (one reduction kernel, no temporaries).

    >>> import numpy as np
    >>> row_norms(np, np.array([[3.0, 4.0], [0.0, 0.0]]), 1e-3).tolist()
    [5.0, 0.001]
    """
    if _host(xp):  # NumPy's vector_norm squares into a temporary as large as v; vecdot does not
        norms = xp.sqrt(xp.vecdot(v, v, axis=1))
    else:  # one reduction kernel on a device
        norms = xp.linalg.vector_norm(v, axis=1)
    # Not xp.clip: array-api-compat's clip for CuPy assigns through boolean masks, and a
    # boolean-mask gather waits for the device (it sizes its result from the data); this is
    # called in every pass.  A Python scalar keeps the dtype (and torch needs no copy of it
    # to the device); a NaN norm stays NaN, as check_finite expects.
    return xp.where(norms < eps, eps, norms)


def cosine(xp: Any, take: Callable[[Any, Any], Any], feats: Any, norms: Any | None, a: Any, b: Any,
           block: int, eps: float = EPS) -> Any:
    """cos(v_a, v_b) for the row pairs (a[i], b[i]) of ``feats``, ``block`` elements at a time.

    ``take(x, index)`` gathers rows (a backend's :meth:`~uniap.backends.Backend.take`).
    ``norms`` holds max(|v_k|, eps) of every row, or is None to compute the norms of the
    gathered rows here (the float64 re-decisions, which touch few rows).  Blocks keep the
    gathered rows in cache on a CPU; on a GPU they are large, each block being launches.

    >>> import numpy as np
    >>> f = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    >>> take = lambda x, i: np.take(x, i, axis=0)
    >>> np.round(cosine(np, take, f, None, np.array([0, 0]), np.array([1, 2]), 8), 4).tolist()
    [0.7071, 0.0]
    """
    m = int(a.shape[0])
    host = _host(xp)
    step = max(1, block // max(1, int(feats.shape[1])))
    out = None if m <= step else xp.empty((m,), dtype=feats.dtype, device=_device(feats))
    for s in range(0, m, step):
        ia, ib = a[s : s + step], b[s : s + step]
        fa, fb = take(feats, ia), take(feats, ib)
        if norms is None:
            scale = row_norms(xp, fa, eps) * row_norms(xp, fb, eps)
        else:
            scale = take(norms, ia) * take(norms, ib)
        dots = (xp.vecdot(fa, fb, axis=1) if host else xp.sum(fa * fb, axis=1)) / scale
        if out is None:
            return dots
        out[s : s + step] = dots
    return out if out is not None else xp.empty((0,), dtype=feats.dtype, device=_device(feats))


def _host(xp: Any) -> bool:
    """Whether ``xp`` is NumPy's namespace (the host loops: NumPy and Numba backends)."""
    return xp.__name__.rsplit(".", 1)[-1] == "numpy"
