"""The Ray Data engine: the local engine's stages composed as one streaming Ray Data pipeline.

What runs where (``docs/scale.md``)::

    jobs ----> decode -------> features + UniAP -------------> records + files ----> reports
    from_items  CPU tasks       actor pool: Stages built once   CPU tasks: every      iter_rows
    (driver)    (map_batches)   per actor, one GPU each on CUDA  sink of the job       (driver)
                                (map_batches, ActorPoolStrategy) (map_batches)

* The jobs become a Dataset of one block per ``batch_size`` jobs (:func:`ray.data.from_items`).
* Decoding runs in CPU tasks, one block each (:meth:`ray.data.Dataset.map_batches` with a
  function).
* Features and UniAP run in an actor pool (``map_batches`` with a callable class): each actor
  builds its :class:`~uniap.pipeline.stages.Stages` (its extractor) once, computes the
  features of a batch (ViT: one batch per working shape) and pools the whole batch in one
  :func:`uniap.segment` call.  With a CUDA extractor each actor holds one GPU
  (``num_gpus``); on the CPU the actors and the tasks share the cores.
* Records and files are made in CPU tasks, by the local engine's own function
  (:func:`uniap.pipeline.engine.encode_and_write`), so both engines write the same bytes;
  COCO and Parquet records travel back in the reports and the driver writes those files.
* Only :class:`~uniap.pipeline.engine.Report` objects come back to the driver, streamed
  (:meth:`~ray.data.Dataset.iter_rows`) as images finish: the driver never holds images, and
  Ray Data's streaming executor bounds what is in flight (backpressure on the object store).

Between stages a row is ``{"i": job index, "state": bytes}``, the stage's state (job, report,
decoded uint8 image, :class:`~uniap.features.FeatureGrid`, :meth:`Hierarchy.numpy
<uniap.Hierarchy.numpy>`) pickled, so nothing depends on how Arrow would convert the arrays.

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

from .engine import Report, _fail, batched_features, encode_and_write, pool_features
from .plan import Job
from .sources import decode
from .stages import Settings, Stages, timed

__all__ = ["RayEngine"]

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
    grid: Any = None
    hierarchy: Any = None


def _dump(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _load(blob: Any) -> Any:
    return pickle.loads(blob)


# -- the stages as Ray Data functions and classes ------------------------------------------


def _decode_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """CPU task: the jobs' images decoded (or their reports failed)."""
    out = []
    for blob in batch["state"]:
        state: _State = _load(blob)
        start = time.perf_counter()
        try:
            state.image = decode(state.job.item)  # what Stages.decode does, without an extractor
            timed(state.report.timings, "decode", start)
        except Exception as err:  # an unreadable file fails alone
            _fail(state.report, err)
        out.append(_dump(state))
    return {"i": np.asarray(batch["i"]), "state": _object_array(out)}


class _Segment:
    """Actor: features and UniAP of a batch, with :class:`Stages` built once per actor."""

    def __init__(self, settings: Settings) -> None:
        self.stages = Stages(_on_this_actor(settings))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        stages = self.stages
        states: list[_State] = [_load(blob) for blob in batch["state"]]
        reports = [s.report for s in states]
        ok: list[tuple[int, Any, Any]] = []  # (index, image, extracted), as in process_chunk
        for i, state in enumerate(states):
            if state.report.status != "ok":
                continue
            if stages.features.batched:
                ok.append((i, state.image, None))
                continue
            start = time.perf_counter()
            try:
                (extracted,) = stages.features([state.image])
            except Exception as err:
                _fail(state.report, err)
                continue
            timed(state.report.timings, "features", start)
            ok.append((i, state.image, extracted))
        if stages.features.batched and ok:
            ok = batched_features(stages, ok, reports)
        for (i, _, extracted), h in zip(ok, pool_features(stages, ok, reports)):
            if h is not None:
                states[i].grid, states[i].hierarchy = extracted.grid, h
        for state in states:
            if state.report.status != "ok":
                state.image = state.grid = state.hierarchy = None  # nothing more to carry
        return {"i": np.asarray(batch["i"]), "state": _object_array([_dump(s) for s in states])}


def _on_this_actor(settings: Settings) -> Settings:
    """``settings`` with ``cuda:N`` read as this actor's GPU (Ray shows an actor only its own)."""
    device = settings.extractor_options.get("device")
    if isinstance(device, str) and device.startswith("cuda:"):
        import ray

        if ray.get_gpu_ids():
            return replace(settings, extractor_options={**settings.extractor_options, "device": "cuda"})
    return settings


_WRITERS: dict[bytes, Stages] = {}  # per worker process, the last run's: Stages without an extractor


class _NoExtractor:
    """Stands in for the extractor in the writing tasks, which only encode and write."""

    def __call__(self, image: Any) -> Any:  # pragma: no cover - never called
        raise RuntimeError("the writing stage computes no features")


def _write_batch(batch: dict[str, np.ndarray], settings: bytes, collect: bool) -> dict[str, np.ndarray]:
    """CPU task: records and every file of each job (the local engine's own function)."""
    stages = _WRITERS.get(settings)
    if stages is None:
        _WRITERS.clear()
        stages = _WRITERS[settings] = Stages(_load(settings), extractor=_NoExtractor())
    reports = []
    for blob in batch["state"]:
        state: _State = _load(blob)
        if state.report.status == "ok":
            encode_and_write(stages, state.job, state.report, state.image, state.grid, state.hierarchy, collect)
        reports.append(_dump(state.report))
    return {"i": np.asarray(batch["i"]), "report": _object_array(reports)}


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
        Jobs per block: one decoding task, one actor call (features, one UniAP call), one
        writing task.
    num_gpus : float, optional
        GPUs per actor; default 1 when the extractor runs on CUDA
        (``stages.features.on_device``), else 0.
    num_actors : int, optional
        Actors computing features; default one per GPU of the cluster (``num_gpus`` each),
        on the CPU one per core of the cluster; never more than there are blocks.
    actor_cpus, task_cpus : float, optional
        Logical CPUs of an actor and of a decoding or writing task.  Defaults: 1 and 1 with
        GPUs; on the CPU 0.5 and 0.25, so that one actor per core leaves Ray Data half of the
        logical CPUs to schedule decoding and writing (an actor holding more starves them:
        ``docs/scale.md``), while the operating system shares the physical cores.
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

    def __init__(self, address: str | None = None, batch_size: int = 4, num_gpus: float | None = None,
                 num_actors: int | None = None, actor_cpus: float | None = None,
                 task_cpus: float | None = None, object_store_memory: int | None = None,
                 max_retries: int = 3, verbose: bool = False, init_options: dict[str, Any] | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_actors is not None and num_actors < 1:
            raise ValueError(f"num_actors must be >= 1, got {num_actors}")
        if num_gpus is not None and num_gpus < 0:
            raise ValueError(f"num_gpus must be >= 0, got {num_gpus}")
        import_ray()  # fail early, before any work, with the install hint
        self.address = address
        self.batch_size = int(batch_size)
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
        on_device = stages.features.on_device
        gpus = float(self.num_gpus) if self.num_gpus is not None else (1.0 if on_device else 0.0)
        actor_cpus = self.actor_cpus if self.actor_cpus is not None else (1.0 if gpus else 0.5)
        task_cpus = self.task_cpus if self.task_cpus is not None else (1.0 if gpus else 0.25)
        blocks = max(1, -(-len(jobs) // self.batch_size))
        actors = self.num_actors
        if actors is None:
            resources = ray.cluster_resources()
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
        with warnings.catch_warnings():
            # Ray Data 2.60 deprecates remote arguments beyond its named ones (to be removed in
            # 2.64): while **ray_remote_args exists the retries are given, else Ray's defaults
            # apply (tasks retried 3 times, actors restarted with their tasks retried).
            warnings.filterwarnings("ignore", message=r"`ray_remote_args` is deprecated")
            dataset = dataset.map_batches(_decode_batch, num_cpus=task_cpus, **batches,
                                          **_if_taken(dataset.map_batches, retries))
            dataset = dataset.map_batches(_Segment, fn_constructor_args=(settings,), num_cpus=actor_cpus,
                                          num_gpus=gpus, compute=ray.data.ActorPoolStrategy(size=actors),
                                          **batches, **_if_taken(dataset.map_batches, restarts))
            return dataset.map_batches(_write_batch, fn_kwargs={"settings": _dump(settings), "collect": collect},
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


BYTES_PER_PIXEL = 16  # between stages: the decoded image (3), features and the hierarchy (~10 at BSDS size)
MIN_BUDGET = 256 << 20


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
