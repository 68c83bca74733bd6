"""Where a run of the paper's rule spends its time, phase by phase (#22; docs/benchmarks.md).

    flock /tmp/heavy.lock python bench/paper_rule_phases.py --sides 32 --rounds 30
    flock /tmp/heavy.lock python bench/paper_rule_phases.py --sides 32 \\
        --switch uniap.core.levels FLOAT32_PROFILES

Runs ``uniap.segment(features, preset="paper", semantic=...)`` on the synthetic features of
``bench/test_paper_rule.py`` (NumPy input: the Numba backend) with ``time.perf_counter``
around the engine's steps (wrappers on :mod:`uniap.core.levels`, on this thread: work on
other threads counts where this one waits for it), after the fastest ``F @ F.T`` of the grid
(NumPy float32 on the BLAS threads).  Phases (median and minimum over the rounds, ms):

* ``gram``: the profiles' Gram (``_initial_profiles``: every cell's F F^T row, float32);
* ``first votes``: the first scoring of every edge (``_score_edges``' first call);
* ``contractions``: the passes' contractions (``_contract``), of which ``merged products``
  is the merged nodes' products and attention pooling (``_pool_rows``);
* ``re-scoring``: the later ``_score_edges`` calls (edges of the formed nodes);
* ``semantic``: the semantic groups (``semantic_groups``);
* ``engine, rest``: the rest of ``run_levels`` (norms, copies, edge bookkeeping, levels);
* ``outside engine``: ``uniap.segment`` less ``run_levels`` (checks, conversions, output).

``--switch MODULE NAME`` alternates ``MODULE.NAME = True / False`` round by round (each first
in every other round), as ``bench/paper_rule_switch.py`` does.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import time
from collections import defaultdict

import numpy as np

import uniap
import uniap.core.levels as levels
from uniap.synthetic import piecewise_features

CHANNELS = 384
WRAPPED = ("run_levels", "_initial_profiles", "_score_edges", "_contract", "_pool_rows", "semantic_groups")


def _instrument(times: dict) -> None:
    """Wrap the engine's steps of :mod:`uniap.core.levels` so that each adds its wall time
    (and _score_edges its call count) to ``times``."""
    for name in WRAPPED:
        fn = getattr(levels, name)

        @functools.wraps(fn)
        def timed(*args, _fn=fn, _name=name, **kwargs):
            if _name == "_score_edges":
                times["score calls"] += 1
                _name = "first votes" if times["score calls"] == 1 else "re-scoring"
            t0 = time.perf_counter()
            try:
                return _fn(*args, **kwargs)
            finally:
                times[_name] += time.perf_counter() - t0

        setattr(levels, name, timed)


def _phases(t: dict) -> dict:
    inner = sum(t[k] for k in ("_initial_profiles", "first votes", "re-scoring", "_contract", "semantic_groups"))
    return {
        "total": t["total"],
        "gram": t["_initial_profiles"],
        "first votes": t["first votes"],
        "contractions": t["_contract"],
        "  merged products": t["_pool_rows"],
        "re-scoring": t["re-scoring"],
        "semantic": t["semantic_groups"],
        "engine, rest": t["run_levels"] - inner,
        "outside engine": t["total"] - t["run_levels"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[32])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--switch", nargs=2, metavar=("MODULE", "NAME"))
    args = parser.parse_args()
    times: dict = defaultdict(float)
    _instrument(times)
    module = importlib.import_module(args.switch[0]) if args.switch else None
    saved = getattr(module, args.switch[1]) if module else None
    settings = (True, False) if module else (None,)
    for side in args.sides:
        x = piecewise_features((side, side), channels=CHANNELS, seed=side)
        f = x.reshape(-1, CHANNELS).astype(np.float32)
        floor = []
        for _ in range(args.rounds + 1):
            t0 = time.perf_counter()
            f @ f.T
            floor.append(time.perf_counter() - t0)
        time.sleep(0.5)  # the BLAS threads stop spinning
        runs: dict = defaultdict(list)
        try:
            for r in range(args.rounds + 1):  # the first round warms up, not counted
                for value in (settings if r % 2 else settings[::-1]):
                    if module:
                        setattr(module, args.switch[1], value)
                    for semantic in (False, True):
                        times.clear()
                        t0 = time.perf_counter()
                        uniap.segment(x, preset="paper", semantic=semantic)
                        times["total"] = time.perf_counter() - t0
                        if r:
                            runs[(value, semantic)].append(_phases(times))
        finally:
            if module:
                setattr(module, args.switch[1], saved)
        best = min(floor[1:]) * 1e3
        print(f"{side}x{side}: fastest F @ F.T (NumPy float32) {best:.1f} ms; phases in ms, median [min]")
        for (value, semantic), phases in runs.items():
            label = f"semantic={semantic!s:5}" + (f" {args.switch[1]}={value!s:5}" if module else "")
            cells = []
            for name in phases[0]:
                v = np.array([p[name] for p in phases]) * 1e3
                cells.append(f"{name.strip()} {np.median(v):.2f} [{v.min():.2f}]")
            print(f"  {label}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
