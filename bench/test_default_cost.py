"""The default pipeline's cost against its floor, measured in the same run (issue #22).

* ``test_cli_against_the_floor``: ``uniap-cli FOLDER --out OUT`` on 24 BSDS500 val images
  (481x321), called in this process (imports and compiled kernels warm, as in a long run),
  against the floor: the default features + ``uniap.segment`` (Numba) on the patch grid of
  the same images, with BLAS's own threads and with one (the faster of the two is each
  round's floor).  The CLI runs as it does by default (``--workers auto``: a forked worker
  process per core, each doing its images in turn), with ``--workers 1`` (one process: with a
  spare core, the image side of the region graph in a thread beside the features, records
  and files in another) and as on one core (``cli_in_turn``).  They alternate, 5 rounds
  each; ``extra_info`` has the median seconds and CPU seconds (``time.process_time`` of this
  process, all threads, plus its finished children's) per image of each and the medians of
  the per-round ratios.
* ``test_stage_shares``: ``uniap.segment_image`` with the default settings, per stage
  (patch features, superpixels and their contour regions from the features' CIELab, pooling
  and adjacency, UniAP, records), medians over the images.
* ``test_superpixels_against_peers``: the default superpixels with their contour regions
  (:func:`uniap.superpixels.superpixel_hierarchy`) against SLIC, Felzenszwalb and higra's
  ``watershed_hierarchy_by_volume`` on the pixel graph (the previous implementation, the
  same hierarchy), each at about 1000 regions, medians per image.

    python -m pytest bench/test_default_cost.py --benchmark-only -s
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np
import pytest

import uniap
from uniap.cli import main
from uniap.features import get_extractor, load_image

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bsds500" / "images" / "val"
IMAGES = 24
ROUNDS = 5


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    paths = sorted(DATA.glob("*.jpg"))[:IMAGES]
    if len(paths) < IMAGES:
        pytest.skip("../shared/data/bsds500 is not beside this checkout")
    out = tmp_path_factory.mktemp("images")
    for p in paths:
        (out / p.name).symlink_to(p)
    return out


def test_cli_against_the_floor(benchmark, folder, tmp_path):
    from threadpoolctl import ThreadpoolController

    import uniap.features.regions as regions_module
    import uniap.pipeline.engine as engine_module

    images = [load_image(p) for p in sorted(folder.glob("*.jpg"))]
    extractor = get_extractor("default")
    argv = [str(folder), "--out", str(tmp_path / "out"), "--overwrite", "--quiet"]
    blas = ThreadpoolController()

    def floor(blas_threads: int | None = None) -> tuple[float, float]:
        """Seconds and CPU seconds per image of features + uniap.segment (BLAS as it is, or limited)."""
        with blas.limit(limits=blas_threads, user_api="blas"):
            start, cpu = time.perf_counter(), time.process_time()
            for image in images:
                uniap.segment(extractor(image).features, backend="numba")
            return (time.perf_counter() - start) / len(images), (time.process_time() - cpu) / len(images)

    def cpu_time() -> float:
        """CPU seconds of this process (all threads) and of its children that have ended."""
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    def cli(flags: tuple[str, ...] = (), overlap: bool = True) -> tuple[float, float]:
        """Seconds and CPU seconds per image of the CLI with ``flags``; ``overlap=False``: as on
        one core (the image side after the features, records and files after the segmentation)."""
        cores = engine_module._cores
        regions_module.OVERLAP = overlap
        engine_module._cores = cores if overlap else (lambda: 1)
        try:
            start, cpu = time.perf_counter(), cpu_time()
            assert main(argv + list(flags)) == 0
            return (time.perf_counter() - start) / len(images), (cpu_time() - cpu) / len(images)
        finally:
            regions_module.OVERLAP, engine_module._cores = True, cores

    one = ("--workers", "1")
    floor(), floor(1), cli(), cli(one), cli(one, False)  # warm-up: imports, compiled kernels
    runs: dict[str, list[tuple[float, float]]] = {"floor": [], "floor_one_blas": [], "cli": [],
                                                  "cli_one_process": [], "cli_in_turn": []}

    def one_round():
        runs["floor"].append(floor())
        runs["floor_one_blas"].append(floor(1))
        runs["cli"].append(cli())
        runs["cli_one_process"].append(cli(one))
        runs["cli_in_turn"].append(cli(one, False))

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    # the ratio to the faster floor of each round (its BLAS threads or one: the faster for the user)
    floors = [min(a[0], b[0]) for a, b in zip(runs["floor"], runs["floor_one_blas"])]
    ratios = [c[0] / f for c, f in zip(runs["cli"], floors)]
    one_process = [c[0] / f for c, f in zip(runs["cli_one_process"], floors)]
    in_turn = [c[0] / f for c, f in zip(runs["cli_in_turn"], floors)]
    median = {name: float(np.median([r[0] for r in v])) for name, v in runs.items()}
    cpu = {name: float(np.median([r[1] for r in v])) for name, v in runs.items()}
    benchmark.extra_info.update({f"{name}_s_per_image": value for name, value in median.items()})
    benchmark.extra_info.update({f"{name}_cpu_s_per_image": value for name, value in cpu.items()})
    benchmark.extra_info.update(ratio=float(np.median(ratios)), ratio_one_process=float(np.median(one_process)),
                                ratio_in_turn=float(np.median(in_turn)))
    print(f"\nuniap-cli {median['cli'] * 1e3:.1f} ms/image (CPU {cpu['cli'] * 1e3:.1f}), --workers 1 "
          f"{median['cli_one_process'] * 1e3:.1f} ms (CPU {cpu['cli_one_process'] * 1e3:.1f}), everything in turn "
          f"{median['cli_in_turn'] * 1e3:.1f} ms (CPU {cpu['cli_in_turn'] * 1e3:.1f}); floor (features + "
          f"uniap.segment) {median['floor'] * 1e3:.1f} ms (CPU {cpu['floor'] * 1e3:.1f}), one BLAS thread "
          f"{median['floor_one_blas'] * 1e3:.1f} ms (CPU {cpu['floor_one_blas'] * 1e3:.1f})")
    for name, values in (("default", ratios), ("--workers 1", one_process), ("in turn", in_turn)):
        print(f"ratio to the faster floor, {name}: {np.median(values):.2f} "
              f"(rounds {', '.join(f'{r:.2f}' for r in values)})")


def test_stage_shares(benchmark, folder):
    """Per stage of the default, as :func:`uniap.segment_image` runs them, on one image at a time."""
    from uniap.features import RegionFeatures
    from uniap.features.regions import REGION_LEVELS, pool_grid
    from uniap.pipeline.stages import encode
    from uniap.superpixels import adjacency, superpixel_hierarchy

    images = [load_image(p) for p in sorted(folder.glob("*.jpg"))]
    extractor = get_extractor("default")
    region = RegionFeatures(extractor)
    uniap.segment_image(images[0])
    stages: dict[str, list[float]] = {}

    def one_pass():
        for image in images:
            t = [time.perf_counter()]
            grid, lab = extractor._grid_and_lab(image)  # the grid, and its CIELab for the watershed
            t.append(time.perf_counter())
            regions, cuts, thresholds = superpixel_hierarchy(image, lab=lab)
            t.append(time.perf_counter())
            x, edges = pool_grid(grid, regions), adjacency(regions)
            t.append(time.perf_counter())
            graph = region.graph(image, grid)  # (the same again, to have the RegionGraph)
            t0 = time.perf_counter()
            h = uniap.segment_graph(x, edges, levels=REGION_LEVELS).numpy()
            t1 = time.perf_counter()
            encode(graph, h)
            t2 = time.perf_counter()
            for name, dt in (("features", t[1] - t[0]), ("superpixels + contour regions", t[2] - t[1]),
                             ("pooling + adjacency", t[3] - t[2]), ("UniAP", t1 - t0), ("records", t2 - t1)):
                stages.setdefault(name, []).append(dt)

    benchmark.pedantic(one_pass, rounds=2, iterations=1)
    medians = {name: float(np.median(v)) for name, v in stages.items()}
    total = sum(medians.values())
    for name, value in medians.items():
        benchmark.extra_info[f"median_{name}_ms"] = value * 1e3
        print(f"\n{name:32s} {value * 1e3:7.1f} ms  {100 * value / total:5.1f}%", end="")
    print()


def _higra_superpixels(image, count):
    """The previous implementation: higra's hierarchy by volume on the pixel graph."""
    import higra as hg
    from skimage.color import rgb2lab
    from skimage.filters import gaussian

    lab = gaussian(rgb2lab(image), sigma=1.0, channel_axis=-1)
    graph = hg.get_4_adjacency_graph(image.shape[:2])
    tree, altitudes = hg.watershed_hierarchy_by_volume(graph, hg.weight_graph(graph, lab, hg.WeightFunction.L2))
    explorer = hg.HorizontalCutExplorer(tree, altitudes)
    return explorer.horizontal_cut_from_num_regions(count).labelisation_leaves(tree)


@pytest.mark.parametrize("method", ["uniap", "higra", "slic", "felzenszwalb"])
def test_superpixels_against_peers(benchmark, folder, method):
    from skimage.segmentation import felzenszwalb, slic

    from uniap.superpixels import superpixel_hierarchy

    if method == "higra":
        pytest.importorskip("higra")
    images = [load_image(p) for p in sorted(folder.glob("*.jpg"))]
    count = round(images[0].shape[0] * images[0].shape[1] / 150)
    run = {
        "uniap": lambda im: superpixel_hierarchy(im)[0],
        "higra": lambda im: _higra_superpixels(im, count),
        "slic": lambda im: slic(im, n_segments=count, compactness=20, start_label=0),
        "felzenszwalb": lambda im: felzenszwalb(im, scale=30, sigma=0.8, min_size=50),
    }[method]
    run(images[0])
    state = {"i": 0, "regions": []}

    def one_image():
        image = images[state["i"] % len(images)]
        state["i"] += 1
        state["regions"].append(len(np.unique(run(image))))

    benchmark.pedantic(one_image, rounds=len(images), iterations=1)
    benchmark.extra_info["median_regions"] = float(np.median(state["regions"]))
    print(f"\n{method}: {benchmark.stats.stats.median * 1e3:.1f} ms/image, "
          f"{np.median(state['regions']):.0f} regions")
