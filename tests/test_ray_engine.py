"""``--engine ray`` (uniap.pipeline.ray_engine): the local engine's files, on a local Ray and a cluster.

One local Ray (2 CPUs, loopback) serves the module and is shut down at its end; the
simulated cluster (``ray start`` twice, loopback) is its own, and is torn down by process id.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
import psutil  # noqa: E402 - Ray ships it (ray/thirdparty_files), on its path once ray is imported

from uniap.cli import main  # noqa: E402
from uniap.pipeline import Settings, Stages, expand_inputs, run  # noqa: E402
from uniap.pipeline.plan import plan_jobs  # noqa: E402
from uniap.pipeline.ray_engine import RayEngine  # noqa: E402
from cli_helpers import save_image as _save  # noqa: E402

# Ray Data's own deprecation chatter (its DataContext warns while copying itself) is not ours.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")

# in the process title of the workers that compute features: an actor, or a task of every stage
WORKER_TITLE = {"actors": "MapBatches(_Segment)", "tasks": "MapBatches(_process_batch)"}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (the engine uses a Ray already started, and leaves it up)."""
    if ray.is_initialized():  # pragma: no cover - someone else's Ray: not ours to configure
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False, _system_config={"worker_niceness": 0})
    try:
        yield ray
    finally:
        ray.shutdown()




@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Colour, grey and RGBA images of several sizes, JPEG and PNG, in nested folders."""
    import skimage.data as data

    root = tmp_path_factory.mktemp("images")
    _save(root / "a" / "coffee.jpg", data.coffee()[::2, ::2])
    _save(root / "a" / "chelsea.png", data.chelsea()[::2, ::2])
    _save(root / "b" / "coffee.jpg", data.coffee()[::3, ::3])  # same name, other folder
    _save(root / "astronaut.png", data.astronaut()[::4, ::4])
    _save(root / "camera.png", data.camera()[::4, ::4])  # grey
    _save(root / "coins.jpg", data.coins()[::2, ::2])
    _save(root / "rocket.jpg", data.rocket()[::3, ::3])
    _save(root / "logo.png", data.logo()[::4, ::4])  # RGBA
    return root


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same_files(a: Path, b: Path) -> None:
    files_a, files_b = files_under(a), files_under(b)
    assert files_a.keys() == files_b.keys()
    assert [name for name in files_a if files_a[name] != files_b[name]] == []


def _jobs(folder: Path, out: Path, stages: Stages, **options):
    plan = plan_jobs(expand_inputs([str(folder)]), out=str(out), format="sam", viz=None, overwrite=False,
                     settings_signature=stages.signature, single=False, **options)
    out.mkdir(parents=True, exist_ok=True)
    return plan.jobs


# -- same files as the local engine -----------------------------------------------------------


@pytest.mark.parametrize("fmt", ["sam", "png", "coco", "parquet"])
def test_ray_writes_the_local_engines_bytes(local_ray, images, tmp_path, fmt):
    outs = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        target = out / "masks.json" if fmt == "coco" else out
        viz = out.parent / f"{engine}-viz" if fmt == "sam" else None
        if fmt == "coco":
            out.mkdir()
        summary = run([str(images)], str(target), format=fmt, viz=None if viz is None else str(viz),
                      engine=engine, batch_size=3, progress=False)
        assert summary.written == 8 and not summary.failures
        assert set(summary.timings) >= {"decode", "features", "pooling", "records", "writing"}
        outs[engine] = out
    assert_same_files(outs["local"], outs["ray"])
    if fmt == "sam":
        assert_same_files(tmp_path / "local-viz", tmp_path / "ray-viz")
        assert len(files_under(tmp_path / "ray-viz")) == 8
    if fmt == "coco":
        assert len(json.loads((outs["ray"] / "masks.json").read_text())["images"]) == 8
    if fmt == "parquet":
        assert any(name.endswith(".parquet") for name in files_under(outs["ray"]))


@pytest.mark.parametrize("compute", ["tasks", "actors"])
def test_both_ways_of_computing_write_the_local_engines_bytes(local_ray, images, tmp_path, compute):
    """Every stage in one task, or features in an actor pool between tasks: the same files."""
    run([str(images)], str(tmp_path / "local"), viz=str(tmp_path / "local-viz"), progress=False)
    engine = RayEngine(batch_size=2, compute=compute)
    summary = run([str(images)], str(tmp_path / "ray"), viz=str(tmp_path / "ray-viz"), engine=engine,
                  progress=False)
    assert summary.written == 8 and not summary.failures
    operators = engine.last_dataset.stats()
    assert WORKER_TITLE[compute].split("(")[1].rstrip(")") in operators
    assert_same_files(tmp_path / "local", tmp_path / "ray")
    assert_same_files(tmp_path / "local-viz", tmp_path / "ray-viz")


@pytest.mark.parametrize("compute", ["tasks", "actors"])
def test_a_given_segmenter_travels_to_ray_workers(local_ray, images, tmp_path, compute):
    """A peer segmenter (not UniAP) given to the run as it is: Ray's tasks or actors run it and
    write the local engine's bytes (decode -> segmenter -> sinks, whatever the segmenter)."""
    from uniap.evaluation.segmenters import Felzenszwalb

    local = run([str(images)], str(tmp_path / "local"), segmenter=Felzenszwalb(scales=(100, 400)), progress=False)
    engine = RayEngine(batch_size=3, compute=compute)
    ray_run = run([str(images)], str(tmp_path / "ray"), segmenter=Felzenszwalb(scales=(100, 400)), engine=engine,
                  progress=False)
    assert local.written == ray_run.written == 8 and not ray_run.failures
    assert set(ray_run.timings) == {"decode", "segment", "records", "writing"}
    assert_same_files(tmp_path / "local", tmp_path / "ray")
    doc = json.loads((tmp_path / "ray" / "camera.json").read_text())
    assert doc["uniap"]["features"] == "felzenszwalb" and len(doc["uniap"]["thresholds"]) == 2


def test_a_one_cpu_task_keeps_the_superpixels_in_its_own_thread(local_ray):
    """Ray runs as many one-CPU tasks as cores: the superpixels' thread beside the features
    (``regions.OVERLAP``) is for tasks given two CPUs or more, decided per task."""
    import ray

    def overlap() -> tuple[bool, int]:
        from uniap._cores import usable_cores
        from uniap.features import regions
        from uniap.pipeline.ray_engine import _keep_to_assigned_cpus

        regions.OVERLAP = True  # as in a process that found two cores
        _keep_to_assigned_cpus()
        return regions.OVERLAP, usable_cores()

    one, _ = ray.get(ray.remote(num_cpus=1)(overlap).remote())
    two, cores = ray.get(ray.remote(num_cpus=2)(overlap).remote())
    assert one is False
    assert two is (cores > 1)


def test_an_unknown_way_of_computing_is_refused():
    with pytest.raises(ValueError, match="compute must be one of auto, tasks, actors"):
        RayEngine(compute="threads")
    with pytest.raises(TypeError, match="engine must be a name"):
        run(["x.jpg"], "out", engine=object())


def test_tasks_hold_several_batches_but_keep_every_slot_busy():
    """Fewer Ray tasks than batches (a task costs Ray Data tens of ms), at least 4 per slot."""
    from uniap.pipeline.ray_engine import MAX_JOBS_PER_BLOCK, jobs_per_block

    assert jobs_per_block(100, batch_size=4, slots=2) == 12  # 9 blocks of whole batches, 2 slots
    assert jobs_per_block(10, batch_size=4, slots=2) == 4  # never less than a batch
    assert jobs_per_block(10**6, batch_size=4, slots=2) == MAX_JOBS_PER_BLOCK  # a lost task costs little
    assert jobs_per_block(10**6, batch_size=128, slots=2) == 128
    for jobs in range(1, 300, 7):
        for slots in (1, 2, 16):
            per_block = jobs_per_block(jobs, batch_size=4, slots=slots)
            blocks = -(-jobs // per_block)
            assert per_block % 4 == 0 and (blocks >= 4 * slots or per_block == 4)


def test_bsds500_images_give_the_local_engines_bytes(local_ray, shared_data, tmp_path):
    sources = sorted((shared_data / "bsds500" / "images" / "val").glob("*.jpg"))[:16]
    if not sources:
        pytest.skip("no BSDS500 val images in the shared data")
    folder = tmp_path / "in"
    folder.mkdir()
    for path in sources:
        (folder / path.name).symlink_to(path)
    for engine in ("local", "ray"):
        summary = run([str(folder)], str(tmp_path / engine), viz=str(tmp_path / f"{engine}-viz"), engine=engine,
                      progress=False)
        assert summary.written == len(sources) and not summary.failures
    assert_same_files(tmp_path / "local", tmp_path / "ray")
    assert_same_files(tmp_path / "local-viz", tmp_path / "ray-viz")


@pytest.mark.slow
@pytest.mark.parametrize("compute", ["tasks", "actors"])
def test_vit_batches_on_ray(local_ray, images, tmp_path, compute):
    """The batched ViT path (one batch per working shape) in the tasks and in the actor pool."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    weights = tmp_path / "tiny.pt"
    torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0).state_dict(), weights)
    vit = {"features": "vit", "extractor_options": {"model": "vit_tiny_patch16_224", "weights": str(weights)},
           "progress": False}
    folder = [str(images / "a")]  # two images of different working shapes: one block
    assert run(folder, str(tmp_path / "local"), batch_size=4, **vit).written == 2
    assert run(folder, str(tmp_path / "ray"), engine=RayEngine(batch_size=4, compute=compute), **vit).written == 2
    local, ray_files = files_under(tmp_path / "local"), files_under(tmp_path / "ray")
    assert local.keys() == ray_files.keys() and len(local) == 2
    for name in local:
        a, b = json.loads(local[name]), json.loads(ray_files[name])
        assert a["uniap"] == b["uniap"] and b["uniap"]["features"] == "vit:vit_tiny_patch16_224:tokens"
        # a batch may group other images than the local engine's: float sums differ in order only
        assert abs(len(a["annotations"]) - len(b["annotations"])) <= max(2, len(a["annotations"]) // 10)


def test_a_corrupt_image_fails_alone(local_ray, images, tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(images, folder)
    (folder / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (folder / "empty.png").write_bytes(b"")
    summaries = {}
    for engine in ("local", "ray"):
        summaries[engine] = run([str(folder)], str(tmp_path / engine), engine=engine, progress=False)
    for summary in summaries.values():
        assert summary.written == 8
        assert sorted(r.key for r in summary.failures) == ["a/broken.jpg", "empty.png"]
    assert sorted((r.key, r.error) for r in summaries["ray"].failures) == \
        sorted((r.key, r.error) for r in summaries["local"].failures)
    assert_same_files(tmp_path / "local", tmp_path / "ray")  # failures.jsonl included
    assert (tmp_path / "ray" / "failures.jsonl").is_file()


def test_cli_engine_ray(local_ray, images, tmp_path, capsys):
    assert main([str(images), "--out", str(tmp_path / "local"), "--quiet"]) == 0
    assert main([str(images), "--out", str(tmp_path / "ray"), "--engine", "ray", "--batch-size", "2"]) == 0
    assert "8 written" in capsys.readouterr().err
    assert_same_files(tmp_path / "local", tmp_path / "ray")
    # a rerun finds every output done
    assert main([str(images), "--out", str(tmp_path / "ray"), "--engine", "ray"]) == 0
    assert "8 skipped" in capsys.readouterr().err


def test_states_travel_between_stages_unchanged(local_ray, images):
    """Images and the segmenter's results (grids, hierarchies) through Ray's object store, as
    Ray Data rows."""
    from uniap.pipeline.ray_engine import _dump, _load, _object_array
    from uniap.pipeline.segmenter import Pooled

    stages = Stages(Settings())  # superpixel nodes: a RegionGraph travels in place of the grid
    items = expand_inputs([str(images)])[:3]
    decoded = [stages.decode(item) for item in items]
    pooled = stages.segmenter.segment_batch(decoded)
    payload = [(image, p.nodes, p.hierarchy) for image, p in zip(decoded, pooled)]
    dataset = ray.data.from_items([{"i": i, "state": _dump(p)} for i, p in enumerate(payload)])
    dataset = dataset.map_batches(lambda b: {"i": b["i"], "state": _object_array(list(b["state"]))},
                                  batch_format="numpy", batch_size=2)
    rows = sorted(dataset.iter_rows(), key=lambda r: r["i"])
    for row, (image, grid, h) in zip(rows, payload):
        image2, grid2, h2 = _load(row["state"])
        assert image2.dtype == np.uint8 and np.array_equal(image2, image)
        assert grid2.grid_shape == grid.grid_shape and grid2.patch_size == grid.patch_size
        assert np.array_equal(grid2.features, grid.features)
        assert np.array_equal(grid2.regions, grid.regions) and np.array_equal(grid2.edges, grid.edges)
        assert np.array_equal(h2.labels, h.labels) and h2.thresholds == h.thresholds
        assert stages.encode(grid2, h2).records == stages.encode(grid, h).records
        assert stages.records(Pooled(h2, grid2)).records == stages.records(Pooled(h, grid)).records
    assert pickle.loads(pickle.dumps(RayEngine())).batch_size == 4  # the engine itself is plain data


def test_the_writing_stage_knows_its_nodes_from_the_settings(images):
    """``compute="actors"``: the writing tasks build no extractor, yet encode what the actors
    pooled as a superpixel graph or a patch grid, as the settings say (decided once)."""
    from uniap.pipeline.ray_engine import _cached_stages, _dump

    for refine in ("superpixels", "none"):
        full = Stages(Settings(refine=refine))
        image = full.decode(expand_inputs([str(images)])[0])
        (pooled,) = full.segmenter.segment_batch([image])
        writing = _cached_stages(_dump((Settings(refine=refine), None)), extractor=False)
        assert writing.segmenter.graph == full.segmenter.graph == (refine == "superpixels")
        assert writing.records(pooled, image).records == full.records(pooled, image).records
        assert writing.provenance(pooled) == full.provenance(pooled)


def test_no_jobs_starts_nothing():
    assert list(RayEngine(address="127.0.0.1:1").run([], Stages(Settings()))) == []


def test_without_ray_the_cli_says_how_to_install(images, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'uniap\[ray\]'"):
        RayEngine()
    assert main([str(images), "--out", str(tmp_path / "out"), "--engine", "ray", "--quiet"]) == 2
    assert "pip install 'uniap[ray]'" in capsys.readouterr().err


# -- faults -----------------------------------------------------------------------------------


def test_a_lost_block_is_reported_and_a_repeated_one_dropped(local_ray, images, tmp_path):
    """What Ray Data drops after every retry (max_errored_blocks) becomes failed reports."""
    from uniap.pipeline.engine import Report
    from uniap.pipeline.ray_engine import _dump

    stages = Stages(Settings())
    jobs = _jobs(images, tmp_path / "out", stages)

    class Lossy(RayEngine):
        def dataset(self, jobs, stages, collect=False):
            rows = [{"i": i, "report": _dump(Report(job.item.key, job.item.describe(), job.image_id))}
                    for i, job in enumerate(jobs) if i != 2]
            return ray.data.from_items(rows + rows[:1])  # job 2 lost, job 0 twice

    reports = list(Lossy().run(jobs, stages))
    assert sorted(r.key for r in reports) == sorted(job.item.key for job in jobs)
    assert [(r.key, r.status) for r in reports if r.status != "ok"] == [(jobs[2].item.key, "failed")]
    assert "Ray task failed 4 times" in reports[-1].error


def _feature_workers(compute: str) -> list[psutil.Process]:
    """This process's Ray workers computing features now (its local Ray's raylet is its child)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if any(WORKER_TITLE[compute] in part for part in proc.cmdline()):
                found.append(proc)
        except psutil.NoSuchProcess:
            pass
    return found


class _Killer(threading.Thread):
    """Waits for a busy feature worker to exist, then SIGKILLs it (once).

    It polls the process table from the moment the run starts until a worker titled busy
    appears (or ``deadline`` seconds pass), instead of looking only when a report arrives:
    under load every report could come while the workers sat titled idle between tasks.
    """

    def __init__(self, compute: str, deadline: float = 120.0) -> None:
        super().__init__(daemon=True)
        self.compute, self.deadline = compute, deadline
        self.killed: int | None = None
        self.killed_at = float("inf")
        self.stop = threading.Event()

    def run(self) -> None:
        end = time.monotonic() + self.deadline
        while not self.stop.is_set() and time.monotonic() < end:
            for worker in _feature_workers(self.compute):
                try:
                    worker.kill()
                except psutil.NoSuchProcess:  # it ended between the look and the kill
                    continue
                self.killed, self.killed_at = worker.pid, time.monotonic()
                return
            time.sleep(0.002)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds Ray's workers by process title")
@pytest.mark.parametrize("compute", ["tasks", "actors"])
def test_a_killed_worker_is_replaced_and_no_image_is_lost(local_ray, tmp_path, compute):
    """SIGKILL of a worker mid-run: its task is retried (or its actor restarted), once each."""
    import skimage.data

    source = skimage.data.astronaut()
    for i in range(24):
        _save(tmp_path / "in" / f"{i:02d}.png", np.roll(source, 29 * i, axis=1)[::2, ::2])
    assert main([str(tmp_path / "in"), "--out", str(tmp_path / "local"), "--quiet"]) == 0
    stages = Stages(Settings())
    jobs = _jobs(tmp_path / "in", tmp_path / "ray", stages)
    killer = _Killer(compute)
    killer.start()  # before the run: it waits for the first busy worker to exist
    try:
        reports = list(RayEngine(batch_size=2, compute=compute).run(jobs, stages))
        finished = time.monotonic()
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed is not None, f"no worker titled {WORKER_TITLE[compute]} during the run"
    assert killer.killed_at < finished and not _alive(killer.killed)  # killed mid-run, for good
    assert sorted(r.key for r in reports) == sorted(job.item.key for job in jobs)  # each exactly once
    assert [r for r in reports if r.status != "ok"] == []
    assert_same_files(tmp_path / "local", tmp_path / "ray")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# -- a cluster of two nodes on this machine -----------------------------------------------------


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _family(pid: int) -> list[psutil.Process]:
    try:
        top = psutil.Process(pid)
        return [top, *top.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _stop_node(process: subprocess.Popen) -> set[int]:
    """End a ``ray start --block`` and every process below it, by process id; returns their ids."""
    seen: set[int] = set()
    for _ in range(3):  # a raylet may start a worker while its siblings go
        family = [p for p in _family(process.pid) if p.pid not in seen] or \
            [p for pid in seen for p in _family(pid)]
        if not family:
            break
        seen.update(p.pid for p in family)
        for proc in family:
            try:
                proc.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(family, timeout=10)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=10)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL was sent above
        process.kill()
        process.wait()
    return seen


@pytest.mark.slow
def test_cluster_of_two_nodes_writes_the_same_files(images, tmp_path):
    import secrets

    ray_cli = shutil.which("ray") or pytest.skip("no `ray` command on PATH")
    port, *agents = _free_ports(9)
    temp = tempfile.mkdtemp(prefix="uray", dir="/tmp")  # short: Ray's socket paths must fit
    # Ray >= 2.52 authenticates with a token (this test's own, never ~/.ray/auth_token); Ray
    # listens on every interface, the token keeps it to these processes.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_worker_niceness": "0"}
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--block", "--disable-usage-stats"]
    nodes, pids = [], set()
    try:
        nodes.append(subprocess.Popen(
            [ray_cli, "start", "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}",
             f"--ray-client-server-port={agents[0]}", f"--dashboard-agent-listen-port={agents[1]}",
             f"--dashboard-agent-grpc-port={agents[2]}", f"--runtime-env-agent-port={agents[3]}", *common],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True))
        _wait_for_nodes(port, 1, env)
        nodes.append(subprocess.Popen(
            [ray_cli, "start", f"--address=127.0.0.1:{port}", f"--dashboard-agent-listen-port={agents[4]}",
             f"--dashboard-agent-grpc-port={agents[5]}", f"--runtime-env-agent-port={agents[6]}",
             f"--metrics-export-port={agents[7]}", *common],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True))
        _wait_for_nodes(port, 2, env)
        assert main([str(images), "--out", str(tmp_path / "local"), "--quiet"]) == 0
        # a new driver process joins the cluster, as a user's would
        command = [sys.executable, "-m", "uniap", str(images), "--out", str(tmp_path / "ray"), "--quiet",
                   "--engine", "ray", "--ray-address", f"127.0.0.1:{port}", "--batch-size", "2"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert_same_files(tmp_path / "local", tmp_path / "ray")
    finally:
        for node in reversed(nodes):
            pids |= _stop_node(node)
        shutil.rmtree(temp, ignore_errors=True)
    assert pids and [pid for pid in pids if _alive(pid)] == []


def _wait_for_nodes(port: int, count: int, env: dict, timeout: float = 90) -> None:
    """Until the cluster at ``port`` has ``count`` live nodes (asked from a short-lived driver)."""
    probe = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
             "print(sum(n['Alive'] for n in ray.nodes()))")
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run([sys.executable, "-c", probe, f"127.0.0.1:{port}"], capture_output=True, text=True,
                              timeout=60, env=env)
        if done.returncode == 0 and done.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the cluster did not reach {count} node(s): {done.stdout} {done.stderr[-2000:]}")
        time.sleep(1)
