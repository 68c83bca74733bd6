"""Numba kernel of :mod:`uniap.scores`: the edge strength on the boundaries between the
regions of a label map, gathered once so that every coarser map made of those regions gets
its masks' boundary contrast without another pass over the pixels.

Kept in its own file because Numba's cache is invalidated per source file.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _find(keys, key):
    """Index of ``key`` in the sorted array ``keys`` (it is there)."""
    lo, hi = 0, keys.size
    while lo < hi:
        mid = (lo + hi) >> 1
        if keys[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True)
def boundary_sums(regions, strength, y0, n, pair_keys, pair_sum, pair_count,
                  junction_node, junction_others, junction_strength, junctions):
    """Add the strength of the boundary pixels of rows ``y0 .. y0 + len(strength)`` of ``regions``.

    A pixel is on a boundary when a 4-neighbour (inside the image) is of another region.  A
    pixel whose foreign neighbours are all of one region ``t`` adds its strength to the
    directed pair ``(s, t)`` (``pair_keys`` sorted codes ``s * n + t``); a pixel touching
    several other regions (a junction) is kept alone: ``junction_node``, up to four foreign
    regions in ``junction_others`` (-1 padded) and its strength, from slot ``junctions`` on
    (the buffers grow by doubling).  Returns the junction buffers and their new count.
    """
    height, width = regions.shape
    rows = strength.shape[0]
    others = np.empty(4, np.int64)
    last_key, last_pair = np.int64(-1), 0  # boundary pixels come in runs of one pair
    for dy in range(rows):
        y = y0 + dy
        for x in range(width):
            s = regions[y, x]
            k = 0
            for j in range(4):
                if j == 0:
                    if y == 0:
                        continue
                    t = regions[y - 1, x]
                elif j == 1:
                    if x == 0:
                        continue
                    t = regions[y, x - 1]
                elif j == 2:
                    if x + 1 == width:
                        continue
                    t = regions[y, x + 1]
                else:
                    if y + 1 == height:
                        continue
                    t = regions[y + 1, x]
                if t == s:
                    continue
                seen = False
                for i in range(k):
                    if others[i] == t:
                        seen = True
                if not seen:
                    others[k] = t
                    k += 1
            if k == 0:
                continue
            value = np.float64(strength[dy, x])
            if k == 1:
                key = np.int64(s) * n + others[0]
                if key != last_key:
                    last_key, last_pair = key, _find(pair_keys, key)
                p = last_pair
                pair_sum[p] += value
                pair_count[p] += 1
                continue
            if junctions == junction_node.size:
                junction_node = np.concatenate((junction_node, np.empty(junction_node.size, np.int64)))
                junction_others = np.concatenate((junction_others, np.empty_like(junction_others)))
                junction_strength = np.concatenate((junction_strength, np.empty(junction_strength.size)))
            junction_node[junctions] = s
            for i in range(4):
                junction_others[junctions, i] = others[i] if i < k else -1
            junction_strength[junctions] = value
            junctions += 1
    return junction_node, junction_others, junction_strength, junctions


@njit(cache=True)
def _mirror(i, n):
    """scipy.ndimage's ``reflect`` extension (d c b a | a b c d | d c b a) of index ``i``."""
    period = 2 * n
    i = i % period
    if i < 0:
        i += period
    return period - 1 - i if i >= n else i


@njit(cache=True, nogil=True)
def gradient_magnitude(lab, a, y0, y1, height, smooth, derive, out):
    """Add to ``out`` (y1 - y0, W) the Gaussian gradient magnitude of each channel of ``lab``.

    ``lab`` (C, rows, W) float32 holds image rows ``a .. a + rows``, enough around ``y0 .. y1``
    for the filters (``smooth``, symmetric, and ``derive``, antisymmetric: the correlation
    weights of a Gaussian and of its derivative, of odd length); the image has ``height`` rows
    and is mirrored at its edges.  The arithmetic is ``scipy.ndimage.gaussian_gradient_magnitude``'s
    (float64 sums of mirrored pairs, float32 intermediates), so the values are the same.
    """
    channels, rows, width = lab.shape
    radius = smooth.size // 2
    count = y1 - y0
    along_y_smooth = np.empty((count, width), np.float32)
    along_y_derive = np.empty((count, width), np.float32)
    acc_s = np.empty(width, np.float64)
    acc_d = np.empty(width, np.float64)
    padded_s = np.empty(width + 2 * radius, np.float64)
    padded_d = np.empty(width + 2 * radius, np.float64)
    cols = np.empty(width + 2 * radius, np.int64)
    for j in range(width + 2 * radius):
        cols[j] = _mirror(j - radius, width)
    # rows as 1-D views in the inner loops: they vectorise (3-D indexing there did not)
    for c in range(channels):
        plane = lab[c]
        for r in range(count):
            y = y0 + r
            row = plane[_mirror(y, height) - a]
            for x in range(width):
                v = np.float64(row[x])
                acc_s[x] = v * smooth[radius]
                acc_d[x] = v * derive[radius]
            for j in range(1, radius + 1):
                up = plane[_mirror(y + j, height) - a]
                down = plane[_mirror(y - j, height) - a]
                ws = smooth[radius + j]
                wd = derive[radius + j]
                for x in range(width):
                    p = np.float64(up[x])
                    q = np.float64(down[x])
                    acc_s[x] += (p + q) * ws
                    acc_d[x] += (p - q) * wd
            smooth_row = along_y_smooth[r]
            derive_row = along_y_derive[r]
            for x in range(width):
                smooth_row[x] = acc_s[x]
                derive_row[x] = acc_d[x]
        for r in range(count):
            smooth_row = along_y_smooth[r]
            derive_row = along_y_derive[r]
            for j in range(width + 2 * radius):
                padded_s[j] = smooth_row[cols[j]]
                padded_d[j] = derive_row[cols[j]]
            # the x derivative of the y-smoothed rows, the x smoothing of the y derivative
            for x in range(width):
                acc_s[x] = padded_s[x + radius] * derive[radius]
                acc_d[x] = padded_d[x + radius] * smooth[radius]
            for j in range(1, radius + 1):
                ws = smooth[radius + j]
                wd = derive[radius + j]
                right_s = padded_s[radius + j:radius + j + width]
                left_s = padded_s[radius - j:radius - j + width]
                right_d = padded_d[radius + j:radius + j + width]
                left_d = padded_d[radius - j:radius - j + width]
                for x in range(width):
                    acc_s[x] += (right_s[x] - left_s[x]) * wd
                    acc_d[x] += (right_d[x] + left_d[x]) * ws
            target = out[r]
            for x in range(width):
                gx = np.float32(acc_s[x])
                gy = np.float32(acc_d[x])
                target[x] += np.sqrt(gy * gy + gx * gx)


@njit(cache=True)
def map_contrasts(maps, pair_node, pair_other, pair_sum, pair_count,
                  junction_node, junction_others, junction_sum, sizes):
    """Boundary strength sums and pixel counts of every region of every map at once.

    ``maps`` (M, N): each map's region of every node; ``sizes[m]`` its number of labels.
    Returns ``(total, count)``, both (M, max(sizes)): a pair of adjacent nodes in different
    regions adds its pixels to the region of its first node; a junction pixel counts for its
    node's region when any of the nodes it touches is in another region.
    """
    m_count = maps.shape[0]
    width = 0
    for m in range(m_count):
        width = max(width, sizes[m])
    total = np.zeros((m_count, width))
    count = np.zeros((m_count, width), np.int64)
    for m in range(m_count):
        labels = maps[m]
        for p in range(pair_node.size):
            own = labels[pair_node[p]]
            if own != labels[pair_other[p]]:
                total[m, own] += pair_sum[p]
                count[m, own] += pair_count[p]
        for j in range(junction_node.size):
            own = labels[junction_node[j]]
            for i in range(junction_others.shape[1]):
                t = junction_others[j, i]
                if t < 0:
                    break
                if labels[t] != own:
                    total[m, own] += junction_sum[j]
                    count[m, own] += 1
                    break
    return total, count
