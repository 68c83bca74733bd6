"""The sinks of the pipeline: one image's masks -> its files (SAM JSON, PNG label maps, picture).

Every sink writes atomically (a temporary beside the destination, then a rename: see
:func:`uniap.io.atomic_path`) and records the run's settings digest, so a rerun can tell a
finished output made with the same settings from anything else.  The COCO sink collects
records in the main process and writes one data set at the end.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import io
from .plan import PNG, SAM, SIGNATURE_FILE, VIZ
from .stages import Encoded


@dataclass
class ImageOutput:
    """What the sinks of one image see."""

    info: dict  # the COCO/SAM "image" entry: image_id, file_name, height, width
    uniap: dict  # provenance (stages.uniap_info), with the settings' signature
    image: np.ndarray
    hierarchy: Any
    encoded: Encoded


def write_sam(path: str, out: ImageOutput) -> None:
    """``--format sam``: the SA-1B-like JSON of one image."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    io.write_json(path, io.sam_document(out.info, out.uniap, out.encoded.records))


def write_png(path: str, out: ImageOutput) -> None:
    """``--format png``: a folder of 16-bit label maps, ``metadata.csv`` and ``uniap.json``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    extra = {SIGNATURE_FILE: io.json_text({"image": out.info, "uniap": out.uniap})}
    io.write_png(path, out.encoded.pixel_labels, out.encoded.records, out.encoded.semantic_labels,
                 extra_files=extra)


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


SINKS = {SAM: write_sam, PNG: write_png, VIZ: write_viz}


class CocoWriter:
    """``--format coco``: one data set of every image, written when the run ends.

    Images are listed in the order of their ids, whatever order the engine finished them in.
    """

    def __init__(self, path: str, shard: tuple[int, int] | None = None) -> None:
        self.path = path
        self.items: list[tuple[dict, list[dict], dict]] = []

    def add(self, info: dict, records: list[dict], uniap: dict) -> None:
        self.items.append((info, records, uniap))

    def close(self) -> None:
        if not self.items:
            return
        done = sorted(self.items, key=lambda item: item[0]["image_id"])
        io.write_json(self.path, io.coco_dataset([(info, recs) for info, recs, _ in done], done[0][2]))


# Formats whose records are collected from every image (in the main process) and written by
# one writer, rather than per image by the workers.
COLLECTORS = {"coco": CocoWriter}
