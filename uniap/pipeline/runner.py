"""``uniap.pipeline.run``: images, folders, lists or tar shards -> mask files, as one call.

This is what ``uniap-cli`` and ``uniap-predict`` run: sources -> plan -> engine(decode ->
segmenter -> sinks), then the COCO data set and the failures manifest.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..formats import get as get_format
from ..formats import names as format_names
from ..formats.files import atomic_path
from .engine import LocalEngine, Report
from .locks import lock_outputs
from .plan import Plan, PlanError, output_layout, plan_jobs, remove_stale_temporaries, signature
from .sources import expand_inputs
from ..features.regions import refined
from .stages import Settings, Stages

FORMATS = tuple(format_names())  # as registered when this module loaded: the registry decides
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
    failures_error : str or None
        Why ``failures.jsonl`` could not be written (a full disk, say); None when it was.
    """

    written: int = 0
    skipped: int = 0
    failures: list[Report] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0
    failures_path: Path | None = None
    failures_error: str | None = None


def check_refine(refine: str, refine_options: dict | None, upsampling: str,
                 segment_options: dict | None) -> None:
    """Raise ValueError naming the option when ``refine`` and the other options do not fit
    (:func:`uniap.features.regions.check_refine`, the one rule)."""
    from ..features.regions import check_refine as check

    connectivity = (segment_options or {}).get("connectivity")
    if "connectivity" in (segment_options or {}) and connectivity is None:
        connectivity = 0  # named, even as None: refused with superpixels, as before
    check(refine, upsampling=upsampling, superpixel_options=sorted(refine_options or {}),
          connectivity=connectivity)


def run(
    inputs: Sequence[str],
    out: str,
    *,
    file_lists: Sequence[str] = (),
    format: str = "sam",
    viz: str | None = None,
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
    workers: int | str = 1,
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
    max_pixels: int | None = None,
    pred_iou_thresh: float = 0.0,
    stability_score_thresh: float = 0.0,
    max_masks: int = 0,
    viz_style: str = "levels",
    polygons: bool = False,
    segmenter: Any | None = None,
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
    format : {"sam", "coco", "png", "amg", "labelme", "parquet"}
        One SA-1B-like JSON per image, one COCO data set, a folder of label maps per image,
        segment-anything's ``amg.py`` folder per image (one PNG per mask and ``metadata.csv``:
        :mod:`uniap.formats.amg`), a LabelMe JSON of polygons per image
        (:mod:`uniap.formats.labelme`), or Parquet part files with one row per record (any
        format registered in :mod:`uniap.formats`).
    viz : str, optional
        Also draw each image's masks: a file for one image, a folder for several.
    viz_style : {"levels", "overlay"}
        ``viz`` pictures: the image and one panel per level (colours follow regions across
        levels; contour regions on their own rows), or all masks over the image in one
        picture (:func:`uniap.viz.overlay`).
    overwrite : bool
        Replace existing outputs of these images; without it an image whose outputs exist
        (made with the same settings) is skipped, and outputs made otherwise are an error.
    shard : (i, n), optional
        Only images i, i+n, ... of the sorted inputs.
    workers : int or "auto"
        Processes, this one included (:class:`LocalEngine`; ``"auto"``, ``uniap-cli``'s default:
        one per usable core for more than one chunk, :func:`uniap.pipeline.engine.auto_workers`).
    batch_size : int
        Images per chunk (:class:`LocalEngine`).
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
        Image id by key (e.g. :func:`uniap.formats.coco.coco_image_ids` of a ground-truth file).
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
    max_pixels : int, optional
        The most pixels (height x width) an image may have, read from its header before it is
        decoded; a larger image fails alone, named (default
        :data:`uniap.features.image.DEFAULT_MAX_PIXELS`, 89.5 million; 0: no limit).
    pred_iou_thresh, stability_score_thresh : float
        Write only the records whose ``predicted_iou`` / ``stability_score`` reach these
        values (``amg.py``'s filters; :func:`uniap.records.filter_records`; 0: all).
    max_masks : int
        Then write at most this many records an image: those of highest ``score``, the rank
        COCOeval uses (0: all).
    polygons : bool
        ``format="coco"`` only: segmentations as COCO polygons instead of RLE
        (:mod:`uniap.formats.polygons`).
    segmenter : Segmenter, optional
        Another segmenter than UniAP (:class:`uniap.pipeline.segmenter.Segmenter`: a peer, a
        trained model's), run as it is: ``features``, ``extractor_options``, ``extractor``,
        ``segment_options``, ``refine``, ``refine_options``, ``upsampling`` and ``all_levels``
        do not apply to it.  Its name and ``params()`` stand for ``features`` and
        ``extractor_options`` in the outputs' signature unless those are given.  Worker
        processes (``workers``, Ray) receive it pickled.

    Returns
    -------
    RunSummary

    Raises
    ------
    uniap.pipeline.sources.InputError, uniap.pipeline.plan.PlanError
        Bad inputs, outputs that cannot be written safely (the output-path rule of
        :func:`uniap.pipeline.plan.check_output_paths`), or another run holding the outputs'
        lock (:mod:`uniap.pipeline.locks`); nothing is written then.
    ValueError, FileNotFoundError, ImportError
        The extractor cannot be built (unknown model, missing weights, ...).

    Notes
    -----
    The run holds a lock on ``out`` and ``viz`` from planning to its end.  A worker process
    that dies fails only its image; an output path too long for the file system fails its
    image before it is processed.  ``failures.jsonl`` keeps the failures of the folder's other
    images (:func:`_write_failures`); when it cannot be written, ``RunSummary.failures_error``
    says why.  A run with failures or an error leaves no empty folder behind.
    """
    collector_type = get_format(format).collector  # ValueError naming the formats if there is none
    if polygons and format != "coco":
        raise ValueError(f"polygons applies to format 'coco' only (format {format!r}; "
                         "'labelme' writes polygons itself)")
    if isinstance(engine, str) and engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if not isinstance(engine, str) and not callable(getattr(engine, "run", None)):
        raise TypeError(f"engine must be a name ({', '.join(ENGINES)}) or an engine with a run method, "
                        f"got {type(engine).__name__}")
    check_refine(refine, refine_options, upsampling, segment_options)
    if segmenter is not None:
        if extractor is not None:
            raise ValueError("give an extractor (for UniAP) or a segmenter, not both")
        if not callable(getattr(segmenter, "segment_batch", None)):
            raise TypeError(f"segmenter must be a uniap.pipeline.segmenter.Segmenter, got {type(segmenter).__name__}")
        if features == "default" and not extractor_options:  # the signature names the segmenter
            features, extractor_options = segmenter.name, segmenter.params()
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 0):
        raise ValueError(f"max_pixels must be an integer >= 0 (0: no limit), got {max_pixels!r}")
    from ..viz import VIZ_STYLES

    if viz_style not in VIZ_STYLES:
        raise ValueError(f"viz_style must be one of {', '.join(VIZ_STYLES)}, got {viz_style!r}")
    items = expand_inputs(inputs, file_lists)
    for name, value in (("pred_iou_thresh", pred_iou_thresh), ("stability_score_thresh", stability_score_thresh)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if isinstance(max_masks, bool) or not isinstance(max_masks, int) or max_masks < 0:
        raise ValueError(f"max_masks must be an integer >= 0, got {max_masks!r}")
    settings = Settings(features=features, extractor_options=dict(extractor_options or {}),
                        segment_options=dict(segment_options or {}), upsampling=upsampling,
                        unique=not all_levels, refine=refine, refine_options=dict(refine_options or {}),
                        max_pixels=max_pixels, pred_iou_thresh=float(pred_iou_thresh),
                        stability_score_thresh=float(stability_score_thresh), max_masks=max_masks,
                        viz_style=viz_style,
                        polygons=bool(polygons))
    digest = signature(settings.signature_fields())
    if collector_type is not None and not overwrite and (existing := collector_type.existing(out, shard)):
        raise PlanError(f"{existing} exists; pass --overwrite to replace it")
    single = len(inputs) == 1 and not file_lists and os.path.isfile(inputs[0]) and len(items) == 1 \
        and items[0].member is None
    out_is_folder, viz_is_folder = output_layout(len(items), out=out, format=format, viz=viz, single=single)
    targets = [(out, out_is_folder)] + ([(viz, viz_is_folder)] if viz is not None else [])

    def plan() -> Plan:
        return plan_jobs(items, out=out, format=format, viz=viz, overwrite=overwrite,
                         settings_signature=digest, single=single, shard=shard, image_ids=image_ids,
                         viz_style=viz_style)

    # One run at a time per output (locks.py): taken before planning where the folders exist,
    # else once they are made, and the plan made again under the lock.
    lock = lock_outputs(targets, shard) if all(map(_lockable, targets)) else None
    made: list[Path] = []
    the_plan, clean = None, False
    try:
        the_plan = plan()
        summary = RunSummary(skipped=the_plan.done)
        if "backend" not in settings.segment_options and len(the_plan.jobs) < NUMBA_PAYS_OFF and refine == "none":
            # Loading Numba and its compiled kernels costs about 0.5 s per process, more than the
            # NumPy reference spends on a few dozen images; both give the same partitions.  The
            # superpixels (the default) load Numba anyway, and the graph's UniAP is faster there.
            from dataclasses import replace

            settings = replace(settings, host_backend="numpy")
        if extractor is not None:
            extractor = refined(extractor, refine, **(refine_options or {}))
        stages = Stages(settings, extractor, segmenter)  # builds the extractor: bad weights fail here, early
        made = _prepare_folders(out, viz, the_plan)
        if lock is None:
            lock = lock_outputs(targets, shard)
            the_plan = plan()
            summary.skipped = the_plan.done
        remove_stale_temporaries(the_plan)

        if not isinstance(engine, str):
            runner: Any = engine
        elif engine == "ray":
            from .ray_engine import RayEngine

            runner = RayEngine(address=ray_address, batch_size=batch_size, num_gpus=num_gpus)
        else:
            runner = LocalEngine(workers, batch_size)
        collector = collector_type(out, shard=shard, image_ids=[job.image_id for job in the_plan.jobs],
                                   overwrite=overwrite, **({"polygons": True} if polygons else {})
                                   ) if collector_type is not None else None
        reports = [Report(job.item.key, job.item.describe(), job.image_id, status="failed", error=why)
                   for job, why in the_plan.refused]
        reports += _run(runner, the_plan.jobs, stages, collector, progress, summary)
        ok = [r for r in reports if r.status == "ok"]
        summary.written = len(ok)
        summary.failures = [r for r in reports if r.status != "ok"]
        if ok:
            summary.timings = {k: sum(r.timings.get(k, 0.0) for r in ok) / len(ok) for k in ok[0].timings}
        if collector is not None:
            collector.close()
        if summary.failures:  # a worker killed while writing left its temporaries
            remove_stale_temporaries(the_plan)
        _write_failures(the_plan, summary, [item for item in items if item.key in the_plan.keys])
        clean = not summary.failures
        return summary
    finally:
        if lock is not None:
            lock.release()
        if not clean:  # a failed image or an error must not leave empty folders behind
            roots = {os.path.abspath(path) for path, is_folder in targets if is_folder}
            _remove_empty_folders(the_plan, made, roots)


def _lockable(target: tuple[str, bool]) -> bool:
    """Whether the folder holding ``target``'s lock exists already."""
    path, is_folder = target
    return os.path.isdir(path if is_folder else (os.path.dirname(os.path.abspath(path)) or "."))


def _remove_empty_folders(plan: Plan | None, made: list[Path], roots: set[str]) -> None:
    """After a run with failures or an error: the folders below ``roots`` that failed images'
    outputs left empty, then the folders this run made, if they are empty."""
    if plan is not None:
        for path in (p for job in plan.jobs for p in job.outputs.values()):
            parent = os.path.dirname(path)
            while parent not in roots and len(parent) > 1 and not os.path.exists(path):
                try:
                    os.rmdir(parent)  # only when empty
                except OSError:
                    break
                path, parent = parent, os.path.dirname(parent)
    for folder in reversed(made):
        try:
            folder.rmdir()
        except OSError:
            pass


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


def _prepare_folders(out: str, viz: str | None, plan) -> list[Path]:
    """Check that the outputs can be written, then make the folders they need.

    Writability is tried (a probe file), not inferred from permission bits, which a
    read-only file system or root ignore.  Every target is checked before any folder is made,
    and folders made for ``out`` are removed again when ``viz``'s cannot be made: a refused
    run leaves nothing behind.  Problems are :class:`PlanError` (a usage error, exit 2).
    Returns the folders made, outermost first.
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
    return made


def _reason(err: OSError) -> str:
    """An operating system error in words, without the errno: "permission denied"."""
    return (err.strerror or str(err)).lower()


def _write_failures(plan: Plan, summary: RunSummary, items: Sequence[Any]) -> None:
    """``failures.jsonl``: one line per image of the output folder that failed and is not done.

    The list belongs to the folder's images, not to one run: this run's failures replace the
    lines of its images (done now, or failed again), and lines of other images stay while
    their input still exists, so a clean run of other images keeps an earlier run's list.  The
    file goes when no line is left.  When it cannot be written (a full disk), the reason is in
    ``summary.failures_error`` and the failures are still in ``summary.failures``.
    """
    path = plan.failures_path
    if path is None:
        return
    files = {item.key: item.path for item in items}  # a tar member's file is its tar
    kept = []
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            old = f.read().splitlines()
    except FileNotFoundError:
        old = []
    except OSError as err:
        old = []
        summary.failures_error = f"cannot read {path}: {_reason(err)}"
    for number, line in enumerate(old, 1):
        try:
            entry = json.loads(line)
            key, source = entry["key"], entry.get("file", entry["path"])
        except (ValueError, KeyError, TypeError):
            continue  # not a line of ours: dropped
        if key not in files and os.path.lexists(source):
            kept.append(line + "\n")
    lines = kept + [json.dumps({"path": r.source, "key": r.key, "error": r.error,
                                "file": files.get(r.key, r.source)}) + "\n"
                    for r in summary.failures]
    try:
        if not lines:
            if path.is_file():
                path.unlink()
            return
        with atomic_path(path) as tmp:
            tmp.write_text("".join(lines), encoding="utf-8", errors="surrogateescape")
    except OSError as err:
        summary.failures_error = f"cannot write {path}: {_reason(err)}"
        return
    summary.failures_path = path
