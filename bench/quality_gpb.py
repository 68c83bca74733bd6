"""gPb-owt-ucm against uniap and its peers on the 30 BSDS500 test images whose ucm2 ships.

    python bench/quality_gpb.py RESULT.json [RESULT.json ...] --data ../shared/data/bsds500

The data set holds gPb-owt-ucm's ``ucm2`` (Arbelaez et al., TPAMI 2011) for 30 of its test
images (``manifest.json`` ``ucm2_test_ids``). They are scored here by the same code
(:func:`uniap.metrics.evaluate_ucms`, the benchmark's 99 thresholds), and each RESULT.json's
segmenter (a ``uniap-eval --dataset bsds500`` result, rebuilt from its recorded parameters) is
run on the same 30 images. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

KEYS = ("covering_ods", "covering_ois", "pri_ods", "pri_ois", "vi_ods", "vi_ois", "boundary_ods", "boundary_ois")


def main() -> None:
    from uniap.evaluation import BENCHMARKS, build_segmenter, evaluate, open_dataset
    from uniap.metrics import evaluate_ucms

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="*")
    parser.add_argument("--data", required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    root = Path(args.data)
    ids = set(json.loads((root / "manifest.json").read_text())["ucm2_test_ids"])
    ds = open_dataset("bsds500", root, ["test"])
    ds.samples = [s for s in ds.samples if s.key in ids]
    rows = []

    truths = [ds.load_truth(s) for s in ds.samples]
    ucms = []
    for s in ds.samples:
        z = np.load(root / "ucm2" / "test" / f"{s.key}.npz")
        ucms.append(z["levels"][z["index"]])
    res = evaluate_ucms(ucms, [t["segmentations"] for t in truths], [t["boundaries"] for t in truths],
                        n_jobs=args.workers)
    rows.append(("gPb-owt-ucm (99 thresholds)", res.summary()))

    for path in args.results:
        r = json.loads(Path(path).read_text())
        seg = build_segmenter(r["segmenter"]["name"], **r["segmenter"]["params"])
        out = evaluate(ds, seg, BENCHMARKS["bsds500"](ds), workers=args.workers, progress=False)
        rows.append((f"{seg.name} ({len(out['levels'])} levels)", out["metrics"]))

    print(f"{len(ds.samples)} BSDS500 test images with a staged gPb-owt-ucm ucm2\n")
    print("| method | " + " | ".join(KEYS) + " |")
    print("| --- |" + " ---: |" * len(KEYS))
    for name, m in rows:
        print(f"| {name} | " + " | ".join(f"{m[k]:.3f}" for k in KEYS) + " |")


if __name__ == "__main__":
    main()
