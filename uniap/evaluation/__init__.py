"""Measure mask quality: segmenters, data sets and benchmarks behind ``uniap-eval``.

>>> from uniap.evaluation import SEGMENTERS, DATASETS
>>> sorted(SEGMENTERS), sorted(DATASETS)
(['felzenszwalb', 'higra_watershed', 'slic_rag', 'uniap'], ['bsds500', 'coco', 'labelmaps'])

* :mod:`~uniap.evaluation.datasets` -- BSDS500, COCO instances and image + label-map folders.
* :mod:`~uniap.evaluation.segmenters` -- uniap and its peers (Felzenszwalb, SLIC + RAG merging,
  a higra hierarchical watershed) and saved predictions, all as ``image -> (L, H, W)`` label
  maps, fine to coarse, plus scored masks for COCO.
* :mod:`~uniap.evaluation.proposals` -- masks of all levels, deduplicated and ranked.
* :mod:`~uniap.evaluation.benchmarks` -- what is measured per data set.
* :mod:`~uniap.evaluation.scoring` -- :func:`evaluate` over a data set, in parallel.
* :mod:`~uniap.evaluation.cli` -- the ``uniap-eval`` command (``docs/quality.md``).

From Python::

    from uniap.evaluation import BENCHMARKS, build_segmenter, evaluate, open_dataset
    ds = open_dataset("bsds500", "../shared/data/bsds500", ["val"], limit=10)
    result = evaluate(ds, build_segmenter("felzenszwalb"), BENCHMARKS["bsds500"](ds), workers=2)
    result["metrics"]["covering_ods"]
"""

from .benchmarks import BENCHMARKS
from .datasets import DATASETS, DataError, open_dataset
from .proposals import proposals_from_levels
from .scoring import EvaluationError, evaluate, format_table
from .segmenters import SEGMENTERS, Segmentation, build_segmenter, levels_from_records

__all__ = [
    "BENCHMARKS",
    "DATASETS",
    "DataError",
    "EvaluationError",
    "SEGMENTERS",
    "Segmentation",
    "build_segmenter",
    "evaluate",
    "format_table",
    "levels_from_records",
    "open_dataset",
    "proposals_from_levels",
]
