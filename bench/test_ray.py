"""``--engine ray`` against ``--engine local --workers 2`` on the 100 BSDS500 val images, same run.

* ``test_throughput[local-workers=2]``: ``uniap-cli FOLDER --out OUT --workers 2`` in this
  process, every image written anew.
* ``test_throughput[local-workers=2-blas1]``: the same with OpenBLAS held to one thread per
  process (``threadpoolctl``), as Ray does for its workers (``OMP_NUM_THREADS=1``): two
  processes of two BLAS threads each on two cores lose time to each other.
* ``test_throughput[ray-warm]``: ``--engine ray`` with a local Ray already started in this
  process (as in a long-lived driver or on a cluster): on the CPU every stage of a block runs
  in one task on Ray's pooled workers (``compute="tasks"``), which outlive the run.
* ``test_throughput[ray-warm-actors]``: the same with features in an actor pool between
  decoding and writing tasks (``RayEngine(compute="actors")``, the layout for GPUs): Ray Data
  starts the actors every run.
* ``test_throughput[ray-cold]``: ``--engine ray`` with no Ray up: the run starts a local Ray
  and shuts it down (what one ``uniap-cli --engine ray`` does).
* ``test_peak_memory[ENGINE-N]``: one run of N = 100 and 1000 images (the 100 images as
  symlinks under 1000 names), sampling every 0.25 s the RSS of this process (the driver) and
  of every process below it (local workers; Ray's raylet, GCS and workers), and their summed
  PSS (shared pages, e.g. Ray's object store, counted once).
* ``test_killed_worker_run``: ``--engine ray`` on the 100 images while the Ray worker running
  a block is killed (SIGKILL) once 20 outputs exist; every output must still equal the local
  engine's.

``extra_info`` holds images/s, the memory peaks and the wall times; ``-s`` prints them::

    python -m pytest bench/test_ray.py --benchmark-only -s
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
import psutil  # noqa: E402 - Ray ships it (ray/thirdparty_files), on its path once ray is imported

from uniap.cli import main  # noqa: E402
from uniap.pipeline import run  # noqa: E402
from uniap.pipeline.ray_engine import RayEngine  # noqa: E402

# Ray Data's own deprecation chatter (its DataContext warns while copying itself) is not ours.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bsds500" / "images" / "val"
WORKER = "MapBatches(_process_batch)"  # the title of a Ray worker running a block (compute="tasks")
RESULTS: dict[str, dict] = {}  # by test id, for the summary at the end


@pytest.fixture(scope="module")
def folder() -> Path:
    if len(sorted(DATA.glob("*.jpg"))) < 100:
        pytest.skip("../shared/data/bsds500 is not beside this checkout")
    return DATA


@pytest.fixture(scope="module")
def reference(folder, tmp_path_factory) -> Path:
    """The local engine's outputs of the 100 images."""
    out = tmp_path_factory.mktemp("reference")
    assert main([str(folder), "--out", str(out), "--quiet", "--overwrite"]) == 0
    return out


@pytest.fixture
def warm_ray():
    """A local Ray started as the engine starts its own (the engine then uses it and leaves it up)."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             _system_config={"worker_niceness": 0})
    yield
    ray.shutdown()


def same_files(a: Path, b: Path) -> bool:
    names = sorted(str(p.relative_to(a)) for p in a.rglob("*.json"))
    return names == sorted(str(p.relative_to(b)) for p in b.rglob("*.json")) and \
        all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def _record(benchmark, key: str, images: int, **extra) -> None:
    per_image = benchmark.stats.stats.median / images
    info = {"images_per_s": 1 / per_image, "s_per_image": per_image, "median_s": benchmark.stats.stats.median,
            **extra}
    benchmark.extra_info.update(info)
    RESULTS[key] = info
    print(f"\n{key}: {benchmark.stats.stats.median:.2f} s median, {1 / per_image:.2f} images/s "
          f"(load average {os.getloadavg()[0]:.1f})")


# -- throughput -------------------------------------------------------------------------------


def _actors_run(argv: list[str]) -> int:
    """What ``uniap-cli FOLDER --out OUT --overwrite --engine ray`` runs, with an actor pool."""
    summary = run([argv[0]], argv[2], overwrite=True, progress=False, engine=RayEngine(compute="actors"))
    return 0 if summary.written == 100 else 1


@pytest.mark.parametrize("engine", ["local-workers=2", "local-workers=2-blas1", "ray-cold", "ray-warm",
                                    "ray-warm-actors"])
def test_throughput(benchmark, request, folder, reference, tmp_path, engine):
    out = tmp_path / "out"
    argv = [str(folder), "--out", str(out), "--overwrite", "--quiet"]
    argv += ["--workers", "2"] if engine.startswith("local") else ["--engine", "ray"]
    command = _actors_run if engine == "ray-warm-actors" else main
    if engine.startswith("ray-warm"):
        request.getfixturevalue("warm_ray")
    elif ray.is_initialized():
        ray.shutdown()
    limits = contextlib.nullcontext()
    if engine.endswith("blas1"):
        threadpoolctl = pytest.importorskip("threadpoolctl")
        limits = threadpoolctl.threadpool_limits(1)  # forked workers inherit it
    with limits:
        assert command(argv) == 0  # warm-up: imports, Numba's kernels, the OS's file cache
        assert same_files(reference, out)
        benchmark.pedantic(command, args=(argv,), rounds=3, iterations=1)
    _record(benchmark, engine, 100)
    if {"local-workers=2", "ray-cold", "ray-warm"} <= RESULTS.keys():
        local, cold, warm = (RESULTS[k]["median_s"] for k in ("local-workers=2", "ray-cold", "ray-warm"))
        print(f"ray-warm / local: {warm / local:.2f}x the time; Ray start-up and shutdown per run: "
              f"{cold - warm:.2f} s")


# -- memory -----------------------------------------------------------------------------------


class Sampler:
    """Peak RSS of this process and of its descendants, and peak summed PSS, every ``every`` s."""

    def __init__(self, every: float = 0.25) -> None:
        self.every = every
        self.driver = self.worker = self.total_pss = 0
        self.processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            self.driver = max(self.driver, me.memory_info().rss)
            pss = me.memory_full_info().pss
            children = me.children(recursive=True)
            self.processes = max(self.processes, len(children))
            for child in children:
                try:
                    self.worker = max(self.worker, child.memory_info().rss)
                    pss += child.memory_full_info().pss
                except psutil.Error:
                    pass
            self.total_pss = max(self.total_pss, pss)
            self._stop.wait(self.every)


@pytest.fixture(scope="module")
def thousand(folder, tmp_path_factory) -> Path:
    """The 100 images under 1000 names (symlinks)."""
    root = tmp_path_factory.mktemp("thousand")
    sources = sorted(folder.glob("*.jpg"))
    for i in range(1000):
        (root / f"{i:04d}.jpg").symlink_to(sources[i % len(sources)])
    return root


@pytest.mark.parametrize("count", [100, 1000])
@pytest.mark.parametrize("engine", ["local-workers=2", "ray"])
def test_peak_memory(benchmark, request, folder, thousand, tmp_path, engine, count):
    inputs = folder if count == 100 else thousand
    argv = [str(inputs), "--out", str(tmp_path / "out"), "--overwrite", "--quiet"]
    argv += ["--workers", "2"] if engine.startswith("local") else ["--engine", "ray"]
    if engine == "ray":
        request.getfixturevalue("warm_ray")
    samplers = []

    def sampled() -> int:
        with Sampler() as sampler:
            status = main(argv)
        samplers.append(sampler)
        return status

    assert benchmark.pedantic(sampled, rounds=1, iterations=1) == 0
    s = samplers[-1]
    mb = 2 ** 20
    _record(benchmark, f"{engine}-{count}", count, driver_peak_rss_mb=s.driver / mb,
            worker_peak_rss_mb=s.worker / mb, total_peak_pss_mb=s.total_pss / mb, processes=s.processes)
    print(f"  peak RSS: driver {s.driver / mb:.0f} MB, largest worker {s.worker / mb:.0f} MB; "
          f"summed PSS {s.total_pss / mb:.0f} MB over {s.processes} processes")
    other = RESULTS.get(f"{engine}-{100 if count == 1000 else 1000}")
    if other is not None:
        small, large = (other, RESULTS[f"{engine}-{count}"])[::1 if count == 1000 else -1]
        ratios = {k: large[k] / small[k] for k in ("driver_peak_rss_mb", "worker_peak_rss_mb", "total_peak_pss_mb")}
        print("  1000 / 100 images: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))


# -- a killed worker ----------------------------------------------------------------------------


def _kill_a_worker_after(out: Path, outputs: int, killed: list[int], stop: threading.Event) -> None:
    while not stop.is_set():
        if sum(1 for _ in out.glob("*.json")) >= outputs:
            for proc in psutil.Process().children(recursive=True):
                try:
                    if any(WORKER in part for part in proc.cmdline()):
                        proc.kill()
                        killed.append(proc.pid)
                        return
                except psutil.Error:
                    pass
        stop.wait(0.05)


def test_killed_worker_run(benchmark, folder, reference, tmp_path, warm_ray):
    out = tmp_path / "out"
    argv = [str(folder), "--out", str(out), "--overwrite", "--quiet", "--engine", "ray"]
    killed: list[int] = []

    def one_run() -> int:
        for path in out.glob("*.json"):
            path.unlink()
        stop = threading.Event()
        killer = threading.Thread(target=_kill_a_worker_after, args=(out, 20, killed, stop), daemon=True)
        killer.start()
        try:
            return main(argv)
        finally:
            stop.set()
            killer.join()

    out.mkdir()
    assert benchmark.pedantic(one_run, rounds=3, iterations=1) == 0
    assert len(killed) == 3, "a worker was not found to kill"
    assert same_files(reference, out)
    _record(benchmark, "ray-killed-worker", 100, killed=len(killed))
