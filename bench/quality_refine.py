"""uniap-eval's uniap with superpixel nodes whose features come from their own pixels.

    python bench/quality_refine.py --dataset bsds500 --data ../shared/data/bsds500 --split val --out R.json

An ablation row of ``docs/quality.md``: superpixel nodes (SLIC by default, as in that row;
``--superpixel-method watershed`` for the current default's), but each with the default
extractor's histograms of its own pixels
(:meth:`uniap.features.DefaultFeatures.region_features`, ``RegionFeatures(pixel_features=True)``)
instead of the sum of the patch features under it (:func:`uniap.features.pool_grid`, the
default).  Writes a result JSON like ``uniap-eval``'s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path


def main() -> int:
    from uniap.evaluation import BENCHMARKS, evaluate, open_dataset
    from uniap.evaluation.segmenters import Uniap
    from uniap.features import RegionFeatures

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=sorted(BENCHMARKS))
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", help="comma-separated splits (default: all)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--superpixel-method", choices=("slic", "watershed"), default="slic")
    args = parser.parse_args()

    dataset = open_dataset(args.dataset, args.data, args.split.split(",") if args.split else None)
    segmenter = Uniap(superpixel_method=args.superpixel_method)
    segmenter.extractor = RegionFeatures(segmenter.extractor.extractor, method=args.superpixel_method,
                                         pixel_features=True)
    result = evaluate(dataset, segmenter, BENCHMARKS[args.dataset](dataset), workers=args.workers, progress=False)
    result["segmenter"]["params"]["pixel_features"] = True
    out = Path(args.out)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(result, fh, indent=1)
    os.replace(tmp, out)
    print(json.dumps({k: v for k, v in result["metrics"].items() if isinstance(v, float)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
