"""The released rule on device arrays: fixed shapes, one wait for the device per pass.

The generic loop of :mod:`uniap.core.levels` compacts its node and edge arrays after every pass.
Each compaction sizes an array from data on the device (``nonzero``, boolean indexing,
``unique``, the number of components), and on a GPU each one waits for all queued work to
finish: about a dozen round trips per pass.  The released rule (sum pooling, cosine scores,
DESIGN.md 1.2-1.4) needs none of that bookkeeping, so the torch and CuPy backends run it here:

* Nodes never move.  As in the engine, a node's state lives in the row of its root (its
  smallest cell); a contraction adds each absorbed row into its new root's row.
* Edges keep their slots.  An edge inside a node is dead and scores -inf; dead slots are
  dropped once they are the majority, using a count the pass fetches anyway.
* Connected components are min-label propagation over every edge slot (an unselected edge
  acts as a self-loop): rounds of hooking each root onto the smallest root across a
  selected edge (``scatter_min_``), each followed by pointer jumping.  A component's label
  is its smallest row, which is exactly its new root: canonical numbering for free, no
  relabelling.
* A pass computes on the device all it needs, then fetches five integers in one transfer
  (rows absorbed, nodes formed, edges to re-score, edges alive, whether the components
  converged).  That is the pass's only wait: with those counts every later array has a
  known size (``Backend.compact``).  With ``exact=True`` one more transfer sizes the
  near-threshold edges.  Before the first pass one fetch checks that the features are
  finite (from the row norms), and after the last level one more compacts the results.
  (On a CPU, where reading a value costs nothing, a pass first asks whether any edge was
  selected, and propagates fewer rounds between checks.)

Node sums are float64.  Scores are in the backend's ``score_dtype`` (float32 on a GPU, from a
float32 copy of the sums kept for the rows a pass forms).  With ``exact=True`` every score
within ``EXACT_TOLERANCE`` of the threshold is recomputed in float64 from the sums before the
decision, so the partitions equal the reference's (DESIGN.md 1.5).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from array_api_compat import device as _device

from ..core.cosine import cosine as _cosine
from ..core.cosine import row_norms
from ..core.levels import EPS, HUGE_NORM, TINY_NORM, LevelResult, RunResult, add_semantic, overflow_scale

if TYPE_CHECKING:
    from ..core.graph import Graph
    from ..core.options import Options
    from .base import Backend

# A float32 cosine of C-channel vectors is off by at most a few times C * 2^-24 (pairwise
# summation makes it log2(C) * 2^-24 in practice): 1e-5 covers every ViT width.
EXACT_TOLERANCE = 1e-5
# float32 scores: norms above this are scaled first (HUGE_NORM), so that the squared norm of
# even a sum of 2**31 rows stays below float32's 2**128.
FLOAT32_HUGE_NORM = 2.0**32
# Rounds of (hook, jump, jump) before the pass's one fetch checks convergence.  Components of
# selected grid edges converged within 4 rounds in every pass we measured (1-2 typically; a
# 128x128 serpentine path needs 8-11); when they have not, more rounds follow, each batch
# with its own check, so the result never depends on this number.
CC_ROUNDS = 4
CPU_CC_ROUNDS = 2
CC_JUMPS = 2
# Initial scores by shifted slices when the edges have at most this many offsets b - a.
MAX_OFFSETS = 16
# Re-scored edges are de-duplicated (a sort) only when there are more of them than this.
DEDUP_MIN = 256


def wants_device_loop(options: "Options", track_margin: bool) -> bool:
    """Whether a run can take :func:`run_released`: the released scoring rule, no margins."""
    return options.pooling == "sum" and options.vote_weight == 0.0 and not track_margin


def run_released(be: "Backend", graph: "Graph", options: "Options", exact: bool = False) -> RunResult:
    """Every level of the released rule over ``graph`` on ``be``'s arrays (see module doc).

    ``graph.x`` is the backend's own float64 copy of the features: its rows are overwritten.
    """
    xp = be.xp
    take = be.take
    sums = graph.x
    n = int(sums.shape[0])
    dev = _device(sums)
    sdt = be.score_dtype(sums)
    precise = bool(exact) and sdt != sums.dtype
    # On a device, reading a value back waits for all queued work: propagate enough rounds
    # that the pass's one fetch almost always finds the components converged.  On a CPU a
    # read costs nothing, but each round costs a dozen operations: fewer rounds, and a pass
    # that selects nothing stops before propagating.
    is_async = be.is_async(sums)
    rounds = CC_ROUNDS if is_async else CPU_CC_ROUNDS
    feats = sums if sdt == sums.dtype else xp.astype(sums, sdt)
    with np.errstate(over="ignore", under="ignore"):  # huge or tiny rows: scaled below
        norms = row_norms(xp, feats, 0.0)
    # float32 scores overflow far sooner than float64 ones: squares of norms above 2**64
    limit = HUGE_NORM if sdt == sums.dtype else FLOAT32_HUGE_NORM
    scale = 1.0
    if check_finite(be, xp, sums, norms, graph.name, limit=limit, tiny=TINY_NORM):
        scale = overflow_scale(float(be.to_numpy(xp.max(xp.abs(sums)))))
        sums = sums * scale  # exact (a power of two): no score changes
        feats = sums if sdt == sums.dtype else xp.astype(sums, sdt)
        norms = row_norms(xp, feats, 0.0)
    # Cosine's eps relative to the largest row norm (levels.run_eps): no scale changes a score.
    # A 0-d array on the device: reading it back would wait for the device.
    largest = xp.max(norms) if n else xp.asarray(0.0, dtype=norms.dtype, device=dev)
    eps = xp.where(largest > 0, largest * EPS, xp.asarray(EPS, dtype=norms.dtype, device=dev))
    norms = xp.where(norms < eps, eps, norms)
    sizes = xp.ones((n,), dtype=xp.int64, device=dev)
    rows = xp.arange(n, dtype=xp.int64, device=dev)
    cell_root = rows
    edges = be.asarray_index(graph.edges, like=sums)
    a = xp.asarray(edges[:, 0], copy=True)
    b = xp.asarray(edges[:, 1], copy=True)
    neg = xp.asarray(-math.inf, dtype=sdt, device=dev)
    no = xp.zeros((1,), dtype=xp.bool, device=dev)
    scores = initial_cosines(be, xp, feats, norms, graph.edges, a, b)
    levels: list[LevelResult | None] = []
    pending: list[tuple[int, float, Any, Any]] = []  # levels waiting for their root count
    for t in options.levels:
        while True:
            selected = scores > t
            if precise:
                selected = _redecide(be, xp, sums, a, b, scores, selected, t, eps)
            if not is_async and not be.fetch(xp.any(selected))[0]:
                break
            # Unselected edges become self-loops (a, a), which change nothing.
            ub = xp.where(selected, b, a)
            parent = _propagate(be, xp, rows, a, ub, rounds)
            while True:
                pa = take(parent, a)
                converged = xp.all(pa == take(parent, ub)) & xp.all(take(parent, parent) == parent)
                moved = parent != rows  # rows absorbed into a smaller root
                pb = take(parent, b)
                alive = pa != pb
                # formed[r]: r absorbed another row this pass (rows other than r point to r).
                formed = be.bincount(parent, n) > 1
                stale = alive & (take(formed, pa) | take(formed, pb))
                n_moved, n_formed, n_stale, n_alive, ok = be.fetch(
                    xp.count_nonzero(moved), xp.count_nonzero(formed), xp.count_nonzero(stale),
                    xp.count_nonzero(alive), xp.astype(converged, xp.int64),
                )
                if ok:
                    break
                parent = _propagate(be, xp, parent, a, ub, rounds)
            if n_moved == 0:
                break
            # Node state: absorbed rows add into their new root's row (CPU backends add them
            # in increasing row order after the root's own sum, as the reference does).
            absorbed = be.compact(moved, n_moved)
            into = take(parent, absorbed)
            be.index_add_(sizes, into, take(sizes, absorbed))
            new = be.compact(formed, n_formed)
            # Row blocks bound the gathered temporaries (absorbed rows are never targets).
            step = max(1, be.block_elements(sums) // max(1, int(sums.shape[1])))
            for s in range(0, n_moved, step):
                be.index_add_(sums, into[s : s + step], take(sums, absorbed[s : s + step]))
            for s in range(0, n_formed, step):
                rows_s = new[s : s + step]
                if feats is not sums:
                    feats[rows_s] = xp.astype(take(sums, rows_s), sdt)
                norms[rows_s] = row_norms(xp, take(feats, rows_s), eps)
            cell_root = take(parent, cell_root)
            # Edges: those inside a node die; those touching a formed node are re-scored (many
            # of them once per node pair: later copies become self-loops); the others keep
            # their scores.
            scores = xp.where(alive, scores, neg)
            a, b = pa, pb
            if n_stale > DEDUP_MIN:
                idx = be.compact(stale, n_stale)
                ia, ib = take(a, idx), take(b, idx)
                lo, hi = xp.minimum(ia, ib), xp.maximum(ia, ib)
                key = lo * n + hi
                order = xp.argsort(key, stable=True)
                idx, lo, hi, key = (take(v, order) for v in (idx, lo, hi, key))
                dup = xp.concat([no, key[1:] == key[:-1]])
                hi = xp.where(dup, lo, hi)
                a[idx] = lo
                b[idx] = hi
                scores[idx] = xp.where(dup, neg, be.edge_cosines(feats, norms, lo, hi))
            elif n_stale:
                # A few edges: scoring a duplicate costs less than finding it.
                idx = be.compact(stale, n_stale)
                scores[idx] = be.edge_cosines(feats, norms, take(a, idx), take(b, idx))
            if 2 * n_alive < int(a.shape[0]):
                keep = be.compact(alive, n_alive)
                a, b, scores = take(a, keep), take(b, keep), take(scores, keep)
            if options.passes == "single":
                break
        snapshot = (len(levels), t, cell_root, xp.asarray(sizes, copy=True))
        levels.append(None)
        if options.semantic:
            # Semantic groups start from this level's sums, before the next level adds to them.
            (k,) = be.fetch(xp.count_nonzero(cell_root == rows))
            level = _finish(be, xp, rows, *snapshot[1:], k)
            add_semantic(be, graph, options, level, take(sums, level.roots), eps=eps)
            levels[-1] = level
        else:
            pending.append(snapshot)
    counts = be.fetch(*(xp.count_nonzero(cr == rows) for _, _, cr, _ in pending))
    for (i, t, cr, sz), k in zip(pending, counts):
        levels[i] = _finish(be, xp, rows, t, cr, sz, k)
    return RunResult(levels=levels, min_margin=None, scale=scale)  # type: ignore[arg-type]


def check_finite(be: "Backend", xp: Any, sums: Any, norms: Any | None = None, name: str = "features",
                 limit: float = math.inf, tiny: float = 0.0) -> bool:
    """Raise ``ValueError`` naming the first NaN or inf of ``sums`` (the features, float64).

    A non-finite value makes its row's norm non-finite, so the norms the run computes anyway
    answer with N values instead of N x C; only when some norm is not finite or reaches
    ``limit`` are the values themselves examined.  Returns whether a finite row's norm
    exceeds ``limit`` or overflowed, or every norm lies below ``tiny`` (underflowed): the
    features then need scaling (``HUGE_NORM``, ``TINY_NORM``).  One fetch either way.
    """
    if norms is None:
        norms = row_norms(xp, sums)
    flag = xp.count_nonzero(~(norms < limit))
    if tiny > 0 and norms.shape[0]:
        flag = flag + xp.astype(xp.all(norms < tiny), flag.dtype)
    (rows_bad,) = be.fetch(flag)
    if not rows_bad:
        return False
    bad = ~xp.isfinite(sums)
    (count,) = be.fetch(xp.count_nonzero(bad))
    if count:
        first = int(be.to_numpy(be.compact(xp.reshape(bad, (-1,)), count)[:1])[0])
        where = divmod(first, int(sums.shape[1]))
        raise ValueError(
            f"{name} must be finite: {count} value(s) are NaN or inf, first at index {where}"
        )
    return True


def _propagate(be: "Backend", xp: Any, parent: Any, a: Any, b: Any, rounds: int) -> Any:
    """``rounds`` rounds of min-label propagation over the edges (a[i], b[i]).

    Invariants: ``parent[r] <= r`` and ``parent[r]`` lies in r's component.  When every
    edge has ``parent[a] == parent[b]`` and ``parent`` is flat, each tree is one component
    and its root, the smallest row of the tree, is the component's smallest row.
    """
    parent = xp.asarray(parent, copy=True)
    for _ in range(rounds):
        pa, pb = be.take(parent, a), be.take(parent, b)
        be.scatter_min_(parent, xp.maximum(pa, pb), xp.minimum(pa, pb))
        for _ in range(CC_JUMPS):
            parent = be.take(parent, parent)
    return parent


def label_components(be: "Backend", xp: Any, num_nodes: int, a: Any, b: Any) -> Any:
    """The smallest node of each node's component (the ``components`` primitive's core)."""
    parent = xp.arange(num_nodes, dtype=xp.int64, device=_device(a))
    while True:
        parent = _propagate(be, xp, parent, a, b, CC_ROUNDS)
        done = xp.all(be.take(parent, a) == be.take(parent, b)) & xp.all(be.take(parent, parent) == parent)
        if be.fetch(done)[0]:
            return parent


def _redecide(be, xp, sums, a, b, scores, selected, t, eps=EPS):
    """Re-decide in float64 every edge whose score lies within EXACT_TOLERANCE of t."""
    near = xp.abs(scores - t) <= EXACT_TOLERANCE
    (count,) = be.fetch(xp.count_nonzero(near))
    if count == 0:
        return selected
    idx = be.compact(near, count)
    exact = be.edge_cosines(sums, None, be.take(a, idx), be.take(b, idx), eps=eps)
    selected[idx] = exact > t
    return selected


def initial_cosines(be: "Backend", xp: Any, feats: Any, norms: Any, edges: Any, a: Any, b: Any) -> Any:
    """Scores of the input edges (``edges`` on the host, ``a``, ``b`` their device copies).

    Grid edges join cells a few fixed offsets apart (1 and W in 2-D).  On a CPU, for each
    offset d the dots <x_i, x_{i+d}> over the range of rows that start such an edge are
    products of two contiguous slices: no gathered copies, about half the memory traffic.
    Other graphs, and devices (where gathers are cheap but sorting the offsets on the host
    is not), take :meth:`Backend.edge_cosines`.
    """
    m = int(a.shape[0])
    if m == 0 or be.is_async(feats):
        return be.edge_cosines(feats, norms, a, b)
    edges = np.asarray(edges)
    gaps = edges[:, 1] - edges[:, 0]  # positive: edges are (a < b)
    offsets = np.flatnonzero(np.bincount(gaps))  # O(E + N), no sort
    if len(offsets) > MAX_OFFSETS:
        return be.edge_cosines(feats, norms, a, b)
    parts = []
    for d in offsets:
        members = np.flatnonzero(gaps == d)
        src = edges[members, 0]
        parts.append((int(d), members, src, int(src.min()), int(src.max()) + 1))
    if sum(hi - lo for _, _, _, lo, hi in parts) > 2 * m:
        return be.edge_cosines(feats, norms, a, b)
    dots = xp.empty((m,), dtype=feats.dtype, device=_device(feats))
    for d, members, src, lo, hi in parts:
        along = be.shifted_dots(feats, lo, hi, d)
        dots[be.asarray_index(members, like=a)] = be.take(along, be.asarray_index(src - lo, like=a))
    return dots / (be.take(norms, a) * be.take(norms, b))


def shifted_dots(be: "Backend", xp: Any, feats: Any, lo: int, hi: int, d: int) -> Any:
    """<x_i, x_{i+d}> for the rows i in [lo, hi), ``Backend.block_elements`` at a time."""
    step = max(1, be.block_elements(feats) // max(1, int(feats.shape[1])))
    parts = [
        xp.sum(feats[s : min(hi, s + step)] * feats[s + d : min(hi, s + step) + d], axis=1)
        for s in range(lo, hi, step)
    ]
    return parts[0] if len(parts) == 1 else xp.concat(parts)


def cosine(be: "Backend", xp: Any, feats: Any, norms: Any | None, a: Any, b: Any, block: int,
           eps: float = EPS) -> Any:
    """:func:`uniap.core.cosine.cosine` gathering with ``be.take``."""
    return _cosine(xp, be.take, feats, norms, a, b, block, eps)


def _finish(be, xp, rows, t, cell_root, sizes, k) -> LevelResult:
    """A level's canonical result from its cell roots and a snapshot of the row sizes."""
    roots = be.compact(cell_root == rows, k)  # a row is a root iff its cell maps to itself
    pos = xp.zeros((int(rows.shape[0]),), dtype=xp.int64, device=_device(rows))
    pos[roots] = xp.arange(k, dtype=xp.int64, device=_device(rows))
    return LevelResult(
        threshold=t,
        cell_labels=be.take(pos, cell_root),
        roots=roots,
        sizes=be.take(sizes, roots),
        features=None,
    )


__all__ = ["EXACT_TOLERANCE", "run_released", "wants_device_loop", "label_components", "cosine"]
