"""``uniap.pipeline.run``: images, folders, lists or tar shards -> mask files, as one call.

This is what ``uniap-cli`` runs: sources -> plan -> engine(stages) -> sinks, then the COCO
data set and the failures manifest.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .. import io
from .engine import LocalEngine, Report
from .plan import PlanError, plan_jobs, signature
from .sinks import COLLECTORS
from .sources import expand_inputs
from ..features.regions import refined
from .stages import Settings, Stages

FORMATS = ("sam", "coco", "png", "parquet")
ENGINES = ("local", "ray")
# Below this many images per run the NumPy backend finishes before Numba has loaded.
NUMBA_PAYS_OFF = 64


@dataclass
class RunSummary:
    """What a run did.

    Attributes
    ----------
    written : int
        Images whose outputs were written.
    skipped : int
        Images whose outputs already existed, made with the same settings.
    failures : list of Report
        Images that failed (``source`` and ``error`` say which and why).
    timings : dict
        Mean seconds per written image in each stage (decode, features, pooling, records,
        writing).
    wall : float
        Seconds from the first image to the last.
    failures_path : Path or None
        The ``failures.jsonl`` written, when anything failed.
    """

    written: int = 0
    skipped: int = 0
    failures: list[Report] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0
    failures_path: Path | None = None


def check_refine(refine: str, refine_options: dict | None, upsampling: str,
                 segment_options: dict | None) -> None:
    """Raise ValueError naming the option when ``refine`` and the other options do not fit."""
    from ..features import REFINES

    if refine not in REFINES:
        raise ValueError(f"refine must be one of {list(REFINES)}, got {refine!r}")
    if refine == "superpixels":
        if upsampling != "nearest":
            raise ValueError("upsampling applies to refine 'none' only: superpixel levels are pixel-accurate")
        if "connectivity" in (segment_options or {}):
            raise ValueError("connectivity applies to refine 'none' only: superpixels are joined where they touch")
    elif refine_options:
        raise ValueError(f"{', '.join(sorted(refine_options))} applies to refine 'superpixels' only")


def run(
    inputs: Sequence[str],
    out: str,
    *,
    file_lists: Sequence[str] = (),
    format: str = "sam",
    viz: str | None = None,
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
    workers: int = 1,
    batch_size: int = 4,
    engine: Any = "local",
    ray_address: str | None = None,
    num_gpus: float | None = None,
    image_ids: dict[str, int] | None = None,
    features: str = "default",
    extractor_options: dict[str, Any] | None = None,
    segment_options: dict[str, Any] | None = None,
    refine: str = "superpixels",
    refine_options: dict[str, Any] | None = None,
    upsampling: str = "nearest",
    all_levels: bool = False,
    progress: bool = True,
    extractor: Any | None = None,
) -> RunSummary:
    """Masks for many images, written as files; a failing image is reported, not fatal.

    Parameters
    ----------
    inputs : sequence of str
        Image files, folders (searched recursively), glob patterns and ``.tar`` shards
        (:func:`uniap.pipeline.sources.expand_inputs`).
    out : str
        A file for one image, a folder for several (``docs/cli.md``: the layout rules).
    file_lists : sequence of str
        Files listing one input path a line (``-``: standard input).
    format : {"sam", "coco", "png", "parquet"}
        One SA-1B-like JSON per image, one COCO data set, a folder of label maps per image, or
        Parquet part files with one row per record.
    viz : str, optional
        Also draw each image's levels: a file for one image, a folder for several.
    overwrite : bool
        Replace existing outputs of these images; without it an image whose outputs exist
        (made with the same settings) is skipped, and outputs made otherwise are an error.
    shard : (i, n), optional
        Only images i, i+n, ... of the sorted inputs.
    workers, batch_size : int
        Processes (this one included) and images per chunk (:class:`LocalEngine`).
    engine : {"local", "ray"} or engine
        This machine's processes, or Ray Data (a local Ray, or the cluster at ``ray_address``);
        or an engine made with its own options (:class:`LocalEngine`,
        :class:`~uniap.pipeline.ray_engine.RayEngine`: anything with ``run(jobs, stages,
        collect)``), which then ignores ``workers``, ``batch_size``, ``ray_address`` and
        ``num_gpus``.
    ray_address : str, optional
        The Ray cluster to join (``engine="ray"``).
    num_gpus : float, optional
        GPUs per Ray actor (default: 1 with a CUDA ``device``, else 0).
    image_ids : dict, optional
        Image id by key (e.g. :func:`uniap.io.coco_image_ids` of a ground-truth file).
    features, extractor_options : str, dict
        The extractor and its options (:func:`uniap.features.get_extractor`).
    segment_options : dict
        Options of :func:`uniap.segment` (default levels: those of the nodes, below).
    refine : {"superpixels", "none"}
        UniAP's nodes: the image's superpixels, each pooling the patch features under it, so every
        level is pixel-accurate (default; :class:`uniap.features.RegionFeatures`), or the
        extractor's patches.
    refine_options : dict, optional
        Options of :class:`~uniap.features.RegionFeatures` (``size``, ``compactness``).
    upsampling : {"nearest", "bilinear"}
        Patch labels to pixels (``refine="none"`` only).
    all_levels : bool
        One record per mask and level instead of one per distinct mask.
    progress : bool
        A progress bar on standard error.
    extractor : FeatureExtractor, optional
        An extractor built already (used by this process, wrapped for ``refine``; workers
        build their own from ``features`` and ``extractor_options``).

    Returns
    -------
    RunSummary

    Raises
    ------
    uniap.pipeline.sources.InputError, uniap.pipeline.plan.PlanError
        Bad inputs, or outputs that cannot be written safely; nothing is written then.
    ValueError, FileNotFoundError, ImportError
        The extractor cannot be built (unknown model, missing weights, ...).
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if isinstance(engine, str) and engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if not isinstance(engine, str) and not callable(getattr(engine, "run", None)):
        raise TypeError(f"engine must be a name ({', '.join(ENGINES)}) or an engine with a run method, "
                        f"got {type(engine).__name__}")
    check_refine(refine, refine_options, upsampling, segment_options)
    items = expand_inputs(inputs, file_lists)
    settings = Settings(features=features, extractor_options=dict(extractor_options or {}),
                        segment_options=dict(segment_options or {}), upsampling=upsampling,
                        unique=not all_levels, refine=refine, refine_options=dict(refine_options or {}))
    digest = signature(settings.signature_fields())
    if format in COLLECTORS and not overwrite and (existing := COLLECTORS[format].existing(out, shard)):
        raise PlanError(f"{existing} exists; pass --overwrite to replace it")
    single = len(inputs) == 1 and not file_lists and os.path.isfile(inputs[0]) and len(items) == 1 \
        and items[0].member is None
    plan = plan_jobs(items, out=out, format=format, viz=viz, overwrite=overwrite,
                     settings_signature=digest, single=single, shard=shard, image_ids=image_ids)
    summary = RunSummary(skipped=plan.done)
    if "backend" not in settings.segment_options and len(plan.jobs) < NUMBA_PAYS_OFF and refine == "none":
        # Loading Numba and its compiled kernels costs about 0.5 s per process, more than the
        # NumPy reference spends on a few dozen images; both give the same partitions.  The
        # superpixels (the default) load Numba anyway, and the graph's UniAP is faster there.
        from dataclasses import replace

        settings = replace(settings, host_backend="numpy")
    if extractor is not None:
        extractor = refined(extractor, refine, **(refine_options or {}))
    stages = Stages(settings, extractor)  # builds the extractor: bad weights fail here, early
    _prepare_folders(out, viz, plan)

    if not isinstance(engine, str):
        runner: Any = engine
    elif engine == "ray":
        from .ray_engine import RayEngine

        runner = RayEngine(address=ray_address, batch_size=batch_size, num_gpus=num_gpus)
    else:
        runner = LocalEngine(workers, batch_size)
    collector = COLLECTORS[format](out, shard=shard, image_ids=[job.image_id for job in plan.jobs],
                                   overwrite=overwrite) if format in COLLECTORS else None
    reports = _run(runner, plan.jobs, stages, collector, progress, summary)
    ok = [r for r in reports if r.status == "ok"]
    summary.written = len(ok)
    summary.failures = [r for r in reports if r.status != "ok"]
    if ok:
        summary.timings = {k: sum(r.timings.get(k, 0.0) for r in ok) / len(ok) for k in ok[0].timings}
    if collector is not None:
        collector.close()
    _write_failures(plan.failures_path, summary)
    return summary


def _run(engine: Any, jobs, stages: Stages, collector: Any, progress: bool,
         summary: RunSummary) -> list[Report]:
    bar = None
    if progress and len(jobs) > 1:
        from .._progress import progress_bar

        bar = progress_bar(len(jobs), "uniap")  # plain lines when stderr is not a terminal
    reports = []
    start = time.perf_counter()
    try:
        for report in engine.run(jobs, stages, collector is not None):
            if collector is not None and report.status == "ok":
                collector.add(*report.collected)
                report.collected = None  # the collector holds what it needs
            elif collector is not None:
                collector.discard(report.image_id)  # its part is complete without it
            reports.append(report)
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()
        summary.wall = time.perf_counter() - start
    return reports


def _prepare_folders(out: str, viz: str | None, plan) -> None:
    """Check that the outputs can be written, then make the folders they need.

    Writability is tried (a probe file), not inferred from permission bits, which a
    read-only file system or root ignore.  Every target is checked before any folder is made,
    and folders made for ``out`` are removed again when ``viz``'s cannot be made: a refused
    run leaves nothing behind.  Problems are :class:`PlanError` (a usage error, exit 2).
    """

    def writable(folder: Path) -> None:
        if not folder.is_dir():
            raise PlanError(f"cannot write to {folder}: no such folder")
        try:
            with tempfile.TemporaryFile(dir=folder, prefix=".uniap-probe-"):
                pass
        except OSError as err:
            raise PlanError(f"cannot write to {folder}: {_reason(err)}") from None

    def check(path: str, is_folder: bool) -> list[Path]:
        """Check ``path``'s target; return the folders to make, outermost first."""
        target = Path(path)
        if not is_folder:
            writable(target.parent if str(target.parent) else Path("."))
            return []
        if target.exists():
            writable(target)
            return []
        missing = [target]
        for parent in target.absolute().parents:
            if parent.exists():
                writable(parent)
                break
            missing.append(parent)
        return missing[::-1]

    todo = [check(out, plan.out_is_folder)]
    if viz is not None:
        todo.append(check(viz, plan.viz_is_folder))
    made: list[Path] = []
    try:
        for folders in todo:
            for folder in folders:
                if not folder.exists():
                    try:
                        folder.mkdir()
                    except OSError as err:
                        raise PlanError(f"cannot create folder {folder}: {_reason(err)}") from None
                    made.append(folder)
    except PlanError:
        for folder in reversed(made):
            try:
                folder.rmdir()
            except OSError:
                pass
        raise


def _reason(err: OSError) -> str:
    """An operating system error in words, without the errno: "permission denied"."""
    return (err.strerror or str(err)).lower()


def _write_failures(path: Path | None, summary: RunSummary) -> None:
    """``failures.jsonl``: one line per failed image; a stale one goes when nothing failed."""
    if path is None:
        return
    if not summary.failures:
        if path.is_file():
            path.unlink()
        return
    lines = "".join(json.dumps({"path": r.source, "key": r.key, "error": r.error}) + "\n"
                    for r in summary.failures)
    with io.atomic_path(path) as tmp:
        tmp.write_text(lines)
    summary.failures_path = path
