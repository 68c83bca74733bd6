"""The sinks of the pipeline: one image's masks -> its files, as the registry of formats says.

Each format's writer lives in its module of :mod:`uniap.formats`; this module gathers them
by output kind.  Every sink writes atomically (a temporary beside the destination, then a
rename: see :func:`uniap.formats.files.atomic_path`) and records the run's settings digest,
so a rerun can tell a finished output made with the same settings from anything else.  The
collected formats (:data:`COLLECTORS`: COCO, Parquet) gather records in the main process:
one COCO data set at the end, Parquet part files as their images are in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..formats import formats, get, png, sam
from ..formats.coco import CocoWriter  # noqa: F401  (its old home)
from ..formats.parquet import _PART_RE, IMAGES_PER_PART, ParquetWriter  # noqa: F401  (their old home)
from .plan import VIZ
from .stages import Encoded


@dataclass
class ImageOutput:
    """What the sinks of one image see."""

    info: dict  # the COCO/SAM "image" entry: image_id, file_name, height, width
    uniap: dict  # provenance (stages.uniap_info), with the settings' signature
    image: np.ndarray
    hierarchy: Any
    encoded: Encoded


def write_viz(path: str, out: ImageOutput) -> None:
    """``--viz``: the image and each level's masks, coloured; the signature in a PNG text chunk."""
    from .. import viz

    h = out.hierarchy
    titles = [out.info["file_name"].rsplit("/", 1)[-1]] + [
        f"t={lv.threshold:g}: {int((lv.sizes >= h.min_size).sum())} masks" for lv in h.levels
    ]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sheet = viz.hierarchy_panels(out.image, out.encoded.pixel_labels, titles)
    viz.save_panels(path, sheet, text={"uniap-signature": out.uniap["signature"]})


def sink(kind: str):
    """The writer of output kind ``kind``: a per-image format's, or the picture's (``"viz"``)."""
    return write_viz if kind == VIZ else get(kind).write_image


# Per-image writers by output kind, as registered when this module loaded (use :func:`sink`).
SINKS = {**{fmt.name: fmt.write_image for fmt in formats() if fmt.write_image is not None}, VIZ: write_viz}
write_sam, write_png = sam.write_image, png.write_image  # their old names


# Formats whose records are collected from every image (in the main process) and written by
# one writer, rather than per image by the workers.  Each is built as
# ``COLLECTORS[format](out, shard=..., image_ids=..., overwrite=...)`` and has ``existing``,
# ``add``, ``discard`` and ``close`` (:mod:`uniap.formats.registry`).  As registered when this
# module loaded: the pipeline asks the registry (``uniap.formats.get(name).collector``).
COLLECTORS = {fmt.name: fmt.collector for fmt in formats() if fmt.collector is not None}
