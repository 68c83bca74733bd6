"""Class-agnostic instance-mask AP/AR with the COCO evaluator (pycocotools).

Unsupervised instance segmentation (e.g. CutLER, Wang et al. CVPR 2023)
reports COCO mask AP with every category collapsed into one "object" class.
:func:`class_agnostic_mask_ap` does exactly that with
:class:`pycocotools.cocoeval.COCOeval` (``iouType="segm"``): all ground-truth
and predicted ``category_id`` are set to 1, and detections per image are
capped at ``max_dets`` = (1, 10, 100, 1000).

AP follows the COCO definition: precision interpolated at 101 recall points,
averaged over IoU thresholds 0.50:0.05:0.95 (AP50 / AP75 at a single IoU),
computed with at most ``ap_max_dets`` detections per image (COCO's 100 by
default).  AR@k is recall averaged over the same IoU thresholds with at most
``k`` detections per image.  Crowd ground truth (``iscrowd=1``) is handled
by COCOeval (matches to it are ignored, never counted as false positives).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from os import PathLike
from typing import Any, Iterable, Mapping

import numpy as np

__all__ = ["class_agnostic_mask_ap", "encode_mask"]

MAX_DETS = (1, 10, 100, 1000)


def encode_mask(mask) -> dict:
    """COCO compressed RLE of a binary mask (``counts`` as ``str``, JSON-ready).

    Parameters
    ----------
    mask : ndarray of shape (H, W)
        The mask; non-zero pixels are inside.

    Returns
    -------
    dict
        ``{"size": [H, W], "counts": str}``.

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((4, 4), bool); m[1:3, 1:3] = True
    >>> rle = encode_mask(m); rle["size"], isinstance(rle["counts"], str)
    ([4, 4], True)
    """
    from pycocotools import mask as mask_utils

    m = np.asfortranarray(np.asarray(mask) != 0, dtype=np.uint8)
    if m.ndim != 2:
        raise ValueError("mask must be 2-D")
    rle = mask_utils.encode(m)
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [int(s) for s in rle["size"]], "counts": counts}


def _load_gt(ground_truth) -> dict:
    if isinstance(ground_truth, (str, PathLike)):
        try:
            with open(ground_truth, "rb") as fh:
                return json.load(fh)
        except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
            raise ValueError(f"{ground_truth} is not JSON: {err}") from None
    if isinstance(ground_truth, Mapping):
        return copy.deepcopy(dict(ground_truth))
    dataset = getattr(ground_truth, "dataset", None)  # a pycocotools COCO object
    if isinstance(dataset, Mapping):
        return copy.deepcopy(dict(dataset))
    raise TypeError("ground_truth must be a COCO json dict, a path to one, or a pycocotools COCO object")


def _rle(seg, h, w) -> dict:
    """Normalise a segmentation (RLE dict, uncompressed RLE, polygon list or mask) to compressed RLE."""
    from pycocotools import mask as mask_utils

    if isinstance(seg, np.ndarray):
        if seg.shape != (h, w):
            raise ValueError(f"mask shape {seg.shape} does not match the image ({h}, {w})")
        return encode_mask(seg)
    if isinstance(seg, Mapping):
        if isinstance(seg.get("counts"), list):  # uncompressed RLE
            return mask_utils.frPyObjects(dict(seg), h, w)
        return dict(seg)
    if isinstance(seg, list):  # polygons
        return mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    raise TypeError(f"unsupported segmentation of type {type(seg).__name__}")


def class_agnostic_mask_ap(
    predictions: Iterable[Mapping[str, Any]],
    ground_truth,
    *,
    max_dets: Iterable[int] = MAX_DETS,
    ap_max_dets: int = 100,
    image_ids: Iterable[int] | None = None,
    iou_type: str = "segm",
) -> dict:
    """Class-agnostic COCO AP / AR of instance masks.

    Parameters
    ----------
    predictions : iterable of dict
        One record per predicted instance: ``image_id``, ``score`` and
        ``segmentation`` (COCO RLE dict -- ``counts`` as str or bytes --,
        uncompressed RLE, polygons, or a binary ``(H, W)`` array).
        ``category_id`` is ignored.
    ground_truth : dict, path or pycocotools.coco.COCO
        COCO instances json (``images``, ``annotations``; ``categories``
        optional).  Not modified.
    max_dets : iterable of int, default (1, 10, 100, 1000)
        Detection caps per image for AR (and available for AP).
    ap_max_dets : int, default 100
        Cap used for AP / AP50 / AP75 / APs / APm / APl (must be in
        ``max_dets``).
    image_ids : iterable of int, optional
        Evaluate only these images (default: all images of the ground truth).
    iou_type : {"segm", "bbox"}
        ``"bbox"`` scores boxes derived from the masks instead.

    Returns
    -------
    dict
        ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl`` and ``AR@k``
        for each ``k`` in ``max_dets`` (fractions in [0, 1]; -1 where COCO has
        nothing to average, e.g. no ground truth of that size), plus
        ``num_gt`` and ``num_predictions``.

    References
    ----------
    T.-Y. Lin et al. Microsoft COCO: Common Objects in Context. ECCV 2014;
    X. Wang et al. Cut and Learn for Unsupervised Object Detection and
    Instance Segmentation. CVPR 2023.

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((32, 32), bool); m[4:20, 4:20] = True
    >>> gt = {"images": [{"id": 1, "height": 32, "width": 32}],
    ...       "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "iscrowd": 0,
    ...                        "segmentation": encode_mask(m)}]}
    >>> r = class_agnostic_mask_ap([{"image_id": 1, "score": 0.9, "segmentation": m}], gt)
    >>> round(r["AP"], 6), r["AR@1"]
    (1.0, 1.0)
    """
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    max_dets = sorted(int(m) for m in max_dets)
    if ap_max_dets not in max_dets:
        raise ValueError("ap_max_dets must be one of max_dets")
    data = _load_gt(ground_truth)
    images = {int(im["id"]): im for im in data.get("images", [])}
    anns = []
    for i, a in enumerate(data.get("annotations", [])):
        a = dict(a)
        im = images.get(int(a["image_id"]))
        if im is None:
            raise ValueError(f"annotation for unknown image {a['image_id']}")
        a["category_id"] = 1
        a.setdefault("iscrowd", 0)
        a.setdefault("id", i + 1)
        if "area" not in a or "bbox" not in a:
            rle = _rle(a["segmentation"], im["height"], im["width"])
            a.setdefault("area", float(mask_utils.area(rle)))
            a.setdefault("bbox", [float(v) for v in mask_utils.toBbox(rle)])
        anns.append(a)
    data["annotations"] = anns
    data["categories"] = [{"id": 1, "name": "object", "supercategory": "object"}]

    dets = []
    for p in predictions:
        iid = int(p["image_id"])
        im = images.get(iid)
        if im is None:
            raise ValueError(f"prediction for unknown image {iid}")
        rle = _rle(p["segmentation"], im["height"], im["width"])
        dets.append({"image_id": iid, "category_id": 1, "score": float(p["score"]), "segmentation": rle,
                     "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                     "id": len(dets) + 1, "iscrowd": 0})

    n_gt = sum(1 for a in anns if not a.get("iscrowd", 0))
    result = {"num_gt": n_gt, "num_predictions": len(dets)}
    keys = ["AP", "AP50", "AP75", "APs", "APm", "APl"] + [f"AR@{m}" for m in max_dets]

    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        coco_gt = COCO()
        coco_gt.dataset = data
        coco_gt.createIndex()
        if not dets:
            # no detection: AP/AR are 0 where there is ground truth (COCOeval cannot load [])
            result.update({k: (0.0 if n_gt else -1.0) for k in keys})
            return result
        coco_dt = COCO()
        coco_dt.dataset = {"images": copy.deepcopy(data["images"]), "categories": data["categories"],
                           "annotations": dets}
        coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.maxDets = max_dets
        if image_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in image_ids)
        ev.evaluate()
        ev.accumulate()

    prec = ev.eval["precision"]  # [T, R, K, A, M]
    rec = ev.eval["recall"]  # [T, K, A, M]
    iou = ev.params.iouThrs
    area_index = {lbl: i for i, lbl in enumerate(ev.params.areaRngLbl)}
    m_ap = max_dets.index(ap_max_dets)

    def mean_valid(x):
        x = x[x > -1]
        return float(np.mean(x)) if x.size else -1.0

    a_all = area_index["all"]
    result["AP"] = mean_valid(prec[:, :, 0, a_all, m_ap])
    result["AP50"] = mean_valid(prec[np.isclose(iou, 0.5), :, 0, a_all, m_ap])
    result["AP75"] = mean_valid(prec[np.isclose(iou, 0.75), :, 0, a_all, m_ap])
    for key, lbl in (("APs", "small"), ("APm", "medium"), ("APl", "large")):
        result[key] = mean_valid(prec[:, :, 0, area_index[lbl], m_ap])
    for j, m in enumerate(max_dets):
        result[f"AR@{m}"] = mean_valid(rec[:, 0, a_all, j])
    return result
