"""Run a segmenter over a data set and summarise: :func:`evaluate`, :func:`format_table`.

Each image is segmented *and* scored in a worker (segmentation, ground truth and per-image
metric counts stay there); only compact counts (BSDS500), masks as RLE (COCO) or matched
confusion matrices (label maps) come back, and the data-set summary is computed once.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

__all__ = ["EvaluationError", "default_workers", "evaluate", "format_table"]


class EvaluationError(RuntimeError):
    """The run cannot be summarised (e.g. images disagree on the number of levels)."""


def default_workers() -> int:
    """CPUs this process may use."""
    from .._cores import usable_cores

    return usable_cores()


_STATE: dict[str, Any] = {}


def _init(dataset, segmenter, benchmark, worker: bool = False) -> None:
    _STATE.update(dataset=dataset, segmenter=segmenter, benchmark=benchmark)
    if worker:
        # one BLAS thread per worker process, and the superpixels in turn: the workers
        # already use every core between them
        from ..features import regions

        regions.OVERLAP = False
        try:
            from threadpoolctl import threadpool_limits

            _STATE["threads"] = threadpool_limits(limits=1)
        except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
            pass


def _one(index: int) -> dict:
    """Segment and score image ``index``; never raises (a failure is reported)."""
    from ..features import load_image

    dataset, segmenter, bench = _STATE["dataset"], _STATE["segmenter"], _STATE["benchmark"]
    sample = dataset.samples[index]
    out: dict[str, Any] = {"index": index, "key": sample.key, "status": "ok"}
    try:
        t0 = time.perf_counter()
        truth = dataset.load_truth(sample)
        shape = bench.shape(truth)
        image = None
        if segmenter.needs_image:
            image = load_image(sample.image)
            if image.shape[:2] != shape:
                raise ValueError(f"image is {image.shape[:2]}, its ground truth {shape}")
        t1 = time.perf_counter()
        seg = segmenter.segment(image, key=sample.key, shape=shape, proposals=bench.wants_proposals)
        if seg.levels.ndim != 3 or seg.levels.shape[1:] != shape:
            raise ValueError(f"the segmenter gave label maps of shape {seg.levels.shape}, expected (L, *{shape})")
        t2 = time.perf_counter()
        out["partial"] = bench.per_image(sample, truth, seg)
        t3 = time.perf_counter()
        out["num_levels"] = int(seg.levels.shape[0])
        out["level_names"] = seg.level_names
        out["regions"] = [int(np.unique(lv).size) for lv in seg.levels]
        out["timings"] = {"load": t1 - t0, "segment": t2 - t1, "metrics": t3 - t2}
        out["segmenter_timings"] = seg.timings
    except Exception as err:  # one bad image must not stop the run
        out.update(status="failed", error=f"{type(err).__name__}: {err}")
    return out


def evaluate(dataset, segmenter, benchmark, *, workers: int = 1, progress: bool = True) -> dict:
    """Segment and score every image of ``dataset``; return the JSON-ready result.

    Parameters
    ----------
    dataset : a loader of :mod:`uniap.evaluation.datasets`
    segmenter : a segmenter of :mod:`uniap.evaluation.segmenters`
    benchmark : the matching benchmark of :mod:`uniap.evaluation.benchmarks`
    workers : int
        Processes working on different images (1: in this process).
    progress : bool
        Show a tqdm bar on stderr.

    Returns
    -------
    dict
        ``dataset``, ``segmenter``, ``levels``, ``metrics`` (the headline numbers),
        ``per_level`` (one row per level), ``timing``, ``failed`` (images that raised; they
        are left out of the metrics).

    Raises
    ------
    EvaluationError
        When no image could be scored, or images disagree on the number of levels.
    """
    from .._version import __version__

    start = time.perf_counter()
    n = len(dataset.samples)
    segmenter.warm_up()
    _init(dataset, segmenter, benchmark)
    bar = None
    if progress:
        from .._progress import progress_bar

        bar = progress_bar(n, f"{segmenter.name} on {dataset.name}")  # plain lines off a terminal
    results: list[dict] = []
    try:
        if workers > 1 and n > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            with ProcessPoolExecutor(max_workers=min(workers, n), mp_context=ctx, initializer=_init,
                                     initargs=(dataset, segmenter, benchmark, True)) as pool:
                futures = [pool.submit(_one, i) for i in range(n)]
                for fut in as_completed(futures):
                    results.append(fut.result())
                    if bar:
                        bar.update()
        else:
            for i in range(n):
                results.append(_one(i))
                if bar:
                    bar.update()
    finally:
        if bar:
            bar.close()
    results.sort(key=lambda r: r["index"])
    ok = [r for r in results if r["status"] == "ok"]
    failed = [{"image": r["key"], "error": r["error"]} for r in results if r["status"] != "ok"]
    if not ok:
        first = failed[0] if failed else {"image": "-", "error": "no image"}
        raise EvaluationError(f"no image could be evaluated; {first['image']}: {first['error']}")
    counts = sorted({r["num_levels"] for r in ok})
    if len(counts) > 1:
        raise EvaluationError(f"images have different numbers of levels ({counts}); level k must mean "
                              "the same scale in every image")
    names = ok[0]["level_names"] or segmenter.level_names() or [f"level {k}" for k in range(counts[0])]
    if len(names) != counts[0]:
        names = [f"level {k}" for k in range(counts[0])]
    t_sum = time.perf_counter()
    metrics, per_level = benchmark.summarise([r["partial"] for r in ok], names)
    t_done = time.perf_counter()
    regions = np.array([r["regions"] for r in ok], np.float64)
    for k, row in enumerate(per_level):
        row["level"] = k
        row["name"] = names[k]
        row["regions"] = float(regions[:, k].mean())
    mean = {key: float(np.mean([r["timings"][key] for r in ok])) for key in ok[0]["timings"]}
    inner = {key: float(np.mean([r["segmenter_timings"].get(key, 0.0) for r in ok]))
             for key in ok[0]["segmenter_timings"]}
    return {
        "uniap_version": __version__,
        "dataset": {"name": dataset.name, "data": str(dataset.root), "splits": list(dataset.splits),
                    "images": n, "evaluated": len(ok)},
        "segmenter": {"name": segmenter.name, "params": segmenter.params()},
        "levels": names,
        "metrics": metrics,
        "per_level": [{"level": row.pop("level"), "name": row.pop("name"), "regions": row.pop("regions"), **row}
                      for row in per_level],
        "timing": {"wall_s": t_done - start, "summary_s": t_done - t_sum, "workers": int(min(workers, n)),
                   "mean_s_per_image": mean, "segmenter_s_per_image": inner},
        "failed": failed,
    }


def _fmt(v, key: str = "") -> str:
    if isinstance(v, float):
        if np.isnan(v):
            return "nan"
        return f"{v:.1f}" if key.startswith("proposals") else f"{v:.4f}"
    return str(v)


def format_table(result: dict, benchmark) -> str:
    """The per-level table and the headline numbers of a result, as plain text."""
    ds, seg = result["dataset"], result["segmenter"]
    lines = [f"{seg['name']} on {ds['name']} ({'+'.join(ds['splits']) or 'all'}): "
             f"{ds['evaluated']} image(s), {result['timing']['wall_s']:.1f} s"]
    cols = [(key, title) for key, title in benchmark.columns if key in result["per_level"][0]]
    header = ["level", "regions"] + [title for _, title in cols]
    rows = [[row["name"], f"{row['regions']:.1f}"] + [_fmt(row[key], key) for key, _ in cols]
            for row in result["per_level"]]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in [header] + rows:
        lines.append("  ".join(str(x).rjust(w) for x, w in zip(row, widths)))
    m = result["metrics"]
    parts = [f"{title} {_fmt(m[key], key)}" for key, title in benchmark.headline if key in m]
    lines.append(" | ".join(parts))
    if result["failed"]:
        lines.append(f"{len(result['failed'])} image(s) failed and are not counted")
    return "\n".join(lines)
