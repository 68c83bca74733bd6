"""From images to masks: one image (:func:`segment_image`), or many through a streaming pipeline.

The pipeline is sources (files, folders, globs, file lists, tar shards) -> stages (decode,
features, pool, encode) -> sinks (SAM JSON, COCO, PNG label maps, pictures), composed by an
engine.  Stages and sinks know nothing of processes or queues, so every engine composes the
same pieces.
"""

from .image import ImageSegmentation, segment_image

__all__ = ["ImageSegmentation", "segment_image"]
