"""Polygon round trips on real masks: IoU of the polygons against the RLE they come from.

    python bench/polygon_roundtrip.py --data ../shared/data [--limit 10] [--tolerance 0 0.5 1 2]

Three sets of real masks: COCO's human instance annotations (``coco/instances.json``, crowd
regions left out; their polygons rasterised by pycocotools are the masks), and uniap's records
(default settings) on BSDS500 val and COCO images.  Each mask is turned into polygons
(:mod:`uniap.formats.polygons`) at each tolerance and drawn back two ways:

``coco``     pycocotools' ``frPyObjects`` + ``merge`` (what COCOeval, CVAT's COCO import and
             every COCO reader draw)
``labelme``  LabelMe's ``shape_to_mask`` (PIL's polygon with its outline), of the LabelMe
             convention's polygons

The table gives, per set and tolerance, the masks, the mean / 1st percentile / min IoU, the
mean vertices per mask and the milliseconds per mask of making the polygons (this machine,
one process), with :func:`~uniap.formats.polygons.rle_polygons`' floor on the IoU (``min_iou``,
0.9 by default: a mask that simplifying would cost more is traced more closely) and without.  Nothing is tuned to these numbers: the default tolerance (1 px) is the
boundary's own precision.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def coco_truth(data: Path, limit: int) -> list[dict]:
    """COCO's human masks (not crowd) of the first ``limit`` images, as RLE."""
    from pycocotools.coco import COCO

    from uniap.records import encode_rle

    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints its progress
        coco = COCO(str(data / "coco" / "instances.json"))
    rles = []
    for image_id in sorted(coco.getImgIds())[:limit]:
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False)):
            mask = coco.annToMask(ann).astype(bool)
            if mask.any():
                rles.append(encode_rle(mask[None])[0])
    return rles


def uniap_masks(images: list[Path]) -> list[dict]:
    """The segmentations of uniap's records (default settings) on ``images``."""
    import uniap

    rles = []
    for path in images:
        rles += [rec["segmentation"] for rec in uniap.segment_image(str(path)).records]
    return rles


def measure(rles: list[dict], tolerance: float, min_iou: float) -> dict:
    from uniap.formats.polygons import labelme_mask, polygons_to_rle, rle_iou, rle_polygons
    from uniap.records import decode_rle

    coco, labelme, vertices, seconds = [], [], [], 0.0
    for rle in rles:
        start = time.perf_counter()
        polygons = rle_polygons(rle, tolerance, min_iou=min_iou)
        seconds += time.perf_counter() - start
        height, width = rle["size"]
        coco.append(rle_iou(rle, polygons_to_rle(polygons, height, width)))
        vertices.append(sum(len(p) // 2 for p in polygons))
        mask = decode_rle(rle)
        drawn = np.zeros_like(mask)
        for poly in rle_polygons(rle, tolerance, "labelme", min_iou):
            drawn |= labelme_mask(np.reshape(poly, (-1, 2)).tolist(), height, width)
        labelme.append(float((drawn & mask).sum() / (drawn | mask).sum()))
    return {"masks": len(rles), "coco": coco, "labelme": labelme, "vertices": float(np.mean(vertices)),
            "ms": 1000 * seconds / max(len(rles), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--limit", type=int, default=10, help="images per set (default 10)")
    parser.add_argument("--tolerance", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    parser.add_argument("--min-iou", type=float, nargs="+", default=[0.9, 0.0],
                        help="rle_polygons' min_iou (default: 0.9, the default, and 0: no floor)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if not (args.data / "coco" / "instances.json").is_file() or not (args.data / "bsds500").is_dir():
        print(f"no COCO / BSDS500 data under {args.data}: nothing to measure", file=sys.stderr)
        return 0
    sets = {
        "COCO human masks": coco_truth(args.data, args.limit),
        "uniap on BSDS500 val": uniap_masks(sorted((args.data / "bsds500" / "images" / "val").glob("*.jpg"))[:args.limit]),
        "uniap on COCO": uniap_masks(sorted((args.data / "coco" / "images").glob("*.jpg"))[:args.limit]),
    }
    rows, results = [], {}
    header = ("set", "tol px", "min IoU", "masks", "COCO IoU mean / p1 / min", "LabelMe IoU mean / p1 / min",
              "vertices", "ms/mask")
    for name, rles in sets.items():
        for tolerance, floor in [(t, f) for t in args.tolerance for f in args.min_iou if t > 0.5 or f == args.min_iou[0]]:
            r = measure(rles, tolerance, floor)
            results[f"{name} @ {tolerance:g}, {floor:g}"] = r
            stats = [f"{np.mean(r[k]):.4f} / {np.percentile(r[k], 1):.4f} / {np.min(r[k]):.4f}"
                     for k in ("coco", "labelme")]
            rows.append((name, f"{tolerance:g}", f"{floor:g}", str(r["masks"]), *stats, f"{r['vertices']:.1f}", f"{r['ms']:.2f}"))
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.json:
        args.json.write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
