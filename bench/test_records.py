"""SAM records from pixel label maps: the label-map encoder against the pycocotools stack path.

Run: ``python -m pytest bench/test_records.py --benchmark-only``.  Each case times
``uniap.records.hierarchy_records`` (label maps already at pixel resolution, as in
``segment_image``) and, in the same process and interleaved image by image, the default
features of the same image and the former path (a (K, H, W) boolean stack per level,
``encode_rle`` = ``pycocotools.mask.encode``, areas and boxes from the stack); medians and
ratios (median over images of the per-image ratio) go to ``benchmark.extra_info``.  Targets:
records <= 0.25 x features at 481x321, <= 1 x at 2000x2000.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

import uniap
from uniap.features import get_extractor, load_image
from uniap.pixels import pixel_labels
from uniap.records import encode_rle, hierarchy_records, mask_boxes

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bsds500" / "images" / "val"


class Case:
    """One image: its hierarchy and pixel label maps (default features, NumPy backend)."""

    def __init__(self, image: np.ndarray, extractor):
        self.image = image
        grid = extractor(image)
        self.hierarchy = uniap.segment(grid.features, backend="numpy").numpy()
        t0 = time.perf_counter()
        self.labels = pixel_labels(self.hierarchy, grid)
        self.pixel_labels_s = time.perf_counter() - t0

    def records(self, unique: bool = True) -> list[dict]:
        return hierarchy_records(self.hierarchy, pixel_labels=self.labels, unique=unique)


def stack_records(h, labels: np.ndarray, chunk: int | None = None) -> int:
    """The former encoder: a boolean stack per level through pycocotools (``chunk`` masks at a
    time when given, so that a large image fits in memory)."""
    count = 0
    for i, lv in enumerate(h.levels):
        ids = np.flatnonzero(lv.sizes >= h.min_size)
        step = len(ids) if chunk is None else chunk
        for j in range(0, len(ids), max(step, 1)):
            masks = labels[i][None] == ids[j:j + step, None, None]
            rles = encode_rle(masks)
            masks.sum(axis=(1, 2))
            mask_boxes(masks)
            count += len(rles)
    return count


def median_time(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


@pytest.fixture(scope="module")
def extractor():
    ex = get_extractor("default")
    ex(np.zeros((64, 64, 3), np.uint8))  # warm up
    return ex


@pytest.fixture(scope="module")
def bsds_cases(extractor):
    paths = sorted(DATA.glob("*.jpg"))[:8]
    if not paths:
        pytest.skip("../shared/data/bsds500 is not beside this checkout")
    return [Case(load_image(p), extractor) for p in paths]


@pytest.fixture(scope="module")
def large_case(extractor):
    import skimage.data
    from PIL import Image

    image = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((2000, 2000), Image.BILINEAR))
    return Case(image, extractor)


def _records_bench(benchmark, cases, extractor, rounds, feature_rounds, stack_rounds, chunk=None):
    state = {"i": 0}

    def one():
        case = cases[state["i"] % len(cases)]
        state["i"] += 1
        return case.records()

    one()
    benchmark.pedantic(one, rounds=rounds, iterations=1)
    # Per image, interleaved so that the machine's load weighs on all paths alike.
    records, features, stack = [], [], []
    for c in cases:
        features.append(median_time(lambda c=c: extractor(c.image), feature_rounds))
        records.append(median_time(c.records, 5))
        if stack_rounds:
            stack.append(median_time(lambda c=c: stack_records(c.hierarchy, c.labels, chunk), stack_rounds))
    info = benchmark.extra_info
    info["images"] = len(cases)
    info["shape"] = list(cases[0].image.shape[:2])
    info["median_records_s"] = float(np.median(records))
    info["median_features_s"] = float(np.median(features))
    info["median_pixel_labels_s"] = float(np.median([c.pixel_labels_s for c in cases]))
    info["records_over_features"] = float(np.median(np.divide(records, features)))
    info["masks"] = [len(c.records()) for c in cases]
    info["masks_per_level"] = [len(c.records(unique=False)) for c in cases]
    if stack_rounds:
        info["median_stack_s"] = float(np.median(stack))
        info["stack_chunk"] = chunk
        info["stack_over_features"] = float(np.median(np.divide(stack, features)))
        info["stack_over_records"] = float(np.median(np.divide(stack, records)))


def test_records_bsds(benchmark, bsds_cases, extractor):
    """481x321: distinct-mask records of 8 BSDS500 val images, cycled."""
    _records_bench(benchmark, bsds_cases, extractor, rounds=40, feature_rounds=3, stack_rounds=3)


def test_stack_encoder_bsds(benchmark, bsds_cases):
    """481x321: the former (K, H, W) stack through pycocotools, for the table."""
    state = {"i": 0}

    def one():
        case = bsds_cases[state["i"] % len(bsds_cases)]
        state["i"] += 1
        return stack_records(case.hierarchy, case.labels)

    benchmark.pedantic(one, rounds=16, iterations=1)


def test_features_bsds(benchmark, bsds_cases, extractor):
    """481x321: the default features of the same images, for the table."""
    state = {"i": 0}

    def one():
        case = bsds_cases[state["i"] % len(bsds_cases)]
        state["i"] += 1
        return extractor(case.image)

    benchmark.pedantic(one, rounds=16, iterations=1)


def test_records_2000(benchmark, large_case, extractor):
    """2000x2000 (astronaut upscaled): the stack path runs 64 masks at a time, once (a whole
    level's stack would take several GB)."""
    _records_bench(benchmark, [large_case], extractor, rounds=5, feature_rounds=3, stack_rounds=1, chunk=64)
