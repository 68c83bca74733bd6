"""SAM-style mask records with COCO run-length encoding (DESIGN.md 4).

Record keys follow ``SamAutomaticMaskGenerator.generate``:

``id`` (int)
    Index of the record within the image.
``segmentation`` (dict)
    COCO RLE ``{"size": [H, W], "counts": str}`` of the mask at image resolution, the
    same string as ``pycocotools.mask.encode`` gives.
``area`` (int)
    Mask area in pixels (always > 0: a cluster left with no pixel has no record).
``bbox`` (list of 4 float)
    Box ``[x, y, w, h]`` (XYWH) in pixels.
``predicted_iou``, ``stability_score`` (float)
    SAM's quality estimates, in [0, 1] (:mod:`uniap.scores`): ``stability_score`` is how
    long the mask survives across the levels (its mean best IoU with a region of each level
    of its stack); ``predicted_iou`` an estimate of its IoU with the region a person would
    draw, increasing in ``score``.
``point_coords`` (list of one [x, y])
    An interior point: a pixel of the mask far from its boundary (the maximum of a distance
    transform of the label map's boundaries, on a subsample of the pixels for large images).
``crop_box`` (list of 4 int)
    ``[0, 0, W, H]``: UniAP always sees the whole image.

plus UniAP's own keys:

``level`` (int), ``levels`` (list of int), ``threshold`` (float)
    ``levels`` lists every level (0 = finest) at which this exact mask is a cluster (or a
    semantic group); ``level`` is the first of them and ``threshold`` its cosine threshold.
``kind`` ("instance" | "semantic" | "contour")
    Instance clusters are connected; semantic groups join alike clusters anywhere.  Contour
    records (:func:`contour_records`) are the regions of the watershed hierarchy the
    superpixels are cut from: ``level`` / ``levels`` index its coarser cuts (0 = finest),
    ``threshold`` is the cut's altitude there, ``num_patches`` counts superpixels and
    ``parent`` is -1.
``num_patches`` (int)
    Cells (patches) in the cluster at ``level``.
``parent`` (int)
    ``id`` of the record of the next *different* mask enclosing this one (the cluster
    containing it at the level after the last of ``levels``); -1 when there is none and for
    semantic and contour records.
``score`` (float)
    The rank of the mask (larger first): ``stability_score * sqrt(area / image area) *
    contrast``, the boundary contrast taken from the image when the records are made with it
    (1 otherwise). The rule ``uniap-eval`` ranks masks by (:mod:`uniap.scores`), so COCOeval
    on a written file ranks them as ``uniap-eval`` does.  Not a probability.

Records are distinct masks: a region that survives several levels unchanged is one record
(instance records span consecutive levels; a semantic group may recur at non-consecutive
ones). ``unique=False`` gives one record per cluster and level instead (``levels == [level]``,
``parent`` the record of the enclosing cluster at the next level), as SAM-style consumers
that index masks by level may want.

Masks are encoded straight from each level's (H, W) label map, all of its labels in one pass,
so memory stays O(H * W) whatever the number of masks; no (K, H, W) stack is ever built.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

# COCO RLE (encode, decode, check) lives in uniap.rle, below the formats that write it too.
from .rle import (  # noqa: F401
    _MAX_RLE_CHARS_PER_COUNT,
    _rle_string_counts,
    _short,
    check_rle,
    decode_rle,
    encode_rle,
)
from .scores import BoundaryStrength, mask_scores, persistence, predicted_iou

if TYPE_CHECKING:
    from .core.hierarchy import Hierarchy

# Interior points are searched on a strided subsample of about this many pixels.
POINT_SAMPLES = 1 << 14


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """XYWH boxes (K, 4) of boolean masks (K, H, W); zeros for an empty mask."""
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    boxes = np.zeros((masks.shape[0], 4))
    present = rows.any(axis=1)
    y0 = rows.argmax(axis=1)
    y1 = masks.shape[1] - rows[:, ::-1].argmax(axis=1)
    x0 = cols.argmax(axis=1)
    x1 = masks.shape[2] - cols[:, ::-1].argmax(axis=1)
    boxes[present] = np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)[present]
    return boxes


# ----------------------------------------------------------------------- label-map encoder


@dataclass(frozen=True)
class LabelMapMasks:
    """Per-label columns of one label map, as :func:`encode_label_map` returns them.

    Attributes
    ----------
    size : (H, W)
    labels : ndarray of shape (K,)
        The labels present, increasing.
    counts : list of K str
        COCO compressed RLE strings (``pycocotools.mask.encode`` of ``labels_map == label``).
    areas : ndarray of shape (K,), int64
        Pixels per label.
    boxes : ndarray of shape (K, 4), float64
        XYWH boxes ``[x, y, w, h]``.
    points : ndarray of shape (K, 2), float64
        ``[x, y]`` of an interior pixel of each mask.
    """

    size: tuple[int, int]
    labels: np.ndarray
    counts: list[str]
    areas: np.ndarray
    boxes: np.ndarray
    points: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def rle(self, j: int) -> dict:
        """COCO RLE dict ``{"size": [H, W], "counts": str}`` of the ``j``-th label."""
        return {"size": [int(self.size[0]), int(self.size[1])], "counts": self.counts[j]}


def encode_label_map(labels: np.ndarray, ids: Sequence[int] | np.ndarray | None = None) -> LabelMapMasks:
    """COCO RLE, area, box and interior point of every label of a label map, in one pass.

    The map is read once in column-major (COCO) order; its runs of equal labels are grouped
    per label, so the cost is O(H * W) plus O(runs), and memory O(H * W), whatever the
    number of labels (no mask is ever materialised).

    Parameters
    ----------
    labels : ndarray of shape (H, W), integer
        A label map (any integer values, gaps and negatives allowed).
    ids : sequence of int, optional
        Encode only these labels (those absent from the map are left out); all labels
        present when None.

    Returns
    -------
    LabelMapMasks
        Columns ``labels``, ``counts``, ``areas``, ``boxes``, ``points``, one row per label
        present (increasing).

    Raises
    ------
    TypeError
        If ``labels`` is not of an integer (or boolean) dtype.
    ValueError
        If ``labels`` is not 2-D or is empty.

    Notes
    -----
    ``counts`` are byte for byte what ``pycocotools.mask.encode`` returns for the mask of
    each label (pycocotools' ``rleToString``: counts alternate starting with zeros, the
    last run is included, from the fourth on each is stored as the difference to the one
    two before, in 5-bit groups with a continuation bit, offset by 48).  Areas and boxes are
    exact integers (pycocotools' ``area``/``toBbox`` overflow past 255 masks under NumPy 2).
    The point of a label is its pixel farthest (taxicab) from any pixel whose 4-neighbour
    differs, searched on a strided subsample of about ``POINT_SAMPLES`` pixels; a label that
    misses the subsample gets the middle of its longest column run.

    Examples
    --------
    >>> import numpy as np
    >>> from uniap.records import encode_label_map
    >>> m = encode_label_map(np.array([[7, 7, 3], [7, 3, 3]]))
    >>> m.labels.tolist(), m.counts, m.areas.tolist()
    ([3, 7], ['33', '033'], [3, 3])
    >>> m.boxes.tolist()
    [[1.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0]]
    >>> from pycocotools import mask as mask_utils
    >>> mask = np.array([[7, 7, 3], [7, 3, 3]]) == 3
    >>> mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"]
    b'33'
    """
    return _encode_label_map(labels, ids)


def _encode_label_map(labels, ids=None, samples=None) -> LabelMapMasks:
    """:func:`encode_label_map`, with the point samples given when a caller has them."""
    labels = np.asarray(labels)
    if labels.dtype != bool and not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be an integer label map, got dtype {labels.dtype}")
    if labels.ndim != 2 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty (H, W) label map, got shape {labels.shape}")
    if labels.dtype == bool:
        labels = labels.view(np.uint8)
    if samples is None:
        stride = _point_stride(*labels.shape)
        sub = np.ascontiguousarray(labels[::stride, ::stride])
        samples = (stride, sub, _sample_distances([sub])[0])
    starts, run_labels = _map_runs(labels)
    return _encode_runs(starts, run_labels, labels.shape, ids, samples)


def _map_runs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs of equal labels of a map in column-major (COCO) order: each run's first flat
    index (int64) and its label."""
    if labels.size and labels.dtype.kind in "iu":  # one compiled pass, no transposed copy
        from ._record_kernels import column_runs

        return column_runs(labels.T)
    flat = labels.T.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1])
    starts = np.empty(change.size + 1, np.int64)
    starts[0] = 0
    starts[1:] = change + 1
    del change
    return starts, flat[starts]


class RegionRuns:
    """The column-major runs of a superpixel map ``regions`` (H, W), found once.

    A map ``node_labels[regions]`` (a level of UniAP's hierarchy of the superpixels, a cut of
    the contour regions) is then encoded from them (:meth:`encode`), O(runs) instead of
    O(pixels) and without making the (H, W) map: runs of superpixels with the same label are
    joined.  The runs give each superpixel's area too (:meth:`area`).  :func:`hierarchy_records`
    and :func:`contour_records` find them unless given them (``runs``), so a caller recording
    both of one map (:func:`uniap.pipeline.stages.encode`) passes the pixels once.

    Parameters
    ----------
    regions : ndarray of shape (H, W), integer >= 0

    Examples
    --------
    >>> import numpy as np
    >>> runs = RegionRuns(np.array([[0, 0, 1], [2, 2, 1]]))
    >>> runs.area(4).tolist()
    [2, 2, 2, 0]
    """

    def __init__(self, regions: np.ndarray) -> None:
        regions = np.asarray(regions)
        self.shape = tuple(int(s) for s in regions.shape)
        self.starts, self.nodes = _map_runs(regions)

    def area(self, minlength: int = 0) -> np.ndarray:
        """The pixels of each label (``np.bincount(regions.ravel(), minlength=minlength)``,
        from the runs): int64."""
        lengths = np.diff(self.starts, append=np.int64(self.shape[0] * self.shape[1]))
        # float64 sums of integers below 2**53: exact
        return np.bincount(self.nodes, lengths, minlength=minlength).astype(np.int64)

    def encode(self, node_labels: np.ndarray, ids, samples) -> LabelMapMasks:
        """:func:`encode_label_map` of ``node_labels[regions]``, given its point samples."""
        node_labels = np.asarray(node_labels)
        wanted = self._wanted(node_labels, ids)
        if wanted is not None:
            return self._encode_compiled(node_labels, ids, samples, *wanted)
        labels = node_labels[self.nodes]
        keep = np.empty(labels.size, bool)
        keep[0] = True
        np.not_equal(labels[1:], labels[:-1], out=keep[1:])
        return _encode_runs(self.starts[keep], labels[keep], self.shape, ids, samples)

    @cached_property
    def _node_range(self) -> tuple[int, int]:
        """The least and the largest node of the map."""
        return int(self.nodes.min()), int(self.nodes.max())

    def _wanted(self, node_labels: np.ndarray, ids) -> tuple[int, np.ndarray] | None:
        """``(lo, wanted)`` for :meth:`_encode_compiled`: the least label and whether each label
        from it on is wanted; None where the NumPy path is taken (labels not integers of a
        span a table holds, or nodes the labels do not cover, which NumPy's indexing judges)."""
        if node_labels.ndim != 1 or node_labels.size == 0 or node_labels.dtype.kind not in "iu" \
                or node_labels.dtype == np.uint64:
            return None
        low, high = self._node_range
        if low < 0 or high >= node_labels.size:
            return None
        lo, hi = int(node_labels.min()), int(node_labels.max())
        if not _table_fits(lo, hi, self.nodes.size):
            return None
        if ids is None:
            return lo, np.ones(hi - lo + 1, bool)
        wanted = np.zeros(hi - lo + 1, bool)
        ids = np.asarray(ids, dtype=np.int64).ravel()
        wanted[ids[(ids >= lo) & (ids <= hi)] - lo] = True
        return lo, wanted

    def _encode_compiled(self, node_labels, ids, samples, lo, wanted) -> LabelMapMasks:
        """:meth:`encode` in one compiled call (:func:`uniap._record_kernels.encode_node_runs`):
        the same columns as :func:`_encode_runs` of the joined runs."""
        from ._record_kernels import encode_node_runs

        stride, sub, dist = samples
        height, width = self.shape
        present, text, offsets, areas, boxes, points = encode_node_runs(
            self.starts, self.nodes, node_labels, lo, wanted, height * width, height,
            np.ascontiguousarray(sub).ravel(), np.ascontiguousarray(dist).ravel(), int(sub.shape[1]), int(stride))
        # the labels' dtype as np.unique gives it: the labels', or int64 for ``ids``
        uniq = (np.flatnonzero(present) + lo).astype(node_labels.dtype if ids is None else np.int64)
        return _label_map_masks(self.shape, uniq, text, offsets, areas, boxes, lambda: points)


_RegionMaps = RegionRuns  # its former name


def _runs_of(regions: np.ndarray, runs: "RegionRuns | None") -> RegionRuns:
    """``runs`` if given (checked against ``regions``' shape), else :class:`RegionRuns` of ``regions``."""
    if runs is None:
        return RegionRuns(regions)
    if runs.shape != tuple(regions.shape):
        raise ValueError(f"runs are of a {runs.shape} map, the regions {tuple(regions.shape)}")
    return runs


def _encode_runs(starts, run_labels, shape, ids, samples) -> LabelMapMasks:
    """:func:`encode_label_map` from the map's column-major runs (:func:`_map_runs`)."""
    height, width = (int(s) for s in shape)
    n = height * width
    keys = np.unique(run_labels if ids is None else np.asarray(ids, dtype=np.int64).ravel())
    row = _index_in(run_labels, keys)
    del run_labels
    # Grouped by label, counts, areas and boxes in one compiled pass (labels wanted but
    # absent from the map are dropped)
    from ._record_kernels import encode_runs

    present, starts, ends, group, first, text, offsets, areas, boxes = encode_runs(
        np.ascontiguousarray(starts, np.int64), row, keys.size, n, height)
    uniq = keys[present]
    return _label_map_masks((height, width), uniq, text, offsets, areas, boxes,
                            lambda: _label_points(uniq, starts, ends, first, height, samples))


def _label_map_masks(shape, uniq, text, offsets, areas, boxes, points) -> LabelMapMasks:
    """:class:`LabelMapMasks` of the present labels ``uniq`` from an encoding kernel's columns:
    the strings cut from ``text`` at ``offsets``; ``points()`` gives the interior points."""
    if uniq.size == 0:
        return LabelMapMasks(tuple(shape), uniq, [], np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros((0, 2)))
    chars = text.tobytes().decode("ascii")
    b = offsets.tolist()
    counts = [chars[b[j]:b[j + 1]] for j in range(uniq.size)]
    return LabelMapMasks(tuple(shape), uniq, counts, areas, boxes, points())


def _index_in(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Position of each value in ``keys`` (sorted, distinct), -1 where absent."""
    out = np.full(values.shape, -1, np.int64)
    if keys.size == 0 or values.size == 0:
        return out
    keys = keys.astype(np.int64, copy=False)
    low, high = int(keys[0]), int(keys[-1])
    if _table_fits(low, high, values.size):
        table = np.full(high - low + 2, -1, np.int64)
        table[keys - low] = np.arange(keys.size)
        offset = values.astype(np.int64) - low
        offset[(offset < 0) | (offset > high - low)] = high - low + 1
        return table[offset]
    where = np.minimum(np.searchsorted(keys, values), keys.size - 1)
    found = keys[where] == values
    out[found] = where[found]
    return out


def _table_fits(low: int, high: int, count: int) -> bool:
    """Whether a lookup table over the labels ``low .. high`` is worth making for ``count``
    values (no longer than about four entries a value): else the labels are searched."""
    return high - low < 4 * count + 1024


def _point_stride(height: int, width: int) -> int:
    """Sampling step of the point search: about ``POINT_SAMPLES`` samples per map."""
    return max(1, int(np.ceil(np.sqrt(height * width / POINT_SAMPLES))))


def _sample_distances(subs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per subsampled map (all of one shape): the taxicab distance, in samples, of every
    sample to the nearest sample whose 4-neighbour differs, the border counting as one.

    The values of ``scipy.ndimage.distance_transform_cdt(inner, metric="taxicab")`` of the
    samples none of whose 4-neighbours differs, from one compiled pass per map
    (:func:`uniap._record_kernels.boundary_distances`; scipy took 0.2 ms a map at 481 x 321).
    """
    from ._record_kernels import boundary_distances

    return list(boundary_distances(np.ascontiguousarray(np.stack(subs))))


def _label_points(uniq, starts, ends, first, height, samples) -> np.ndarray:
    """An interior pixel [x, y] per label: distance maximum over the samples of its label.

    ``starts``, ``ends`` and ``first`` are the labels' runs, grouped (as
    :func:`uniap._record_kernels.encode_runs` gives them); ``samples`` is ``(stride, sub, dist)``:
    the map's samples ``labels[::stride, ::stride]`` and their :func:`_sample_distances`.  Of the samples of largest distance, the last (in
    row-major order); a label the subsample misses gets the middle of its first longest run
    (:func:`uniap._record_kernels.label_points`).
    """
    from ._record_kernels import label_points

    stride, sub, dist = samples
    k = uniq.size
    values = np.ascontiguousarray(sub).ravel()
    low, high = (int(uniq[0]), int(uniq[-1])) if k else (0, 0)
    if k and uniq.dtype != np.uint64 and _table_fits(low, high, values.size):
        table = np.full(high - low + 1, -1, np.int64)
        table[uniq.astype(np.int64) - low] = np.arange(k)
    else:  # each sample's row, found by search
        values, low, table = _index_in(values, uniq), 0, np.arange(k, dtype=np.int64)
    return label_points(values, low, table, np.ascontiguousarray(dist).ravel(), int(sub.shape[1]), int(stride),
                        starts, ends, first, int(height))


# ----------------------------------------------------------------------------- cohesion


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows of a (N, C) array scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.sqrt(np.add.reduce(x * x, axis=1))  # what np.linalg.norm computes
    norms[~(norms > 1e-10)] = np.inf  # rows of (near) zero norm become zero
    return x / norms[:, None]


def _cohesions(x: np.ndarray, partitions: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """:func:`cohesion` of several partitions of the same cells (one sparse product for all).

    Each cluster's sum of unit member rows is accumulated in member order, exactly as
    ``np.add.at`` does, so the values are the same to the last bit.
    """
    from scipy import sparse

    unit = _unit_rows(np.asarray(x).reshape(np.asarray(partitions[0][0]).size, -1))
    n = unit.shape[0]
    sizes = [int(np.asarray(f).shape[0]) for _, f in partitions]
    offsets = np.cumsum([0] + sizes)
    rows = np.concatenate([np.asarray(lab, np.int64).ravel() + off
                           for (lab, _), off in zip(partitions, offsets)])
    # CSR of the membership matrix, each cluster's members in cell order (a stable sort)
    key = rows.astype(np.int16) if offsets[-1] < np.iinfo(np.int16).max else rows  # radix sort
    cells = np.argsort(key, kind="stable") % n
    indptr = np.zeros(int(offsets[-1]) + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=int(offsets[-1])), out=indptr[1:])
    members = sparse.csr_matrix((np.ones(rows.size), cells, indptr), shape=(int(offsets[-1]), n))
    sums = np.asarray(members @ unit)
    out = []
    for (lab, features), off, k in zip(partitions, offsets, sizes):
        f_unit = _unit_rows(np.asarray(features, dtype=np.float64).reshape(k, -1))
        count = np.bincount(np.asarray(lab).ravel(), minlength=k)
        out.append(np.einsum("kc,kc->k", sums[off:off + k], f_unit) / np.maximum(count, 1))
    return out


def cohesion(x: np.ndarray, labels: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Mean cosine between member features and their cluster's feature, per cluster.

    Parameters
    ----------
    x : ndarray of shape (*grid, C)
        Input features of the cells.
    labels : ndarray of shape (*grid,)
        Cluster of each cell, 0..K-1.
    features : ndarray of shape (K, C)
        Cluster features.

    Returns
    -------
    ndarray of shape (K,), float64
    """
    return _cohesions(x, [(np.asarray(labels), features)])[0]


# ------------------------------------------------------------------------------ records


def semantic_of_clusters(level) -> np.ndarray:
    """Semantic group of each instance cluster of a (NumPy) level."""
    groups = np.empty(level.num_clusters, np.int64)
    groups[level.labels.ravel()] = level.semantic_labels.ravel()
    return groups


def _level_maps(
    h: "Hierarchy", shape, pixel_labels, stride: int, regions=None
) -> tuple[Iterator[np.ndarray], list[np.ndarray]]:
    """Each level's (H, W) pixel label map in turn (upsampled, or taken from the superpixels
    ``regions``: then each level's node labels), and every level's point samples
    ``map[::stride, ::stride]`` at once."""
    if regions is not None:  # the maps are encoded from the superpixels' runs (RegionRuns)
        nodes = [np.asarray(lv.labels) for lv in h.levels]
        sub = regions[::stride, ::stride]
        return iter(nodes), [np.ascontiguousarray(g[sub]) for g in nodes]
    if pixel_labels is not None:
        samples = [np.ascontiguousarray(pixel_labels[i, ::stride, ::stride]) for i in range(len(h))]
        return (pixel_labels[i] for i in range(len(h))), samples
    from .core.graph import nearest_index

    rows, cols = (nearest_index(n_out, n_in) for n_out, n_in in zip(shape, h.shape))
    grids = [np.asarray(lv.labels) for lv in h.levels]
    samples = [g[rows[::stride]][:, cols[::stride]] for g in grids]
    return (g[rows][:, cols] for g in grids), samples


def _make_records(
    m: LabelMapMasks, rows: list[int], ids: list[int], levels: list[list[int]], threshold: float,
    kind: str, num_patches: list[int], parents: list[int], scores: np.ndarray, stabilities: np.ndarray,
    crop: tuple,
) -> list[dict]:
    """Record dicts of rows ``rows`` of ``m`` (columns as lists), keys in the documented order."""
    size = [int(m.size[0]), int(m.size[1])]
    counts, areas = m.counts, m.areas.tolist()
    boxes, points = m.boxes.tolist(), m.points.tolist()
    out = []
    semantic = kind == "semantic"
    ious = np.round(predicted_iou(scores), 6).tolist()
    stabilities = np.round(stabilities, 6).tolist()
    scores = np.asarray(scores, np.float64).tolist()  # unrounded: the exact rank uniap-eval uses
    for j, rid, lvls, n, parent, score, iou, stability in zip(rows, ids, levels, num_patches, parents, scores,
                                                              ious, stabilities):
        rec = {
            "id": rid,
            "segmentation": {"size": list(size), "counts": counts[j]},
            "area": areas[j],
            "bbox": boxes[j],
            "predicted_iou": iou,
            "stability_score": stability,
            "point_coords": [points[j]],
            "crop_box": list(crop),
            "level": lvls[0],
            "levels": lvls,
            "threshold": threshold,
            "kind": kind,
        }
        if semantic:  # the key order of earlier releases
            rec["parent"] = parent
            rec["num_patches"] = n
        else:
            rec["num_patches"] = n
            rec["parent"] = parent
        rec["score"] = score
        out.append(rec)
    return out


def hierarchy_records(
    h: "Hierarchy",
    image_shape: Sequence[int] | None = None,
    pixel_labels: np.ndarray | None = None,
    *,
    regions: np.ndarray | None = None,
    unique: bool = True,
    image: np.ndarray | None = None,
    boundary: "BoundaryStrength | None" = None,
    cells: np.ndarray | None = None,
    runs: RegionRuns | None = None,
) -> list[dict]:
    """Records of the masks of a (NumPy) hierarchy, finest level first; see module docs.

    Parameters
    ----------
    h : Hierarchy
        On the host (``h.numpy()``), of a 2-D grid, or of any graph (superpixels) when
        ``pixel_labels`` are given.
    image_shape : (H, W), optional
        Output resolution for nearest-neighbour upsampling (default: the grid's).
    pixel_labels : ndarray of shape (L, H, W), optional
        Instance label maps already at pixel resolution and nested like the hierarchy (e.g.
        from :func:`uniap.pixels.pixel_labels`); they override ``image_shape``.
    regions : ndarray of shape (H, W), integer, optional
        For a hierarchy of a region graph (nodes 0 .. N-1, :class:`uniap.features.RegionGraph`):
        the node of every pixel.  Each level's pixel map is then made from it in turn, so
        memory holds one (H, W) map, not L of them; instead of ``pixel_labels``.
    unique : bool
        True (default): one record per distinct mask, at its finest level, with the levels
        it spans; False: one record per cluster and level.
    image : ndarray of shape (H, W, 3), optional
        The image: the ``score`` then weighs each mask's boundary contrast
        (:mod:`uniap.scores`; without it the contrast is taken as 1).
    boundary : uniap.scores.BoundaryStrength, optional
        The image's edge strength already gathered on the nodes' boundaries (instead of
        ``image``, when the caller needs it for other records too).
    cells : ndarray of shape (H, W), integer, optional
        With ``pixel_labels`` of a grid hierarchy upsampled by nearest neighbour: the (flat)
        cell of every pixel (``grid.to_image(np.arange(cells).reshape(grid))``), so that the
        scores are summed over the cells, not over the pixels (checked against the maps).
    runs : RegionRuns, optional
        With ``regions``: their runs, when the caller has found them already (for the
        contour regions' records too, :func:`contour_records`).

    Returns
    -------
    list of dict
        Instance records (ordered by ``level``, then cluster label), then semantic records.

    Raises
    ------
    ValueError
        If the hierarchy is not of a 2-D grid, or ``image_shape`` / ``pixel_labels`` have
        the wrong shape.
    """
    grid = h.shape
    if len(grid) != 2 and pixel_labels is None and regions is None:
        raise ValueError(f"records need a 2-D grid hierarchy, pixel_labels or regions, this one has shape {grid}")
    num_levels = len(h)
    if regions is not None:
        regions = np.asarray(regions)
        if pixel_labels is not None:
            raise ValueError("give pixel_labels or regions, not both")
        if regions.ndim != 2 or 0 in regions.shape or len(grid) != 1:
            raise ValueError(f"regions must be an (H, W) map of the hierarchy's {grid} nodes, "
                             f"got shape {regions.shape}")
        runs = _runs_of(regions, runs)
        if runs.nodes.min() < 0 or runs.nodes.max() >= grid[0]:  # every label starts a run
            raise ValueError(f"regions must be an (H, W) map of the hierarchy's {grid} nodes, "
                             f"got labels {runs.nodes.min()} .. {runs.nodes.max()}")
        shape = tuple(int(s) for s in regions.shape)
    elif pixel_labels is not None:
        pixel_labels = np.asarray(pixel_labels)
        if pixel_labels.ndim != 3 or pixel_labels.shape[0] != num_levels or 0 in pixel_labels.shape:
            raise ValueError(f"pixel_labels must be ({num_levels}, H, W), got shape {pixel_labels.shape}")
        shape = tuple(int(s) for s in pixel_labels.shape[1:])
    else:
        image_shape = tuple(int(s) for s in (image_shape if image_shape is not None else grid))
        if len(image_shape) < 2 or min(image_shape[:2]) < 1:
            raise ValueError(f"image_shape must be (H, W[, ...]) with positive sizes, got {image_shape}")
        shape = image_shape[:2]
    crop = (0, 0, shape[1], shape[0])
    levels = h.levels
    nodes = _Nodes.of(h, shape, pixel_labels, regions, cells, runs)
    if boundary is None and image is not None:
        boundary = BoundaryStrength(nodes.regions(), image)
    node_maps = nodes.maps
    del nodes.maps  # the nodes' maps of the levels: not held while the pixel maps are encoded
    quality = nodes.quality(node_maps, boundary)

    # Point samples of every map first (one distance transform for all), then one pass per
    # level: encode the instance map and, with semantic groups, the semantic map.
    stride = _point_stride(*shape)
    maps, subs = _level_maps(h, shape, pixel_labels, stride, regions)
    groups = [None if lv.semantic_labels is None else semantic_of_clusters(lv).astype(subs[i].dtype)
              for i, lv in enumerate(levels)]
    subs += [g[sub] for g, sub in zip(groups, subs) if g is not None]
    dists = iter(_sample_distances(subs))
    samples = [(stride, sub, next(dists)) for sub in subs]
    sem_samples = iter(samples[len(levels):])
    inst: list[LabelMapMasks] = []
    sem: list[LabelMapMasks | None] = []
    encode = runs.encode if regions is not None else _encode_label_map
    for i, (lv, pix) in enumerate(zip(levels, maps)):  # pix: a pixel map, or a region graph's node labels
        inst.append(encode(pix, np.flatnonzero(lv.sizes >= h.min_size), samples[i]))
        if groups[i] is None:
            sem.append(None)
            continue
        sizes = np.bincount(np.asarray(lv.semantic_labels).ravel())
        sem.append(encode(groups[i][pix], np.flatnonzero(sizes >= h.min_size), next(sem_samples)))

    records = _instance_records(h, inst, quality, crop, unique)
    if any(g is not None for g in groups):
        sem_quality = nodes.quality([None if g is None else g[m] for g, m in zip(groups, node_maps)], boundary)
        records += _semantic_records(h, sem, sem_quality, crop, unique, start=len(records))
    return records


class _Nodes:
    """The cells the label maps are made of (superpixels, patches, or the common refinement of
    pixel maps): ``area`` (N,) the pixels of each, ``maps`` each level's label of every node,
    and :meth:`regions`, the (H, W) node of every pixel (made when asked: only the boundary
    strength needs it).  Every mask is a union of nodes, so areas, intersections and boundary
    strength are sums over nodes (:mod:`uniap.scores`)."""

    def __init__(self, area: np.ndarray, maps: list[np.ndarray], image_area: int, regions=None) -> None:
        self.area = area
        self.maps = maps
        self.image_area = int(image_area)
        self._regions = regions

    def regions(self) -> np.ndarray:
        return self._regions() if callable(self._regions) else self._regions

    @classmethod
    def of_regions(cls, regions: np.ndarray, maps: list[np.ndarray], runs: RegionRuns | None = None) -> "_Nodes":
        minlength = maps[0].size if maps else 0
        area = np.bincount(regions.ravel(), minlength=minlength) if runs is None else runs.area(minlength)
        return cls(area, maps, regions.size, regions)

    @classmethod
    def of(cls, h: "Hierarchy", shape, pixel_labels, regions, cells=None, runs=None) -> "_Nodes":
        maps = [np.asarray(lv.labels).ravel() for lv in h.levels]
        if regions is not None:
            return cls.of_regions(regions, maps, runs)
        if pixel_labels is None:  # the grid's patches, upsampled to ``shape`` (nearest)
            from .core.graph import nearest_index

            rows, cols = (nearest_index(n_out, n_in) for n_out, n_in in zip(shape, h.shape))
            area = np.outer(np.bincount(rows, minlength=h.shape[0]), np.bincount(cols, minlength=h.shape[1]))
            dtype = np.int32 if maps[0].size < 2**31 else np.int64

            def patch_of_pixel() -> np.ndarray:
                return rows.astype(dtype)[:, None] * dtype(h.shape[1]) + cols.astype(dtype)[None, :]

            return cls(area.ravel(), maps, shape[0] * shape[1], patch_of_pixel)
        # pixel maps that are the cells' labels upsampled (nearest, the pipeline's default):
        # the cells are the nodes (checked; other maps, bilinear upsampling's, fall through to
        # their common refinement)
        if cells is not None and cells.shape == pixel_labels.shape[1:] and \
                all(np.array_equal(m[cells], lab) for m, lab in zip(maps, pixel_labels)):
            return cls.of_regions(cells, maps)
        nodes, maps = _common_refinement(pixel_labels)
        return cls.of_regions(nodes, maps)

    def quality(self, maps: Sequence[np.ndarray | None], boundary) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """Per map: (``score``, ``stability_score``) of each of its labels (None for a map of None)."""
        present = [m for m in maps if m is not None]
        stability = iter(persistence(present, self.area)) if present else iter(())
        contrasts = iter(boundary.contrasts(present)) if boundary is not None and present else None
        out = []
        for m in maps:
            if m is None:
                out.append(None)
                continue
            stab = next(stability)
            area = np.bincount(m, self.area, minlength=stab.size)
            contrast = next(contrasts)[:stab.size] if contrasts is not None else np.ones(stab.size)
            out.append((mask_scores(stab, area, contrast, self.image_area), stab))
        return out


def _common_refinement(pixel_labels: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Nodes of pixel label maps (L, H, W): the regions of the finest map, split further
    where a coarser map is not nested in it; and each map's label of every node."""
    nodes = np.unique(pixel_labels[0].ravel(), return_inverse=True)[1].reshape(pixel_labels.shape[1:])
    while True:
        first = np.unique(nodes.ravel(), return_index=True)[1]
        maps = [np.asarray(lab).ravel()[first] for lab in pixel_labels]
        split = next((i for i, (m, lab) in enumerate(zip(maps, pixel_labels)) if not np.array_equal(m[nodes], lab)),
                     None)
        if split is None:
            return nodes, maps
        _, coarse = np.unique(pixel_labels[split].ravel(), return_inverse=True)
        code = nodes.ravel().astype(np.int64) * (int(coarse.max()) + 1) + coarse.ravel()
        nodes = np.unique(code, return_inverse=True)[1].reshape(nodes.shape)


def _instance_records(h, inst: list[LabelMapMasks], quality, crop, unique: bool) -> list[dict]:
    levels = h.levels
    num_levels = len(levels)
    # Pixel area of every cluster (0: not recorded, or no pixel left) and row in inst[i].
    area, row = [], []
    for lv, m in zip(levels, inst):
        a = np.zeros(lv.num_clusters, np.int64)
        a[m.labels] = m.areas
        r = np.full(lv.num_clusters, -1, np.int64)
        r[m.labels] = np.arange(len(m))
        area.append(a)
        row.append(r)
    parents = [np.asarray(lv.parents, np.int64) for lv in levels]

    # same[i][k]: cluster k of level i has exactly its parent's mask (nested: equal areas).
    same = []
    for i in range(num_levels):
        if unique and i + 1 < num_levels:
            same.append((area[i] > 0) & (area[i] == area[i + 1][parents[i]]))
        else:
            same.append(np.zeros(levels[i].num_clusters, bool))
    # top[i][k]: last level of the run of equal masks from (i, k); at[i][k]: its cluster there.
    top, at = [None] * num_levels, [None] * num_levels
    for i in reversed(range(num_levels)):
        k = levels[i].num_clusters
        top[i], at[i] = np.full(k, i, np.int64), np.arange(k)
        if i + 1 < num_levels and same[i].any():
            s = same[i]
            top[i][s] = top[i + 1][parents[i][s]]
            at[i][s] = at[i + 1][parents[i][s]]

    # Record ids: a record starts at each recorded cluster that no child continues.
    rid = []
    starts = []
    next_id = 0
    for i in range(num_levels):
        r = np.full(levels[i].num_clusters, -1, np.int64)
        continued = np.zeros(levels[i].num_clusters, bool)
        if i:
            s = same[i - 1]
            r[parents[i - 1][s]] = rid[i - 1][s]
            continued[parents[i - 1][s]] = True
        begin = np.flatnonzero((area[i] > 0) & ~continued)
        r[begin] = np.arange(next_id, next_id + begin.size)
        next_id += begin.size
        rid.append(r)
        starts.append(begin)

    records = []
    for i, begin in enumerate(starts):
        lv, m = levels[i], inst[i]
        last, cluster = top[i][begin], at[i][begin]
        parent = np.full(begin.size, -1, np.int64)
        for t in np.unique(last):
            if t + 1 < num_levels:
                sel = last == t
                parent[sel] = rid[t + 1][parents[t][cluster[sel]]]
        score, stability = (q[begin] for q in quality[i])
        records += _make_records(
            m, row[i][begin].tolist(), rid[i][begin].tolist(),
            [list(range(i, t + 1)) for t in last.tolist()], float(lv.threshold), "instance",
            np.asarray(lv.sizes)[begin].tolist(), parent.tolist(), score, stability, crop,
        )
    return records


def _semantic_records(h, sem: list[LabelMapMasks | None], quality, crop, unique: bool, start: int) -> list[dict]:
    records: list[dict] = []
    seen: dict[str, dict] = {}
    for i, (lv, m) in enumerate(zip(h.levels, sem)):
        if m is None:
            continue
        sizes = np.bincount(np.asarray(lv.semantic_labels).ravel())
        fresh = _fresh_rows(m, seen, i, unique)
        labels = m.labels[fresh]
        new = _make_records(
            m, fresh, list(range(start + len(records), start + len(records) + len(fresh))),
            [[i] for _ in fresh], float(lv.threshold), "semantic", sizes[labels].tolist(),
            [-1] * len(fresh), quality[i][0][labels], quality[i][1][labels], crop,
        )
        seen.update((rec["segmentation"]["counts"], rec) for rec in new)
        records += new
    return records


def _fresh_rows(m: LabelMapMasks, seen: dict[str, dict], level: int, unique: bool) -> list[int]:
    """Rows of ``m`` whose mask has no record in ``seen`` yet (by RLE); with ``unique``, a
    record already there for a row's mask gets ``level`` added to its ``levels`` instead."""
    fresh = []
    for j, counts in enumerate(m.counts):
        rec = seen.get(counts) if unique else None
        if rec is not None:
            rec["levels"].append(level)
        else:
            fresh.append(j)
    return fresh


def contour_records(cuts: np.ndarray, regions: np.ndarray, thresholds: Sequence[float], *,
                    node_features: np.ndarray | None = None, min_size: int = 1, start: int = 0,
                    unique: bool = True, image: np.ndarray | None = None,
                    boundary: BoundaryStrength | None = None, exclude: Sequence[dict] = (),
                    runs: RegionRuns | None = None) -> list[dict]:
    """Records (``kind: "contour"``) of a region graph's contour regions, finest cut first.

    No cut's pixel map is made: each is encoded from the superpixel map's runs, relabelled
    (O(runs) per cut), so memory stays that of the superpixel map whatever the number of cuts.

    Parameters
    ----------
    cuts : ndarray of shape (K, N), integer
        The region of each of the N superpixels in each cut (nested,
        :attr:`uniap.features.RegionGraph.contours`).
    regions : ndarray of shape (H, W), integer
        The superpixel of every pixel, 0 .. N-1.
    thresholds : sequence of K float
        Each cut's altitude (the records' ``threshold``).
    node_features : ndarray of shape (N, C), optional
        Unused (the ``score`` was once each region's cohesion); kept for callers.
    min_size : int
        Smallest region recorded, in superpixels (as the hierarchy's ``min_size``).
    start : int
        The first record's ``id`` (after the hierarchy's records).
    unique : bool
        One record per distinct mask, with the cuts it spans (default), or one per region
        and cut.
    image, boundary
        As for :func:`hierarchy_records`: the ``score`` weighs the boundary contrast.  The
        ``stability_score`` is taken over the K cuts.
    exclude : sequence of dict
        Records already made (the hierarchy's): with ``unique``, a region whose mask one of
        them has is not recorded again.
    runs : RegionRuns, optional
        The runs of ``regions``, when the caller has found them already (for
        :func:`hierarchy_records` of the same superpixels).

    Returns
    -------
    list of dict
        ``num_patches`` counts a region's superpixels; ``parent`` is -1.

    Examples
    --------
    >>> import numpy as np
    >>> regions = np.array([[0, 0, 1, 2]])
    >>> cuts = np.array([[0, 1, 2], [0, 1, 1]])
    >>> [(r["levels"], r["area"], r["num_patches"]) for r in contour_records(cuts, regions, [1.0, 2.0])]
    [([0, 1], 2, 1), ([0], 1, 1), ([0], 1, 1), ([1], 2, 2)]
    """
    cuts, regions = np.asarray(cuts), np.asarray(regions)
    if cuts.ndim != 2 or regions.ndim != 2 or 0 in regions.shape:
        raise ValueError(f"contour cuts must be (K, N) and regions (H, W), got shapes {cuts.shape} and {regions.shape}")
    runs = _runs_of(regions, runs) if len(cuts) else None
    labels = runs.nodes if runs is not None else regions  # every label starts a run
    if labels.max() >= cuts.shape[1] or labels.min() < 0:
        raise ValueError(f"regions must hold superpixels 0 .. {cuts.shape[1] - 1}")
    if len(thresholds) != cuts.shape[0]:
        raise ValueError(f"{cuts.shape[0]} contour cuts but {len(thresholds)} thresholds")
    crop = (0, 0, regions.shape[1], regions.shape[0])
    stride = _point_stride(*regions.shape)
    sizes = [np.bincount(cut) for cut in cuts]
    if len(cuts):
        if boundary is None and image is not None:
            boundary = BoundaryStrength(regions, image)
        quality = _Nodes.of_regions(regions, list(cuts), runs).quality(list(cuts), boundary)
    records: list[dict] = []
    seen: dict[str, dict] = {}
    # a mask the hierarchy's records have already is not a new record (counts are unique per
    # mask; a dict of them, as records in ``seen`` are)
    taken = {rec["segmentation"]["counts"] for rec in exclude if rec.get("kind") != "semantic"} if unique else set()
    region_sub = regions[::stride, ::stride]
    subs = [np.ascontiguousarray(cut[region_sub]) for cut in cuts]
    dists = _sample_distances(subs) if subs else []
    for i, cut in enumerate(cuts):
        big = np.flatnonzero(sizes[i] >= min_size) if min_size > 1 else None
        m = runs.encode(cut, big, (stride, subs[i], dists[i]))
        fresh = [j for j in _fresh_rows(m, seen, i, unique) if m.counts[j] not in taken]
        labels = m.labels[fresh]
        new = _make_records(
            m, fresh, list(range(start + len(records), start + len(records) + len(fresh))),
            [[i] for _ in fresh], float(thresholds[i]), "contour", sizes[i][labels].tolist(),
            [-1] * len(fresh), quality[i][0][labels], quality[i][1][labels], crop,
        )
        seen.update((rec["segmentation"]["counts"], rec) for rec in new)
        records += new
    return records


def filter_records(records: Sequence[dict], *, pred_iou_thresh: float = 0.0,
                   stability_score_thresh: float = 0.0, max_masks: int = 0) -> list[dict]:
    """The records whose ``predicted_iou`` and ``stability_score`` reach the thresholds, as
    ``amg.py``'s ``--pred-iou-thresh`` / ``--stability-score-thresh`` filter SAM's masks.

    Kept records are renumbered ``0 .. K-1`` in their order; a ``parent`` that was dropped
    becomes the nearest kept ancestor (-1 if none), so the links still form a tree.

    Parameters
    ----------
    records : sequence of dict
        One image's records (:func:`hierarchy_records`).
    pred_iou_thresh, stability_score_thresh : float
        Keep records with ``predicted_iou >= pred_iou_thresh`` and ``stability_score >=
        stability_score_thresh`` (0: keep all).
    max_masks : int
        Then keep at most this many: those with the highest ``score`` (the rank COCOeval and
        ``uniap-eval`` use; ties by ``id``), still in their order (0: no cap).

    Returns
    -------
    list of dict
        New dicts; ``records`` is left as it was.

    Examples
    --------
    >>> recs = [{"id": 0, "parent": 1, "predicted_iou": 0.9, "stability_score": 1.0},
    ...         {"id": 1, "parent": 2, "predicted_iou": 0.2, "stability_score": 1.0},
    ...         {"id": 2, "parent": -1, "predicted_iou": 0.8, "stability_score": 1.0}]
    >>> [(r["id"], r["parent"]) for r in filter_records(recs, pred_iou_thresh=0.5)]
    [(0, 1), (1, -1)]
    >>> recs = [dict(r, score=s) for r, s in zip(recs, [0.3, 0.1, 0.2])]
    >>> [(r["id"], r["score"]) for r in filter_records(recs, max_masks=2)]
    [(0, 0.3), (1, 0.2)]
    """
    for name, value in (("pred_iou_thresh", pred_iou_thresh), ("stability_score_thresh", stability_score_thresh)):
        if not (0.0 <= float(value) <= 1.0):
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if isinstance(max_masks, bool) or not isinstance(max_masks, (int, np.integer)) or max_masks < 0:
        raise ValueError(f"max_masks must be an integer >= 0, got {max_masks!r}")
    if not pred_iou_thresh and not stability_score_thresh and not (0 < max_masks < len(records)):
        return [dict(r) for r in records]
    kept = [r for r in records
            if r.get("predicted_iou", 1.0) >= pred_iou_thresh and r.get("stability_score", 1.0) >= stability_score_thresh]
    if 0 < max_masks < len(kept):
        kept = sorted(kept, key=lambda r: (-float(r.get("score", 0.0)), r["id"]))[:max_masks]
    keep = {r["id"] for r in kept}
    parent_of = {r["id"]: r.get("parent", -1) for r in records}
    new_id = {}
    for r in records:
        if r["id"] in keep:
            new_id[r["id"]] = len(new_id)
    out = []
    for r in records:
        if r["id"] not in keep:
            continue
        parent = r.get("parent", -1)
        seen = 0
        while parent != -1 and parent not in keep and seen < len(records):  # a broken chain ends
            parent = parent_of.get(parent, -1)
            seen += 1
        rec = dict(r, id=new_id[r["id"]])
        if "parent" in r:
            rec["parent"] = new_id.get(parent, -1)
        out.append(rec)
    return out
