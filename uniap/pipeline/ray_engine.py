"""The Ray Data engine: the local engine's stages composed as one streaming Ray Data pipeline.

What runs where (``docs/scale.md``), in one of two layouts (``RayEngine(compute=...)``)::

    compute="tasks" (default on the CPU)
    jobs ----> decode -> features + UniAP -> records + files ----> reports
    from_items  one CPU task per block (map_batches): Stages        iter_rows
    (driver)    built once per worker process, kept across tasks    (driver)

    compute="actors" (default when the extractor runs on a GPU)
    jobs ----> decode -------> features + UniAP -------------> records + files ----> reports
    from_items  CPU tasks       actor pool: Stages built once   CPU tasks: every      iter_rows
    (driver)    (map_batches)   per actor, one GPU each on CUDA  sink of the job       (driver)
                                (map_batches, ActorPoolStrategy) (map_batches)

* The jobs become a Dataset of blocks (:func:`ray.data.from_items`): with tasks, several
  batches a block (:func:`jobs_per_block`: a Ray task costs tens of milliseconds), with actors
  one batch a block.
* Tasks: each block is one Ray task that decodes, computes features (ViT: one batch per
  working shape), pools each batch in one :func:`uniap.segment` call and writes, on Ray's
  pooled worker processes, which build the extractor once and keep it across tasks and runs
  (an actor pool is started anew for every Dataset, a cost of seconds per run).
* Actors: decoding runs in CPU tasks; features and UniAP in an actor pool (``map_batches``
  with a callable class) whose actors build their :class:`~uniap.pipeline.stages.Stages`
  once and hold one GPU each (``num_gpus``); records and files in CPU tasks.
* Records and files are made by the local engine's own function
  (:func:`uniap.pipeline.engine.encode_and_write`), so both engines write the same bytes;
  COCO and Parquet records travel back in the reports and the driver writes those files.
* Only :class:`~uniap.pipeline.engine.Report` objects come back to the driver, streamed
  (:meth:`~ray.data.Dataset.iter_rows`) as images finish: the driver never holds images, and
  Ray Data's streaming executor bounds what is in flight (backpressure on the object store).

Between stages a row is ``{"i": job index, "state": bytes}``, the stage's state (job, report,
decoded uint8 image, the segmenter's :class:`~uniap.pipeline.segmenter.Pooled`: UniAP's
:class:`~uniap.features.FeatureGrid` and :meth:`Hierarchy.numpy <uniap.Hierarchy.numpy>`)
pickled, so nothing depends on how Arrow would convert the arrays.  A segmenter given to the
run as it is (``uniap.pipeline.run(..., segmenter=...)``) travels pickled to the workers;
otherwise each builds UniAP's from the settings.

Failures: an image that fails in any stage becomes a failed report and the others go on.  A
worker that dies (killed, out of memory, a node lost) is Ray's to recover: tasks are retried
(``max_retries``), actors are restarted and their tasks retried (``max_restarts``,
``max_task_retries``).  A block that still fails is dropped by Ray Data
(``DataContext.max_errored_blocks``) and its images are reported as failed, so the run ends
with one report per job, never a duplicate.
"""

from __future__ import annotations

import inspect
import logging
import os
import pickle
import time
import warnings
from dataclasses import dataclass, replace
from typing import Any, Iterator, Sequence

import numpy as np

from .engine import Report, _fail, encode_and_write, segment_images
from .plan import Job
from .segmenter import Pooled
from .sources import decode
from .stages import Settings, Stages, timed

__all__ = ["RayEngine"]

COMPUTE = ("auto", "tasks", "actors")

INSTALL_HINT = "pip install 'uniap[ray]'"


def import_ray() -> Any:
    """``ray`` with Ray Data, or an ImportError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is the extra's point
    except ImportError as err:
        raise ImportError(f"--engine ray needs Ray Data ({INSTALL_HINT}): {err}") from None
    return ray


@dataclass
class _State:
    """One image between stages (pickled into the row's ``state``)."""

    job: Job
    report: Report
    image: np.ndarray | None = None
    pooled: Pooled | None = None  # the segmenter's batched step's result


def _dump(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _load(blob: Any) -> Any:
    return pickle.loads(blob)


# -- the stages as Ray Data functions and classes ------------------------------------------


def _decode_states(states: list[_State], max_pixels: int | None = None) -> None:
    """The jobs' images decoded (or their reports failed)."""
    for state in states:
        start = time.perf_counter()
        try:
            state.image = decode(state.job.item, max_pixels)  # what Stages.decode does, without an extractor
            timed(state.report.timings, "decode", start)
        except Exception as err:  # an unreadable file fails alone
            _fail(state.report, err)


def _segment_states(stages: Stages, states: list[_State]) -> None:
    """The segmenter's batched step on a batch (UniAP: one ViT batch per working shape, one
    UniAP call), as the local engine runs it (:func:`uniap.pipeline.engine.segment_images`)."""
    decoded = [(i, state.image) for i, state in enumerate(states) if state.report.status == "ok"]
    for i, _, pooled in segment_images(stages, decoded, [s.report for s in states]):
        states[i].pooled = pooled
    for state in states:
        if state.report.status != "ok":
            state.image = state.pooled = None  # nothing more to carry


def _write_states(stages: Stages, states: list[_State], collect: bool) -> list[Report]:
    """Records and every file of each job (the local engine's own function)."""
    for state in states:
        if state.report.status == "ok":
            encode_and_write(stages, state.job, state.report, state.image, state.pooled, collect)
    return [state.report for state in states]


def _decode_batch(batch: dict[str, np.ndarray], max_pixels: int | None = None) -> dict[str, np.ndarray]:
    """CPU task: decoding."""
    states = [_load(blob) for blob in batch["state"]]
    _decode_states(states, max_pixels)
    return _states_batch(batch, states)


class _Segment:
    """Actor: the segmenter's batched step, with :class:`Stages` built once per actor."""

    def __init__(self, settings: Settings, segmenter: Any = None) -> None:
        _keep_to_assigned_cpus()
        self.stages = Stages(_on_this_actor(settings), segmenter=segmenter)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        states = [_load(blob) for blob in batch["state"]]
        _segment_states(self.stages, states)
        return _states_batch(batch, states)


def _keep_to_assigned_cpus() -> None:
    """The superpixels' thread beside the features (``uniap.features.regions.OVERLAP``) only
    where this task or actor was given two CPUs or more: Ray runs as many one-CPU tasks as
    there are cores, and a second thread in each would only wait for another task's core.
    Per task, since Ray reuses a worker process for tasks of other sizes."""
    import ray

    from .._cores import usable_cores
    from ..features import regions

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0)
    regions.OVERLAP = cpus >= 2 and usable_cores() > 1


def _on_this_actor(settings: Settings) -> Settings:
    """``settings`` with ``cuda:N`` read as this worker's GPU (Ray shows a worker only its own)."""
    device = settings.extractor_options.get("device")
    if isinstance(device, str) and device.startswith("cuda:"):
        import ray

        if ray.get_gpu_ids():
            return replace(settings, extractor_options={**settings.extractor_options, "device": "cuda"})
    return settings


# Per worker process, the last run's Stages: Ray reuses a task's worker process for the next
# tasks (and runs), so an extractor is built once per process, as an actor builds its own once.
_STAGES: dict[tuple[bytes, bool], Stages] = {}


class _NoExtractor:
    """Stands in for the extractor in the writing tasks, which only encode and write (wrapped
    in superpixels as the settings say, so that their segmenter knows its nodes are a graph)."""

    name, patch_size = "none", 1  # never recorded: provenance reads the nodes themselves

    def __call__(self, image: Any) -> Any:  # pragma: no cover - never called
        raise RuntimeError("the writing stage computes no features")


def _cached_stages(settings: bytes, extractor: bool) -> Stages:
    """This process's Stages of ``settings``, pickled ``(Settings, segmenter or None)`` (with an
    extractor, or for writing only)."""
    stages = _STAGES.get((settings, True))  # a full one writes as well
    if stages is None and not extractor:
        stages = _STAGES.get((settings, False))
    if stages is None:
        _STAGES.clear()
        loaded, given = _load(settings)
        if given is not None:  # a segmenter given as it is: the same for both
            stages = Stages(loaded, segmenter=given)
        elif extractor:
            stages = Stages(_on_this_actor(loaded))
        else:
            stages = Stages(loaded, extractor=_NoExtractor())
        _STAGES[settings, extractor] = stages
    return stages


def _write_batch(batch: dict[str, np.ndarray], settings: bytes, collect: bool) -> dict[str, np.ndarray]:
    """CPU task: records and files."""
    states = [_load(blob) for blob in batch["state"]]
    reports = _write_states(_cached_stages(settings, extractor=False), states, collect)
    return _reports_batch(batch, reports)


def _process_batch(batch: dict[str, np.ndarray], settings: bytes, collect: bool) -> dict[str, np.ndarray]:
    """CPU task: every stage of a batch (``compute="tasks"``), the images never leaving the task."""
    states = [_load(blob) for blob in batch["state"]]
    _keep_to_assigned_cpus()
    stages = _cached_stages(settings, extractor=True)
    _decode_states(states, stages.settings.max_pixels)
    _segment_states(stages, states)
    return _reports_batch(batch, _write_states(stages, states, collect))


def _states_batch(batch: dict[str, np.ndarray], states: list[_State]) -> dict[str, np.ndarray]:
    return {"i": np.asarray(batch["i"]), "state": _object_array([_dump(s) for s in states])}


def _reports_batch(batch: dict[str, np.ndarray], reports: list[Report]) -> dict[str, np.ndarray]:
    return {"i": np.asarray(batch["i"]), "report": _object_array([_dump(r) for r in reports])}


def _object_array(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


# -- the engine ----------------------------------------------------------------------------


class RayEngine:
    """Runs jobs as a Ray Data pipeline on a local Ray or on a Ray cluster.

    Parameters
    ----------
    address : str, optional
        The cluster to join (``ray.init(address=...)``: ``"10.0.0.1:6379"``, ``"auto"``,
        ``"ray://..."``), left when the run ends.  Without it a local Ray is started on this
        machine's cores (no dashboard) and shut down when the run ends.  Either way a Ray
        this process has already started or joined is used as it is, and left up.
    batch_size : int
        Jobs per block: one task (``"tasks"``), or one decoding task, one actor call
        (features, one UniAP call) and one writing task (``"actors"``).
    compute : {"auto", "tasks", "actors"}
        Where features and UniAP run.  ``"actors"``: an actor pool that builds its extractor
        once per actor, between decoding and writing tasks (one GPU per actor).
        ``"tasks"``: every stage of a block in one task on Ray's pooled worker processes,
        which build the extractor once per process and keep it across tasks and runs; the
        images never travel through the object store.  ``"auto"`` (default): actors when
        the extractor runs on an accelerator, else tasks (an actor pool costs every run a
        few seconds to start, and on CPUs buys nothing: ``docs/scale.md``).
    num_gpus : float, optional
        GPUs per actor; default 1 when the segmenter runs on CUDA
        (``stages.segmenter.on_device``), else 0.
    num_actors : int, optional
        Actors computing features (``"actors"``); default one per GPU of the cluster
        (``num_gpus`` each), on the CPU one per core of the cluster; never more than there
        are blocks.
    actor_cpus, task_cpus : float, optional
        Logical CPUs of an actor and of a task.  Defaults: with ``"tasks"`` 1 per task (one
        block per core at a time); with ``"actors"`` 1 and 1 with GPUs, on the CPU 0.5 and
        0.25, so that one actor per core leaves Ray Data half of the logical CPUs to schedule
        decoding and writing (an actor holding more starves them: ``docs/scale.md``), while
        the operating system shares the physical cores.
    object_store_memory : int, optional
        Bytes of Ray's object store the run's images in flight may use (Ray Data's
        ``resource_limits``, beyond which it holds back the stages that produce them).  Default:
        room for three batches per actor, from the first image's size (about 16 bytes a pixel
        between stages), at least 256 MiB, at most what Ray Data takes by default (half the
        object store); so memory stays flat however many images a run has.
    max_retries : int
        Retries of a task whose worker died, and of an actor task whose actor died (actors
        themselves are always restarted).
    verbose : bool
        Ray's own logs and Ray Data's progress bars (default: quiet; ``uniap-cli`` has its
        own progress bar).
    init_options : dict, optional
        More keyword arguments of ``ray.init`` (``runtime_env``, ``object_store_memory``, ...).

    Raises
    ------
    ImportError
        Ray Data is not installed (the message says ``pip install 'uniap[ray]'``).
    """

    def __init__(self, address: str | None = None, batch_size: int = 4, compute: str = "auto",
                 num_gpus: float | None = None,
                 num_actors: int | None = None, actor_cpus: float | None = None,
                 task_cpus: float | None = None, object_store_memory: int | None = None,
                 max_retries: int = 3, verbose: bool = False, init_options: dict[str, Any] | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if compute not in COMPUTE:
            raise ValueError(f"compute must be one of {', '.join(COMPUTE)}, got {compute!r}")
        if num_actors is not None and num_actors < 1:
            raise ValueError(f"num_actors must be >= 1, got {num_actors}")
        if num_gpus is not None and num_gpus < 0:
            raise ValueError(f"num_gpus must be >= 0, got {num_gpus}")
        import_ray()  # fail early, before any work, with the install hint
        self.address = address
        self.batch_size = int(batch_size)
        self.compute = compute
        self.num_gpus = num_gpus
        self.num_actors = num_actors
        self.actor_cpus = actor_cpus
        self.task_cpus = task_cpus
        self.object_store_memory = object_store_memory
        self.max_retries = int(max_retries)
        self.verbose = verbose
        self.init_options = dict(init_options or {})
        self.last_dataset: Any = None  # the last run's Dataset (``.stats()``, for benchmarks)

    def run(self, jobs: Sequence[Job], stages: Stages, collect: bool = False) -> Iterator[Report]:
        """Reports of every job, in the order they finish: one each, failed ones included."""
        jobs = list(jobs)
        if not jobs:
            return
        ray = import_ray()
        data_logger = logging.getLogger("ray.data")
        level = data_logger.level
        if not self.verbose:
            data_logger.setLevel(logging.ERROR)  # "progress bars disabled", execution plans
        started = self._connect(ray)
        try:
            dataset = self.last_dataset = self.dataset(jobs, stages, collect)
            seen: set[int] = set()
            for row in dataset.iter_rows():
                i = int(row["i"])
                if i in seen:  # a block retried after its first try got through
                    continue
                seen.add(i)
                yield _load(row["report"])
            for i, job in enumerate(jobs):
                if i not in seen:  # its block failed on every retry (its worker kept dying)
                    report = Report(job.item.key, job.item.describe(), job.image_id)
                    _fail(report, RuntimeError(f"its Ray task failed {self.max_retries + 1} times "
                                               "(its worker died, or the task raised: see Ray's logs)"))
                    yield report
        finally:
            data_logger.setLevel(level)
            if started:
                ray.shutdown()

    def dataset(self, jobs: Sequence[Job], stages: Stages, collect: bool = False) -> Any:
        """The pipeline as a lazy :class:`ray.data.Dataset` of ``{"i", "report"}`` rows.

        Needs a connected Ray (:meth:`run` connects); ``report`` is a pickled
        :class:`~uniap.pipeline.engine.Report`.
        """
        ray = import_ray()
        jobs = list(jobs)
        settings = stages.settings
        on_device = stages.segmenter.on_device
        gpus = float(self.num_gpus) if self.num_gpus is not None else (1.0 if on_device else 0.0)
        compute = self.compute if self.compute != "auto" else ("actors" if on_device or gpus else "tasks")
        actor_cpus = self.actor_cpus if self.actor_cpus is not None else (1.0 if gpus else 0.5)
        task_cpus = self.task_cpus if self.task_cpus is not None else \
            (1.0 if gpus or compute == "tasks" else 0.25)
        if compute == "tasks":
            actor_cpus = task_cpus  # the torch threads of a task
        blocks = max(1, -(-len(jobs) // self.batch_size))
        resources = ray.cluster_resources()
        if compute == "tasks":
            # A task costs Ray Data tens of milliseconds however small: a block holds several
            # batches (the function is still called per batch), enough blocks to keep every
            # task slot busy to the end, never so many jobs that a lost worker costs much.
            slots = max(1, int(resources.get("CPU", 1) // task_cpus))
            blocks = max(1, -(-len(jobs) // jobs_per_block(len(jobs), self.batch_size, slots)))
        actors = self.num_actors
        if actors is None:
            actors = int(resources.get("GPU", 0) // gpus) if gpus else int(resources.get("CPU", 1))
        actors = max(1, min(actors, blocks))
        if settings.threads is None and settings.features != "default" and not on_device:
            settings = replace(settings, threads=max(1, int(actor_cpus)))  # torch threads of an actor

        rows = [{"i": i, "state": _dump(_State(job, Report(job.item.key, job.item.describe(), job.image_id)))}
                for i, job in enumerate(jobs)]
        dataset = ray.data.from_items(rows, override_num_blocks=blocks)
        context = dataset.context  # this dataset's own copy: the caller's stays as it was
        context.enable_progress_bars = self.verbose
        context.print_on_execution_start = self.verbose
        context.enable_auto_log_stats = False
        context.max_errored_blocks = -1  # a block lost for good: its images are reported failed
        context.execution_options.preserve_order = False
        budget = self.object_store_memory or _object_store_budget(jobs[0], actors * 3 * self.batch_size)
        limits = context.execution_options.resource_limits
        context.execution_options.resource_limits = ray.data.ExecutionResources(
            cpu=limits.cpu, gpu=limits.gpu, object_store_memory=budget, memory=getattr(limits, "memory", None))
        retries = {"max_retries": self.max_retries}
        restarts = {"max_restarts": -1, "max_task_retries": self.max_retries}
        batches = {"batch_size": self.batch_size, "batch_format": "numpy"}
        written = {"settings": _dump((settings, stages.given)), "collect": collect}
        with warnings.catch_warnings():
            # Ray Data 2.60 deprecates remote arguments beyond its named ones (to be removed in
            # 2.64): while **ray_remote_args exists the retries are given, else Ray's defaults
            # apply (tasks retried 3 times, actors restarted with their tasks retried).
            warnings.filterwarnings("ignore", message=r"`ray_remote_args` is deprecated")
            if compute == "tasks":
                return dataset.map_batches(_process_batch, fn_kwargs=written, num_cpus=task_cpus, num_gpus=gpus,
                                           **batches, **_if_taken(dataset.map_batches, retries))
            dataset = dataset.map_batches(_decode_batch, fn_kwargs={"max_pixels": settings.max_pixels},
                                          num_cpus=task_cpus, **batches,
                                          **_if_taken(dataset.map_batches, retries))
            dataset = dataset.map_batches(_Segment, fn_constructor_args=(settings, stages.given), num_cpus=actor_cpus,
                                          num_gpus=gpus, compute=ray.data.ActorPoolStrategy(size=actors),
                                          **batches, **_if_taken(dataset.map_batches, restarts))
            return dataset.map_batches(_write_batch, fn_kwargs=written,
                                       num_cpus=task_cpus, **batches, **_if_taken(dataset.map_batches, retries))

    def _connect(self, ray: Any) -> bool:
        """Join or start Ray; True when this call started it (and so must shut it down)."""
        if ray.is_initialized():
            return False
        options: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": self.verbose}
        if not self.verbose:
            options["logging_level"] = logging.ERROR
        if self.address is None:
            options.update(num_cpus=os.cpu_count() or 1, include_dashboard=False,
                           # Ray nices its workers (15) to keep its daemons responsive; uniap's
                           # workers keep the driver's priority, as the local engine's do, or
                           # any other job on the machine starves them.
                           _system_config={"worker_niceness": 0})
        else:
            options["address"] = self.address
        options.update(self.init_options)
        ray.init(**options)
        return True


MAX_JOBS_PER_BLOCK = 64  # ``"tasks"``: at most this many images in one task
BLOCKS_PER_SLOT = 4  # ``"tasks"``: at least this many blocks per task slot, when there are jobs enough

BYTES_PER_PIXEL = 16  # between stages: the decoded image (3), features and the hierarchy (~10 at BSDS size)
MIN_BUDGET = 256 << 20


def jobs_per_block(jobs: int, batch_size: int, slots: int) -> int:
    """Jobs in a block of ``"tasks"``: whole batches, at least ``BLOCKS_PER_SLOT`` blocks per slot.

    A block is never smaller than a batch, nor larger than ``MAX_JOBS_PER_BLOCK`` (unless
    the batch is), so a lost worker costs little work and progress stays smooth.
    """
    per_block = min(MAX_JOBS_PER_BLOCK, -(-jobs // (BLOCKS_PER_SLOT * max(1, slots))))
    return max(batch_size, per_block // batch_size * batch_size)


def _object_store_budget(job: Job, images: int) -> int:
    """Object store bytes for ``images`` images the size of ``job``'s (4 MP if unreadable here)."""
    pixels = 4_000_000
    try:
        import io

        from PIL import Image

        with Image.open(io.BytesIO(job.item.read_bytes())) as image:  # the header only is parsed
            pixels = image.width * image.height
    except Exception:  # the driver may not see the data (a cluster's head node): a generous guess
        pass
    return max(MIN_BUDGET, images * pixels * BYTES_PER_PIXEL)


def _if_taken(method: Any, args: dict[str, Any]) -> dict[str, Any]:
    """``args`` when ``method`` takes extra keyword arguments, else nothing."""
    parameters = inspect.signature(method).parameters.values()
    return args if any(p.kind is p.VAR_KEYWORD for p in parameters) else {}
