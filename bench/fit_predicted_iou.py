"""Fit ``uniap.scores.PREDICTED_IOU_FIT``: the records' ``predicted_iou`` from their ``score``.

``predicted_iou = sigmoid(a + b * log(score))`` is fitted by least squares to each record's
IoU with the region a person drew there: the mean, over BSDS500's annotators, of the record's
best IoU with a segment of that annotator.  It is fitted on BSDS500 *val* only and checked on
held-out images (BSDS500 test; COCO dev, where the target is the best IoU with an annotated
object, a different question: objects, not regions); it is never fitted to the images it is
checked on.  Run from the repository with the data beside it::

    python bench/fit_predicted_iou.py [--data ../shared/data] [--limit N]

It prints the fitted ``(a, b)`` and, per set, the mean absolute error of ``predicted_iou``
against the target and Spearman's rank correlation of ``score`` with the target.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from scipy.optimize import least_squares
from scipy.stats import spearmanr

import uniap
from uniap.scores import predicted_iou


def _records(path: Path) -> list[dict]:
    return [r for r in uniap.segment_image(str(path)).records if r["kind"] in ("instance", "contour")]


def _best_ious(records: list[dict], truths: list[np.ndarray]) -> np.ndarray:
    """Per record: the mean over ``truths`` (label maps) of its best IoU with one of their labels."""
    masks = mask_utils.decode([r["segmentation"] for r in records]).astype(bool)  # (H, W, K)
    out = np.zeros((len(truths), len(records)))
    for t, truth in enumerate(truths):
        labels = np.unique(truth.ravel(), return_inverse=True)[1].reshape(truth.shape)
        seg_area = np.bincount(labels.ravel())
        for k in range(masks.shape[2]):
            m = masks[..., k]
            inter = np.bincount(labels[m], minlength=seg_area.size)
            out[t, k] = (inter / (m.sum() + seg_area - inter)).max()
    return out.mean(axis=0)


def bsds(root: Path, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    scores, targets = [], []
    images = sorted((root / "bsds500" / "images" / split).glob("*.jpg"))[:limit]
    for path in images:
        truths = [np.asarray(Image.open(p)) for p in
                  sorted((root / "bsds500" / "groundTruth" / split).glob(f"{path.stem}_gt*.png"))]
        records = _records(path)
        scores.append([r["score"] for r in records])
        targets.append(_best_ious(records, truths))
    return np.concatenate(scores), np.concatenate(targets)


def coco(root: Path, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    gt = json.loads((root / "coco" / "instances.json").read_text())
    by_image: dict[int, list] = {}
    for ann in gt["annotations"]:
        if not ann.get("iscrowd", 0):
            by_image.setdefault(ann["image_id"], []).append(ann)
    scores, targets = [], []
    for info in sorted(gt["images"], key=lambda i: i["file_name"])[:limit]:
        anns = by_image.get(info["id"], [])
        if not anns:
            continue
        h, w = info["height"], info["width"]
        objects = [mask_utils.frPyObjects(a["segmentation"], h, w) for a in anns]
        objects = [mask_utils.merge(o) if isinstance(o, list) else o for o in objects]
        records = _records(root / "coco" / "images" / info["file_name"])
        ious = mask_utils.iou([r["segmentation"] for r in records], objects, [0] * len(objects))
        scores.append([r["score"] for r in records])
        targets.append(np.asarray(ious).max(axis=1))
    return np.concatenate(scores), np.concatenate(targets)


def fit(scores: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    logs = np.log(np.maximum(scores, 1e-12))
    result = least_squares(lambda p: 1.0 / (1.0 + np.exp(-(p[0] + p[1] * logs))) - targets, x0=(0.0, 1.0))
    return float(result.x[0]), float(result.x[1])


def report(name: str, scores: np.ndarray, targets: np.ndarray, ab: tuple[float, float]) -> None:
    pred = predicted_iou(scores, ab)
    rho = spearmanr(scores, targets).statistic
    print(f"{name:<14} masks {len(scores):>6}  target mean {targets.mean():.3f}  predicted mean {pred.mean():.3f}"
          f"  mean |error| {np.abs(pred - targets).mean():.3f}  Spearman(score, target) {rho:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    parser.add_argument("--limit", type=int, default=None, help="images per set (default: all)")
    args = parser.parse_args()
    val = bsds(args.data, "val", args.limit)
    ab = fit(*val)
    print(f"PREDICTED_IOU_FIT = ({ab[0]:.4f}, {ab[1]:.4f})  (fitted on BSDS500 val)")
    report("BSDS500 val", *val, ab)
    report("BSDS500 test", *bsds(args.data, "test", args.limit), ab)
    report("COCO dev", *coco(args.data, args.limit), ab)


if __name__ == "__main__":
    main()
