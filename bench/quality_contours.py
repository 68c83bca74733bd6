"""COCO AR of uniap's levels, its contour regions, and ways of joining the two.

    python bench/quality_contours.py --data ../shared/data/coco [--limit N] [--workers 2]

The trials of ``docs/quality.md`` (*Watershed superpixels, and the search for AR@1000*): each
image is segmented once with the default settings (UniAP's 8 levels on watershed
superpixels); the contour regions are the coarser cuts of the superpixels' watershed
hierarchy (:func:`uniap.superpixels.superpixel_hierarchy`): the finest with N / ``first``
regions for N superpixels, each next one ``factor`` times coarser.  Every row ranks its
masks with the default ``contrast`` rule and is scored by
:func:`uniap.metrics.class_agnostic_mask_ap`:

``levels``             the levels alone (``--no-contours``)
``contours``           the contour regions alone (the default cuts: first 9, factor 3)
``both, A / F``        both stacks, ranked together, ``first`` A and ``factor`` F
``after``              both, every contour region ranked after all of the levels' masks
``nested``             one nested hierarchy instead: the finest level split by each cut, as
                       levels below it (so no mask straddles a level's boundary)
"""

from __future__ import annotations

import argparse
import sys
from multiprocessing import Pool

import numpy as np

CUTS = ((9, 3), (3, 3), (9, 2), (9, 4))  # (first, factor); the first is the default
_STATE: dict = {}


def _meet(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The partition into the intersections of the regions of ``a`` and ``b``."""
    return np.unique(a.astype(np.int64) * (int(b.max()) + 1) + b, return_inverse=True)[1].reshape(a.shape)


def _rows(index: int) -> dict[str, list[dict]]:
    """Every row's proposals for image ``index``."""
    from uniap.evaluation.proposals import proposals_from_levels
    from uniap.features import load_image
    from uniap.superpixels import superpixel_hierarchy

    dataset, segmenter = _STATE["dataset"], _STATE["segmenter"]
    sample = dataset.samples[index]
    image_id = int(dataset.load_truth(sample)["image_id"])
    image = load_image(sample.image)
    levels = segmenter.label_maps(image)
    cuts = {}
    for first, factor in CUTS:
        regions, node_cuts, _ = superpixel_hierarchy(image, first=first, factor=factor)
        cuts[first, factor] = np.take(node_cuts, regions, axis=-1)

    def ranked(stack, contours=None):
        return proposals_from_levels(stack, "contrast", image=image, contours=contours)

    default = cuts[CUTS[0]]
    rows = {"levels": ranked(levels), "contours": ranked(default)}
    for first, factor in CUTS:
        rows[f"both, {first} / {factor}"] = ranked(levels, cuts[first, factor])
    both, lowest = rows[f"both, {CUTS[0][0]} / {CUTS[0][1]}"], min((p["score"] for p in rows["levels"]), default=0.0)
    after = [p for p in both if p["kind"] == "instance"]
    contour = [p for p in both if p["kind"] == "contour"]
    rows["after"] = after + [dict(p, score=lowest - 1.0 - k * 1e-9) for k, p in enumerate(contour)]
    rows["nested"] = ranked(np.concatenate([np.stack([_meet(levels[0], c) for c in default]), levels])) \
        if len(default) else rows["levels"]
    return {name: [{"image_id": image_id, "score": p["score"], "segmentation": p["segmentation"]} for p in props]
            for name, props in rows.items()}


def main(argv=None) -> int:
    from uniap.evaluation import open_dataset
    from uniap.evaluation.segmenters import Uniap
    from uniap.metrics.instance import class_agnostic_mask_ap

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a COCO data folder (uniap-eval --dataset coco)")
    parser.add_argument("--limit", type=int, help="the first N images only")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    dataset = open_dataset("coco", args.data, limit=args.limit)
    _STATE.update(dataset=dataset, segmenter=Uniap(contours=False))
    with Pool(args.workers) as pool:
        per_image = pool.map(_rows, range(len(dataset.samples)))
    ids = [props[0]["image_id"] for props in (next(iter(r.values())) for r in per_image) if props]
    print(f"{'row':22s} {'AR@10':>6s} {'AR@100':>7s} {'AR@1000':>8s} {'masks/image':>12s}")
    for name in per_image[0]:
        preds = [p for r in per_image for p in r[name]]
        result = class_agnostic_mask_ap(preds, dataset.annotations, image_ids=ids)
        print(f"{name:22s} {result['AR@10']:6.3f} {result['AR@100']:7.3f} {result['AR@1000']:8.3f} "
              f"{len(preds) / len(per_image):12.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
