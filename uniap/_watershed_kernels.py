"""Numba kernels of the hierarchical watershed by volume on an image's 4-adjacency graph.

The same hierarchy as higra's ``watershed_hierarchy_by_volume`` (Cousty & Najman 2011; the
algorithm of Najman, Cousty & Perret, "Playing with Kruskal", ISMM 2013): a binary partition
tree (BPT) of the minimum spanning tree by Kruskal's algorithm, the volume of every BPT node,
and the *persistence* of every MST edge (the smaller of the two volumes that meet there, 0
inside a basin); a horizontal cut of the hierarchy keeps the MST edges whose persistence is at
most its altitude.  Here the edges are sorted by a counting sort of their weights quantised to
``1 / QUANTUM`` (one pass; higra sorts the float weights), the tree is built with union-find
over the implicit pixel graph (no edge list is stored), and everything is a few linear passes
over the pixels: about 15 ms at 481 x 321 where higra takes 300 ms.

Ties between quantised weights are broken in higra's edge order (pixels in raster order, each
one's right edge before its lower one), so with the same integer weights the hierarchy is
higra's exactly (``tests/test_contours.py``).  Kept in their own file because Numba's cache is invalidated per
source file.
"""

from __future__ import annotations

import numpy as np
from numba import njit

QUANTUM = 64.0  # weights are sorted in steps of 1/64 (CIELab units): ties below that are by edge index
_KEYS = 1 << 16


@njit(cache=True)
def edge_keys(lab):
    """Quantised L2 colour distance of every 4-adjacent pixel pair of ``lab`` (C, H, W).

    Returns uint16 (2 * H * W,): slot ``2 * i`` holds the edge from pixel ``i`` to its right
    neighbour, ``2 * i + 1`` to the one below (higra's edge order); slots of missing
    neighbours are never read.
    """
    c_count, height, width = lab.shape
    keys = np.zeros(2 * height * width, np.uint16)
    for y in range(height):
        for x in range(width):
            i = y * width + x
            if x + 1 < width:
                s = 0.0
                for c in range(c_count):
                    d = np.float64(lab[c, y, x + 1]) - np.float64(lab[c, y, x])
                    s += d * d
                keys[2 * i] = min(int(np.sqrt(s) * QUANTUM + 0.5), _KEYS - 1)
            if y + 1 < height:
                s = 0.0
                for c in range(c_count):
                    d = np.float64(lab[c, y + 1, x]) - np.float64(lab[c, y, x])
                    s += d * d
                keys[2 * i + 1] = min(int(np.sqrt(s) * QUANTUM + 0.5), _KEYS - 1)
    return keys


@njit(cache=True)
def _find(uf, a):
    root = a
    while uf[root] != root:
        root = uf[root]
    while uf[a] != root:  # path compression
        nxt = uf[a]
        uf[a] = root
        a = nxt
    return root


@njit(cache=True)
def _exists(slot, height, width):
    i = slot >> 1
    if slot & 1:
        return i // width + 1 < height
    return i % width + 1 < width


@njit(cache=True)
def persistence(keys, height, width):
    """Kruskal's BPT of the pixel graph with edge ``keys`` and each MST edge's persistence by volume.

    Returns
    -------
    mst_u, mst_v : int64 (N - 1,)
        The pixels each MST edge joins, in Kruskal's order (increasing key).
    persist : float64 (N - 1,)
        Each MST edge's persistence: the volume (pixels times altitude, in key units) of the
        smaller of the two regions that meet there (CIELab depth in key units summed over its pixels; corrected on plateaus as higra does), 0
        where one side holds no minimum.
    """
    n = height * width
    # counting sort of the edges by key (stable: ties in higra's edge order)
    counts = np.zeros(_KEYS + 1, np.int64)
    for slot in range(keys.size):
        if _exists(slot, height, width):
            counts[keys[slot] + 1] += 1
    for k in range(_KEYS):
        counts[k + 1] += counts[k]
    order = np.empty(counts[_KEYS], np.int64)
    for slot in range(keys.size):
        if _exists(slot, height, width):
            k = keys[slot]
            order[counts[k]] = slot
            counts[k] += 1
    # Kruskal: union-find over pixels, one BPT node per MST edge
    m = n - 1
    uf = np.arange(n)
    rank = np.zeros(n, np.int8)
    node_of = np.arange(n)  # the BPT node of each union-find root
    child1 = np.empty(max(m, 0), np.int64)
    child2 = np.empty(max(m, 0), np.int64)
    alt = np.zeros(n + max(m, 0))  # leaves at 0
    mst_u = np.empty(max(m, 0), np.int64)
    mst_v = np.empty(max(m, 0), np.int64)
    made = 0
    for i in range(order.size):
        if made == m:
            break
        e = order[i]
        u = e >> 1
        v = u + (width if e & 1 else 1)
        ru = _find(uf, u)
        rv = _find(uf, v)
        if ru == rv:
            continue
        child1[made] = node_of[ru]
        child2[made] = node_of[rv]
        alt[n + made] = keys[e]
        mst_u[made] = u
        mst_v[made] = v
        if rank[ru] < rank[rv]:
            ru, rv = rv, ru
        uf[rv] = ru
        if rank[ru] == rank[rv]:
            rank[ru] += 1
        node_of[ru] = n + made
        made += 1
    total = n + made
    parent = np.full(total, -1, np.int64)
    for j in range(made):
        parent[child1[j]] = n + j
        parent[child2[j]] = n + j
    # area and volume, bottom up (higra's attribute_volume: leaves 0, a node its own
    # area times the height up to its parent plus its children's volumes)
    area = np.ones(total)
    volume = np.zeros(total)
    for j in range(made):
        i = n + j
        area[i] = area[child1[j]] + area[child2[j]]
        p = parent[i]
        volume[i] = area[i] * ((alt[p] if p >= 0 else alt[i]) - alt[i]) + volume[child1[j]] + volume[child2[j]]
    # corrected volume (a node inside a plateau takes its children's largest), then persistence
    corrected = np.zeros(total)
    for i in range(n, total):
        p = parent[i]
        if p < 0 or alt[i] != alt[p]:
            corrected[i] = volume[i]
        else:
            corrected[i] = max(corrected[child1[i - n]], corrected[child2[i - n]])  # leaves: 0
    persist = np.empty(made)
    for j in range(made):
        persist[j] = min(corrected[child1[j]], corrected[child2[j]])
    return mst_u[:made], mst_v[:made], persist


@njit(cache=True)
def tree_cut(n, a, b, persist, altitude):
    """Regions of the cut of a forest on ``n`` nodes (edges ``a[j] - b[j]``) that keeps the
    edges with persistence <= ``altitude``: int32 (n,), numbered 0 .. R-1 in the order of each
    region's smallest node (raster order for pixels)."""
    uf = np.arange(n)
    for j in range(a.size):
        if persist[j] <= altitude:
            x = _find(uf, a[j])
            y = _find(uf, b[j])
            if x != y:
                if x < y:
                    uf[y] = x
                else:
                    uf[x] = y
    labels = np.empty(n, np.int32)
    count = 0
    for i in range(n):
        r = _find(uf, i)
        if r == i:
            labels[i] = count
            count += 1
        else:
            labels[i] = labels[r]
    return labels
