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
    viz_style: str = "levels"  # how write_viz draws (uniap.viz.VIZ_STYLES)
    source: str | None = None  # the image's file (None for a tar member): LabelMe's imagePath


def write_viz(path: str, out: ImageOutput) -> None:
    """``--viz``: the image and each level's masks (then the contour regions' cuts), colours
    following regions across levels; or, ``viz_style="overlay"``, all masks over the image in
    one picture.  The signature goes in a PNG text chunk."""
    from .. import viz
    from .plan import viz_signature

    os.makedirs(os.path.dirname(path), exist_ok=True)
    if out.viz_style == "overlay":
        picture = viz.overlay(out.image, out.encoded.records)
    else:
        h = out.hierarchy
        titles = [out.info["file_name"].rsplit("/", 1)[-1]] + [
            f"t={lv.threshold:g}: {int((lv.sizes >= h.min_size).sum())} masks" for lv in h.levels
        ]
        levels, contours = _panel_maps(out.encoded, *out.image.shape[:2])
        if contours is not None:
            titles += [_contour_title(out.encoded.records, k) for k in range(len(contours))]
        picture = viz.hierarchy_panels(out.image, levels, titles, contour_labels=contours)
    viz.save_panels(path, picture, text={"uniap-signature": viz_signature(out.uniap["signature"], out.viz_style)})


def _panel_maps(encoded: Encoded, height: int, width: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The level and contour maps at the panels' size: a region graph's straight from its
    superpixels shrunk, never the full-size stacks (8 levels of an 8000 x 8000 image: 2 GB)."""
    from ..hierarchy import nearest_index
    from ..viz import panel_shape

    if encoded.regions is None:
        return encoded.pixel_labels, encoded.contour_labels
    ph, pw = panel_shape(height, width)
    regions = encoded.regions[nearest_index(ph, height)][:, nearest_index(pw, width)]
    contours = None if encoded.contour_cuts is None else np.take(encoded.contour_cuts, regions, axis=-1)
    return np.take(encoded.node_labels, regions, axis=-1), contours


def _contour_title(records: list[dict], cut: int) -> str:
    """Caption of contour cut ``cut``: its altitude and how many records it has."""
    mine = [r for r in records if r["kind"] == "contour" and cut in r["levels"]]
    altitude = next((r["threshold"] for r in mine if r["level"] == cut), None)
    return f"contours {cut}" + (f" a={altitude:.3g}" if altitude is not None else "") + f": {len(mine)} masks"


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
