"""From images to masks: one image (:func:`segment_image`), or many through a streaming pipeline.

The pipeline is sources (files, folders, globs, file lists, tar shards:
:mod:`~uniap.pipeline.sources`) -> decode -> a segmenter (:class:`Segmenter`:
:mod:`~uniap.pipeline.segmenter`; UniAP's by default, :class:`UniapSegmenter`, built from the
:mod:`~uniap.pipeline.stages`) -> sinks (the formats' writers and pictures:
:mod:`~uniap.pipeline.sinks`), planned by :mod:`~uniap.pipeline.plan` (names, safety,
resuming) and scheduled by an engine (:class:`~uniap.pipeline.engine.LocalEngine`).  Stages,
segmenters and sinks know nothing of processes or queues, so every engine composes the same
pieces.
:func:`run` is the whole pipeline as one call; ``uniap-cli`` is a thin layer over it.
"""

from .engine import LocalEngine, Report
from .image import ImageSegmentation, segment_image
from .plan import Job, PlanError
from .runner import RunSummary, run
from .segmenter import Segmenter
from .sources import InputError, Item, decode, expand_inputs
from .stages import Settings, Stages, UniapSegmenter

__all__ = [
    "ImageSegmentation",
    "InputError",
    "Item",
    "Job",
    "LocalEngine",
    "PlanError",
    "Report",
    "RunSummary",
    "Segmenter",
    "Settings",
    "Stages",
    "UniapSegmenter",
    "decode",
    "expand_inputs",
    "run",
    "segment_image",
]
