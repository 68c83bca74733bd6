"""SAM-style mask records with COCO run-length encoding (DESIGN.md 4).

Record keys follow ``SamAutomaticMaskGenerator.generate``:

``id`` (int)
    Index of the record within the image.
``segmentation`` (dict)
    COCO RLE ``{"size": [H, W], "counts": str}`` of the mask at image resolution.
``area`` (int)
    Mask area in pixels.
``bbox`` (list of 4 float)
    Box ``[x, y, w, h]`` (XYWH) in pixels; zeros for an empty mask.
``predicted_iou``, ``stability_score`` (float)
    SAM's quality estimates; UniAP has none, so both carry the neutral value 1.0.
``point_coords`` (list of one [x, y])
    A pixel inside the mask: its first pixel in row-major order.
``crop_box`` (list of 4 int)
    ``[0, 0, W, H]``: UniAP always sees the whole image.

plus UniAP's own keys:

``level`` (int), ``threshold`` (float)
    The level the cluster belongs to (0 = finest) and its cosine threshold.
``kind`` ("instance" | "semantic")
    Instance clusters are connected; semantic groups join alike clusters anywhere.
``num_patches`` (int)
    Cells (patches) in the cluster.
``parent`` (int)
    ``id`` of the record of the enclosing cluster at the next level, -1 at the last level
    and for semantic records.
``score`` (float)
    Cohesion: the mean cosine between the members' features and the cluster's feature, in
    [-1, 1]; 1 for a cluster of identical directions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from .hierarchy import Hierarchy


def encode_rle(masks: np.ndarray) -> list[dict]:
    """COCO RLE of boolean masks (K, H, W), with ``counts`` as ``str`` for JSON."""
    from pycocotools import mask as mask_utils

    if masks.shape[0] == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(np.moveaxis(masks, 0, -1).astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def decode_rle(rle: dict) -> np.ndarray:
    """Boolean (H, W) mask of one COCO RLE record (``counts`` as ``str`` or ``bytes``)."""
    from pycocotools import mask as mask_utils

    counts = rle["counts"]
    rle = {"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(rle).astype(bool)


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


def cohesion(x: np.ndarray, labels: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Mean cosine between member features and their cluster's feature, per cluster."""
    x = np.asarray(x, dtype=np.float64).reshape(labels.size, -1)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = np.divide(x, norms, out=np.zeros_like(x), where=norms > 1e-10)
    k = features.shape[0]
    sums = np.zeros((k, unit.shape[1]))
    np.add.at(sums, labels.ravel(), unit)
    f = np.asarray(features, dtype=np.float64)
    fn = np.linalg.norm(f, axis=1, keepdims=True)
    f_unit = np.divide(f, fn, out=np.zeros_like(f), where=fn > 1e-10)
    sizes = np.bincount(labels.ravel(), minlength=k)
    return np.einsum("kc,kc->k", sums, f_unit) / np.maximum(sizes, 1)


def _records_for(
    pixel_labels: np.ndarray,
    ids: np.ndarray,
    common: dict[str, Any],
    per_id: dict[str, np.ndarray],
    start_id: int,
) -> list[dict]:
    """Records of the clusters ``ids`` of one pixel-resolution label map."""
    height, width = pixel_labels.shape
    masks = pixel_labels[None] == ids[:, None, None]
    rles = encode_rle(masks)
    if not rles:
        return []
    # Areas and boxes from the masks themselves: pycocotools' area()/toBbox() overflow on
    # lists of more than 255 masks with NumPy 2.
    areas = masks.sum(axis=(1, 2))
    boxes = mask_boxes(masks)
    first_pixel = masks.reshape(len(ids), -1).argmax(axis=1)
    records = []
    for j, (cid, rle) in enumerate(zip(ids.tolist(), rles)):
        py, px = divmod(int(first_pixel[j]), width)
        rec = {
            "id": start_id + j,
            "segmentation": rle,
            "area": int(areas[j]),
            "bbox": [float(v) for v in boxes[j]],
            "predicted_iou": 1.0,
            "stability_score": 1.0,
            "point_coords": [[float(px), float(py)]],
            "crop_box": [0, 0, int(width), int(height)],
        }
        rec.update(common)
        for key, column in per_id.items():
            value = column[cid]
            rec[key] = value.item() if hasattr(value, "item") else value
        records.append(rec)
    return records


def semantic_of_clusters(level) -> np.ndarray:
    """Semantic group of each instance cluster of a (NumPy) level."""
    groups = np.empty(level.num_clusters, np.int64)
    groups[level.labels.ravel()] = level.semantic_labels.ravel()
    return groups


def hierarchy_records(
    h: "Hierarchy",
    image_shape: Sequence[int] | None = None,
    pixel_labels: np.ndarray | None = None,
) -> list[dict]:
    """Records of every mask of a (NumPy) hierarchy, finest level first; see module docs.

    Parameters
    ----------
    h : Hierarchy
        On the host (``h.numpy()``), of a 2-D grid.
    image_shape : (H, W), optional
        Output resolution for nearest-neighbour upsampling (default: the grid's).
    pixel_labels : ndarray of shape (L, H, W), optional
        Instance label maps already at pixel resolution (e.g. from
        :func:`uniap.pixels.pixel_labels`); they override ``image_shape``.
    """
    grid = h.shape
    if len(grid) != 2:
        raise ValueError(f"records need a 2-D grid hierarchy, this one has shape {grid}")
    if pixel_labels is None:
        image_shape = tuple(int(s) for s in (image_shape if image_shape is not None else grid))
        if len(image_shape) < 2 or min(image_shape[:2]) < 1:
            raise ValueError(f"image_shape must be (H, W[, ...]) with positive sizes, got {image_shape}")
        pixel_labels = h.upsample(image_shape[:2])

    # Record ids of each level's masks, so that children can name their parent's record.
    record_of: list[np.ndarray] = []
    next_id = 0
    for lv in h.levels:
        ids = np.flatnonzero(lv.sizes >= h.min_size)
        mapping = np.full(lv.num_clusters, -1, np.int64)
        mapping[ids] = np.arange(next_id, next_id + len(ids))
        next_id += len(ids)
        record_of.append(mapping)
    records: list[dict] = []
    for i, lv in enumerate(h.levels):
        ids = np.flatnonzero(lv.sizes >= h.min_size)
        if i + 1 < len(h.levels):
            parents = record_of[i + 1][lv.parents]
        else:
            parents = np.full(lv.num_clusters, -1, np.int64)
        if h.input_features is not None:
            score = cohesion(h.input_features, lv.labels, lv.features)
        else:
            score = np.ones(lv.num_clusters)
        records += _records_for(
            pixel_labels[i], ids,
            {"level": i, "threshold": float(lv.threshold), "kind": "instance"},
            {"num_patches": lv.sizes, "parent": parents, "score": np.round(score, 6)},
            start_id=len(records),
        )
    for i, lv in enumerate(h.levels):
        if lv.semantic_labels is None:
            continue
        groups = semantic_of_clusters(lv)
        sizes = np.bincount(lv.semantic_labels.ravel())
        ids = np.flatnonzero(sizes >= h.min_size)
        records += _records_for(
            groups[pixel_labels[i]], ids,
            {"level": i, "threshold": float(lv.threshold), "kind": "semantic", "parent": -1},
            {"num_patches": sizes, "score": np.ones(len(sizes))},
            start_id=len(records),
        )
    return records
