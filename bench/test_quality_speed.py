"""Per-image cost of uniap-eval's segmenters on 481x321 BSDS500 images, in one session.

The label maps of one image, as ``uniap-eval`` computes them (scoring excluded): uniap's
default (watershed superpixel nodes and their contour regions), the same without the contour
regions (``--no-contours``), uniap on SLIC superpixels, uniap on the patch grid (``--refine none``) and the classic
peers at the settings of ``docs/quality.md``. Each round takes the next of 8 images; the
ratio to Felzenszwalb's median is in ``docs/quality.md``.

    python -m pytest bench/test_quality_speed.py --benchmark-only --benchmark-columns=median,iqr
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from uniap.evaluation import build_segmenter

SEGMENTERS = {
    "uniap": ("uniap", {}),
    "uniap-no-contours": ("uniap", {"contours": False}),
    "uniap-slic": ("uniap", {"superpixel_method": "slic"}),
    "uniap-patches": ("uniap", {"refine": "none"}),
    "felzenszwalb": ("felzenszwalb", {"min_size": 100, "scales": (100, 200, 400, 800, 1600, 3200)}),
    "slic_rag": ("slic_rag", {"n_segments": 600, "compactness": 20}),
    "higra_watershed": ("higra_watershed", {"attribute": "volume",
                                            "regions": (1000, 300, 100, 50, 30, 20, 10, 5, 3, 2)}),
}



@pytest.mark.parametrize("name", list(SEGMENTERS))
def test_label_maps_per_image(benchmark, bsds_images, name):
    kind, params = SEGMENTERS[name]
    if kind == "higra_watershed":
        pytest.importorskip("higra")
    segmenter = build_segmenter(kind, **params)
    segmenter.warm_up()
    state = {"i": 0, "timings": []}

    def one_image():
        image = bsds_images[state["i"] % len(bsds_images)]
        state["i"] += 1
        t0 = time.perf_counter()
        seg = segmenter.segment(image)
        state["timings"].append(dict(seg.timings, total=time.perf_counter() - t0))
        assert seg.levels.shape[1:] == image.shape[:2]

    one_image()  # first call: imports, compiled code
    benchmark.pedantic(one_image, rounds=16, iterations=1)
    for key in state["timings"][0]:
        benchmark.extra_info[f"median_{key}_s"] = float(np.median([t[key] for t in state["timings"][1:]]))
