"""One way from an image to masks: :class:`uniap.pipeline.image.UniapSegmenter` settles the
extractor, its nodes and the options once; ``segment_image`` and ``uniap-eval``'s ``uniap``
segmenter run it, and the refine rule is written once (:func:`uniap.features.regions.check_refine`)."""

from __future__ import annotations

import numpy as np
import pytest

import uniap
from uniap.evaluation.segmenters import build_segmenter
from uniap.features.regions import check_refine
from uniap.pipeline.image import UniapSegmenter


def _image(seed: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[:48, :64]
    image = np.zeros((48, 64, 3), np.uint8)
    image[yy < 24] = (200, 40, 40)
    image[(yy >= 24) & (xx < 32)] = (40, 200, 40)
    image[(yy >= 24) & (xx >= 32)] = (40, 40, 200)
    return image + np.random.default_rng(seed).integers(0, 12, image.shape, dtype=np.uint8)


@pytest.mark.parametrize("refine", ["superpixels", "none"])
def test_segment_image_is_one_call_of_the_segmenter(refine):
    segmenter = UniapSegmenter(refine=refine, semantic=True)
    for seed in (0, 1):  # the segmenter is reused: nothing of one image stays for the next
        a = segmenter(_image(seed))
        b = uniap.segment_image(_image(seed), refine=refine, semantic=True)
        np.testing.assert_array_equal(a.pixel_labels, b.pixel_labels)
        np.testing.assert_array_equal(a.semantic_labels, b.semantic_labels)
        assert a.records == b.records


def test_the_eval_segmenter_runs_the_same_segmenter():
    ours = build_segmenter("uniap", levels=[0.8, 0.5], min_size=2)
    direct = UniapSegmenter(levels=(0.8, 0.5), min_size=2)(_image())
    np.testing.assert_array_equal(ours.label_maps(_image()), direct.pixel_labels)
    assert isinstance(ours.segmenter, UniapSegmenter)


def test_the_nodes_are_decided_once_from_the_extractor():
    from uniap.features import DefaultFeatures, RegionFeatures

    assert UniapSegmenter(refine="superpixels")._segment.__name__ == "_segment_graph"
    assert UniapSegmenter(refine="none")._segment.__name__ == "_segment_grid"
    # an extractor that makes superpixels already is a graph whatever ``refine`` says
    assert UniapSegmenter(RegionFeatures(DefaultFeatures()), refine="none")._segment.__name__ == "_segment_graph"


@pytest.mark.parametrize("kwargs, flags, message", [
    ({"refine": "none", "superpixel_options": ["superpixel_size"]}, False,
     "superpixel_size applies to refine 'superpixels' only"),
    ({"refine": "none", "superpixel_options": ["superpixel_size"]}, True,
     "--superpixel-size applies to --refine superpixels only"),
    ({"refine": "superpixels", "upsampling": "bilinear"}, True,
     "--upsampling applies to --refine none only"),
    ({"refine": "superpixels", "connectivity": 8}, False, "connectivity applies to refine 'none' only"),
    ({"refine": "grid"}, False, "refine must be one of"),
])
def test_the_refine_rule_names_the_option(kwargs, flags, message):
    with pytest.raises(ValueError, match=message):
        check_refine(**kwargs, flags=flags)
    check_refine("none", upsampling="bilinear", connectivity=8)  # patches take both


def test_connectivity_with_superpixels_is_a_clear_error():
    # it reached segment_graph as an unexpected keyword (a TypeError) before the rule was shared
    with pytest.raises(ValueError, match="connectivity applies to refine 'none' only"):
        uniap.segment_image(_image(), connectivity=8)
