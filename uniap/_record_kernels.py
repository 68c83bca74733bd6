"""Numba kernel of the records: the COCO RLE, area and box of every label of a label map,
from the map's column-major runs (:func:`uniap.records._encode_runs`), in two passes over
the runs.

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


@njit(cache=True)
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
    offsets = np.zeros(p + 1, np.int64)
    for q in range(p):
        offsets[q + 1] = _compressed(g_starts, g_ends, bounds[q], bounds[q + 1], n, offsets, offsets[q], False)
    text = np.empty(offsets[p], np.uint8)
    areas = np.zeros(p, np.int64)
    boxes = np.empty((p, 4))
    for q in range(p):
        lo = bounds[q]
        hi = bounds[q + 1]
        _compressed(g_starts, g_ends, lo, hi, n, text, offsets[q], True)
        top = height
        bottom = -1
        area = 0
        for j in range(lo, hi):
            s = g_starts[j]
            e = g_ends[j] - 1
            area += e + 1 - s
            if e // height > s // height:  # across a column boundary: the top and bottom rows
                y0 = 0
                y1 = height - 1
            else:
                y0 = s % height
                y1 = e % height
            top = min(top, y0)
            bottom = max(bottom, y1)
        x0 = g_starts[lo] // height
        x1 = (g_ends[hi - 1] - 1) // height
        areas[q] = area
        boxes[q, 0] = x0
        boxes[q, 1] = top
        boxes[q, 2] = x1 - x0 + 1
        boxes[q, 3] = bottom - top + 1
    return present, g_starts, g_ends, group, first, text, offsets, areas, boxes
