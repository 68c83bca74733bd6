"""The UniAP level loop, written once over the primitives of a backend.

A run contracts a graph level by level (DESIGN.md 1.2-1.4): at each threshold t it scores
every current edge, contracts the connected components of the edges scoring above t into
single nodes, re-pools their features and rebuilds the edges, until a pass changes nothing
(or once).

A node is named by its *root*, the smallest cell it holds, and its state lives in that
cell's row of the state arrays: a pass writes only the rows of the nodes it forms, edges
between untouched nodes keep their scores, and numbering nodes by root keeps labels
canonical.  Backends supply what differs between array libraries (connected components,
segment sums, edge de-duplication; see :class:`uniap.backends.Backend`); everything else
here is array-API code that runs unchanged on NumPy, torch and CuPy arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from array_api_compat import device as _device

from .cosine import EPS, cosine, row_norms
from .options import Options

if TYPE_CHECKING:
    from ..backends.base import Backend
    from .graph import Graph

# Cosine's eps (EPS, relative to the largest input row norm of the run: ``run_eps``) and the
# two primitives of a score live in .cosine, shared with the device loop.  Features already
# L2-normalised (attention pooling) use EPS as it is.
# Cosine scores do not depend on the features' scale, but float64 squared norms overflow
# above about 1e154 per value.  A run whose largest row norm exceeds this (or overflows)
# first scales the features by a power of two (exact: no score changes) so that the largest
# |value| lies in [0.5, 1); below it, even the sum of 2**40 such rows keeps its squared norm
# far inside float64's range.
HUGE_NORM = 2.0**300
# Likewise, a run whose largest row norm is below this (squares of such values underflow,
# norms of 1e-200 would read 0) first scales the features up by a power of two (#23).
TINY_NORM = 2.0**-200
# Elements in one temporary block of a chunked product: bounds memory at 16 MiB (float64)
# whatever the graph size (the profiles below are the one N x N exception).
CHUNK_ELEMENTS = 1 << 21
# The paper's rule keeps every node's affinity profile (its row of mean F F^T: float32 means
# P_k, or float64 sums S_k under track_margin; N_p numbers per node of an image of N_p cells)
# when they fit in this many bytes: the profiles then cost one F F^T per image, and every
# later vote is a row operation.  Larger graphs fall back to the chunked products (mu F^T per
# edge, per merged node): O(E * N) work per pass, nothing of size N x N held.
PROFILE_BYTES = 1 << 32
# Keep the profiles in float32 (F F^T at float32 speed; scores near a threshold re-scored
# exactly, so partitions do not change) unless track_margin asks for exact margins.
FLOAT32_PROFILES = True
# Bounds of the semantic complete graph's votes (mean |P_a - P_b| from the Gram of the profile
# rows) are widened by this much, far above their float64 rounding, before they decide a pair.
BOUND_SLACK = 1e-9
# A tile of the semantic complete graph whose candidate pairs (those the cosine alone does not
# rule out) are fewer than 1/DIRECT_RATIO of its pairs scores them directly, by the L1 distance
# of their profile rows (one fused pass over two rows, the edges' kernel), instead of bounding
# every pair from the Gram of the profiles: the Gram costs a float64 product of all pairs
# (k^2 N multiply-adds, and the exact profiles of the nodes the last pass did not form), the
# direct votes N operations a candidate, a few times a product's share of a pair.  At
# 64x64x384 (181 clusters, 746 of 16290 pairs candidates) the Gram's way cost 8-10 ms a run,
# the direct one about 1 ms.  Scores near the threshold are re-scored exactly either way.
DIRECT_RATIO = 8


@dataclass
class LevelResult:
    """One level of a run over the whole (possibly batched) graph."""

    threshold: float
    cell_labels: Any  # (N,) integer, canonical: clusters numbered by their smallest cell
    roots: Any  # (K,) int64, the smallest cell of each cluster (increasing)
    sizes: Any  # (K,) int64, cells per cluster
    # (K, C) pooled v_k under attention pooling; None under sum pooling, where the member
    # means are computed by the Hierarchy from the input, on first access.
    features: Any | None
    semantic: Any | None = None  # (K,) int64 canonical semantic group of each cluster


@dataclass
class RunResult:
    levels: list[LevelResult]
    min_margin: float | None = None  # smallest |s - t| over every decision taken
    # The power of two the run multiplied the features by (1.0 unless they were huge; see
    # HUGE_NORM): cluster means computed from the input use it too, so that no sum overflows.
    scale: float = 1.0


def overflow_scale(max_abs: float) -> float:
    """The power of two that brings ``max_abs``, the largest |value|, into [0.5, 1).

    >>> overflow_scale(3.0 * 2.0**600) == 2.0**-602
    True
    """
    if not math.isfinite(max_abs) or max_abs <= 0:
        return 1.0
    return math.ldexp(1.0, -math.frexp(max_abs)[1])


def run_scale(be: "Backend", xp: Any, x: Any, largest: float) -> float:
    """The scale for features ``x`` whose largest row norm is ``largest``: 1.0 unless it
    exceeds HUGE_NORM (or overflowed) or lies below TINY_NORM (or underflowed), else
    :func:`overflow_scale` of max |x|.

    ``x`` must be finite (checked before); the usual case costs nothing more.
    """
    if TINY_NORM <= largest < HUGE_NORM:
        return 1.0
    return overflow_scale(float(be.to_numpy(xp.max(xp.abs(x)))))


@dataclass
class _State:
    """Node state in rows addressed by root; only rows of active roots are meaningful."""

    sums: Any  # (R, C) sum of member input features (sum pooling; stale under attention pooling)
    sizes: Any  # (R,) int64 cells per node
    unit_sums: Any | None  # (R, C) sum of L2-normalised member features (profiles)
    feats: Any  # (R, C) v_k, the scored feature (the same array as sums under sum pooling)
    norms: Any  # (R,) max(|v_k|, eps)
    roots: Any  # (K,) active roots, increasing
    pos: Any  # (R,) index of each active root in roots
    row_offsets: np.ndarray  # (P + 1,): rows of part p are row_offsets[p]:row_offsets[p + 1]
    cell_offsets: np.ndarray  # (P + 1,): cells of part p, for the profiles mu_k F^T
    # Per part p, (rows of p, cells of p): row r - row_offsets[p] holds the profile of the
    # node in row r: its mean P_k = mu_k F_p^T in float32 (``_Context.profile_tol`` > 0), or
    # its sum S_k = sum_{i in k} F_i F_p^T in float64.  None when the profiles are computed on
    # demand (options need none, or PROFILE_BYTES is exceeded).
    profiles: list | None = None
    # Per part p, (rows, P): the exact float64 profiles mu_k F_p^T of the nodes the last pass
    # formed (rows increasing), which that pass computed for their float32 rows and attention
    # logits anyway; the semantic pairs' Gram reads them instead of computing them again.
    # P may be a list of row blocks, in order (concatenated when read).
    exact_profiles: dict = field(default_factory=dict)
    # Per part p, whether profiles[p] holds only the lower triangle of F_p F_p^T (the backend's
    # lower_gram): true until a contraction first writes a row of p, while every node of p is
    # one cell; its votes then come from Backend.lower_profile_l1 (_complete_profiles).
    lower: list | None = None


@dataclass
class _Context:
    be: "Backend"
    xp: Any
    options: Options
    unit: Any | None  # (N, C) L2-normalised input features F, when profiles are needed
    feature_grams: dict = field(default_factory=dict)  # part -> F_p^T F_p, made on demand
    eps: float = EPS  # cosine's eps for the pooled features v_k (run_eps under sum pooling)
    # 0.0: profiles hold float64 sums S_k (merged by segment sums).  > 0: they hold float32
    # means P_k (F F^T in float32, merged rows from the float64 product mu_k F^T), and a vote
    # from them is within this much (in score units) of the exact one: scores that close to
    # a threshold are re-scored exactly (``_near_thresholds``).
    profile_tol: float = 0.0


def run_eps(largest_norm: float) -> float:
    """Cosine's eps for a run whose largest input row norm is ``largest_norm``: EPS times it
    (EPS itself when every row is zero).

    >>> run_eps(2.0) == 2e-10 and run_eps(0.0) == 1e-10
    True
    """
    return EPS * largest_norm if largest_norm > 0 and math.isfinite(largest_norm) else EPS


def cosine_of_rows(xp: Any, feats: Any, norms: Any, a: Any, b: Any, block: int = 1 << 16) -> Any:
    """<v_a, v_b> / (max(|v_a|, eps) max(|v_b|, eps)) for the row pairs (a[i], b[i]).

    Rows are gathered ``block`` elements at a time: sized to stay in cache on a CPU, large on
    a GPU where each block costs kernel launches (``Backend.block_elements``).
    """
    return cosine(xp, lambda x, i: xp.take(x, i, axis=0), feats, norms, a, b, block)


# -- the paper's profile terms (attention pooling, voting) --------------------------------


def _profile_means(xp: Any, st: _State, rows: Any) -> Any:
    """mu_k: mean of the members' normalised features, for the given rows."""
    sizes = xp.astype(xp.take(st.sizes, rows), st.unit_sums.dtype)
    return xp.take(st.unit_sums, rows, axis=0) / sizes[:, None]


def _vote(ctx: _Context, mu_a: Any, mu_b: Any, unit_part: Any) -> Any:
    """vote_ab = 1 - mean_c |P_a[c] - P_b[c]|, P_k = mu_k F^T, so P_a - P_b = (mu_a - mu_b) F^T."""
    xp = ctx.xp
    m, n_cells = mu_a.shape[0], unit_part.shape[0]
    out = xp.empty((m,), dtype=mu_a.dtype, device=_device(mu_a))
    step = max(1, CHUNK_ELEMENTS // max(1, n_cells))
    for s in range(0, m, step):
        diff = (mu_a[s : s + step] - mu_b[s : s + step]) @ unit_part.T
        out[s : s + step] = 1.0 - xp.mean(xp.abs(diff), axis=1)
    return out


def _attention_pool(ctx: _Context, mu: Any, unit_part: Any) -> Any:
    """v = L2N(softmax_c(mu F^T / sigma) F) for each row of ``mu``, in row chunks."""
    xp = ctx.xp
    m, n_cells = mu.shape[0], unit_part.shape[0]
    out = xp.empty((m, unit_part.shape[1]), dtype=mu.dtype, device=_device(mu))
    step = max(1, CHUNK_ELEMENTS // max(1, n_cells))
    for s in range(0, m, step):
        out[s : s + step] = _softmax_pool(ctx, (mu[s : s + step] @ unit_part.T) / ctx.options.temperature, unit_part)
    return out


def _by_part(ctx: _Context, st: _State, rows: Any):
    """Yield (p, lo, hi, part cells) for the runs of ``rows`` (increasing) in each part p."""
    rows_np = ctx.be.to_numpy(rows)
    bounds = np.searchsorted(rows_np, st.row_offsets)
    for p in range(len(st.row_offsets) - 1):
        lo, hi = int(bounds[p]), int(bounds[p + 1])
        if hi > lo:
            yield p, lo, hi, ctx.unit[int(st.cell_offsets[p]) : int(st.cell_offsets[p + 1])]


def _local(ctx: _Context, st: _State, p: int, rows: Any) -> Any:
    """Rows of part p as row indices of its profile matrix."""
    return rows - int(st.row_offsets[p])


def _profile_votes(ctx: _Context, st: _State, p: int, a: Any, b: Any) -> Any:
    """vote_ab = 1 - mean_c |S_a[c] / n_a - S_b[c] / n_b| from the profile rows of part p."""
    xp = ctx.xp
    prof = st.profiles[p]
    dt = ctx.unit.dtype
    if st.lower is not None and st.lower[p]:  # every node one cell: Gram rows
        return 1.0 - ctx.be.lower_profile_l1(prof, _local(ctx, st, p, a), _local(ctx, st, p, b)) / prof.shape[1]
    if ctx.profile_tol:  # rows hold means already
        wa = wb = xp.ones((a.shape[0],), dtype=dt, device=_device(a))
    else:
        wa = 1.0 / xp.astype(xp.take(st.sizes, a), dt)
        wb = 1.0 / xp.astype(xp.take(st.sizes, b), dt)
    l1 = ctx.be.profile_l1(prof, _local(ctx, st, p, a), _local(ctx, st, p, b), wa, wb)
    return 1.0 - l1 / prof.shape[1]


def _exact_votes(ctx: _Context, st: _State, a: Any, b: Any) -> Any:
    """The votes of edges (a[i], b[i]) (``a`` increasing) from the float64 products."""
    xp = ctx.xp
    vote = xp.empty((a.shape[0],), dtype=ctx.unit.dtype, device=_device(a))
    for _, lo, hi, unit_part in _by_part(ctx, st, a):
        vote[lo:hi] = _vote(ctx, _profile_means(xp, st, a[lo:hi]), _profile_means(xp, st, b[lo:hi]), unit_part)
    return vote


def _near_thresholds(ctx: _Context, scores: Any, thresholds) -> Any:
    """Indices of the scores within ``profile_tol`` of any of ``thresholds`` (increasing)."""
    xp = ctx.xp
    near = xp.zeros(scores.shape, dtype=xp.bool, device=_device(scores))
    for t in thresholds:
        near = near | (xp.abs(scores - t) <= ctx.profile_tol)
    return xp.nonzero(near)[0]


def _softmax_pool(ctx: _Context, logits: Any, unit_part: Any) -> Any:
    """L2N(softmax_c(logits) F) for a block of logit rows (already divided by sigma, and
    overwritten: every caller passes a temporary)."""
    xp = ctx.xp
    logits -= xp.max(logits, axis=1, keepdims=True)
    weights = xp.exp(logits)
    # The weights are not divided by their sum (a pass over m x N numbers): the pooled row is
    # then that sum times the softmax-weighted one, and L2N's eps is scaled by it too.
    pooled = weights @ unit_part
    return pooled / xp.maximum(row_norms(xp, pooled, 0.0), EPS * xp.sum(weights, axis=1))[:, None]


def _profile_attention_pool(ctx: _Context, st: _State, p: int, rows: Any, unit_part: Any) -> Any:
    """Attention pooling of the nodes in ``rows`` (part p), logits read from their profiles."""
    xp = ctx.xp
    prof = st.profiles[p]
    local = _local(ctx, st, p, rows)
    scale = 1.0 / (xp.astype(xp.take(st.sizes, rows), prof.dtype) * ctx.options.temperature)
    m, n_cells = rows.shape[0], prof.shape[1]
    out = xp.empty((m, unit_part.shape[1]), dtype=prof.dtype, device=_device(prof))
    step = max(1, CHUNK_ELEMENTS // max(1, n_cells))
    for s in range(0, m, step):
        logits = xp.take(prof, local[s : s + step], axis=0) * scale[s : s + step, None]
        out[s : s + step] = _softmax_pool(ctx, logits, unit_part)
    return out


def _score_edges(ctx: _Context, st: _State, a: Any, b: Any) -> Any:
    """s_ab = w_f cos(v_a, v_b) + w_s vote_ab for edges (a[i], b[i]), ``a`` increasing."""
    xp, opt = ctx.xp, ctx.options
    cos = ctx.be.edge_cosines(st.feats, st.norms, a, b)
    if opt.vote_weight == 0.0:
        return cos
    vote = xp.empty_like(cos)
    # Edges never cross parts; each part's votes use that part's own cells only.
    for p, lo, hi, unit_part in _by_part(ctx, st, a):
        if st.profiles is not None:
            vote[lo:hi] = _profile_votes(ctx, st, p, a[lo:hi], b[lo:hi])
        else:
            vote[lo:hi] = _vote(
                ctx, _profile_means(xp, st, a[lo:hi]), _profile_means(xp, st, b[lo:hi]), unit_part
            )
    scores = opt.feature_weight * cos + opt.vote_weight * vote
    if st.profiles is not None and ctx.profile_tol:
        # An edge keeps its score through later levels: re-score exactly every score close
        # to any threshold.
        near = _near_thresholds(ctx, scores, opt.levels)
        if near.shape[0]:
            exact = _exact_votes(ctx, st, xp.take(a, near), xp.take(b, near))
            scores[near] = opt.feature_weight * xp.take(cos, near) + opt.vote_weight * exact
    return scores


# -- contraction --------------------------------------------------------------------------


def _contract(ctx: _Context, st: _State, sel_a: Any, sel_b: Any, repool: bool = True) -> tuple[Any, Any]:
    """Contract the components of the selected edges (row ids of roots), in place.

    Returns ``rootmap`` (R,), the new root of every old root's row, and the rows of the
    nodes this pass formed (increasing).  ``repool=False`` only relabels: the formed nodes'
    sums, profiles and features are left stale (for a last pass whose state nobody reads).
    """
    be, xp, opt = ctx.be, ctx.xp, ctx.options
    roots = st.roots
    k = roots.shape[0]
    comp, k_new = be.components(k, xp.take(st.pos, sel_a), xp.take(st.pos, sel_b))
    counts = be.segment_sum(xp.ones((k,), dtype=xp.int64, device=_device(comp)), comp, k_new)
    new_roots = xp.take(roots, be.first_occurrences(comp, k_new))
    merged = xp.nonzero(counts > 1)[0]
    dst = xp.take(new_roots, merged)
    st.exact_profiles = {}
    if repool:
        members = xp.nonzero(xp.take(counts > 1, comp))[0]  # increasing: the summation order
        group = xp.zeros((k_new,), dtype=xp.int64, device=_device(comp))
        group[merged] = xp.arange(merged.shape[0], dtype=xp.int64, device=_device(comp))
        group_of_member = xp.take(group, xp.take(comp, members))
        src = xp.take(roots, members)
        m = int(merged.shape[0])
        if opt.pooling == "sum":  # attention pooling scores v_k and reads no sum: left stale
            st.sums[dst] = be.segment_sum(st.sums, group_of_member, m, rows=src)
        st.sizes[dst] = be.segment_sum(st.sizes, group_of_member, m, rows=src)
        if st.unit_sums is not None:
            st.unit_sums[dst] = be.segment_sum(st.unit_sums, group_of_member, m, rows=src)
        if st.profiles is not None and ctx.profile_tol:
            # The rows of the nodes left single, before any merged node's row is written.
            _complete_profiles(ctx, st, xp.take(new_roots, xp.nonzero(counts == 1)[0]))
            # float32 means: a merged node's row is its exact float64 profile mu_k F^T (the
            # attention logits need that product anyway), rounded.
            pooled = xp.empty((dst.shape[0], st.feats.shape[1]), dtype=st.feats.dtype, device=_device(st.feats))
            mu = _profile_means(xp, st, dst)
            for p, lo, hi, unit_part in _by_part(ctx, st, dst):
                _pool_rows(ctx, st, p, dst, lo, hi, unit_part, mu, pooled)
            if opt.pooling == "attention":
                st.feats[dst] = pooled
        elif st.profiles is not None:
            # A merged node's profile sum is the sum of its members' (a segment sum of rows, no
            # product); members of one node lie in one part, and parts are runs of rows.
            src_bounds = np.searchsorted(be.to_numpy(src), st.row_offsets)
            for p, lo, hi, _ in _by_part(ctx, st, dst):
                s_lo, s_hi = int(src_bounds[p]), int(src_bounds[p + 1])
                prof = st.profiles[p]
                prof[_local(ctx, st, p, dst[lo:hi])] = be.segment_sum(
                    prof, group_of_member[s_lo:s_hi] - lo, hi - lo, rows=_local(ctx, st, p, src[s_lo:s_hi])
                )
        if opt.pooling == "attention" and not (st.profiles is not None and ctx.profile_tol):
            pooled = xp.empty((dst.shape[0], st.feats.shape[1]), dtype=st.feats.dtype, device=_device(st.feats))
            if st.profiles is not None:
                for p, lo, hi, unit_part in _by_part(ctx, st, dst):
                    pooled[lo:hi] = _profile_attention_pool(ctx, st, p, dst[lo:hi], unit_part)
            else:
                mu = _profile_means(xp, st, dst)
                for _, lo, hi, unit_part in _by_part(ctx, st, dst):
                    pooled[lo:hi] = _attention_pool(ctx, mu[lo:hi], unit_part)
            st.feats[dst] = pooled
        st.norms[dst] = row_norms(xp, xp.take(st.feats, dst, axis=0), ctx.eps)

    rootmap = xp.empty_like(st.pos)
    rootmap[roots] = xp.take(new_roots, comp)
    st.roots = new_roots
    st.pos[new_roots] = xp.arange(k_new, dtype=xp.int64, device=_device(comp))
    return rootmap, dst


def _pool_rows(ctx: _Context, st: _State, p: int, dst: Any, lo: int, hi: int, unit_part: Any, mu: Any,
               pooled: Any) -> None:
    """The float32 profile rows and pooled features of the merged nodes ``dst[lo:hi]`` (part p)
    from their exact float64 profiles mu_k F_p^T, in row blocks (``Backend.row_blocks``: the
    CPU backends split them between threads, each product on one BLAS thread)."""
    xp, opt = ctx.xp, ctx.options
    prof = st.profiles[p]
    local = _local(ctx, st, p, dst[lo:hi])
    step = max(1, CHUNK_ELEMENTS // max(1, unit_part.shape[0]))
    # One block of rows or less: the exact rows are kept for the semantic pairs' Gram
    # (_profile_gram), m x N_p numbers, fewer than the float32 profiles of the part.
    pieces: list | None = [] if hi - lo <= step and opt.semantic else None

    def rows(r0: int, r1: int) -> None:
        for s0 in range(lo + r0, lo + r1, step):
            s1 = min(lo + r1, s0 + step)
            exact = mu[s0:s1] @ unit_part.T
            if pieces is not None:
                pieces.append((s0, exact))
            prof[local[s0 - lo : s1 - lo]] = xp.astype(exact, prof.dtype)
            if opt.pooling == "attention":
                pooled[s0:s1] = _softmax_pool(ctx, exact / opt.temperature, unit_part)

    ctx.be.row_blocks(rows, hi - lo, work=int(unit_part.shape[0]) * int(unit_part.shape[1]))
    if pieces:
        st.exact_profiles[p] = (dst[lo:hi], [exact for _, exact in sorted(pieces, key=lambda piece: piece[0])])


def _initial_profiles(ctx: _Context, cell_offsets: np.ndarray, edges: np.ndarray | None = None,
                      lower: list | None = None) -> list | None:
    """Per part, F_p F_p^T (every cell's profile), or None when they would exceed PROFILE_BYTES.

    In float32 when ``ctx.profile_tol`` is set (half the memory, and BLAS's fastest product).
    Then, given the graph's ``edges`` (host (E, 2), sorted) and a list ``lower``, a part may
    hold only the lower triangle (the backend's ``lower_gram`` for those edges): ``lower``
    gets one flag per part.
    """
    if not ctx.options.needs_profiles:
        return None
    xp = ctx.xp
    sizes = np.diff(cell_offsets)
    itemsize = 4 if ctx.profile_tol else 8
    if float(np.sum(sizes.astype(np.float64) ** 2)) * itemsize > PROFILE_BYTES:
        return None
    unit = xp.astype(ctx.unit, xp.float32) if ctx.profile_tol else ctx.unit
    parts = []
    at = None if edges is None else np.searchsorted(edges[:, 0], cell_offsets)
    for p in range(len(cell_offsets) - 1):
        lo, hi = int(cell_offsets[p]), int(cell_offsets[p + 1])
        g = None
        if ctx.profile_tol and at is not None and lower is not None:
            local = edges[int(at[p]) : int(at[p + 1])] - lo
            g = ctx.be.lower_gram(unit[lo:hi], local[:, 0], local[:, 1])
        if lower is not None:
            lower.append(g is not None)
        parts.append(ctx.be.gram(unit[lo:hi]) if g is None else g)
    return parts


def _complete_profiles(ctx: _Context, st: _State, rows: Any) -> None:
    """Make the lower-triangle profiles whole for the given active rows (increasing), before
    a contraction writes merged rows or a copy of the state reads rows; every part is then full."""
    if st.lower is None or not any(st.lower):
        return
    bounds = np.searchsorted(ctx.be.to_numpy(rows), st.row_offsets)
    for p, is_lower in enumerate(st.lower):
        if is_lower:
            local = _local(ctx, st, p, rows[int(bounds[p]) : int(bounds[p + 1])])
            ctx.be.complete_profile_rows(st.profiles[p], local)
            st.lower[p] = False


def profile_groups(sizes: Sequence[int], options: Options, track_margin: bool = False) -> list[range]:
    """Consecutive runs of a batch's parts whose profiles fit in ``PROFILE_BYTES`` together.

    One run, every part, when the options need no profiles or the whole batch fits.  A batch
    whose profiles would not fit as a whole is run group by group (:func:`uniap.segment`), so
    each group keeps the profile path instead of the whole batch falling back to the chunked
    products; a part too large on its own is a group of its own (and falls back alone).
    """
    n = len(sizes)
    if not options.needs_profiles:
        return [range(n)]
    itemsize = 4 if FLOAT32_PROFILES and not track_margin and options.vote_weight != 0.0 else 8
    groups, start, used = [], 0, 0.0
    for i, size in enumerate(sizes):
        cost = float(size) ** 2 * itemsize
        if i > start and used + cost > PROFILE_BYTES:
            groups.append(range(start, i))
            start, used = i, 0.0
        used += cost
    groups.append(range(start, n))
    return groups


def float32_profile_tolerance(options: Options, channels: int) -> float:
    """How far a score from float32 profiles can lie from the exact one (0.0: not used).

    A float32 product of unit vectors errs by at most (C + 2) 2^-24 (rounding of the
    inputs, then C multiply-adds in any order); a vote by twice that; the score by w_s times
    it.  Doubled for safety, plus 1e-9 for the float64 sums.
    """
    if options.vote_weight == 0.0:
        return 0.0
    return 2.0 * options.vote_weight * 2.0 * (channels + 2) * 2.0**-24 * 1.01 + 1e-9


def _initial_state(ctx: _Context, x: Any, cell_offsets: np.ndarray, x_norms: Any,
                   edges: np.ndarray | None = None) -> _State:
    xp, opt = ctx.xp, ctx.options
    n = x.shape[0]
    dev = _device(x)
    sums = x  # the backend's own copy (prepare_features): rows are overwritten as nodes form
    unit_sums = xp.asarray(ctx.unit, copy=True) if opt.needs_profiles else None
    feats = sums if opt.pooling == "sum" else xp.asarray(ctx.unit, copy=True)
    lower: list = []
    profiles = _initial_profiles(ctx, cell_offsets, edges, lower)
    return _State(
        sums=sums,
        sizes=xp.ones((n,), dtype=xp.int64, device=dev),
        unit_sums=unit_sums,
        feats=feats,
        norms=x_norms if feats is sums else row_norms(xp, feats),
        roots=xp.arange(n, dtype=xp.int64, device=dev),
        pos=xp.arange(n, dtype=xp.int64, device=dev),
        row_offsets=cell_offsets,
        cell_offsets=cell_offsets,
        profiles=profiles,
        lower=lower if any(lower) else None,
    )


def run_levels(be: "Backend", graph: "Graph", options: Options, track_margin: bool = False) -> RunResult:
    """Run UniAP over ``graph`` with the generic engine on backend ``be``.

    Parameters
    ----------
    be : Backend
        Supplies the array namespace and the primitives.
    graph : Graph
        Features already in the backend's work dtype; edges ``a < b``.
    options : Options
    track_margin : bool
        Also return the smallest |s - t| over every decision, so that tests know how close
        to a threshold any score came (DESIGN.md 1.5).
    """
    xp = be.xp
    x = graph.x
    n = x.shape[0]
    dev = _device(x)
    with np.errstate(over="ignore", under="ignore"):  # huge or tiny rows: scaled below
        x_norms = row_norms(xp, x, 0.0)
    largest = float(be.to_numpy(xp.max(x_norms))) if n else 1.0
    scale = run_scale(be, xp, x, largest)
    if scale != 1.0:
        x = x * scale  # a new array: exact, and no score changes
        x_norms = row_norms(xp, x, 0.0)
        largest = float(be.to_numpy(xp.max(x_norms)))
    eps = run_eps(largest)
    x_norms = xp.clip(x_norms, min=eps)
    unit = x / x_norms[:, None] if options.needs_profiles else None
    ctx = _Context(be=be, xp=xp, options=options, unit=unit, eps=eps if options.pooling == "sum" else EPS)
    if FLOAT32_PROFILES and not track_margin:
        # track_margin reports exact margins: it keeps float64 profiles.
        ctx.profile_tol = float32_profile_tolerance(options, int(x.shape[1]))
    edges_np = np.asarray(graph.edges, dtype=np.int64)
    if options.vote_weight != 0.0 and len(edges_np):
        edges_np = edges_np[np.lexsort((edges_np[:, 1], edges_np[:, 0]))]  # votes go by part
    st = _initial_state(ctx, x, graph.offsets, x_norms, edges_np.reshape(-1, 2))
    edges = be.asarray_index(edges_np, like=x)
    a, b = edges[:, 0], edges[:, 1]
    scores = _score_edges(ctx, st, a, b)
    cell_root = xp.arange(n, dtype=xp.int64, device=dev)
    is_new = xp.zeros((n,), dtype=xp.bool, device=dev)
    margin = math.inf
    results: list[LevelResult] = []
    for t in options.levels:
        while True:
            if track_margin and scores.shape[0]:
                margin = min(margin, float(xp.min(xp.abs(scores - t))))
            # Each index array sized by the data waits for a device: one nonzero per mask,
            # then gathers (boolean indexing would wait once per indexed array).
            chosen = xp.nonzero(scores > t)[0]
            if chosen.shape[0] == 0:
                break
            rootmap, formed = _contract(ctx, st, xp.take(a, chosen), xp.take(b, chosen))
            cell_root = xp.take(rootmap, cell_root)
            a, b = xp.take(rootmap, a), xp.take(rootmap, b)
            # Edges between untouched nodes are unique and keep their scores; the others
            # are de-duplicated and re-scored.
            is_new[formed] = True
            stale = xp.take(is_new, a) | xp.take(is_new, b)
            is_new[formed] = False
            keep = xp.nonzero(~stale)[0]
            stale = xp.nonzero(stale)[0]
            new_a, new_b = be.unique_edges(xp.take(a, stale), xp.take(b, stale), n)
            a = xp.concat([xp.take(a, keep), new_a])
            b = xp.concat([xp.take(b, keep), new_b])
            scores = xp.concat([xp.take(scores, keep), _score_edges(ctx, st, new_a, new_b)])
            if options.passes == "single":
                break
        semantic = None
        if options.semantic:
            semantic, sem_margin = semantic_groups(ctx, st, t, track_margin)
            margin = min(margin, sem_margin)
        results.append(
            LevelResult(
                threshold=t,
                cell_labels=xp.take(st.pos, cell_root),
                roots=st.roots,
                sizes=xp.take(st.sizes, st.roots),
                features=xp.take(st.feats, st.roots, axis=0) if options.pooling == "attention" else None,
                semantic=semantic,
            )
        )
    return RunResult(levels=results, min_margin=margin if track_margin else None, scale=scale)


# -- semantic groups ----------------------------------------------------------------------


def _compact(ctx: _Context, st: _State) -> _State:
    """A copy of the state of the active nodes, as rows 0..K-1 (canonical order)."""
    xp = ctx.xp
    k = st.roots.shape[0]
    dev = _device(st.roots)
    take = lambda arr: None if arr is None else xp.take(arr, st.roots, axis=0)  # noqa: E731
    _complete_profiles(ctx, st, st.roots)  # its rows are read whole
    sums = take(st.sums)
    bounds = np.searchsorted(ctx.be.to_numpy(st.roots), st.row_offsets)
    profiles = None
    if st.profiles is not None:
        profiles = [
            xp.take(prof, _local(ctx, st, p, st.roots[int(bounds[p]) : int(bounds[p + 1])]), axis=0)
            for p, prof in enumerate(st.profiles)
        ]
    return _State(
        sums=sums,
        sizes=take(st.sizes),
        unit_sums=take(st.unit_sums),
        feats=sums if st.feats is st.sums else take(st.feats),
        norms=take(st.norms),
        roots=xp.arange(k, dtype=xp.int64, device=dev),
        pos=xp.arange(k, dtype=xp.int64, device=dev),
        row_offsets=bounds,
        cell_offsets=st.cell_offsets,
        profiles=profiles,
        # The last pass's nodes are active roots: their rows here are their positions.
        exact_profiles={p: (xp.take(st.pos, rows), exact) for p, (rows, exact) in st.exact_profiles.items()},
    )


def add_semantic(be: "Backend", graph: "Graph", options: Options, level: LevelResult, sums: Any,
                 eps: float = EPS) -> None:
    """Fill ``level.semantic`` for a level computed elsewhere (sum pooling, cosine scores).

    ``sums`` (K, C) are the clusters' feature sums in canonical order; ``eps`` the run's
    (:func:`run_eps`).
    """
    xp = be.xp
    eps = float(be.to_numpy(eps)) if not isinstance(eps, float) else eps  # a device scalar
    ctx = _Context(be=be, xp=xp, options=options, unit=None, eps=eps)
    k = sums.shape[0]
    first_cells = xp.take(level.cell_labels, be.asarray_index(graph.offsets[:-1], like=level.cell_labels))
    row_offsets = np.append(be.to_numpy(first_cells), k)
    st = _State(
        sums=sums, sizes=xp.asarray(level.sizes, copy=True), unit_sums=None, feats=sums, norms=row_norms(xp, sums, eps),
        roots=xp.arange(k, dtype=xp.int64, device=_device(sums)),
        pos=xp.arange(k, dtype=xp.int64, device=_device(sums)),
        row_offsets=row_offsets, cell_offsets=graph.offsets,
    )
    level.semantic, _ = _semantic_passes(ctx, st, level.threshold, False)


def semantic_groups(ctx: _Context, st: _State, t: float, track_margin: bool) -> tuple[Any, float]:
    """Semantic groups of the current clusters: the same passes on each part's complete graph.

    Returns the canonical group of every cluster (in canonical cluster order) and the
    smallest |s - t| seen.  ``st`` is left untouched.
    """
    return _semantic_passes(ctx, _compact(ctx, st), t, track_margin)


def _semantic_passes(ctx: _Context, st: _State, t: float, track_margin: bool) -> tuple[Any, float]:
    xp = ctx.xp
    group_root = xp.asarray(st.roots, copy=True)
    margin = math.inf
    while True:
        a, b, pass_margin = _complete_graph_selection(ctx, st, t, track_margin)
        margin = min(margin, pass_margin)
        if a.shape[0] == 0:
            break
        single = ctx.options.passes == "single"
        # The state of a last pass is never read: relabel only.
        rootmap, _ = _contract(ctx, st, a, b, repool=not single)
        group_root = xp.take(rootmap, group_root)
        if single:
            break
    return xp.take(st.pos, group_root), margin


def _parts_to_pair(ctx: _Context, st: _State):
    """Yield ``(p, rows)``: each part with at least two active nodes and their rows."""
    bounds = np.searchsorted(ctx.be.to_numpy(st.roots), st.row_offsets)
    for p in range(len(st.row_offsets) - 1):
        lo, hi = int(bounds[p]), int(bounds[p + 1])
        if hi - lo >= 2:
            yield p, st.roots[lo:hi]


def _selected(xp: Any, sel_a: list, sel_b: list, dev: Any) -> tuple[Any, Any]:
    """The selected pairs' two ends, concatenated (empty index arrays when none)."""
    if not sel_a:
        empty = xp.zeros((0,), dtype=xp.int64, device=dev)
        return empty, empty
    return xp.concat(sel_a), xp.concat(sel_b)


def _complete_graph_selection(ctx: _Context, st: _State, t: float, track_margin: bool):
    """All pairs a < b of active nodes inside one part whose score exceeds t.

    Pairs are scored in (row block x column block) tiles whose temporaries hold at most
    ``CHUNK_ELEMENTS`` numbers (times the part's cell count when votes need profiles).
    """
    xp, opt = ctx.xp, ctx.options
    if opt.vote_weight and st.profiles is not None:
        return _complete_graph_selection_bounded(ctx, st, t, track_margin)
    dev = _device(st.feats)
    sel_a, sel_b = [], []
    margin = math.inf
    for p, rows in _parts_to_pair(ctx, st):
        kp = rows.shape[0]
        unit_feats = xp.take(st.feats, rows, axis=0) / xp.take(st.norms, rows)[:, None]
        per_pair = 1
        if opt.vote_weight:
            unit_part = ctx.unit[int(st.cell_offsets[p]) : int(st.cell_offsets[p + 1])]
            mu = _profile_means(xp, st, rows)
            per_pair = unit_part.shape[0]
        tile = max(1, math.isqrt(max(1, CHUNK_ELEMENTS // per_pair)))
        for r0 in range(0, kp, tile):
            r1 = min(kp, r0 + tile)
            if opt.vote_weight:
                prof_rows = mu[r0:r1] @ unit_part.T
            for c0 in range(r0, kp, tile):
                c1 = min(kp, c0 + tile)
                s = unit_feats[r0:r1] @ unit_feats[c0:c1].T
                if opt.vote_weight:
                    prof_cols = mu[c0:c1] @ unit_part.T
                    dist = xp.mean(xp.abs(prof_rows[:, None, :] - prof_cols[None, :, :]), axis=2)
                    s = opt.feature_weight * s + opt.vote_weight * (1.0 - dist)
                i = xp.arange(r0, r1, dtype=xp.int64, device=dev)[:, None]
                j = xp.arange(c0, c1, dtype=xp.int64, device=dev)[None, :]
                upper = j > i  # each pair once, no self-pairs
                if track_margin:
                    gaps = xp.abs(s - t)[upper]
                    if gaps.shape[0]:
                        margin = min(margin, float(xp.min(gaps)))
                ii, jj = xp.nonzero((s > t) & upper)
                sel_a.append(xp.take(rows, ii + r0))
                sel_b.append(xp.take(rows, jj + c0))
    return _selected(xp, sel_a, sel_b, dev) + (margin,)


def _profile_gram(ctx: _Context, st: _State, p: int, rows: Any) -> tuple[Any, Any, Any, Any]:
    """Factors of the Gram matrix Q = P P^T of the profile means of ``rows`` (part p):
    ``(left, right, sq, means)`` with Q[i, j] = left[i] . right[j], sq = diag(Q), and each
    profile's mean over the part's cells.

    The factors are (mu F^T F, mu) when that is cheaper than (P, P) (many nodes): F^T F is
    C x C and is computed once per part and run.  With float32 profiles, P is not read from
    them (that would loosen the bounds) but computed as mu F^T in float64 when that is cheaper
    than F^T F (few nodes: at 32x32x384, 155 nodes, half the multiplications).
    """
    xp = ctx.xp
    unit_part = ctx.unit[int(st.cell_offsets[p]) : int(st.cell_offsets[p + 1])]
    n, c = unit_part.shape
    k = rows.shape[0]
    mu = _profile_means(xp, st, rows)
    means = mu @ (xp.sum(unit_part, axis=0) / n)
    # The exact profiles the last pass computed (rows of ``rows``, which is increasing).
    known = st.exact_profiles.get(p) if ctx.profile_tol else None
    if known is not None:
        at = xp.searchsorted(rows, known[0])
        if isinstance(known[1], list):  # the row blocks of _pool_rows, in order
            known = (known[0], known[1][0] if len(known[1]) == 1 else xp.concat(known[1]))
    # Multiplications of each factorisation (F^T F only if not made yet this run); the pairs'
    # products are k^2 C or k^2 N.
    via_features = (0 if p in ctx.feature_grams else n * c * c) + k * c * c + k * k * c
    missing = k - (0 if known is None else int(known[0].shape[0]))
    via_profiles = (missing * n * c if ctx.profile_tol else 0) + k * k * n
    if p not in ctx.feature_grams and via_profiles > via_features:
        ctx.feature_grams[p] = unit_part.T @ unit_part
    if p in ctx.feature_grams:
        left, right = mu @ ctx.feature_grams[p], mu
    elif ctx.profile_tol:
        # The exact float64 profiles (float32 ones would loosen the bounds).
        if known is None:
            left = mu @ unit_part.T
        else:
            left = xp.empty((k, n), dtype=mu.dtype, device=_device(mu))
            left[at] = known[1]
            if missing:
                rest = xp.ones((k,), dtype=xp.bool, device=_device(mu))
                rest[at] = False
                rest = xp.nonzero(rest)[0]
                left[rest] = xp.take(mu, rest, axis=0) @ unit_part.T
        right = left
    else:
        left = xp.take(st.profiles[p], _local(ctx, st, p, rows), axis=0)
        left = left / xp.astype(xp.take(st.sizes, rows), left.dtype)[:, None]
        right = left
    return left, right, xp.vecdot(left, right, axis=1), means


def _complete_graph_selection_bounded(ctx: _Context, st: _State, t: float, track_margin: bool):
    """:func:`_complete_graph_selection` with votes from the profile rows, most pairs decided
    by bounds.

    With d = P_a - P_b over the part's n cells, |d_c| <= 2 and Cauchy-Schwarz give
    max(mean(d^2) / 2, |mean d|) <= mean |d| <= sqrt(mean(d^2)), and mean(d^2) comes from the
    Gram matrix of the profiles (a product): a pair whose score interval lies on one side of
    t is decided by it; only the others need their exact L1 distance (a row operation).
    A tile with few candidate pairs (``DIRECT_RATIO``) skips the bounds: each candidate's L1
    distance costs less than its share of the Gram.  ``track_margin`` computes every pair
    exactly, for the exact smallest |s - t|.
    """
    xp, opt = ctx.xp, ctx.options
    dev = _device(st.feats)
    wf, ws = opt.feature_weight, opt.vote_weight
    sel_a, sel_b = [], []
    margin = math.inf
    for p, rows in _parts_to_pair(ctx, st):
        kp = rows.shape[0]
        n_cells = int(st.cell_offsets[p + 1] - st.cell_offsets[p])
        unit_feats = xp.take(st.feats, rows, axis=0) / xp.take(st.norms, rows)[:, None]
        gram = None  # _profile_gram's factors, made when a tile first needs the bounds
        tile = max(1, math.isqrt(CHUNK_ELEMENTS))
        for r0 in range(0, kp, tile):
            r1 = min(kp, r0 + tile)
            for c0 in range(r0, kp, tile):
                c1 = min(kp, c0 + tile)
                cos = unit_feats[r0:r1] @ unit_feats[c0:c1].T
                width = c1 - c0
                i = xp.arange(r0, r1, dtype=xp.int64, device=dev)[:, None]
                j = xp.arange(c0, c1, dtype=xp.int64, device=dev)[None, :]
                upper = j > i  # each pair once, no self-pairs
                if track_margin:
                    ii, jj = xp.nonzero(upper)
                    cos_ab = xp.take(xp.reshape(cos, (-1,)), ii * width + jj)
                    unsure = xp.arange(ii.shape[0], dtype=xp.int64, device=dev)
                else:
                    # A vote is at most 1: pairs whose cosine alone keeps them at or below t
                    # need nothing more (most pairs, when clusters are many and unlike).
                    ii, jj = xp.nonzero((wf * cos + ws > t - BOUND_SLACK) & upper)
                    cos_ab = xp.take(xp.reshape(cos, (-1,)), ii * width + jj)
                    if DIRECT_RATIO * ii.shape[0] < (r1 - r0) * width:  # few: their own votes
                        unsure = xp.arange(ii.shape[0], dtype=xp.int64, device=dev)
                    else:
                        if gram is None:
                            gram = _profile_gram(ctx, st, p, rows)
                        left, right, sq, means = gram
                        gi, gj = ii + r0, jj + c0
                        g_ab = xp.take(xp.reshape(left[r0:r1] @ right[c0:c1].T, (-1,)), ii * width + jj)
                        m2 = xp.clip((xp.take(sq, gi) + xp.take(sq, gj) - 2.0 * g_ab) / n_cells, min=0.0)
                        low = xp.maximum(m2 / 2.0, xp.abs(xp.take(means, gi) - xp.take(means, gj)))
                        s_hi = wf * cos_ab + ws * (1.0 - (low - BOUND_SLACK))
                        s_lo = wf * cos_ab + ws * (1.0 - (xp.sqrt(m2 + BOUND_SLACK) + BOUND_SLACK))
                        sure = xp.nonzero(s_lo > t)[0]
                        sel_a.append(xp.take(rows, xp.take(gi, sure)))
                        sel_b.append(xp.take(rows, xp.take(gj, sure)))
                        unsure = xp.nonzero((s_hi > t) & ~(s_lo > t))[0]
                if unsure.shape[0] == 0:
                    continue
                ii, jj, cos_ab = xp.take(ii, unsure), xp.take(jj, unsure), xp.take(cos_ab, unsure)
                a, b = xp.take(rows, ii + r0), xp.take(rows, jj + c0)
                vote = _profile_votes(ctx, st, p, a, b)
                s = wf * cos_ab + ws * vote
                if ctx.profile_tol:
                    near = _near_thresholds(ctx, s, (t,))
                    if near.shape[0]:
                        na, nb = xp.take(a, near), xp.take(b, near)
                        order = xp.argsort(na, stable=True)  # _exact_votes goes by part
                        na, nb, near = xp.take(na, order), xp.take(nb, order), xp.take(near, order)
                        s[near] = wf * xp.take(cos_ab, near) + ws * _exact_votes(ctx, st, na, nb)
                if track_margin:
                    margin = min(margin, float(xp.min(xp.abs(s - t))))
                keep = xp.nonzero(s > t)[0]
                sel_a.append(xp.take(a, keep))
                sel_b.append(xp.take(b, keep))
    return _selected(xp, sel_a, sel_b, dev) + (margin,)
