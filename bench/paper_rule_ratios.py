"""Print the ratio table of ``bench/test_paper_rule.py``: each paper-rule time over the fastest
``F @ F.T`` of the same side in the same run (minimum times; docs/benchmarks.md)."""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    runs = json.load(open(path))["benchmarks"]
    floor: dict[int, dict[str, float]] = defaultdict(dict)
    paper: dict[int, dict[str, float]] = defaultdict(dict)
    for b in runs:
        info = b["extra_info"]
        (floor if info["role"] == "floor" else paper)[info["side"]][info["kind"]] = b["stats"]["min"]
    kinds = ["numpy", "numpy-semantic", "torch", "torch-semantic"]
    print("| side | fastest F @ F.T | " + " | ".join(kinds) + " |")
    print("|---|---|" + "---|" * len(kinds))
    for side in sorted(floor):
        best_kind = min(floor[side], key=floor[side].get)
        best = floor[side][best_kind]
        cells = [f"{paper[side][k] * 1e3:.0f} ms ({paper[side][k] / best:.2f}x)" if k in paper[side] else "-"
                 for k in kinds]
        print(f"| {side}x{side} | {best * 1e3:.0f} ms ({best_kind}) | " + " | ".join(cells) + " |")
    print()
    print("floors (ms): " + "; ".join(
        f"{s}: " + ", ".join(f"{k} {v * 1e3:.0f}" for k, v in sorted(floor[s].items())) for s in sorted(floor)))


if __name__ == "__main__":
    main(sys.argv[1])
