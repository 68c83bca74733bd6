"""Evaluation metrics for pseudo-mask segmentation.

Submodules (imported lazily, so ``import uniap.metrics`` costs nothing until
a metric is used; they depend only on numpy, scipy, scikit-image and, for
COCO AP, pycocotools):

``region``
    BSDS500 region benchmarks: :func:`covering`, :func:`probabilistic_rand_index`,
    :func:`variation_of_information`.
``boundary``
    BSDS500 boundary benchmark: :func:`boundary_prf`, :func:`correspond_pixels`,
    :func:`segmentation_boundaries`.
``bsds``
    Whole-benchmark evaluation of hierarchies (lists of segmentations, ucm2,
    soft boundary maps) with ODS / OIS / AP / best covering:
    :func:`evaluate_hierarchies`, :func:`evaluate_ucms`,
    :func:`evaluate_boundary_maps`.
``semantic``
    Unsupervised semantic segmentation: :func:`hungarian_miou`,
    :class:`HungarianMIoU`.
``instance``
    Class-agnostic COCO mask AP / AR: :func:`class_agnostic_mask_ap`.
``panoptic``
    :func:`panoptic_quality`, :class:`PanopticQuality`.

See ``docs/metrics.md`` for definitions and references.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    # region
    "covering": "region",
    "covering_counts": "region",
    "probabilistic_rand_index": "region",
    "rand_index": "region",
    "variation_of_information": "region",
    "region_counts": "region",
    # boundary
    "boundary_prf": "boundary",
    "boundary_counts": "boundary",
    "correspond_pixels": "boundary",
    "segmentation_boundaries": "boundary",
    "thin_boundaries": "boundary",
    "f_measure": "boundary",
    # bsds
    "evaluate_hierarchies": "bsds",
    "evaluate_ucms": "bsds",
    "evaluate_boundary_maps": "bsds",
    "evaluate_image": "bsds",
    "collect": "bsds",
    "ucm_thresholds": "bsds",
    "ucm_segmentation": "bsds",
    "ucm_boundaries": "bsds",
    "BSDSResult": "bsds",
    # semantic
    "hungarian_miou": "semantic",
    "HungarianMIoU": "semantic",
    "confusion_matrix": "semantic",
    "hungarian_match": "semantic",
    # instance
    "class_agnostic_mask_ap": "instance",
    "encode_mask": "instance",
    # panoptic
    "panoptic_quality": "panoptic",
    "PanopticQuality": "panoptic",
}

_SUBMODULES = ("region", "boundary", "bsds", "semantic", "instance", "panoptic")

__all__ = sorted(_EXPORTS) + list(_SUBMODULES)


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
