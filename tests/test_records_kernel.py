"""The compiled encoding of label maps (uniap._record_kernels) against pycocotools and the masks,
and the superpixel map's runs found once per image."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from pycocotools import mask as mask_utils

from uniap.records import RegionRuns, encode_label_map


def _maps(draw_seed: int, height: int, width: int, labels: int, blocky: bool) -> np.ndarray:
    rng = np.random.default_rng(draw_seed)
    if blocky:  # few long runs, masks reaching the first and the last pixel
        small = rng.integers(0, labels, size=(max(1, height // 3), max(1, width // 3)))
        return np.kron(small, np.ones((3, 3), np.int64))[:height, :width] if height >= 3 and width >= 3 \
            else rng.integers(0, labels, size=(height, width))
    return rng.integers(0, labels, size=(height, width))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), height=st.integers(1, 40), width=st.integers(1, 40),
       labels=st.integers(1, 12), blocky=st.booleans(), offset=st.integers(-5, 10**12))
def test_every_label_equals_pycocotools(seed, height, width, labels, blocky, offset):
    m = _maps(seed, height, width, labels, blocky) + offset
    enc = encode_label_map(m)
    np.testing.assert_array_equal(enc.labels, np.unique(m))
    for j, label in enumerate(enc.labels):
        mask = m == label
        ref = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert enc.counts[j] == ref["counts"].decode("ascii")
        assert enc.areas[j] == mask.sum()
        ys, xs = np.nonzero(mask)
        assert enc.boxes[j].tolist() == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        x, y = (int(v) for v in enc.points[j])
        assert mask[y, x]  # an interior point is a pixel of the mask


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), height=st.integers(2, 30), width=st.integers(2, 30),
       nodes=st.integers(1, 30), groups=st.integers(1, 8), wanted=st.integers(0, 8))
def test_region_maps_with_wanted_labels_match_the_pixel_maps(seed, height, width, nodes, groups, wanted):
    rng = np.random.default_rng(seed)
    regions = rng.integers(0, nodes, size=(height, width))
    node_labels = rng.integers(0, groups, size=nodes)
    ids = np.sort(rng.choice(groups + 2, size=min(wanted, groups + 2), replace=False))  # some absent
    from uniap.records import _point_stride, _sample_distances

    stride = _point_stride(height, width)
    sub = np.ascontiguousarray(node_labels[regions][::stride, ::stride])
    got = RegionRuns(regions).encode(node_labels, ids, (stride, sub, _sample_distances([sub])[0]))
    pixels = node_labels[regions]
    want = encode_label_map(pixels, ids)
    assert got.labels.tolist() == want.labels.tolist() == [i for i in ids if (pixels == i).any()]
    assert got.counts == want.counts
    np.testing.assert_array_equal(got.areas, want.areas)
    np.testing.assert_array_equal(got.boxes, want.boxes)


def test_a_map_with_no_wanted_label_gives_no_masks():
    enc = encode_label_map(np.zeros((4, 5), np.int64), ids=[3, 7])
    assert len(enc) == 0 and enc.counts == [] and enc.boxes.shape == (0, 4)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), height=st.integers(1, 30), width=st.integers(1, 30), nodes=st.integers(1, 30))
def test_region_runs_give_each_labels_area(seed, height, width, nodes):
    regions = np.random.default_rng(seed).integers(0, nodes, size=(height, width))
    area = RegionRuns(regions).area(nodes + 2)
    assert area.dtype == np.int64
    np.testing.assert_array_equal(area, np.bincount(regions.ravel(), minlength=nodes + 2))


def _graph_and_hierarchy():
    import skimage.data

    from uniap.features import get_extractor, refined
    from uniap.pipeline.stages import UniapSegmenter

    image = skimage.data.astronaut()[::2, ::2]
    graph = refined(get_extractor("default"), "superpixels")(image)
    return image, graph, UniapSegmenter().nodes(graph)


@pytest.mark.parametrize("overlap", [False, True])
def test_the_levels_and_contour_regions_records_find_the_superpixels_runs_once(monkeypatch, overlap):
    """The pipeline's encode passes over the superpixel map once for both kinds of records
    (none when the graph found its runs beside the features, with a spare core), and gets the
    records each function gives on its own."""
    import uniap.features.regions as regions_module
    import uniap.records as records_module
    from uniap.pipeline.stages import encode
    from uniap.records import contour_records, hierarchy_records

    monkeypatch.setattr(regions_module, "OVERLAP", overlap)
    image, graph, hierarchy = _graph_and_hierarchy()
    assert graph.contours is not None and len(graph.contours)
    assert (graph.runs is not None) == overlap
    calls = []
    original = records_module._map_runs

    def counted(labels):
        calls.append(labels.shape)
        return original(labels)

    monkeypatch.setattr(records_module, "_map_runs", counted)
    got = encode(graph, hierarchy, image=image).records
    assert calls == ([] if overlap else [graph.regions.shape])  # at most once for the levels and the cuts
    found = len(calls)
    boundary = graph.boundary_strength(image)
    alone = hierarchy_records(hierarchy, regions=graph.regions, boundary=boundary)
    alone += contour_records(graph.contours, graph.regions, graph.contour_thresholds, min_size=hierarchy.min_size,
                             start=len(alone), boundary=boundary, exclude=alone)
    assert len(calls) == found + 2 and got == alone  # on their own, each finds them


def test_runs_of_another_map_are_refused():
    import pytest

    from uniap.records import contour_records, hierarchy_records

    image, graph, hierarchy = _graph_and_hierarchy()
    runs = RegionRuns(graph.regions[1:])
    with pytest.raises(ValueError, match="runs are of a"):
        hierarchy_records(hierarchy, regions=graph.regions, runs=runs)
    with pytest.raises(ValueError, match="runs are of a"):
        contour_records(graph.contours, graph.regions, graph.contour_thresholds, runs=runs)
