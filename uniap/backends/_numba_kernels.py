"""Numba kernels for the released rule (sum pooling, cosine scores).

Union-find over cell ids whose root is always the smallest cell: a component's root is its
canonical representative, and node sums are accumulated in place in the root's row.  Rows of
``sums`` are written only for nodes formed by a contraction; a singleton's feature is read
from ``x`` directly, so the input is never copied.  Each pass re-scores only edges that touch
a node it changed, and de-duplicates just those edges with per-node buckets and stamps: no
sorting anywhere.

Summation order is fixed (a root's own sum first, then its new members in increasing node
order), the same order the NumPy reference uses, so node sums agree bit for bit.  Compiled
once and cached on disk (``cache=True``); kept in their own file because Numba's cache is
invalidated per source file.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Cosine's eps, relative to the largest row norm (uniap.core.levels.run_eps): init_scores clips
# at EPS times it, so that no scaling of the features changes a score (#23).
EPS = 1e-10
# A row whose squared norm exceeds this (levels.HUGE_NORM squared) makes init_scores return
# HUGE: the caller scales the features by a power of two and runs again (no score changes).
HUGE_SQUARED_NORM = 2.0**600
# Likewise when the largest squared norm is below this (levels.TINY_NORM squared) while some
# value is not zero: squares underflow, and the caller scales the features up.
TINY_SQUARED_NORM = 2.0**-400
HUGE = -2


# Scores only decide "s > t" and need no fixed summation order, so dot products may be
# re-associated (vectorised) and fused; never "fast" in full, which would drop NaN checks.
# Node sums, which must agree bit for bit with the reference, are computed without it.
SCORE_MATH = {"reassoc", "contract"}


@njit(cache=True, fastmath=SCORE_MATH)
def _dot(u, a, v, b):
    """<u[a], v[b]> in float64."""
    s = 0.0
    for j in range(u.shape[1]):
        s += np.float64(u[a, j]) * np.float64(v[b, j])
    return s


@njit(cache=True, inline="always")
def _find(parent, k):
    root = k
    while parent[root] != root:
        root = parent[root]
    while parent[k] != root:
        nxt = parent[k]
        parent[k] = root
        k = nxt
    return root


@njit(cache=True)
def _score(x, sums, has_sum, norms, a, b):
    if has_sum[a]:
        d = _dot(sums, a, sums, b) if has_sum[b] else _dot(sums, a, x, b)
    else:
        d = _dot(x, a, sums, b) if has_sum[b] else _dot(x, a, x, b)
    return d / (norms[a] * norms[b])


@njit(cache=True, fastmath=SCORE_MATH)
def init_scores(x, ea, eb, norms, scores, eps_out):
    """Norms of every cell and the score of every edge; returns the first non-finite row, or
    HUGE when some finite row's squared norm exceeds HUGE_SQUARED_NORM (scores are unusable
    then), or -1.  ``eps_out[0]`` receives the run's eps (EPS times the largest norm).

    Edges come sorted by their first end, so one sweep over the rows computes each row's norm
    and its dot products with its (nearby, still cached) later neighbours.  Rows with two or
    four later neighbours (grid interiors, 4- and 8-connected) do it in a single pass over the
    row, which reads and converts each value once: about a quarter faster than one pass per
    product on 64x64x384.
    """
    n, c = x.shape
    m = ea.shape[0]
    e = 0
    huge = False
    for k in range(n):
        count = 0
        while e + count < m and ea[e + count] == k:
            count += 1
        s = 0.0
        if count == 2:
            b0, b1 = eb[e], eb[e + 1]
            d0 = d1 = 0.0
            for j in range(c):
                v = np.float64(x[k, j])
                s += v * v
                d0 += v * np.float64(x[b0, j])
                d1 += v * np.float64(x[b1, j])
            scores[e], scores[e + 1] = d0, d1
        elif count == 4:
            b0, b1, b2, b3 = eb[e], eb[e + 1], eb[e + 2], eb[e + 3]
            d0 = d1 = d2 = d3 = 0.0
            for j in range(c):
                v = np.float64(x[k, j])
                s += v * v
                d0 += v * np.float64(x[b0, j])
                d1 += v * np.float64(x[b1, j])
                d2 += v * np.float64(x[b2, j])
                d3 += v * np.float64(x[b3, j])
            scores[e], scores[e + 1], scores[e + 2], scores[e + 3] = d0, d1, d2, d3
        else:
            for j in range(c):
                s += np.float64(x[k, j]) * np.float64(x[k, j])
            for i in range(e, e + count):
                scores[i] = _dot(x, k, x, eb[i])
        e += count
        if not s <= HUGE_SQUARED_NORM:  # NaN, inf, or so large that later sums may overflow
            for j in range(c):
                if not np.isfinite(x[k, j]):
                    return k
            huge = True
        norms[k] = np.sqrt(s)
    if huge:
        return HUGE
    eps = EPS
    largest = 0.0
    for k in range(n):
        largest = max(largest, norms[k])
    if largest * largest < TINY_SQUARED_NORM:
        for k in range(n):
            for j in range(c):
                if x[k, j] != 0:
                    return HUGE  # tiny: to be scaled up
    if largest > 0.0:
        eps = EPS * largest
    eps_out[0] = eps
    for k in range(n):
        if not norms[k] > eps:
            norms[k] = eps
    for e in range(m):
        scores[e] = scores[e] / (norms[ea[e]] * norms[eb[e]])
    return -1


@njit(cache=True)
def contract_level(
    x, sums, has_sum, norms, sizes, parent, nodes, num_nodes,
    ea, eb, scores, num_edges, threshold, until_stable,
    dirty, dirty_list, buckets, head, link, pending_b, stamp, token, labels_out, new_id, eps,
):
    """Contract at one threshold; returns (num_nodes, num_edges) after the level.

    ``nodes[:num_nodes]`` are the current roots in increasing order; ``ea, eb, scores``
    hold ``num_edges`` current edges with valid scores.  Writes the canonical cell labels
    of the level into ``labels_out``.
    """
    n = x.shape[0]
    c = x.shape[1]
    while True:
        merged = False
        for e in range(num_edges):
            if scores[e] > threshold:
                ra = _find(parent, ea[e])
                rb = _find(parent, eb[e])
                if ra != rb:
                    if ra < rb:
                        parent[rb] = ra
                    else:
                        parent[ra] = rb
                merged = True
        if not merged:
            break

        # Pool: each root's own sum, then its new members in increasing node order.
        num_dirty = 0
        for i in range(num_nodes):
            k = nodes[i]
            r = _find(parent, k)
            if r != k:
                if not dirty[r]:
                    dirty[r] = True
                    dirty_list[num_dirty] = r
                    num_dirty += 1
                    if not has_sum[r]:
                        for j in range(c):
                            sums[r, j] = x[r, j]
                        has_sum[r] = True
                if has_sum[k]:
                    for j in range(c):
                        sums[r, j] += sums[k, j]
                else:
                    for j in range(c):
                        sums[r, j] += x[k, j]
                sizes[r] += sizes[k]
        kept = 0
        for i in range(num_nodes):
            k = nodes[i]
            if parent[k] == k:
                nodes[kept] = k
                kept += 1
        num_nodes = kept
        for i in range(num_dirty):
            r = dirty_list[i]
            s = np.sqrt(_dot(sums, r, sums, r))
            norms[r] = s if s > eps else eps

        # Edges between unchanged nodes stay as they are, score included; the others are
        # bucketed by their smaller end and de-duplicated with a stamp per bucket.
        kept = 0
        num_pending = 0
        for e in range(num_edges):
            a = parent[ea[e]]
            b = parent[eb[e]]
            if a == b:
                continue
            if a > b:
                a, b = b, a
            if dirty[a] or dirty[b]:
                if head[a] == -1:
                    buckets[num_pending] = a
                    num_pending += 1
                link[e] = head[a]
                pending_b[e] = b
                head[a] = e
            else:
                ea[kept] = a
                eb[kept] = b
                scores[kept] = scores[e]
                kept += 1
        for i in range(num_pending):
            a = buckets[i]
            token[0] += 1
            tk = token[0]
            e = head[a]
            while e != -1:
                b = pending_b[e]
                nxt = link[e]
                if stamp[b] != tk:
                    stamp[b] = tk
                    ea[kept] = a
                    eb[kept] = b
                    scores[kept] = _score(x, sums, has_sum, norms, a, b)
                    kept += 1
                e = nxt
            head[a] = -1
        num_edges = kept
        for i in range(num_dirty):
            dirty[dirty_list[i]] = False
        if not until_stable:
            break

    count = 0
    for i in range(n):
        r = _find(parent, i)
        if r == i:
            new_id[i] = count
            count += 1
        labels_out[i] = new_id[r]
    return num_nodes, num_edges


@njit(cache=True)
def contract_all(x, ea, eb, thresholds, until_stable, want_sums):
    """Every level of the released rule in one call.

    Returns ``(status, labels, counts, roots, sizes, sums, eps)``: status is -1, or the first row
    holding NaN or inf, or HUGE (nothing else is computed then; see init_scores); labels (L, N) int32 canonical per
    level; counts (L,) clusters per level; then per cluster, level after level: roots
    (smallest cell) and sizes (sum of counts,), and sums (sum of counts, C) float64 feature
    sums when ``want_sums``, else (0, C); eps the run's cosine eps (for semantic groups).
    """
    n, c = x.shape
    m = ea.shape[0]
    num_levels = thresholds.shape[0]
    labels = np.empty((num_levels, n), np.int32)
    counts = np.zeros(num_levels, np.int64)
    norms = np.empty(n, np.float64)
    scores = np.empty(m, np.float64)
    eps_out = np.full(1, EPS)
    status = init_scores(x, ea, eb, norms, scores, eps_out)
    eps = eps_out[0]
    if status != -1:
        empty = np.empty(0, np.int64)
        return status, labels, counts, empty, empty, np.empty((0, c), np.float64), eps
    ea = ea.copy()
    eb = eb.copy()
    # Rows of sums are written only for nodes formed by a contraction.
    sums = np.empty((n, c), np.float64)
    has_sum = np.zeros(n, np.bool_)
    sizes = np.ones(n, np.int64)
    parent = np.arange(n)
    nodes = np.arange(n)
    dirty = np.zeros(n, np.bool_)
    dirty_list = np.empty(n, np.int64)
    buckets = np.empty(n, np.int64)
    head = np.full(n, -1, np.int64)
    link = np.empty(m, np.int64)
    pending_b = np.empty(m, np.int64)
    stamp = np.zeros(n, np.int64)
    token = np.zeros(1, np.int64)
    new_id = np.empty(n, np.int64)
    level_labels = np.empty(n, np.int64)
    out_sizes = np.empty(n, np.int64)
    out_roots = np.empty(n, np.int64)
    out_sums = np.empty((n if want_sums else 0, c), np.float64)
    used = 0
    num_nodes = n
    num_edges = m
    for level in range(num_levels):
        num_nodes, num_edges = contract_level(
            x, sums, has_sum, norms, sizes, parent, nodes, num_nodes,
            ea, eb, scores, num_edges, thresholds[level], until_stable,
            dirty, dirty_list, buckets, head, link, pending_b, stamp, token, level_labels, new_id, eps,
        )
        for i in range(n):
            labels[level, i] = level_labels[i]
        counts[level] = num_nodes
        if used + num_nodes > out_sizes.shape[0]:
            grown = np.empty(2 * (used + num_nodes), np.int64)
            grown[:used] = out_sizes[:used]
            out_sizes = grown
            grown = np.empty(2 * (used + num_nodes), np.int64)
            grown[:used] = out_roots[:used]
            out_roots = grown
            if want_sums:
                grown_sums = np.empty((2 * (used + num_nodes), c), np.float64)
                grown_sums[:used] = out_sums[:used]
                out_sums = grown_sums
        for i in range(num_nodes):
            r = nodes[i]
            out_sizes[used + i] = sizes[r]
            out_roots[used + i] = r
            if want_sums:
                for j in range(c):
                    out_sums[used + i, j] = sums[r, j] if has_sum[r] else x[r, j]
        used += num_nodes
    return status, labels, counts, out_roots[:used], out_sizes[:used], out_sums[:used], eps


@njit(cache=True)
def cluster_sums(x, labels, num):
    """float64 sums of the rows of ``x`` per label, each bin adding its rows in order from 0."""
    out = np.zeros((num, x.shape[1]), np.float64)
    for i in range(x.shape[0]):
        k = labels[i]
        for j in range(x.shape[1]):
            out[k, j] += x[i, j]
    return out


@njit(cache=True, fastmath=SCORE_MATH)
def profile_l1(prof, a, b, wa, wb, out):
    """out[i] = sum_c |wa[i] prof[a[i], c] - wb[i] prof[b[i], c]| (the paper's votes).

    Scores decide "s > t" only, so the sum may be re-associated (vectorised).
    """
    n = prof.shape[1]
    for i in range(a.shape[0]):
        ra, rb, fa, fb = a[i], b[i], wa[i], wb[i]
        s = 0.0
        for c in range(n):
            s += abs(fa * np.float64(prof[ra, c]) - fb * np.float64(prof[rb, c]))
        out[i] = s
    return out


@njit(cache=True)
def fill_upper(g, block):
    """Copy the lower triangle of the square C-ordered ``g`` onto its upper one, in place.

    ``block`` x ``block`` tiles: the strided reads of a tile stay in cache while its rows are
    written (NumPy's own copy after ``syrk`` walks whole columns, which costs as much as the
    product at 4096 x 4096).
    """
    n = g.shape[0]
    for i0 in range(0, n, block):
        i1 = min(i0 + block, n)
        for j0 in range(i0, n, block):
            j1 = min(j0 + block, n)
            for i in range(i0, i1):
                for j in range(max(j0, i + 1), j1):
                    g[i, j] = g[j, i]
    return g


# -- votes from the lower triangle of a symmetric profile matrix -----------------------------
# The paper's first votes read every cell's profile row of the Gram G = F F^T.  Its product
# fills only the lower triangle (syrk); copying it onto the upper one costs a strided pass over
# N^2 / 2 numbers (at 4096 cells, a quarter to a third of the product).  These kernels read the
# lower triangle L (L[i, j] = G[i, j] for j <= i) as it is: for an edge a < b,
#   sum_c |G[a, c] - G[b, c]| = sum_{c < a} |L[a, c] - L[b, c]|      (rows a and b: "heads")
#                             + sum_{a <= c < b} |L[c, a] - L[b, c]|  (column a: b - a numbers)
#                             + sum_{c >= b} |L[c, a] - L[c, b]|      (row c: "tails").
# Edges sharing an offset d = b - a (a grid's right and down neighbours) have their tails
# summed row by row over every a at once, a vectorised pass over each row.


@njit(cache=True, nogil=True, fastmath=SCORE_MATH)
def lower_l1_tails(g, offsets, acc, c_lo, c_hi):
    """acc[k, a] += sum_{c in [c_lo, c_hi), c >= a + d} |g[c, a] - g[c, a + d]|, d = offsets[k],
    for every a: the tails of all edges of offset d, rows c_lo to c_hi of the lower triangle.

    Four rows at a time, each read as two views of equal length (vectorised), their sums added
    to the accumulators once (each row alone: 20-40% slower; indexing the rows instead of
    views, 2x; blocks of rows and columns, 4x, at 4096 cells); the few columns only the later
    rows of a four reach are added one by one.
    """
    c = c_lo
    while c + 3 < c_hi:
        r0, r1, r2, r3 = g[c], g[c + 1], g[c + 2], g[c + 3]
        for k in range(offsets.shape[0]):
            d = offsets[k]
            m = max(0, c - d + 1)
            out = acc[k, :m]
            x0, y0, x1, y1 = r0[:m], r0[d : d + m], r1[:m], r1[d : d + m]
            x2, y2, x3, y3 = r2[:m], r2[d : d + m], r3[:m], r3[d : d + m]
            for a in range(m):
                out[a] += ((abs(np.float64(x0[a]) - np.float64(y0[a])) + abs(np.float64(x1[a]) - np.float64(y1[a])))
                           + (abs(np.float64(x2[a]) - np.float64(y2[a]))
                              + abs(np.float64(x3[a]) - np.float64(y3[a]))))
            for j in range(1, 4):
                rj = g[c + j]
                for a in range(m, max(0, c + j - d + 1)):
                    acc[k, a] += abs(np.float64(rj[a]) - np.float64(rj[a + d]))
        c += 4
    while c < c_hi:
        row = g[c]
        for k in range(offsets.shape[0]):
            d = offsets[k]
            m = max(0, c - d + 1)
            x, y, out = row[:m], row[d : d + m], acc[k, :m]
            for a in range(m):
                out[a] += abs(np.float64(x[a]) - np.float64(y[a]))
        c += 1
    return acc


@njit(cache=True, nogil=True, fastmath=SCORE_MATH)
def lower_l1_heads(g, offsets, acc, a_lo, a_hi):
    """acc[k, a] += the heads and middle of edge (a, a + d), d = offsets[k], for a in
    [a_lo, a_hi) (and a + d < n); row a's head is read once for every offset."""
    n = g.shape[0]
    for a in range(a_lo, a_hi):
        x = g[a, :a]
        for k in range(offsets.shape[0]):
            b = a + offsets[k]
            if b >= n:
                continue
            y = g[b, :a]
            s = 0.0
            for c in range(a):
                s += abs(np.float64(x[c]) - np.float64(y[c]))
            for c in range(a, b):
                s += abs(np.float64(g[c, a]) - np.float64(g[b, c]))
            acc[k, a] += s
    return acc


@njit(cache=True, nogil=True, fastmath=SCORE_MATH)
def lower_l1_edges(g, a, b, out):
    """out[i] = sum_c |G[a[i], c] - G[b[i], c]| from the lower triangle, edge by edge (the
    tails read two columns: for the few edges of no common offset)."""
    n = g.shape[0]
    for i in range(a.shape[0]):
        lo, hi = min(a[i], b[i]), max(a[i], b[i])
        s = 0.0
        for c in range(lo):
            s += abs(np.float64(g[lo, c]) - np.float64(g[hi, c]))
        for c in range(lo, hi):
            s += abs(np.float64(g[c, lo]) - np.float64(g[hi, c]))
        for c in range(hi, n):
            s += abs(np.float64(g[c, lo]) - np.float64(g[c, hi]))
        out[i] = s
    return out


@njit(cache=True, nogil=True)
def complete_rows(g, rows):
    """g[r, r + 1:] = g[r + 1:, r] for each r in ``rows``: those rows of the symmetric matrix
    whose lower triangle ``g`` holds made whole (in place; the lower triangle is only read)."""
    n = g.shape[0]
    for i in range(rows.shape[0]):
        r = rows[i]
        for c in range(r + 1, n):
            g[r, c] = g[c, r]
    return g


@njit(cache=True, fastmath=SCORE_MATH)
def edge_cosines(feats, norms, a, b, out):
    """out[i] = <v_a, v_b> / (norms[a] norms[b]) for a = a[i], b = b[i], rows read in place.

    The engine's cosine gathers both rows of every edge first (two (E, C) copies); scores
    decide "s > t" only, so the dot may be re-associated (vectorised), as in ``_score``.
    """
    for i in range(a.shape[0]):
        out[i] = _dot(feats, a[i], feats, b[i]) / (norms[a[i]] * norms[b[i]])
    return out


@njit(cache=True)
def components(num_nodes, a, b):
    """Connected components of the edges (a[i], b[i]), numbered in the order of each one's
    smallest node (the canonical numbering of ``Backend.components``): union-find whose root
    is always the smaller node."""
    parent = np.arange(num_nodes)
    for i in range(a.shape[0]):
        ra, rb = _find(parent, a[i]), _find(parent, b[i])
        if ra < rb:
            parent[rb] = ra
        elif rb < ra:
            parent[ra] = rb
    comp = np.empty(num_nodes, np.int64)
    k = 0
    for i in range(num_nodes):
        r = _find(parent, i)
        if r == i:
            comp[i] = k
            k += 1
        else:
            comp[i] = comp[r]  # r < i: numbered already
    return comp, k


@njit(cache=True)
def segment_sum_rows(values, labels, rows, num):
    """out[labels[i]] += values[rows[i]] for every i in order, each bin from zero: the row
    order of ``Backend.segment_sum`` (the same float64 additions as SciPy's CSR product)."""
    out = np.zeros((num, values.shape[1]), values.dtype)
    for i in range(labels.shape[0]):
        k, r = labels[i], rows[i]
        for j in range(values.shape[1]):
            out[k, j] += values[r, j]
    return out
