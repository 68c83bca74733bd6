"""The sinks of the pipeline: one image's masks -> its files (SAM JSON, PNG label maps, picture).

Every sink writes atomically (a temporary beside the destination, then a rename: see
:func:`uniap.io.atomic_path`) and records the run's settings digest, so a rerun can tell a
finished output made with the same settings from anything else.  The collected formats
(:data:`COLLECTORS`: COCO, Parquet) gather records in the main process: one COCO data set at
the end, Parquet part files as their images are in.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .. import io
from .plan import AMG, LABELME, PNG, SAM, SIGNATURE_FILE, VIZ, PlanError
from .stages import Encoded


@dataclass
class ImageOutput:
    """What the sinks of one image see."""

    info: dict  # the COCO/SAM "image" entry: image_id, file_name, height, width
    uniap: dict  # provenance (stages.uniap_info), with the settings' signature
    image: np.ndarray
    hierarchy: Any
    encoded: Encoded
    source: str | None = None  # the image's file (None for a tar member): LabelMe's imagePath


def write_sam(path: str, out: ImageOutput) -> None:
    """``--format sam``: the SA-1B-like JSON of one image."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    io.write_json(path, io.sam_document(out.info, out.uniap, out.encoded.records))


def write_png(path: str, out: ImageOutput) -> None:
    """``--format png``: a folder of 16-bit label maps, ``metadata.csv`` and ``uniap.json``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    extra = {SIGNATURE_FILE: io.json_text({"image": out.info, "uniap": out.uniap})}
    io.write_png(path, out.encoded.pixel_labels, out.encoded.records, out.encoded.semantic_labels,
                 extra_files=extra, contour_labels=out.encoded.contour_labels)


def write_amg(path: str, out: ImageOutput) -> None:
    """``--format amg``: segment-anything's ``amg.py`` folder, one PNG per mask and ``metadata.csv``."""
    from ..formats.amg import write_amg as write

    os.makedirs(os.path.dirname(path), exist_ok=True)
    write(path, out.encoded.records, image=out.info, uniap=out.uniap)


def write_labelme(path: str, out: ImageOutput) -> None:
    """``--format labelme``: a LabelMe JSON of polygons, ``imagePath`` pointing at the image."""
    from ..formats.polygons import labelme_document, labelme_image_path

    os.makedirs(os.path.dirname(path), exist_ok=True)
    image_path = labelme_image_path(path, out.source, out.info["file_name"])
    io.write_json(path, labelme_document(out.info, out.uniap, out.encoded.records, image_path))


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


SINKS = {SAM: write_sam, PNG: write_png, AMG: write_amg, LABELME: write_labelme, VIZ: write_viz}


# Image rows per Parquet part file (ParquetWriter's default).
IMAGES_PER_PART = 1000
_PART_RE = re.compile(r"part-(\d{5,})(?:-of-(\d{5,})-(\d{5,}))?\.parquet")


class CocoWriter:
    """``--format coco``: one data set of every image, written when the run ends.

    Images are listed by id and annotations by image id, then record id
    (:func:`uniap.io.coco_dataset`), whatever order the engine finished them in, so a run
    and ``uniap-merge`` of its shards write the same file.

    Parameters
    ----------
    path : str
        The data set file.
    shard : (i, n), optional
        Unused: each shard names its own file.
    image_ids : list of int, optional
        Unused (the order comes from the ids themselves).
    overwrite : bool
        Replace an existing ``path``; without it the writer refuses it (PlanError).
    polygons : bool
        Segmentations as COCO polygons (:mod:`uniap.formats.polygons`) instead of RLE: records
        that arrive with RLE (the pipeline's workers make the polygons themselves) are turned
        into polygons here.
    """

    def __init__(self, path: str, shard: tuple[int, int] | None = None,
                 image_ids: Sequence[int] | None = None, overwrite: bool = False,
                 polygons: bool = False) -> None:
        if not overwrite and self.existing(path, shard):
            raise PlanError(f"{path} exists; pass --overwrite to replace it")
        self.path = path
        self.polygons = polygons
        self.items: list[tuple[dict, list[dict], dict]] = []

    @staticmethod
    def existing(path: str, shard: tuple[int, int] | None = None) -> str | None:
        """The file a run would replace (``path`` itself when it exists)."""
        return path if os.path.exists(path) else None

    def add(self, info: dict, records: list[dict], uniap: dict) -> None:
        if self.polygons:
            from ..formats.polygons import polygon_record

            records = [polygon_record(rec) if isinstance(rec.get("segmentation"), dict) else rec
                       for rec in records]
        self.items.append((info, records, uniap))

    def discard(self, image_id: int) -> None:
        """An image of the run failed: nothing to do (nothing waits for it)."""

    def close(self) -> None:
        if not self.items:
            return
        done = sorted(self.items, key=lambda item: item[0]["image_id"])
        io.write_json(self.path, io.coco_dataset([(info, recs) for info, recs, _ in done], done[0][2]))


class ParquetWriter:
    """``--format parquet``: part files of one row per record, written as the run goes.

    Part ``k`` holds the images of ranks ``[k*N, (k+1)*N)`` of ``image_ids`` (the jobs in plan
    order), sorted by image id, and is written as soon as all of them have been added or
    discarded; so at most a few parts are buffered, and the files are the same whatever order
    the engine (local or Ray) finishes images in.  Parts are ``part-00000.parquet``, ... in the
    ``out`` folder, ``part-<i>-of-<n>-00000.parquet``, ... for ``shard=(i, n)``; every part is
    written, an empty one (all its images failed) too.  Columns: :mod:`uniap.io`.

    Parameters
    ----------
    out : str
        The folder of the parts.
    shard : (i, n), optional
        The shard of the run: names the parts so that shards never write the same file.
    image_ids : list of int, optional
        Every job's image id in plan order.  Without it images are kept until :meth:`close`
        and parts are slices of them by image id (the same files, memory not bounded).
    overwrite : bool
        Replace existing parts of this shard (and remove those a larger earlier run left);
        without it existing parts are refused (PlanError).
    images_per_part : int, optional
        N (default :data:`IMAGES_PER_PART`).

    Raises
    ------
    ImportError
        pyarrow is not installed (``pip install 'uniap[parquet]'``), before any image is read.
    """

    def __init__(self, out: str, shard: tuple[int, int] | None = None,
                 image_ids: Sequence[int] | None = None, overwrite: bool = False,
                 images_per_part: int | None = None) -> None:
        io.pyarrow_modules()  # fail before the first image
        self.out = out
        self.shard = shard
        self.overwrite = overwrite
        self.per_part = int(images_per_part or IMAGES_PER_PART)
        if self.per_part < 1:
            raise ValueError(f"images_per_part must be at least 1, got {images_per_part}")
        if not overwrite and (clash := self.existing(out, shard)):
            raise PlanError(f"{clash} exists; pass --overwrite to replace it or choose another --out")
        self._pending: dict[int, list[tuple[dict, list[dict], dict]]] = {}
        self._written: set[int] = set()
        self._part_of: dict[int, int] | None = None
        if image_ids is not None:
            self._part_of = {}
            for rank, image_id in enumerate(image_ids):
                if image_id in self._part_of:
                    raise ValueError(f"image id {image_id} is listed twice in image_ids")
                self._part_of[image_id] = rank // self.per_part
            self._parts = -(-len(self._part_of) // self.per_part)
            self._waiting = [min(self.per_part, len(self._part_of) - k * self.per_part)
                             for k in range(self._parts)]

    def part_name(self, k: int) -> str:
        if self.shard is None:
            return f"part-{k:05d}.parquet"
        return f"part-{self.shard[0]:05d}-of-{self.shard[1]:05d}-{k:05d}.parquet"

    @staticmethod
    def existing(out: str, shard: tuple[int, int] | None = None) -> str | None:
        """A part file in ``out`` that a run of ``shard`` would replace or mix with, if any.

        An unsharded run clashes with every part; shard ``i/n`` with its own parts, unsharded
        parts and parts of another shard count.
        """
        try:
            names = sorted(os.listdir(out))
        except (FileNotFoundError, NotADirectoryError):
            return None
        for name in names:
            match = _PART_RE.fullmatch(name)
            if match is None:
                continue
            if shard is None or match.group(2) is None or int(match.group(2)) != shard[1] \
                    or int(match.group(1)) == shard[0]:
                return os.path.join(out, name)
        return None

    def add(self, info: dict, records: list[dict], uniap: dict) -> None:
        k = self._part(info["image_id"])
        self._pending.setdefault(k, []).append((info, records, uniap))
        self._arrived(k)

    def discard(self, image_id: int) -> None:
        """An image of the run failed: its part no longer waits for it."""
        if self._part_of is not None:
            self._arrived(self._part(image_id))

    def close(self) -> None:
        """Write the parts still open (their missing images failed), then tidy up."""
        if self._part_of is None:
            done = sorted((item for items in self._pending.values() for item in items),
                          key=lambda item: item[0]["image_id"])
            self._pending = {}
            for k in range(-(-len(done) // self.per_part)):
                self._write(k, done[k * self.per_part:(k + 1) * self.per_part])
        else:
            for k in range(self._parts):
                if k not in self._written:
                    self._write(k, self._pending.pop(k, []))
        if self.overwrite:
            self._remove_stale()

    def _part(self, image_id: int) -> int:
        if self._part_of is None:
            return 0
        try:
            return self._part_of[image_id]
        except KeyError:
            raise ValueError(f"image id {image_id} is not one of the run's image_ids") from None

    def _arrived(self, k: int) -> None:
        if self._part_of is None:
            return
        self._waiting[k] -= 1
        if self._waiting[k] == 0:
            self._write(k, self._pending.pop(k, []))

    def _write(self, k: int, items: list[tuple[dict, list[dict], dict]]) -> None:
        items = sorted(items, key=lambda item: item[0]["image_id"])
        path = os.path.join(self.out, self.part_name(k))
        if not self.overwrite and os.path.exists(path):
            raise FileExistsError(f"{path} appeared during the run; not replaced")
        io.write_parquet(path, [(info, recs) for info, recs, _ in items], items[0][2] if items else None)
        self._written.add(k)

    def _remove_stale(self) -> None:
        """Parts of this shard beyond this run's (and, unsharded, every shard's part)."""
        mine = {self.part_name(k) for k in self._written}
        for name in os.listdir(self.out):
            match = _PART_RE.fullmatch(name)
            if match is None or name in mine:
                continue
            own = (match.group(2) is None) if self.shard is None else (
                match.group(2) is not None and int(match.group(1)) == self.shard[0]
                and int(match.group(2)) == self.shard[1])
            if own or self.shard is None:
                os.unlink(os.path.join(self.out, name))


# Formats whose records are collected from every image (in the main process) and written by
# one writer, rather than per image by the workers.  Each is built as
# ``COLLECTORS[format](out, shard=..., image_ids=..., overwrite=...)`` and has ``existing``,
# ``add``, ``discard`` and ``close``.
COLLECTORS = {"coco": CocoWriter, "parquet": ParquetWriter}
