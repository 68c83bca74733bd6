"""The local engine: decode -> segmenter -> sinks over jobs, in this process and in workers.

An engine only schedules.  One *chunk* (``batch_size`` jobs) is the unit of work: decode its
images (in a thread, so the next image decodes while this one is worked on), the segmenter's
batched step on the chunk (:meth:`Segmenter.segment_batch
<uniap.pipeline.segmenter.Segmenter.segment_batch>`: UniAP's features image by image or as
batches of equal working shape (ViT), and UniAP on the whole chunk in one call), then records
and files image by image.  With ``workers=N`` the main process is one worker and N - 1 worker
processes take chunks too, at most two chunks queued each (the last chunks image by image), so
memory stays bounded by a few images whatever the number of inputs; ``workers="auto"`` picks N
per run (:func:`auto_workers`).

Worker processes are forked only while torch is not loaded (a fork after torch started its
threads deadlocks); otherwise they are spawned and build their own extractor.  Each worker
turns SIGTERM into an exception (so its temporary files are removed) and exits when the main
process dies.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

from .._cores import usable_cores as _cores
from .plan import Job
from .segmenter import Pooled
from .sinks import ImageOutput, sink
from .stages import Settings, Stages, timed


@dataclass
class Report:
    """The outcome of one image (small: it travels back from worker processes)."""

    key: str
    source: str
    image_id: int
    status: str = "ok"  # "ok" | "failed"
    error: str | None = None
    masks: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    collected: tuple[dict, list[dict], dict] | None = None  # (image info, records, provenance)


def process_chunk(stages: Stages, jobs: Sequence[Job], collect: bool = False,
                  decoder: ThreadPoolExecutor | None = None,
                  writer: ThreadPoolExecutor | None = None) -> list[Report]:
    """Decode ``jobs``' images, run the segmenter on them, write their outputs; never raises
    for one bad image.

    The images reach the segmenter's batched step (:meth:`Segmenter.segment_batch
    <uniap.pipeline.segmenter.Segmenter.segment_batch>`) as they are decoded (in the
    ``decoder`` thread, so the next image decodes while this one is worked on).  With a
    ``writer`` pool, records and files are made there and this returns once the chunk is
    segmented: the caller waits for :func:`finished` before it uses the reports, and meanwhile
    segments the next chunk (an accelerator is busy, the CPU encodes).
    """
    reports = [Report(job.item.key, job.item.describe(), job.image_id) for job in jobs]
    decoding = [_submit(decoder, stages.decode, job.item) for job in jobs]
    segmented = segment_images(stages, _decoded(decoding, reports), reports)
    writes = [_submit(writer, encode_and_write, stages, jobs[i], reports[i], image, pooled, collect)
              for i, image, pooled in segmented]
    return _Pending(reports, writes) if writer is not None else reports


def _decoded(decoding: Sequence[Future], reports: list[Report]) -> Iterator[tuple[int, Any]]:
    """``(index, image)`` of each job as its image is decoded (a failed one is reported)."""
    for i, future in enumerate(decoding):
        start = time.perf_counter()
        try:
            image = future.result()
        except Exception as err:  # an unreadable file fails alone
            _fail(reports[i], err)
            continue
        timed(reports[i].timings, "decode", start)
        yield i, image


def segment_images(stages: Stages, decoded: Iterable[tuple[int, Any]], reports: list[Report]) -> list[tuple]:
    """The segmenter's batched step on ``decoded`` ``(index, image)`` pairs, taken as they come:
    ``(index, image, pooled)`` of the images it segmented.  The others' reports say why not;
    when the whole batch fails, each image is tried alone, so one bad image fails alone."""
    taken: list[tuple[int, Any]] = []
    decoded = iter(decoded)  # what the segmenter does not take stays there for the retries

    def images() -> Iterator[Any]:
        for i, image in decoded:
            taken.append((i, image))
            yield image

    try:
        results = stages.segmenter.segment_batch(images())
        if len(results) != len(taken):
            raise RuntimeError(f"the segmenter gave {len(results)} results for {len(taken)} images")
    except Exception:  # one by one: the image that fails is the one reported
        rest = list(decoded)  # what the segmenter had not taken yet
        results, pairs = [], taken + rest
        for _, image in pairs:
            try:
                (one,) = stages.segmenter.segment_batch([image])
            except Exception as err:  # noqa: BLE001 - reported with its image
                one = err
            results.append(one)
        taken = pairs
    out = []
    for (i, image), result in zip(taken, results):
        if isinstance(result, Exception):
            _fail(reports[i], result)
            continue
        reports[i].timings.update(result.timings)
        out.append((i, image, result))
    return out


class _Pending(list):
    """Reports whose records and files are still being written (see :func:`process_chunk`)."""

    def __init__(self, reports: list[Report], writes: list[Future]) -> None:
        super().__init__(reports)
        self.writes = writes


def finished(reports: list[Report]) -> list[Report]:
    """``reports`` once every write of their chunk is done."""
    for future in getattr(reports, "writes", ()):
        future.result()
    return list(reports)


def encode_and_write(stages: Stages, job: Job, report: Report, image, pooled: Pooled, collect: bool) -> None:
    """One image's records (the segmenter's) and every output file of its job."""
    start = time.perf_counter()
    try:
        encoded = stages.records(pooled, image)
        start = timed(report.timings, "records", start)
        height, width = image.shape[:2]
        info = {"image_id": job.image_id, "file_name": job.item.key, "height": int(height),
                "width": int(width)}
        out = ImageOutput(info, stages.provenance(pooled), image, pooled.hierarchy, encoded,
                          viz_style=stages.settings.viz_style,
                          source=job.item.path if job.item.member is None else None)
        for kind, path in job.outputs.items():
            sink(kind)(path, out)
        timed(report.timings, "writing", start)
        report.masks = len(encoded.records)
        if collect:
            records = encoded.records
            if getattr(stages.settings, "polygons", False):  # here, in the worker, not in the main process
                from ..formats.polygons import polygon_record

                records = [polygon_record(rec) for rec in records]
            report.collected = (info, records, out.uniap)
    except Exception as err:
        _fail(report, err)


def _fail(report: Report, err: BaseException) -> None:
    report.status = "failed"
    report.error = f"{type(err).__name__}: {err}"


_SETTLED = {"depth": 0}


@contextmanager
def _settled_heap() -> Iterator[None]:
    """The objects alive when a run starts (modules, the extractor, compiled kernels: about
    100k) are kept out of the garbage collector's full collections for the run (``gc.freeze``).

    Each image's records are a few thousand dicts and lists that live until they are written,
    so some reach the oldest generation, and every few dozen images a full collection scanned
    every object of the process: 40-80 ms, 2-3 ms an image.  Frozen, those scans skip what
    was there before the run; afterwards the objects are collectable again as usual.  A
    program that froze its own objects already (a server before it forks) is left as it is.
    """
    mine = _SETTLED["depth"] == 0 and gc.get_freeze_count() == 0
    if mine:
        gc.freeze()
    _SETTLED["depth"] += 1
    try:
        yield
    finally:
        _SETTLED["depth"] -= 1
        if mine:
            gc.unfreeze()


def _submit(pool: ThreadPoolExecutor | None, fn: Callable, *args: Any) -> Future:
    if pool is not None:
        return pool.submit(fn, *args)
    future: Future = Future()
    try:
        future.set_result(fn(*args))
    except Exception as err:
        future.set_exception(err)
    return future


# -- worker processes ----------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


_DEFERRED: dict[str, Any] = {"depth": 0, "signals": set()}


def deferred_signal(signum: int) -> bool:
    """For the main process's signal handler: True, and the signal kept for later, while this
    process works on a chunk of its own (:func:`_signals_deferred`).

    A handler that raises there may raise inside C code calling back into Python (llvmlite
    compiling Numba's kernels on a cold cache, a garbage-collection callback), where Python
    reports the exception as "ignored" and carries on, or leaves the compiler's state broken
    (a segmentation fault on the way out).  Deferred, the signal is sent again once the chunk
    is done, and the handler raises between chunks.
    """
    if _DEFERRED["depth"]:
        _DEFERRED["signals"].add(signum)
        return True
    return False


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold the main process's deferrable signals (:func:`deferred_signal`) for the block."""
    _DEFERRED["depth"] += 1
    try:
        yield
    finally:
        _DEFERRED["depth"] -= 1
        if not _DEFERRED["depth"] and _DEFERRED["signals"]:
            held = sorted(_DEFERRED["signals"])
            _DEFERRED["signals"].clear()
            for signum in held:
                os.kill(os.getpid(), signum)  # its handler now raises, here, between chunks


EXIT_GRACE_S = 3.0  # a worker told to stop exits at the latest this long after SIGTERM


def _raise_on_sigterm() -> None:
    """In a worker: SIGTERM unwinds (``finally`` blocks remove temporaries), then exits.

    A signal that lands while C code calls back into Python (llvmlite compiling Numba's
    kernels on a cold cache) raises inside that callback, where Python reports the
    exception as "ignored" and carries on.  So the worker's ``SystemExit`` from the handler is
    never reported as such, and a timer ends the process if unwinding did not; the next run
    removes any temporary it left.
    """

    def handler(signum, frame):  # noqa: ARG001 - signal handler signature
        deadline = threading.Timer(EXIT_GRACE_S, os._exit, args=(128 + signum,))
        deadline.daemon = True  # a worker that unwinds in time exits without waiting for it
        deadline.start()
        raise SystemExit(128 + signum)

    def quiet_exit(unraisable: Any, report: Callable[[Any], None] = sys.unraisablehook) -> None:
        if not isinstance(unraisable.exc_value, SystemExit):
            report(unraisable)

    sys.unraisablehook = quiet_exit
    signal.signal(signal.SIGTERM, handler)


def _watch_parent(parent: int) -> None:
    """Exit when the main process is gone (a killed parent must not leave workers behind)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)  # through the handler: temporaries are removed
    time.sleep(5)
    os._exit(1)


def _init_worker(settings: Settings, collect: bool, parent: int, segmenter: Any = None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    if hasattr(signal, "pthread_sigmask"):  # blocked by _submit while this process started
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _raise_on_sigterm()
    _limit_threads(settings.threads)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    _WORKER.update(stages=Stages(settings, segmenter=segmenter), collect=collect,
                   decoder=ThreadPoolExecutor(1, thread_name_prefix="uniap-decode"))
    if not gc.get_freeze_count():
        gc.freeze()  # as _settled_heap does for a run here, for the worker's life


def _submit_to_pool(pool: Any, jobs: Sequence[Job]) -> Future:
    """``pool.submit(_worker_chunk, jobs)`` with SIGINT blocked meanwhile.

    The pool starts its worker processes inside ``submit``; a Ctrl-C that reached a new worker
    before :func:`_init_worker` ignores it would kill that worker with a traceback.  Blocked
    here, the signal waits in the worker until it is ignored there, and in this process until
    ``submit`` returns, where it interrupts the run as usual.
    """
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        return pool.submit(_worker_chunk, jobs)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        return pool.submit(_worker_chunk, jobs)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _worker_chunk(jobs: Sequence[Job]) -> list[Report]:
    return process_chunk(_WORKER["stages"], jobs, _WORKER["collect"], _WORKER["decoder"])


#: Memory kept free per worker process that ``workers="auto"`` starts: an 8000 x 8000 image
#: peaks at about 1.7 GB with the default features (docs/benchmarks.md).
AUTO_WORKER_MEMORY = 2 << 30


def available_memory() -> int | None:
    """Bytes of memory the system can give without swapping (``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # other POSIX systems: the free pages (no page cache counted: an underestimate)
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def auto_workers(chunks: int, on_device: bool) -> int:
    """The processes ``workers="auto"`` runs ``chunks`` chunks with.

    One per usable core, at most one per chunk and one per :data:`AUTO_WORKER_MEMORY` of
    available memory, when the features are computed on this CPU and worker processes can be
    forked: on Linux (macOS makes spawning the default because frameworks there are not safe
    across a fork), with no torch loaded (a spawned worker imports everything again, and a
    torch extractor already uses every core through its threads).  Otherwise 1: an
    accelerator's features leave the CPU to this process's threads.  Processes rather than
    threads because the records and files are Python work: in a thread beside the features
    both wait for the interpreter lock (docs/benchmarks.md).
    """
    import multiprocessing as mp

    if on_device or chunks < 2 or "torch" in sys.modules or not sys.platform.startswith("linux") \
            or "fork" not in mp.get_all_start_methods():
        return 1
    memory = available_memory()
    by_memory = memory // AUTO_WORKER_MEMORY if memory is not None else chunks
    return max(1, min(_cores(), chunks, by_memory))


class LocalEngine:
    """Runs jobs on this machine: the main process plus ``workers - 1`` worker processes.

    Parameters
    ----------
    workers : int or "auto"
        Processes working on different chunks (the main process included); ``"auto"``: one per
        usable core where that pays (:func:`auto_workers`).
    batch_size : int
        Images per chunk: pooled in one call, and one ViT batch per working shape.
    overlap : bool, optional
        Make one chunk's records and files in a thread while the next chunk's features are
        computed.  Default: when the features come from an accelerator (the CPU would be idle
        otherwise), or when this process is the only worker and has more than one core (the
        features use one; with more workers, the workers are the better use of the cores).
        The first chunk is written in turn either way (its lazy imports in one thread).
    """

    def __init__(self, workers: int | str = 1, batch_size: int = 4, overlap: bool | None = None) -> None:
        if workers != "auto" and (isinstance(workers, str) or workers < 1) or batch_size < 1:
            raise ValueError(f"workers must be >= 1 or 'auto' and batch_size >= 1, got {workers!r} and {batch_size}")
        self.workers: int | str = workers if workers == "auto" else int(workers)
        self.batch_size = int(batch_size)
        self.overlap = overlap

    def run(self, jobs: Sequence[Job], stages: Stages, collect: bool = False) -> Iterator[Report]:
        """Reports of every job, in the order they finish."""
        chunks = deque(jobs[i:i + self.batch_size] for i in range(0, len(jobs), self.batch_size))
        workers = auto_workers(len(chunks), stages.segmenter.on_device) if self.workers == "auto" else self.workers
        helpers = min(workers - 1, max(0, len(chunks) - 1))
        if helpers == 0:
            yield from self._run_here(chunks, stages, collect)
            return
        yield from self._run_with_workers(chunks, stages, collect, helpers, workers)

    def _run_here(self, chunks: deque, stages: Stages, collect: bool) -> Iterator[Report]:
        overlap = self.overlap
        if overlap is None:
            overlap = stages.segmenter.on_device or _cores() > 1
        with _settled_heap(), ThreadPoolExecutor(1, thread_name_prefix="uniap-decode") as decoder, \
                ThreadPoolExecutor(1, thread_name_prefix="uniap-write") as writer:
            previous: list[Report] = []
            first = True
            while chunks:
                # the first chunk in turn: the records' and files' lazy imports are then done in
                # this thread (two threads importing SciPy's submodules at once can fail)
                with _signals_deferred():
                    reports = process_chunk(stages, chunks.popleft(), collect, decoder,
                                            writer if overlap and not first else None)
                first = False
                yield from finished(previous)
                previous = reports
            yield from finished(previous)

    def _run_with_workers(self, chunks: deque, stages: Stages, collect: bool, helpers: int,
                          workers: int) -> Iterator[Report]:
        """Chunks shared by this process and ``helpers`` worker processes.

        A worker that dies (the out-of-memory killer, a crash in native code, ``kill -9``) breaks
        the pool: the chunks it held, and those queued with it, are run again image by image,
        each alone in a fresh pool, so that the image that kills a worker again is reported as
        failed and every other image is written.
        """
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        method = "fork" if "torch" not in sys.modules and "fork" in mp.get_all_start_methods() else "spawn"
        cores = os.cpu_count() or 1
        settings = stages.settings
        if settings.threads is None:  # the processes share the cores: no thread oversubscribes
            from dataclasses import replace

            settings = replace(settings, threads=max(1, cores // workers))

        def new_pool(size: int) -> ProcessPoolExecutor:
            return ProcessPoolExecutor(size, mp_context=mp.get_context(method), initializer=_init_worker,
                                       initargs=(settings, collect, os.getpid(), stages.given))

        pool = new_pool(helpers)
        pending: deque[tuple[Future, Sequence[Job]]] = deque()
        suspects: deque[Job] = deque()  # images of a broken pool's chunks: each runs alone
        restore_threads = _limit_threads(settings.threads)

        def collect_broken() -> Iterator[Report]:
            """After a break: reports of the chunks that finished, the others' images to suspects."""
            while pending:
                future, chunk = pending.popleft()
                try:
                    yield from future.result()
                except BrokenProcessPool:
                    suspects.extend(chunk)

        try:
            with ThreadPoolExecutor(1, thread_name_prefix="uniap-decode") as decoder:
                while chunks or pending or suspects:
                    if suspects and not pending:  # one image in one fresh worker at a time
                        job = suspects.popleft()
                        try:
                            reports = _submit_to_pool(pool, [job]).result()
                        except BrokenProcessPool:
                            _shutdown(pool)
                            pool = new_pool(helpers)
                            yield _died(job)
                            continue
                        yield from reports
                        continue
                    broken = False
                    _split_the_tail(chunks, helpers)
                    # up to two chunks queued per worker, never the last one: this process takes
                    # a chunk each turn too (two chunks for one helper: one each, not both its)
                    while not suspects and len(chunks) > 1 and len(pending) < 2 * helpers:
                        chunk = chunks.popleft()
                        try:
                            pending.append((_submit_to_pool(pool, chunk), chunk))
                        except BrokenProcessPool:  # a worker died since the last submit
                            chunks.appendleft(chunk)
                            broken = True
                            break
                    while not broken and pending and (pending[0][0].done() or not chunks):
                        future, chunk = pending.popleft()
                        try:
                            yield from future.result()
                        except BrokenProcessPool:  # a worker died (killed, out of memory)
                            suspects.extend(chunk)
                            broken = True
                    if broken:
                        yield from collect_broken()
                        _shutdown(pool)
                        pool = new_pool(helpers)
                        continue
                    if chunks and not suspects:
                        with _signals_deferred():
                            reports = process_chunk(stages, chunks.popleft(), collect, decoder)
                        yield from reports
        except BaseException:
            workers = list((getattr(pool, "_processes", None) or {}).values())
            for process in workers:
                process.terminate()  # SIGTERM: the workers remove their temporaries
            for process in workers:
                process.join(timeout=10)  # before this process exits and says it is done
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            restore_threads()
        pool.shutdown(wait=True)


def _split_the_tail(chunks: deque, helpers: int) -> None:
    """The last chunks, image by image (in place), once no more remain than the workers hold.

    Each worker has up to two chunks queued so that it never waits for this process to hand
    it the next one; at the end of a run that queue would leave this process idle while a
    worker still works through two whole chunks (a third of the time of a run of six chunks
    on two processes).  Single images even the finish out; the outputs do not depend on how
    images are grouped."""
    if len(chunks) <= 2 * helpers + 1 and any(len(chunk) > 1 for chunk in chunks):
        singles = [[job] for chunk in chunks for job in chunk]
        chunks.clear()
        chunks.extend(singles)


DIED = ("the worker process died while processing this image (killed, e.g. by the out-of-memory "
        "killer, or crashed); the other images went on")


def _died(job: Job) -> Report:
    """The report of an image whose worker process died, twice: once among others, once alone."""
    return Report(job.item.key, job.item.describe(), job.image_id, status="failed", error=DIED)


def _shutdown(pool: Any) -> None:
    """Let a broken pool go (its processes are gone or being ended)."""
    try:
        pool.shutdown(wait=True, cancel_futures=True)
    except Exception:  # noqa: BLE001 - a broken pool may fail to shut down cleanly; it is dropped
        pass


def _limit_threads(threads: int | None) -> Callable[[], None]:
    """Give this process the thread counts of a worker (BLAS, OpenMP, torch, and whether the
    superpixels run in a thread beside the features); returns the undo.

    Two processes running two OpenBLAS threads each on two cores run at half speed.
    """
    if not threads:
        return lambda: None
    from threadpoolctl import threadpool_limits

    from ..features import regions

    limits = threadpool_limits(limits=threads)
    overlap_before = regions.OVERLAP
    regions.OVERLAP = overlap_before and threads > 1
    torch_before = None
    if "torch" in sys.modules:
        import torch

        torch_before = torch.get_num_threads()
        torch.set_num_threads(threads)

    def undo() -> None:
        limits.restore_original_limits()
        regions.OVERLAP = overlap_before
        if torch_before is not None:
            sys.modules["torch"].set_num_threads(torch_before)

    return undo
