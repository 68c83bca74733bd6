"""Numba kernels of the superpixels: the hierarchical watershed by volume of an image's
4-adjacency graph, and the pooling and adjacency of a label map.

The same hierarchy as higra's ``watershed_hierarchy_by_volume`` (Cousty & Najman 2011; the
algorithm of Najman, Cousty & Perret, "Playing with Kruskal", ISMM 2013): a binary partition
tree (BPT) of the minimum spanning tree by Kruskal's algorithm, the volume of every BPT node,
and the *persistence* of every MST edge (the smaller of the two volumes that meet there, 0
inside a basin); a horizontal cut of the hierarchy keeps the MST edges whose persistence is at
most its altitude.  Here the edges are sorted by a two-pass radix sort of their float32
weights, the tree is built with union-find over the implicit pixel graph (no edge list is
stored), the BPT is never stored either (each union finishes the nodes it joins), and
everything is a few linear passes over the pixels: about 12 ms at 481 x 321, where higra's
call takes 170 ms and its edge weighting 35 ms more.  The kernels release the GIL, so the
superpixels can be made in a thread beside the features (:mod:`uniap.features.regions`).

Ties are broken in higra's edge order (pixels in raster order, each one's right edge before
its lower one), so with the same weights the hierarchy is higra's exactly
(``tests/test_contours.py``).  Kept in their own file because Numba's cache is invalidated per
source file.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_KEYS = 1 << 16


@njit(cache=True, nogil=True)
def smooth_nearest(lab, weights):
    """Each channel of ``lab`` (C, H, W) float32 smoothed in place, bit for bit as
    ``scipy.ndimage.gaussian_filter(channel, sigma, mode="nearest", output=channel)`` does it.

    ``weights`` (2r + 1,) float64 are the filter's (symmetric).  The arithmetic is SciPy's
    ``correlate1d``'s: rows first, then columns, edges extended by their last pixel, each sum
    in float64 from the centre tap and then the pairs of taps from the outermost in, stored as
    float32 after each pass.  One pass over the rows and one over the columns, no line
    buffers per pixel row and column as SciPy copies (half its time at 481 x 321).
    """
    channels, height, width = lab.shape
    r = weights.size // 2
    tmp = np.empty((height, width), np.float32)
    acc = np.empty(width, np.float64)
    line = np.empty(width + 2 * r, np.float64)
    centre = weights[r]
    for c in range(channels):
        plane = lab[c]
        for y in range(height):
            row = plane[y]
            for x in range(width):
                acc[x] = np.float64(row[x]) * centre
            for j in range(r, 0, -1):
                up = plane[max(y - j, 0)]
                down = plane[min(y + j, height - 1)]
                w = weights[r - j]
                for x in range(width):
                    acc[x] += (np.float64(up[x]) + np.float64(down[x])) * w
            out = tmp[y]
            for x in range(width):
                out[x] = np.float32(acc[x])
        for y in range(height):
            src = tmp[y]
            for k in range(width + 2 * r):
                line[k] = src[min(max(k - r, 0), width - 1)]
            for x in range(width):
                acc[x] = line[x + r] * centre
            for j in range(r, 0, -1):
                w = weights[r - j]
                left = line[r - j:r - j + width]
                right = line[r + j:r + j + width]
                for x in range(width):
                    acc[x] += (left[x] + right[x]) * w
            out = plane[y]
            for x in range(width):
                out[x] = np.float32(acc[x])
    return lab


@njit(cache=True, nogil=True)
def edge_weights(lab):
    """L2 colour distance of every 4-adjacent pixel pair of ``lab`` (C, H, W).

    Returns float32 (2 * H * W,): slot ``2 * i`` holds the edge from pixel ``i`` to its right
    neighbour, ``2 * i + 1`` to the one below (higra's edge order); slots of missing
    neighbours are never read.
    """
    c_count, height, width = lab.shape
    weights = np.zeros(2 * height * width, np.float32)
    for y in range(height):
        for x in range(width):
            i = y * width + x
            if x + 1 < width:
                s = 0.0
                for c in range(c_count):
                    d = np.float64(lab[c, y, x + 1]) - np.float64(lab[c, y, x])
                    s += d * d
                weights[2 * i] = np.sqrt(s)
            if y + 1 < height:
                s = 0.0
                for c in range(c_count):
                    d = np.float64(lab[c, y + 1, x]) - np.float64(lab[c, y, x])
                    s += d * d
                weights[2 * i + 1] = np.sqrt(s)
    return weights


@njit(cache=True)
def _sorted_edges(weights, height, width):
    """The edges (slots) by increasing weight, ties in slot order, and their weights in that
    order: a two-pass LSD radix sort of the weights' float32 bits (monotone for weights >= 0).

    Each key travels with its slot, so no pass gathers ``weights`` at random (at 4 M pixels
    the weights are 32 MB: a gather per edge ran out of cache)."""
    bits = weights.view(np.uint32)
    count = 0
    for y in range(height):
        count += (width - 1) + (width if y + 1 < height else 0)
    first = np.empty(count, np.int32)
    first_key = np.empty(count, np.uint32)
    k = 0
    for y in range(height):
        for x in range(width):
            slot = 2 * (y * width + x)
            if x + 1 < width:
                first[k] = slot
                first_key[k] = bits[slot]
                k += 1
            if y + 1 < height:
                first[k] = slot + 1
                first_key[k] = bits[slot + 1]
                k += 1
    second = np.empty(count, np.int32)
    second_key = np.empty(count, np.uint32)
    for shift in (0, 16):
        if shift == 0:
            src, dst, src_key, dst_key = first, second, first_key, second_key
        else:
            src, dst, src_key, dst_key = second, first, second_key, first_key
        counts = np.zeros(_KEYS + 1, np.int64)
        for j in range(count):
            counts[((src_key[j] >> shift) & 0xFFFF) + 1] += 1
        for b in range(_KEYS):
            counts[b + 1] += counts[b]
        for j in range(count):
            key = src_key[j]
            b = (key >> shift) & 0xFFFF
            dst[counts[b]] = src[j]
            dst_key[counts[b]] = key
            counts[b] += 1
    return first, first_key.view(np.float32)


@njit(cache=True)
def _find(uf, a):
    while uf[a] != a:
        uf[a] = uf[uf[a]]  # path halving
        a = uf[a]
    return a


@njit(cache=True)
def _root(uf, a):
    """The root of ``a`` in a union-find whose roots hold minus their size (one array for
    both: a root's size comes with the read that finds it), halving the path."""
    while uf[a] >= 0:
        p = uf[a]
        q = uf[p]
        if q < 0:
            return p
        uf[a] = q
        a = q
    return a


@njit(cache=True, nogil=True)
def persistence(weights, height, width):
    """Kruskal's BPT of the pixel graph with edge ``weights`` and each MST edge's persistence by volume.

    Parameters
    ----------
    weights : float32 (2 * H * W,)
        :func:`edge_weights`.
    height, width : int

    Returns
    -------
    mst : int32 (N - 1, 2)
        The pixels each MST edge joins, in Kruskal's order (increasing key).
    persist : float64 (N - 1,)
        Each MST edge's persistence: the volume (CIELab depth summed over the pixels) of the
        smaller of the two regions that meet there, corrected on plateaus as higra does; 0
        where one side holds no minimum.

    Notes
    -----
    The BPT is never stored.  A BPT node's volume (higra's ``attribute_volume``: leaves 0, a
    node its area times the height up to its parent plus its children's volumes) is known
    once its parent is made, and its parent is made by the union that absorbs its component:
    so each union-find root keeps what its node needs for that moment (its altitude, its
    children's volumes and the larger of their corrected volumes), and the union finishes
    both nodes it joins and gives the new edge its persistence, in the same pass as Kruskal.
    One pass and one record per root instead of child arrays read back at random in a second
    pass (which, with the records, took about a third of the time).  The arithmetic is the
    two-pass form's, term for term, so the persistences are bit for bit the same.
    """
    n = height * width
    order, sorted_weights = _sorted_edges(weights, height, width)
    m = max(n - 1, 0)
    uf = np.full(n, -1, np.int32)  # a root holds minus its component's size
    # per root of more than one pixel, its BPT node's: altitude, the volumes of its two
    # children and the larger of their corrected volumes (a single pixel is a leaf: all 0)
    node = np.empty((n, 4))
    mst = np.empty((m, 2), np.int32)
    persist = np.empty(m)
    made = 0
    for i in range(order.size):
        if made == m:
            break
        e = order[i]
        u = e >> 1
        v = u + (width if e & 1 else 1)
        ru = _root(uf, u)
        rv = _root(uf, v)
        if ru == rv:
            continue
        size_u = -uf[ru]
        size_v = -uf[rv]
        alt = np.float64(sorted_weights[i])
        # each side's node now has its parent (the node made here): its volume is final, and
        # inside a plateau (same altitude as the parent) its corrected volume is its children's
        volume_u = corrected_u = 0.0
        if size_u > 1:
            volume_u = np.float64(size_u) * (alt - node[ru, 0]) + node[ru, 1] + node[ru, 2]
            corrected_u = volume_u if node[ru, 0] != alt else node[ru, 3]
        volume_v = corrected_v = 0.0
        if size_v > 1:
            volume_v = np.float64(size_v) * (alt - node[rv, 0]) + node[rv, 1] + node[rv, 2]
            corrected_v = volume_v if node[rv, 0] != alt else node[rv, 3]
        persist[made] = min(corrected_u, corrected_v)
        mst[made, 0] = u
        mst[made, 1] = v
        if size_u < size_v:
            uf[rv] = -(size_u + size_v)
            uf[ru] = rv
            r = rv
        else:
            uf[ru] = -(size_u + size_v)
            uf[rv] = ru
            r = ru
        node[r, 0] = alt
        node[r, 1] = volume_u
        node[r, 2] = volume_v
        node[r, 3] = max(corrected_u, corrected_v)
        made += 1
    return mst[:made], persist[:made]


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
def pixel_cut(height, width, u, v, persist, altitude):
    """:func:`tree_cut` of the pixel graph's MST (edges ``u[j] - v[j]`` between 4-adjacent
    pixels): the same labels, 0 .. R-1 in raster order of each region's first pixel.

    The kept edges are marked per pixel, then joined in one raster pass whose unions reach
    back one pixel or one row only (cache-friendly, unlike unions in the MST's order, which
    is the sorted weights'); the roots are each region's first pixel, so the labels come in
    one more pass, each pixel taking its root's.
    """
    n = height * width
    kept = np.zeros(2 * n, np.bool_)  # slot 2i: pixel i to its right neighbour, 2i + 1: below
    for j in range(u.size):
        if persist[j] <= altitude:
            a = min(u[j], v[j])
            kept[2 * a + (1 if max(u[j], v[j]) - a == width else 0)] = True
    uf = np.empty(n, np.int32)  # a pixel's parent is an earlier pixel, a root its own
    for y in range(height):
        for x in range(width):
            i = y * width + x
            r = i
            if x > 0 and kept[2 * (i - 1)]:
                r = _find(uf, i - 1)
            if y > 0 and kept[2 * (i - width) + 1]:
                s = _find(uf, i - width)
                if r == i:
                    r = s
                elif s < r:
                    uf[r] = s
                    r = s
                elif s > r:
                    uf[s] = r
            uf[i] = r
    labels = np.empty(n, np.int32)
    count = 0
    for i in range(n):
        p = uf[i]
        if p == i:
            labels[i] = count
            count += 1
        else:
            r = uf[p]  # p < i points at its root already (set below when p was labelled)
            uf[i] = r
            labels[i] = labels[r]
    return labels


@njit(cache=True, nogil=True)
def pool_cells(regions, rows, cols, feats, width, n):
    """``out[r] = sum over the pixels of region r of feats[cell of the pixel]``: (n, C) float64.

    ``regions`` (H, W) labels 0 .. n-1; ``rows`` (H,) and ``cols`` (W,) the grid row and
    column of each pixel row and column; ``feats`` (h * w, C) float64, ``width`` = w.  Runs of
    pixels with the same region and cell along a row are added once, times their length.
    """
    out = np.zeros((n, feats.shape[1]))
    height, w_px = regions.shape
    for y in range(height):
        base = rows[y] * width
        x = 0
        while x < w_px:
            r = regions[y, x]
            cell = base + cols[x]
            run = 1
            while x + run < w_px and regions[y, x + run] == r and cols[x + run] == cols[x]:
                run += 1
            for c in range(feats.shape[1]):
                out[r, c] += run * feats[cell, c]
            x += run
    return out


_BITMAP_LABELS = 4096  # up to this many labels the pairs are marked in an n x n bitmap (2 MB at most)


@njit(cache=True, nogil=True)
def _adjacent_pairs_bitmap(regions, n):
    """:func:`adjacent_pairs` for few labels: each pair marked in an n x n bitmap (row ``a``,
    bit ``b``), then read out row by row, which is the sorted order: no buffer, no sort."""
    height, width = regions.shape
    words = (n + 63) >> 6
    bits = np.zeros(n * words, np.uint64)
    one = np.uint64(1)
    for y in range(height):
        for x in range(width):
            a = regions[y, x]
            if x + 1 < width:
                b = regions[y, x + 1]
                if a != b:
                    lo, hi = min(a, b), max(a, b)
                    bits[lo * words + (hi >> 6)] |= one << np.uint64(hi & 63)
            if y + 1 < height:
                b = regions[y + 1, x]
                if a != b:
                    lo, hi = min(a, b), max(a, b)
                    bits[lo * words + (hi >> 6)] |= one << np.uint64(hi & 63)
    count = 0
    for i in range(bits.size):
        v = bits[i]
        while v:
            v &= v - one
            count += 1
    out = np.empty(count, np.int64)
    k = 0
    for i in range(bits.size):
        v = bits[i]
        code = (i // words) * n + (i % words) * 64
        while v:
            if v & one:
                out[k] = code
                k += 1
            v >>= one
            code += 1
    return out


@njit(cache=True, nogil=True)
def adjacent_pairs(regions, n):
    """Pairs ``a < b`` of 4-adjacent labels of ``regions`` (H, W): int64 codes ``a * n + b``,
    sorted and unique.

    With few labels (superpixels of an ordinary image) the pairs are marked in a bitmap
    (:func:`_adjacent_pairs_bitmap`: 0.4 against 2.4 ms at 481 x 321 and 1,000 labels).
    Otherwise a pair met again along the same boundary (the next pixel of a row for vertical
    pairs, the next row of a column for horizontal ones) is not stored again, so the buffer
    holds about one code per boundary corner, not per boundary pixel, and is then sorted.
    """
    if n <= _BITMAP_LABELS:
        return _adjacent_pairs_bitmap(regions, n)
    height, width = regions.shape
    codes = np.empty(max(1024, (height * width) // 16), np.int64)
    above = np.full(width, -1, np.int64)  # the horizontal pair stored at this column, last row
    k = 0
    for y in range(height):
        last = -1  # the vertical pair stored at the previous column of this row
        for x in range(width):
            a = regions[y, x]
            code = -1
            if x + 1 < width:
                b = regions[y, x + 1]
                if a != b:
                    code = min(a, b) * n + max(a, b)
                    if code != above[x]:
                        if k == codes.size:
                            codes = np.concatenate((codes, np.empty(codes.size, np.int64)))
                        codes[k] = code
                        k += 1
                above[x] = code
            if y + 1 < height:
                b = regions[y + 1, x]
                code = -1
                if a != b:
                    code = min(a, b) * n + max(a, b)
                    if code != last:
                        if k == codes.size:
                            codes = np.concatenate((codes, np.empty(codes.size, np.int64)))
                        codes[k] = code
                        k += 1
                last = code
    return np.unique(codes[:k])
