"""Numba kernels of the records: the COCO RLE, area and box of every label of a label map,
from the map's column-major runs (:func:`uniap.records._encode_runs`), in two passes over
the runs; the runs themselves (:func:`column_runs`); each label's interior point
(:func:`label_points`) and the distances of the point samples it is chosen by
(:func:`boundary_distances`); and a map of superpixel labels encoded from the superpixels'
runs in one call (:func:`encode_node_runs`, :meth:`uniap.records.RegionRuns.encode`).

The counts are written in pycocotools' compressed form (``rleToString``: from the fourth
count on, the difference to the count two before, in signed 5-bit groups, least significant
first, each plus 48, with bit 0x20 when another group follows), so the strings equal
``pycocotools.mask.encode``'s (``tests/test_records_kernel.py``).  Kept in their own file
because Numba's cache is invalidated per source file.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _put(x, buf, pos, write):
    """Write (or, with ``write`` False, only count) the 5-bit groups of the count ``x`` at ``pos``."""
    while True:
        c = x & 0x1F
        x >>= 5
        more = (x != -1) if (c & 0x10) else (x != 0)
        if write:
            buf[pos] = c + 48 + (0x20 if more else 0)
        pos += 1
        if not more:
            return pos


@njit(cache=True)
def _compressed(starts, ends, lo, hi, n, buf, pos, write):
    """The compressed counts of the runs ``lo .. hi - 1`` of one label, from ``pos``: returns
    the position after them (so, with ``write`` False, ``pos`` plus their length)."""
    m2 = 0
    m1 = 0
    idx = 0
    prev = 0
    for j in range(lo, hi + 1):
        for half in range(2):
            if j == hi:  # the trailing zeros, when the mask does not reach the last pixel
                if half == 1 or n - prev == 0:
                    break
                raw = n - prev
            elif half == 0:
                raw = starts[j] - prev
            else:
                raw = ends[j] - starts[j]
                prev = ends[j]
            pos = _put(raw - m2 if idx > 2 else raw, buf, pos, write)
            m2 = m1
            m1 = raw
            idx += 1
    return pos


@njit(cache=True, nogil=True)
def encode_runs(starts, row, k, n, height):
    """Group the runs of a label map by label and encode each label's mask.

    Parameters
    ----------
    starts : int64 (R,)
        First flat (column-major) index of every run of the map, increasing from 0.
    row : int64 (R,)
        Each run's label as a row 0 .. k-1 of the wanted labels, -1 for a label not wanted.
    k : int
        Wanted labels.
    n, height : int
        Pixels of the map and its height.

    Returns
    -------
    present : bool (k,)
        Whether each wanted label has pixels; the outputs below cover these only, in order.
    g_starts, g_ends, group : int64 (r,)
        The runs of the present labels, grouped by label, each label's runs by start;
        ``group``: the label's position among the present ones.
    first : int64 (p,)
        Each present label's first run in the groups (its last is the next one's first - 1).
    text : uint8 (chars,)
        The compressed RLE strings of the present labels, one after the other.
    offsets : int64 (p + 1,)
        Where each label's string starts in ``text``.
    areas : int64 (p,)
    boxes : float64 (p, 4)
        XYWH.
    """
    r = starts.size
    per = np.zeros(k + 1, np.int64)
    for i in range(r):
        g = row[i]
        if g >= 0:
            per[g + 1] += 1
    present = np.zeros(k, np.bool_)
    compact = np.full(k, -1, np.int64)
    p = 0
    for g in range(k):
        if per[g + 1] > 0:
            present[g] = True
            compact[g] = p
            p += 1
        per[g + 1] += per[g]
    total = per[k]
    g_starts = np.empty(total, np.int64)
    g_ends = np.empty(total, np.int64)
    group = np.empty(total, np.int64)
    fill = per[:k].copy()
    for i in range(r):
        g = row[i]
        if g >= 0:
            j = fill[g]
            fill[g] += 1
            g_starts[j] = starts[i]
            g_ends[j] = starts[i + 1] if i + 1 < r else n
            group[j] = compact[g]
    first = np.empty(p, np.int64)
    bounds = np.empty(p + 1, np.int64)
    q = 0
    for g in range(k):
        if present[g]:
            first[q] = per[g]
            bounds[q] = per[g]
            q += 1
    bounds[p] = total
    # one pass: each label's counts written at once into room enough for any (a count is at
    # most n in magnitude: ``chars`` groups of 5 bits with the sign), areas and boxes beside
    bits = 1
    while (np.int64(1) << bits) <= n:
        bits += 1
    chars = bits // 5 + 2
    buf = np.empty(chars * (2 * total + p), np.uint8)
    offsets = np.zeros(p + 1, np.int64)
    areas = np.zeros(p, np.int64)
    boxes = np.empty((p, 4))
    inv = 1.0 / height
    for q in range(p):
        lo = bounds[q]
        hi = bounds[q + 1]
        offsets[q + 1] = _compressed(g_starts, g_ends, lo, hi, n, buf, offsets[q], True)
        top = height
        bottom = -1
        area = 0
        for j in range(lo, hi):
            s = g_starts[j]
            e = g_ends[j] - 1
            area += e + 1 - s
            # columns by a float product, corrected by one at most: exact (pixels < 2**52),
            # and several times faster than an integer division, which dominated the loop
            cs = np.int64(s * inv)
            cs += (cs + 1) * height <= s
            cs -= cs * height > s
            ce = np.int64(e * inv)
            ce += (ce + 1) * height <= e
            ce -= ce * height > e
            if ce > cs:  # across a column boundary: the top and bottom rows
                y0 = 0
                y1 = height - 1
            else:
                y0 = s - cs * height
                y1 = e - ce * height
            top = min(top, y0)
            bottom = max(bottom, y1)
        x0 = g_starts[lo] // height
        x1 = (g_ends[hi - 1] - 1) // height
        areas[q] = area
        boxes[q, 0] = x0
        boxes[q, 1] = top
        boxes[q, 2] = x1 - x0 + 1
        boxes[q, 3] = bottom - top + 1
    return present, g_starts, g_ends, group, first, buf[:offsets[p]], offsets, areas, boxes


@njit(cache=True, nogil=True)
def label_points(values, lo, table, dist, sw, stride, g_starts, g_ends, first, height):
    """An interior pixel ``[x, y]`` of each present label (:func:`uniap.records._label_points`).

    Parameters
    ----------
    values : integer (S,)
        The label of every point sample (the map's ``[::stride, ::stride]``, flat, rows of ``sw``).
    lo : int
        ``table[v - lo]`` is the row of label ``v`` among the present labels, -1 (or out of
        the table) for a label without one.
    table : int64 (T,)
    dist : integer (S,)
        Each sample's :func:`uniap.records._sample_distances`.
    sw, stride : int
        Samples per row, and their step in pixels.
    g_starts, g_ends, first : int64
        The present labels' runs, grouped (:func:`encode_runs`).
    height : int

    Returns
    -------
    points : float64 (p, 2)
        The sample of the largest distance (of these, the last in row-major order); for a label
        no sample hits, the middle of its first longest run.
    """
    p = first.size
    size = values.size
    best = np.full(p, -1, np.int64)
    for s in range(size):
        o = np.int64(values[s]) - lo
        if o < 0 or o >= table.size:
            continue
        r = table[o]
        if r < 0:
            continue
        # the same key as a maximum of dist * size + sample: farthest, then the last sample
        key = np.int64(dist[s]) * size + s
        if key > best[r]:
            best[r] = key
    points = np.empty((p, 2))
    total = g_starts.size
    for r in range(p):
        if best[r] >= 0:
            s = best[r] % size
            points[r, 0] = (s % sw) * stride
            points[r, 1] = (s // sw) * stride
            continue
        lo_run = first[r]
        hi_run = first[r + 1] if r + 1 < p else total
        pick = lo_run
        longest = g_ends[lo_run] - g_starts[lo_run]
        for j in range(lo_run + 1, hi_run):
            length = g_ends[j] - g_starts[j]
            if length > longest:  # strictly: the first of the longest
                longest = length
                pick = j
        middle = g_starts[pick] + longest // 2
        points[r, 0] = middle // height
        points[r, 1] = middle % height
    return points


@njit(cache=True, nogil=True)
def encode_node_runs(starts, nodes, node_labels, lo, wanted, n, height, values, dist, sw, stride):
    """:func:`encode_runs` and :func:`label_points` of the map ``node_labels[regions]``, from
    the runs of ``regions`` (:class:`uniap.records.RegionRuns`), in one call.

    Parameters
    ----------
    starts, nodes : (R,)
        The runs of the node map ``regions``: first flat (column-major) index, and node.
    node_labels : integer (N,)
        The label of every node, ``lo`` .. ``lo + wanted.size - 1``.
    lo : int
    wanted : bool (K,)
        Whether label ``lo + i`` is to be encoded.
    n, height : int
        Pixels of the map and its height.
    values, dist, sw, stride
        The point samples (:func:`label_points`): the samples' labels, already labels.

    Returns
    -------
    present : bool (K,)
        Whether label ``lo + i`` is wanted and has pixels; the other outputs cover these, in order.
    text, offsets, areas, boxes
        As :func:`encode_runs`.
    points : float64 (p, 2)
    """
    r = starts.size
    # runs of equal labels: consecutive runs of nodes of one label joined
    m_starts = np.empty(r, np.int64)
    rows = np.empty(r, np.int64)
    m = 0
    prev = np.int64(-1)  # no label: the first run starts one
    for i in range(r):
        # without a branch (a run starts a new one unpredictably): written always, kept when new
        label = np.int64(node_labels[nodes[i]]) - lo
        m_starts[m] = starts[i]
        rows[m] = label
        m += label != prev
        prev = label
    for j in range(m):
        if not wanted[rows[j]]:
            rows[j] = -1
    k = wanted.size
    present, g_starts, g_ends, group, first, text, offsets, areas, boxes = encode_runs(
        m_starts[:m], rows[:m], k, n, height)
    table = np.full(k, -1, np.int64)
    q = 0
    for g in range(k):
        if present[g]:
            table[g] = q
            q += 1
    points = label_points(values, lo, table, dist, sw, stride, g_starts, g_ends, first, height)
    return present, text, offsets, areas, boxes, points


@njit(cache=True, nogil=True)
def boundary_distances(maps):
    """The taxicab distance of every sample of each map to the nearest boundary sample.

    Parameters
    ----------
    maps : integer (M, h, w)
        Subsampled label maps.

    Returns
    -------
    int32 (M, h * w)
        0 on a sample whose 4-neighbour differs and on the border; elsewhere the least number
        of 4-steps to one: ``scipy.ndimage.distance_transform_cdt`` (``metric="taxicab"``) of
        the inner samples, the same two raster passes (exact for this metric).
    """
    count, h, w = maps.shape
    out = np.empty((count, h * w), np.int32)
    far = np.int32(h + w)  # more than any distance on the map
    for m in range(count):
        lab = maps[m]
        d = out[m]
        d[:] = 0  # the border
        for y in range(1, h - 1):
            row, up, down = lab[y], lab[y - 1], lab[y + 1]
            for x in range(1, w - 1):  # without branches: the comparisons are unpredictable
                c = row[x]
                inner = (up[x] == c) & (down[x] == c) & (row[x - 1] == c) & (row[x + 1] == c)
                d[y * w + x] = far * inner
        for y in range(1, h):
            for x in range(1, w):
                i = y * w + x
                v = d[i]
                if v:
                    v = min(v, d[i - w] + 1, d[i - 1] + 1)
                    d[i] = v
        for y in range(h - 2, -1, -1):
            for x in range(w - 2, -1, -1):
                i = y * w + x
                v = d[i]
                if v:
                    d[i] = min(v, d[i + w] + 1, d[i + 1] + 1)
    return out


@njit(cache=True, nogil=True)
def column_runs(t):
    """The runs of equal labels of a map in column-major (COCO) order, given its transpose
    ``t`` (W, H), read row by row: each run's first flat index (int64) and its label.

    Two passes (count, then fill) instead of NumPy's transposed copy of the map, comparison
    and gather (:func:`uniap.records._map_runs`).
    """
    w, h = t.shape
    count = 0
    prev = t[0, 0]
    for x in range(w):
        for y in range(h):
            v = t[x, y]
            count += v != prev
            prev = v
    starts = np.empty(count + 1, np.int64)
    labels = np.empty(count + 1, t.dtype)
    starts[0] = 0
    labels[0] = t[0, 0]
    prev = t[0, 0]
    k = 1
    for x in range(w):
        base = x * h
        for y in range(h):
            v = t[x, y]
            if v != prev:
                starts[k] = base + y
                labels[k] = v
                k += 1
                prev = v
    return starts, labels
