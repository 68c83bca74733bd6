"""Masks as polygons: COCO polygon segmentations (``--format coco --polygons``) and LabelMe files
(``--format labelme``), which CVAT, LabelMe and most annotation tools import and edit.

A mask becomes one polygon per 4-connected piece (:func:`mask_polygons`): the piece's boundary
is traced along the pixel edges (:func:`skimage.measure.find_contours` on the mask upsampled
twice and snapped to the pixel corners, so the traced polygon is the mask's exact boundary)
and simplified with :func:`skimage.measure.approximate_polygon` (Douglas-Peucker;
:data:`DEFAULT_TOLERANCE` pixels); a mask that simplifying would cover with an IoU below
:data:`DEFAULT_MIN_IOU` (a thin or tiny one) is traced more closely (:func:`rle_polygons`).

**Holes.** Neither a COCO polygon list nor a LabelMe polygon can hold a hole (pycocotools fills
every polygon of a list and takes their union).  Each hole's boundary is therefore spliced into
its piece's outer boundary through a zero-width cut (a "keyhole": out along the shortest segment
from the outer ring to the hole, round the hole the other way, back along the same segment), so
the piece stays one polygon that rasterises with its hole empty, and an annotator sees and edits
one outline.  An island inside a hole is a piece of its own.  The round trip
(:func:`polygons_to_rle`, pycocotools' ``frPyObjects``) is measured as IoU against the mask by
``bench/polygon_roundtrip.py`` and tested in ``tests/test_formats_polygons.py``.

Coordinates: COCO's, in which pixel ``(x, y)`` covers ``[x, x+1) x [y, y+1)`` (a boundary runs
along integer coordinates); LabelMe's points are pixel centres (as LabelMe's own
``shape_to_mask`` draws them with PIL), so they are COCO's less half a pixel.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

__all__ = ["DEFAULT_MIN_IOU", "DEFAULT_TOLERANCE", "labelme_document", "labelme_image_path",
           "labelme_mask", "mask_polygons", "polygon_record", "polygons_to_rle", "rle_iou",
           "rle_polygons"]

# Douglas-Peucker tolerance in pixels: vertices move the boundary by at most this much.
DEFAULT_TOLERANCE = 1.0
# A mask whose simplified polygons cover it with a lower IoU is traced more closely
# (rle_polygons): small masks lose too much to a whole pixel.
DEFAULT_MIN_IOU = 0.9
LABELME_VERSION = "5.5.0"  # the LabelMe file version written (its shapes' keys)
# Record keys a LabelMe shape's description carries (the rest is in its points and group_id).
_DESCRIBED = ("id", "area", "bbox", "predicted_iou", "stability_score", "point_coords", "level",
              "levels", "threshold", "kind", "num_patches", "parent", "score")


def _lattice_ring(contour: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """A traced boundary (upsampled-padded ``(row, col)``, closed) as the ``(x, y)`` pixel
    corners it runs through, in COCO coordinates: the edge after crop pixel ``p`` lies at
    ``2p + 3.5`` upsampled, within a quarter pixel of a corner at every traced point, so
    rounding gives the exact pixel boundary."""
    xy = np.rint(contour[:, ::-1] / 2 - 0.75) + origin
    keep = np.any(xy != np.roll(xy, 1, axis=0), axis=1)
    xy = xy[keep]
    return np.concatenate([xy, xy[:1]])


def _simplified(ring: np.ndarray, tolerance: float) -> np.ndarray:
    """A closed ring (first point repeated last) without the points in the middle of straight
    runs, simplified from its top-left corner (a vertex every simplification keeps), returned
    without its closing point."""
    from skimage.measure import approximate_polygon

    corners = ring[:-1]
    before, after = corners - np.roll(corners, 1, axis=0), np.roll(corners, -1, axis=0) - corners
    turn = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    corners = corners[turn != 0]
    first = np.lexsort((corners[:, 0], corners[:, 1]))[0]
    corners = np.roll(corners, -first, axis=0)
    if tolerance > 0:
        simple = approximate_polygon(np.concatenate([corners, corners[:1]]), tolerance)[:-1]
        if len(simple) >= 3:  # else too small to simplify: keep every corner
            corners = simple
    return corners


def _signed_area(ring: np.ndarray) -> float:
    """The shoelace area of an (x, y) ring (> 0: clockwise on screen, y pointing down)."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _inset(ring: np.ndarray, distance: float) -> np.ndarray:
    """Every edge of a ring moved ``distance`` to its right (into the region, for a ring of
    positive :func:`_signed_area`), vertices at the edges' meeting points (mitred, capped so
    a spike moves at most ``2 * distance``)."""
    edge = np.roll(ring, -1, axis=0) - ring
    length = np.maximum(np.hypot(edge[:, 0], edge[:, 1]), 1e-12)
    normal = np.stack([-edge[:, 1], edge[:, 0]], axis=1) / length[:, None]  # right of the edge, y down
    before, after = np.roll(normal, 1, axis=0), normal
    cosine = np.sum(before * after, axis=1)
    miter = (before + after) / np.maximum(1 + cosine, 0.25)[:, None]
    return ring + distance * miter


def _traced(mask: np.ndarray, fully_connected: str) -> np.ndarray:
    """The longest closed boundary of ``mask`` (a 2-D bool array), traced on the mask padded
    and upsampled twice (``(row, col)``)."""
    from skimage.measure import find_contours

    up = np.pad(mask, 1).repeat(2, axis=0).repeat(2, axis=1).astype(np.float32)
    contours = find_contours(up, 0.5, fully_connected=fully_connected)
    return max(contours, key=len)


def _splice(ring: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """``ring`` with ``hole`` joined in by a zero-width cut between their closest vertices."""
    from scipy.spatial import cKDTree

    dist, nearest = cKDTree(ring).query(hole)
    j = int(np.argmin(dist))
    i = int(nearest[j])
    return np.concatenate([ring[:i + 1], hole[j:], hole[:j + 1], ring[i:]])


CONVENTIONS = ("coco", "labelme")


def mask_polygons(mask: np.ndarray, tolerance: float = DEFAULT_TOLERANCE,
                  convention: str = "coco") -> list[np.ndarray]:
    """The polygons of a binary mask: one ``(K, 2)`` array of ``(x, y)`` vertices per piece.

    Parameters
    ----------
    mask : ndarray of shape (H, W)
        The mask (nonzero: inside).
    tolerance : float
        Simplification tolerance in pixels (0: every corner of the pixel boundary).
    convention : {"coco", "labelme"}
        ``coco``: the vertices are corners of the mask's pixel boundary (pixel ``(x, y)``
        covers ``[x, x+1) x [y, y+1)``), as pycocotools rasterises polygons.  ``labelme``:
        pixel centres, every edge moved half a pixel inwards, so the polygon runs through
        the centres of the mask's boundary pixels, which LabelMe's ``shape_to_mask`` (PIL's
        polygon with its outline) fills.

    Returns
    -------
    list of ndarray
        One polygon per 4-connected piece, largest first, holes spliced in (module
        docstring); ``[]`` for an empty mask.

    Examples
    --------
    >>> square = np.zeros((6, 7), bool); square[1:4, 2:6] = True
    >>> mask_polygons(square)[0].tolist()
    [[2.0, 1.0], [6.0, 1.0], [6.0, 4.0], [2.0, 4.0]]
    >>> mask_polygons(square, convention="labelme")[0].tolist()
    [[2.0, 1.0], [5.0, 1.0], [5.0, 3.0], [2.0, 3.0]]
    """
    from scipy import ndimage

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    if not isinstance(tolerance, (int, float)) or not np.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance must be a number >= 0 (pixels), got {tolerance!r}")
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    mask = mask != 0
    pieces, _ = ndimage.label(mask)  # 4-connected, as find_contours sees the foreground
    eight = np.ones((3, 3), bool)  # and the background 8-connected
    found: list[tuple[int, np.ndarray]] = []
    for k, where in enumerate(ndimage.find_objects(pieces), start=1):
        piece = pieces[where] == k
        origin = np.array([where[1].start, where[0].start], float)
        filled = ndimage.binary_fill_holes(piece, structure=eight)
        outer = _simplified(_lattice_ring(_traced(filled, "low"), origin), tolerance)
        if _signed_area(outer) < 0:
            outer = outer[::-1]
        holes, n_holes = ndimage.label(filled & ~piece, structure=eight)
        rings = []
        for h in range(1, n_holes + 1):
            hole = _simplified(_lattice_ring(_traced(holes == h, "high"), origin), tolerance)
            rings.append(hole[::-1] if _signed_area(hole) > 0 else hole)  # the other way round
        if convention == "labelme":
            outer, rings = _inset(outer, 0.5) - 0.5, [_inset(r, 0.5) - 0.5 for r in rings]
        for hole in rings:
            outer = _splice(outer, hole)
        found.append((int(piece.sum()), np.round(outer, 2) + 0.0))
    found.sort(key=lambda item: -item[0])
    return [xy for _, xy in found]


def rle_polygons(rle: dict, tolerance: float = DEFAULT_TOLERANCE, convention: str = "coco",
                 min_iou: float = DEFAULT_MIN_IOU) -> list[list[float]]:
    """A COCO RLE mask as polygons ``[[x0, y0, x1, y1, ...], ...]``, one flat list per piece
    (:func:`mask_polygons`; COCO's polygon segmentation).

    Simplifying a small mask by ``tolerance`` pixels can lose much of it (a 3-pixel-wide
    sliver); so when the simplified polygons, drawn as their readers draw them (pycocotools
    for ``coco``, LabelMe's ``shape_to_mask`` for ``labelme``), cover the mask with an IoU
    below ``min_iou``, the mask is traced again with half a pixel, then with every corner
    (exact for ``coco``).  Only the mask's bounding box is
    traced, so a small mask in a large image costs little beyond its decoding.

    Parameters
    ----------
    rle : dict
        COCO RLE (``counts`` a ``str`` or ``bytes``).
    tolerance : float
        Simplification tolerance in pixels (:data:`DEFAULT_TOLERANCE`; 0: every corner).
    convention : {"coco", "labelme"}
        The polygons' coordinates (:func:`mask_polygons`).
    min_iou : float
        The least IoU of the simplified polygons with the mask (:data:`DEFAULT_MIN_IOU`; 0:
        simplify whatever it costs).

    Returns
    -------
    list of list of float
        One flat ``[x0, y0, x1, y1, ...]`` list per piece, largest first; ``[]`` for an
        empty mask.

    Examples
    --------
    >>> from uniap.records import encode_rle
    >>> m = np.zeros((1, 5, 5), bool); m[0, 1:4, 1:4] = True; m[0, 2, 2] = False   # a ring
    >>> polys = rle_polygons(encode_rle(m)[0])
    >>> len(polys), polygons_to_rle(polys, 5, 5) == encode_rle(m)[0]
    (1, True)
    """
    from ..rle import decode_rle

    if not 0 <= min_iou <= 1:
        raise ValueError(f"min_iou must be in [0, 1], got {min_iou!r}")
    mask = decode_rle(rle)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not rows.size:
        return []
    # The mask's box and two pixels around it: LabelMe's polygons, moved inwards, may reach
    # past the mask at a sharp spike, and the IoU check must see what they draw there.
    top, left = max(rows[0] - 2, 0), max(cols[0] - 2, 0)
    crop = mask[top:rows[-1] + 3, left:cols[-1] + 3]
    for tol in [tolerance] + [t for t in (0.5, 0.0) if t < tolerance]:
        polygons = mask_polygons(crop, tol, convention)
        if tol == 0 or not min_iou:
            break
        if convention == "coco":  # drawn as the tool that reads them draws them
            drawn = decode_rle(polygons_to_rle([p.ravel().tolist() for p in polygons], *crop.shape))
        else:
            drawn = np.zeros_like(crop)
            for p in polygons:
                drawn |= labelme_mask(p.tolist(), *crop.shape)
        if (drawn & crop).sum() >= min_iou * (drawn | crop).sum():
            break
    offset = np.array([left, top], float)
    return [[float(v) for v in (xy + offset).ravel()] for xy in polygons]


def polygons_to_rle(polygons: list[list[float]], height: int, width: int) -> dict:
    """COCO polygons rasterised by pycocotools (``frPyObjects``, then merged) as one RLE with
    ``counts`` a ``str``, as :mod:`uniap.records` holds it.

    Parameters
    ----------
    polygons : list of list of float
        Flat ``[x0, y0, x1, y1, ...]`` lists (COCO's polygon segmentation); ``[]``: empty.
    height, width : int
        The image's size.

    Returns
    -------
    dict
        ``{"size": [height, width], "counts": str}``.

    Raises
    ------
    ValueError
        A polygon has fewer than 3 points or an odd number of coordinates.
    """
    from pycocotools import mask as mask_utils

    for i, poly in enumerate(polygons):
        if not isinstance(poly, (list, tuple)) or len(poly) < 6 or len(poly) % 2:
            raise ValueError(f"polygon {i} must be a flat list of at least 3 (x, y) points, got "
                             f"{len(poly) if isinstance(poly, (list, tuple)) else type(poly).__name__} values")
    if not polygons:
        empty = mask_utils.encode(np.zeros((height, width, 1), np.uint8, order="F"))[0]
        return {"size": [int(height), int(width)], "counts": empty["counts"].decode("ascii")}
    rle = mask_utils.merge(mask_utils.frPyObjects([list(map(float, p)) for p in polygons], height, width))
    return {"size": [int(height), int(width)], "counts": rle["counts"].decode("ascii")}


def rle_iou(a: dict, b: dict) -> float:
    """IoU of two COCO RLE masks of the same size (1.0 for two empty masks).

    Parameters
    ----------
    a, b : dict
        COCO RLE (``counts`` a ``str`` or ``bytes``).

    Returns
    -------
    float
    """
    from pycocotools import mask as mask_utils

    def raw(rle: dict) -> dict:
        counts = rle["counts"]
        return {"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}

    union = mask_utils.area(mask_utils.merge([raw(a), raw(b)], intersect=False))
    if union == 0:
        return 1.0
    return float(mask_utils.area(mask_utils.merge([raw(a), raw(b)], intersect=True)) / union)


def polygon_record(record: dict, tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """``record`` with its ``segmentation`` as COCO polygons (``area`` and ``bbox`` stay the
    mask's, as COCO's own polygon annotations give them).

    Parameters
    ----------
    record : dict
        A SAM-style record (:mod:`uniap.records`); left as it is.
    tolerance : float
        Simplification tolerance in pixels (:func:`rle_polygons`).

    Returns
    -------
    dict
        A copy of ``record`` with a polygon ``segmentation``.
    """
    out = dict(record)
    out["segmentation"] = rle_polygons(record["segmentation"], tolerance)
    return out


def labelme_document(image: dict, uniap: dict | None, records: list[dict], image_path: str,
                     tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """One image's records as a LabelMe JSON document (LabelMe 5).

    Every piece of every record is a ``polygon`` shape: ``label`` is the record's kind and
    level as uniap's PNG files name them (``level_0``, ``semantic_1``, ``contour_2``), so a
    level can be shown or hidden as a label; ``group_id`` is the record's ``id`` (the pieces of
    one mask share it); ``description`` holds the record's other keys as JSON.  ``imagePath``
    is ``image_path`` (relative to the JSON's folder, as LabelMe wants it), ``imageData``
    null, so LabelMe opens the image itself.  The image entry and the run's provenance are kept
    under ``image`` and ``uniap`` (LabelMe keeps keys it does not know).

    Parameters
    ----------
    image : dict
        The image entry (``height``, ``width``, ``file_name``, ``image_id``).
    uniap : dict or None
        The run's provenance (its ``signature`` lets a rerun skip the file).
    records : list of dict
        SAM-style records.
    image_path : str
        ``imagePath``: the image relative to the JSON's folder (:func:`labelme_image_path`).
    tolerance : float
        Simplification tolerance in pixels (:func:`rle_polygons`).

    Returns
    -------
    dict
        The LabelMe document, ready for ``json.dump``.

    Examples
    --------
    >>> from uniap.records import encode_rle
    >>> m = np.zeros((1, 4, 6), bool); m[0, 1:3, 1:4] = True
    >>> rec = {"id": 0, "segmentation": encode_rle(m)[0], "kind": "instance", "level": 0}
    >>> doc = labelme_document({"file_name": "a.jpg", "height": 4, "width": 6}, None, [rec], "a.jpg")
    >>> doc["shapes"][0]["label"], doc["shapes"][0]["points"]
    ('level_0', [[1.0, 1.0], [3.0, 1.0], [3.0, 2.0], [1.0, 2.0]])
    """
    shapes = []
    for rec in records:
        kind, level = rec.get("kind", "instance"), rec.get("level", 0)
        label = f"level_{level}" if kind == "instance" else f"{kind}_{level}"
        described = json.dumps({k: rec[k] for k in _DESCRIBED if k in rec}, separators=(",", ":"))
        for poly in rle_polygons(rec["segmentation"], tolerance, "labelme"):
            points = np.asarray(poly).reshape(-1, 2).tolist()
            shapes.append({"label": label, "points": points, "group_id": rec.get("id"),
                           "description": described, "shape_type": "polygon", "flags": {}})
    return {"version": LABELME_VERSION, "flags": {}, "image": image, "uniap": uniap, "shapes": shapes,
            "imagePath": image_path, "imageData": None, "imageHeight": int(image["height"]),
            "imageWidth": int(image["width"])}


def labelme_image_path(json_path: str, image_file: str | None, file_name: str) -> str:
    """``imagePath`` for a LabelMe file at ``json_path``: the image file relative to the JSON's
    folder (``/``-separated), or ``file_name`` when the image is no file of its own (a tar
    member).

    Parameters
    ----------
    json_path : str
        Where the LabelMe file goes.
    image_file : str or None
        The image's file (None for a tar member).
    file_name : str
        The image's key.

    Returns
    -------
    str

    Examples
    --------
    >>> labelme_image_path("/out/a/x.json", "/data/a/x.jpg", "a/x.jpg")
    '../../data/a/x.jpg'
    """
    if image_file is None:
        return file_name
    return os.path.relpath(image_file, os.path.dirname(os.path.abspath(json_path))).replace(os.sep, "/")


def labelme_mask(points: Any, height: int, width: int) -> np.ndarray:
    """A LabelMe polygon rasterised as LabelMe's ``shape_to_mask`` does (PIL, outline and
    fill), for measuring what LabelMe shows.

    Parameters
    ----------
    points : sequence of (x, y)
        The polygon's vertices (pixel centres).
    height, width : int
        The image's size.

    Returns
    -------
    ndarray of bool, shape (height, width)

    Examples
    --------
    >>> int(labelme_mask([[1, 1], [3, 1], [3, 2], [1, 2]], 4, 5).sum())
    6
    """
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (int(width), int(height)), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points], outline=1, fill=1)
    return np.asarray(canvas, dtype=bool)
