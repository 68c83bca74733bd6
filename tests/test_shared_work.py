"""Work done once per image (issue #22): the default features' CIELab reused by the watershed,
the compiled smoothing that replaced SciPy's, the edge list checked without a sort when it is
sorted already, and ``--no-contours`` through the default's path.  Each fast path gives what
the path it replaced gave, bit for bit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.ndimage import gaussian_filter

from uniap.core.api import _check_edges
from uniap.features import DefaultFeatures, RegionFeatures, get_extractor
from uniap.features.default import _rgb2lab
from uniap.pipeline.stages import encode
from uniap.superpixels import _smoothed_lab, adjacency, superpixels


def _image(seed: int, shape=(45, 70)) -> np.ndarray:
    """Blocks of random colours with noise: edges of several strengths."""
    rng = np.random.default_rng(seed)
    h, w = shape
    blocks = rng.integers(0, 256, size=(4, 4, 3))
    image = blocks[np.arange(h) * 4 // h][:, np.arange(w) * 4 // w]
    return np.clip(image + rng.normal(0, 10, size=(h, w, 3)), 0, 255).astype(np.uint8)


def _scipy_smoothed(lab: np.ndarray) -> np.ndarray:
    """The smoothing the watershed had before: SciPy, channel by channel."""
    out = lab.copy()
    for channel in out:
        gaussian_filter(channel, 1.0, mode="nearest", output=channel)
    return out


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 30), st.integers(1, 30), st.sampled_from([1.0, 40.0, 100.0]))
def test_the_compiled_smoothing_is_scipys_bit_for_bit(seed, h, w, scale):
    lab = (np.random.default_rng(seed).normal(size=(3, h, w)) * scale).astype(np.float32)
    want = _scipy_smoothed(lab)
    got = lab.copy()
    assert _smoothed_lab(got) is got  # in place
    np.testing.assert_array_equal(got, want)


def test_the_compiled_smoothing_of_a_real_image_and_of_a_view():
    lab = _rgb2lab(_image(0, (121, 93)))
    want = _scipy_smoothed(lab)
    got = lab.copy()
    np.testing.assert_array_equal(_smoothed_lab(got), want)
    wide = np.zeros((3, 121, 100), np.float32)
    wide[:, :, :93] = lab
    view = wide[:, :, :93]  # not contiguous: smoothed in place all the same
    _smoothed_lab(view)
    np.testing.assert_array_equal(wide[:, :, :93], want)
    assert not wide[:, :, 93:].any()


@pytest.mark.parametrize("shape", [(48, 64), (45, 70), (37, 29), (1, 9), (9, 1)])
def test_the_features_give_their_cielab_cut_to_the_image(shape):
    """DefaultFeatures' CIELab is computed on the padded image; cut to the image, it is
    ``_rgb2lab`` of the image itself, and the grid is :meth:`__call__`'s."""
    image = _image(1, shape)
    features = DefaultFeatures()
    grid, lab = features._grid_and_lab(image)
    assert lab is not None and lab.shape == (3, *shape) and lab.dtype == np.float32
    np.testing.assert_array_equal(lab, _rgb2lab(image))
    np.testing.assert_array_equal(grid.features, features(image).features)


def test_no_cielab_is_given_where_the_features_resize_the_image():
    image = _image(2, (64, 96))
    grid, lab = DefaultFeatures(max_side=48)._grid_and_lab(image)
    assert lab is None
    np.testing.assert_array_equal(grid.features, DefaultFeatures(max_side=48)(image).features)


def _same_graph(a, b) -> None:
    for field in dataclasses.fields(a):
        if not field.compare:  # what the records need, found early or not: checked apart
            continue
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=field.name)
        elif field.name != "grid":
            assert x == y, field.name


@pytest.mark.parametrize("contours", [True, False])
@pytest.mark.parametrize("shape", [(45, 70), (64, 48)])
def test_a_region_graph_with_the_features_cielab_is_the_one_without(contours, shape):
    """RegionFeatures takes the features' CIELab for the watershed and the edge strength: the
    graph (superpixels, cuts, strength, node features, edges) is the one it makes alone."""
    image = _image(3, shape)
    extractor = RegionFeatures(DefaultFeatures(), contours=contours)
    shared = extractor(image)  # the features' CIELab
    alone = extractor.graph(image, DefaultFeatures()(image))  # converts the image itself
    _same_graph(shared, alone)
    assert shared.edge_strength is not None
    assert (shared.contours is not None) == contours


def _old_no_contours_graph(extractor: RegionFeatures, image: np.ndarray):
    """``--no-contours`` before: superpixels() of the image, no edge strength on the graph (the
    records computed it from the image)."""
    grid = extractor.extractor(image)
    regions = superpixels(image, size=extractor.size)
    from uniap.features.regions import RegionGraph, pool_grid

    return RegionGraph(pool_grid(grid, regions), adjacency(regions), regions, grid, extractor.size)


@pytest.mark.parametrize("seed", [0, 1])
def test_no_contours_records_are_those_of_the_superpixels_alone(seed):
    """``contours=False`` now runs the watershed as the default does (without its cuts): the
    superpixels, node features and edges are superpixels()'s, and the records are the same."""
    import uniap
    from uniap.features.regions import REGION_LEVELS

    image = _image(seed, (60, 80))
    extractor = RegionFeatures(get_extractor("default"), contours=False)
    new, old = extractor(image), _old_no_contours_graph(extractor, image)
    for name in ("regions", "features", "edges"):
        np.testing.assert_array_equal(getattr(new, name), getattr(old, name))
    assert new.contours is None and new.strength_regions is None
    h = uniap.segment_graph(new.features, new.edges, levels=REGION_LEVELS).numpy()
    assert encode(new, h, image=image).records == encode(old, h, image=image).records


def test_no_contours_on_a_downscaled_copy_gives_the_same_masks(monkeypatch):
    """Where the watershed runs on a downscaled copy, ``contours=False`` gathers the edge
    strength there too (as the default does): the same masks as before, in the same order."""
    import uniap
    import uniap.features.regions as regions_module
    from uniap.features.regions import REGION_LEVELS

    monkeypatch.setattr(regions_module, "SUPERPIXEL_MAX_PIXELS", 1200)
    image = _image(4, (60, 80))
    extractor = RegionFeatures(get_extractor("default"), contours=False)
    new = extractor(image)
    assert new.strength_regions is not None and new.strength_regions.size <= 1200
    old = _old_no_contours_graph(extractor, image)
    old = dataclasses.replace(old, regions=superpixels(image, size=extractor.size, max_pixels=1200))
    np.testing.assert_array_equal(new.regions, old.regions)
    np.testing.assert_array_equal(new.edges, adjacency(old.regions))
    h = uniap.segment_graph(new.features, new.edges, levels=REGION_LEVELS).numpy()
    new_records, old_records = encode(new, h, image=image).records, encode(old, h, image=image).records
    assert [r["segmentation"] for r in new_records] == [r["segmentation"] for r in old_records]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 30), st.integers(0, 80), st.booleans())
def test_edges_are_checked_as_before_sorted_or_not(seed, n, count, tidy):
    """A sorted, distinct edge list (superpixels.adjacency's) is returned as it is; any other is
    sorted, its self-loops and repeats dropped, as always."""
    edges = np.random.default_rng(seed).integers(0, n, size=(count, 2))
    if tidy:
        edges = np.unique(np.sort(edges, axis=1), axis=0)
        edges = edges[edges[:, 0] != edges[:, 1]]
    want = np.sort(edges.astype(np.int64), axis=1)
    want = np.unique(want[want[:, 0] != want[:, 1]], axis=0).reshape(-1, 2)
    got = _check_edges(edges, n)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)


def test_a_run_keeps_the_objects_before_it_out_of_full_collections_and_gives_them_back():
    """During a run the objects alive before it are frozen (full collections skip them); after
    it, nothing stays frozen; a program that froze its own objects keeps them as they were.

    Whether an object is frozen is read from the object itself (a frozen one is in no
    generation), not from the frozen count, which falls whenever any thread frees a frozen
    object (a count check failed once in a full run by two)."""
    import gc

    from uniap.pipeline.engine import _settled_heap

    def frozen(obj: object) -> bool:
        return not any(o is obj for o in gc.get_objects())

    before = [object()]  # a tracked container alive before the run
    assert gc.get_freeze_count() == 0 and not frozen(before)
    with _settled_heap():
        assert frozen(before) and gc.get_freeze_count() > 1000
        during = [object()]
        with _settled_heap():  # nested (an engine inside a run): the outer one thaws
            assert frozen(before) and not frozen(during)
        assert frozen(before) and not frozen(during)
    assert gc.get_freeze_count() == 0 and not frozen(before) and not frozen(during)
    theirs = [object()]
    gc.freeze()
    try:
        with _settled_heap():
            pass
        assert frozen(theirs) and frozen(before) and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
    assert not frozen(theirs)


def test_the_cli_thaws_the_heap_after_a_run(tmp_path):
    import gc

    from PIL import Image

    from uniap.cli import main

    Image.fromarray(_image(5, (40, 56))).save(tmp_path / "a.png")
    assert main([str(tmp_path / "a.png"), "--out", str(tmp_path / "a.json"), "--quiet"]) == 0
    assert (tmp_path / "a.json").exists() and gc.get_freeze_count() == 0


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 25), st.integers(1, 25), st.integers(0, 4), st.floats(0, 1))
def test_the_superpixel_labels_are_the_tree_cuts(seed, h, w, levels, quantile):
    """The pixel labels of a cut of the watershed's tree, by one raster pass (pixel_cut), are
    tree_cut's over the MST edges: the same regions, numbered alike (ties included: weights
    drawn from a few levels)."""
    from uniap._superpixel_kernels import edge_weights, persistence, pixel_cut, tree_cut

    rng = np.random.default_rng(seed)
    lab = rng.integers(0, levels + 1, size=(3, h, w)).astype(np.float32) if levels else \
        rng.normal(size=(3, h, w)).astype(np.float32)
    mst, persist = persistence(edge_weights(lab), h, w)
    altitude = float(np.quantile(persist, quantile)) if persist.size else 0.0
    u, v = np.ascontiguousarray(mst[:, 0]), np.ascontiguousarray(mst[:, 1])
    want = tree_cut(h * w, u, v, persist, altitude)
    np.testing.assert_array_equal(pixel_cut(h, w, u, v, persist, altitude), want)


def test_the_features_give_their_cielab_once_and_early():
    """``on_lab`` gets the CIELab (cut to the image) once, or None once where there is none."""
    image = _image(5, (45, 70))
    given = []
    grid, lab = DefaultFeatures()._grid_and_lab(image, on_lab=given.append)
    assert len(given) == 1 and given[0] is not None
    np.testing.assert_array_equal(given[0], _rgb2lab(image))
    np.testing.assert_array_equal(grid.features, DefaultFeatures()(image).features)
    given.clear()
    DefaultFeatures(max_side=48)._grid_and_lab(_image(5, (64, 96)), on_lab=given.append)
    assert given == [None]


def _graph_in_turn_and_in_a_thread(monkeypatch, extractor, image):
    import uniap.features.regions as regions_module

    monkeypatch.setattr(regions_module, "OVERLAP", False)
    in_turn = extractor(image)
    monkeypatch.setattr(regions_module, "OVERLAP", True)
    return in_turn, extractor(image)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 70), st.integers(1, 70), st.booleans(), st.sampled_from([None, 900]))
def test_the_image_side_in_a_thread_makes_the_graph_made_in_turn(seed, h, w, contours, max_pixels):
    """With a spare core the superpixels, contour regions, edge strength (and what the records
    need of them) are made in a thread beside the features: the same graph, the same records,
    whatever the image's shape, with or without contour regions, on the image or a downscaled copy."""
    import uniap
    import uniap.features.regions as regions_module
    from uniap.features.regions import REGION_LEVELS

    image = _image(seed, (h, w))
    extractor = RegionFeatures(DefaultFeatures(), contours=contours)
    with pytest.MonkeyPatch.context() as monkeypatch:
        if max_pixels:
            monkeypatch.setattr(regions_module, "SUPERPIXEL_MAX_PIXELS", max_pixels)
        in_turn, in_thread = _graph_in_turn_and_in_a_thread(monkeypatch, extractor, image)
    _same_graph(in_turn, in_thread)
    assert in_turn.boundary is None and in_turn.runs is None
    downscaled_copy = in_thread.strength_regions is not None
    assert (in_thread.boundary is None) == downscaled_copy  # prepared on the image's own pixels only
    h_ = uniap.segment_graph(in_turn.features, in_turn.edges, levels=REGION_LEVELS).numpy()
    assert encode(in_thread, h_, image=image).records == encode(in_turn, h_, image=image).records


def test_an_error_in_the_image_side_thread_reaches_the_caller(monkeypatch):
    import uniap.features.regions as regions_module

    def broken(*args, **kwargs):
        raise MemoryError("no room for the watershed")

    monkeypatch.setattr(regions_module, "OVERLAP", True)
    monkeypatch.setattr(regions_module, "downscaled_hierarchy", broken)
    with pytest.raises(MemoryError, match="no room for the watershed"):
        RegionFeatures(DefaultFeatures())(_image(6, (40, 50)))


def test_blas_gets_its_threads_back_after_overlapping_callers():
    """The features keep BLAS to one thread while the superpixels run beside them; callers in
    several threads share the process's limit, and the last one out restores BLAS's threads
    whatever the order they leave in."""
    from threadpoolctl import threadpool_info

    from uniap.features.regions import _one_blas_thread

    def blas_threads() -> list[int]:
        return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]

    before = blas_threads()
    if not before or max(before) < 2:
        pytest.skip("BLAS runs one thread here already: nothing to limit")
    first, second = _one_blas_thread(), _one_blas_thread()
    first.__enter__()
    second.__enter__()
    assert blas_threads() == [1] * len(before)
    first.__exit__(None, None, None)  # the first out: the second still computes
    assert blas_threads() == [1] * len(before)
    second.__exit__(None, None, None)
    assert blas_threads() == before


def test_the_image_side_thread_imports_no_scipy_module():
    """The image side's thread finds SciPy's (and scikit-image's) modules imported: two threads
    importing them for the first time at once can fail (``KeyError: 'scipy'``), and the
    features import SciPy meanwhile.  In a new interpreter, every import the thread makes of
    a module not loaded when it started is recorded.  Numba's cache is cold, as on a fresh clone: a
    kernel's first call imports modules too (``scipy.linalg.cython_blas``, which CI caught)."""
    import os
    import subprocess
    import sys
    import tempfile

    code = """
import builtins, importlib.util, sys, threading
import numpy as np
import uniap.features.regions as regions
from uniap.features import DefaultFeatures, RegionFeatures

regions.OVERLAP = True
new, threads, original = [], [], builtins.__import__
at_start = {}  # the modules loaded when the thread started: any other one it imports could be
run = regions._InThread.run  # imported by the features' thread at the same time

def recorded_run(self):
    at_start.update(dict.fromkeys(sys.modules))
    run(self)

regions._InThread.run = recorded_run

def watched(name, globals=None, locals=None, fromlist=(), level=0):
    if threading.current_thread().name == "uniap-image-side":
        threads.append(1)
        package = (globals or {}).get("__package__") or ""
        base = importlib.util.resolve_name("." * level + name, package) if level else name
        wanted = [base] + [f"{base}.{item}" for item in (fromlist or ()) if item != "*"]
        missing = [m for m in wanted if m not in at_start and m.split(".")[0] in ("scipy", "skimage")]
        module = original(name, globals, locals, fromlist, level)
        new.extend(m for m in missing if m in sys.modules)  # (a name in fromlist may be no module)
        return module
    return original(name, globals, locals, fromlist, level)

builtins.__import__ = watched
image = np.random.default_rng(0).integers(0, 256, size=(60, 80, 3)).astype(np.uint8)
RegionFeatures(DefaultFeatures())(image)
print(len(threads) > 0, sorted(set(new)))
"""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[-2] == "True []"  # the thread ran (and imported), nothing of SciPy new


def test_an_error_in_the_features_waits_for_the_image_side_thread(monkeypatch):
    """When the features fail, the call raises only once the superpixels' thread has ended:
    no thread outlives the call, holding the image's memory."""
    import threading

    import uniap.features.regions as regions_module
    from uniap.features import default as default_module

    monkeypatch.setattr(regions_module, "OVERLAP", True)
    threads = []
    thread = regions_module._InThread

    def recorded(*args):
        threads.append(thread(*args))
        return threads[-1]

    def broken(*args, **kwargs):
        raise MemoryError("no room for the histograms")

    monkeypatch.setattr(regions_module, "_InThread", recorded)
    monkeypatch.setattr(default_module, "_image_words", broken)  # after the CIELab is handed over
    with pytest.raises(MemoryError, match="no room for the histograms"):
        RegionFeatures(DefaultFeatures())(_image(8, (40, 50)))
    assert len(threads) == 1 and not threads[0].is_alive()
    assert not any(t.name == "uniap-image-side" for t in threading.enumerate())
