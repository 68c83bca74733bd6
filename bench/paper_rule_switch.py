"""A/B of one switch of the paper's rule, alternated in one process (#22; docs/benchmarks.md).

    flock /tmp/heavy.lock python bench/paper_rule_switch.py uniap.backends.numba_backend ROW_BLOCKS \\
        --sides 32 64 --rounds 15

Runs ``uniap.segment(features, preset="paper", semantic=...)`` on the synthetic features of
``bench/test_paper_rule.py`` with ``module.NAME`` set to True and to False in turn, round after
round, each first in every other round (so that a machine's load falls on both alike), after
the fastest ``F @ F.T`` of the grid (NumPy float32, torch float32 on two threads) in as many
rounds.  Prints, per side and
setting, the median and range of the times and the ratio of the minimum to the floor's.
"""

from __future__ import annotations

import argparse
import importlib
import time

import numpy as np

import uniap
from uniap.synthetic import piecewise_features

CHANNELS = 384


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module")
    parser.add_argument("name")
    parser.add_argument("--sides", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    module = importlib.import_module(args.module)
    saved = getattr(module, args.name)
    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:  # pragma: no cover - torch is optional
        torch = None
    for side in args.sides:
        x = piecewise_features((side, side), channels=CHANNELS, seed=side)
        f = x.reshape(-1, CHANNELS).astype(np.float32)
        floors = [lambda: f @ f.T]
        if torch is not None:
            ft = torch.from_numpy(f)
            floors.append(lambda: ft @ ft.T)
        times: dict = {}
        # The floors first, all rounds: torch's OpenMP workers spin for a while after a
        # product, and would slow whichever setting ran next.
        for _ in range(args.rounds + 1):
            for i, fn in enumerate(floors):
                t0 = time.perf_counter()
                fn()
                times.setdefault(("floor", i), []).append(time.perf_counter() - t0)
        time.sleep(0.5)
        for r in range(args.rounds + 1):  # the first round warms up, not counted
            for value in ((True, False) if r % 2 else (False, True)):  # ABBA: neither always first
                setattr(module, args.name, value)
                for semantic in (False, True):
                    t0 = time.perf_counter()
                    uniap.segment(x, preset="paper", semantic=semantic)
                    times.setdefault((value, semantic), []).append(time.perf_counter() - t0)
        setattr(module, args.name, saved)
        floor = min(min(v[1:]) for k, v in times.items() if k[0] == "floor")
        print(f"{side}x{side}: fastest F @ F.T {floor * 1e3:.1f} ms")
        for key, values in times.items():
            if key[0] == "floor":
                continue
            v = np.array(values[1:]) * 1e3
            print(f"  {args.name}={key[0]!s:5} semantic={key[1]!s:5} median {np.median(v):.1f} ms "
                  f"[{v.min():.1f}-{v.max():.1f}]  min/floor {v.min() / (floor * 1e3):.2f}x")
    setattr(module, args.name, saved)


if __name__ == "__main__":
    main()
