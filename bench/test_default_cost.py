"""The default pipeline's cost against its floor, measured in the same run (issue #22).

* ``test_cli_against_the_floor``: ``uniap-cli FOLDER --out OUT --workers 1`` on 24 BSDS500
  val images (481x321), called in this process (imports and compiled kernels warm, as in a
  long run), against the floor: the default features + ``uniap.segment`` (Numba) on the patch
  grid of the same images.  The two alternate, 5 rounds each; ``extra_info`` has the median
  seconds per image of each and the median of the per-round ratios.
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
    images = [load_image(p) for p in sorted(folder.glob("*.jpg"))]
    extractor = get_extractor("default")
    argv = [str(folder), "--out", str(tmp_path / "out"), "--overwrite", "--quiet", "--workers", "1"]

    def floor() -> float:
        start = time.perf_counter()
        for image in images:
            uniap.segment(extractor(image).features, backend="numba")
        return (time.perf_counter() - start) / len(images)

    def cli() -> float:
        start = time.perf_counter()
        assert main(argv) == 0
        return (time.perf_counter() - start) / len(images)

    floor(), cli()  # warm-up: imports, compiled kernels
    floors, clis = [], []

    def one_round():
        floors.append(floor())
        clis.append(cli())

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    ratios = [c / f for c, f in zip(clis, floors)]
    benchmark.extra_info.update(floor_s_per_image=float(np.median(floors)), cli_s_per_image=float(np.median(clis)),
                                ratio=float(np.median(ratios)))
    print(f"\nuniap-cli {np.median(clis) * 1e3:.1f} ms/image, floor (features + uniap.segment) "
          f"{np.median(floors) * 1e3:.1f} ms/image, ratio {np.median(ratios):.2f} "
          f"(rounds {', '.join(f'{r:.2f}' for r in ratios)})")


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
