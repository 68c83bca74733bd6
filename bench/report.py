"""Markdown table from a pytest-benchmark JSON file: medians and ratios to a baseline.

    python -m pytest bench/ --benchmark-only --benchmark-json=bench.json
    python bench/report.py bench.json [--baseline test_uniap[numba]]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
from collections import defaultdict


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("json_file")
    parser.add_argument("--baseline", default="test_uniap (numba)", help="name of the baseline row")
    args = parser.parse_args()
    data = json.load(open(args.json_file))
    groups: dict[str, list[tuple[str, float, int]]] = defaultdict(list)
    for bench in data["benchmarks"]:
        match = re.search(r"(\d+x\d+x\d+)", bench["name"])
        grid = match.group(1) if match else "-"
        base = bench["name"].split("[")[0]
        rest = [p for p in (bench.get("param") or "").split("-") if p and p != grid]
        name = f"{base} ({'-'.join(rest)})" if rest else base
        groups[grid].append((name, bench["stats"]["median"], bench["stats"]["rounds"]))
    machine = data.get("machine_info", {})
    print(f"Machine: {machine.get('cpu', {}).get('brand_raw', platform.processor())}, "
          f"{machine.get('cpu', {}).get('count', '?')} cores, Python {machine.get('python_version', '?')}; "
          f"run {data.get('datetime', '?')}\n")
    for grid in sorted(groups, key=lambda g: [int(v) for v in g.split("x")] if g != "-" else [0]):
        rows = sorted(groups[grid], key=lambda r: r[1])
        base = next((m for n, m, _ in rows if n == args.baseline), None)
        print(f"### {grid}\n")
        print("| implementation | median | ratio to numba | rounds |")
        print("| --- | ---: | ---: | ---: |")
        for name, median, rounds in rows:
            ratio = f"{median / base:.2f}x" if base else "-"
            print(f"| {name} | {median * 1e3:.3f} ms | {ratio} | {rounds} |")
        print()


if __name__ == "__main__":
    main()
