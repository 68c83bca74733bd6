"""Data set layouts that ``uniap-eval`` reads: BSDS500, COCO instances, image + label-map pairs.

Each loader finds the images of a data set folder (sorted, optionally limited), and knows how
to read one image's ground truth. Ground truth is read in the worker that evaluates the image,
so only paths travel between processes.

* ``bsds500`` -- ``images/<split>/<id>.jpg``, ``groundTruth/<split>/<id>_gt<k>.png`` (uint16 human
  segmentations) and ``boundaries/<split>/<id>_gt<k>.png`` (the human ``Boundaries``, used as
  given by the boundary benchmark). Splits: every folder of ``images/`` (``val`` and ``test``
  in the dev copy), or the ones named.
* ``coco`` -- ``instances.json`` and ``images/<file_name>`` (the dev copy), or the COCO release
  layout ``annotations/instances_<split>.json`` and ``<split>/<file_name>`` with ``--split``.
* ``labelmaps`` -- ``images/<split>/<name>.<ext>`` with ``labels/<split>/<name>.png`` (one class
  id per pixel), or flat ``images/`` and ``labels/``. Classes and the void label come from
  ``manifest.json`` (``classes``, ``void_id``: the CamVid copy) unless given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["DATASETS", "DataError", "Sample", "BSDS500", "Coco", "LabelMaps", "open_dataset"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


class DataError(ValueError):
    """The data folder does not hold the expected layout (a usage error for the CLI)."""


@dataclass
class Sample:
    """One image of a data set and where its ground truth lies."""

    key: str  # unique name: the stem, also the predictions file name <key>.json
    image: Path
    split: str | None = None
    truth: dict[str, Any] = field(default_factory=dict)


def _read_png(path: Path) -> np.ndarray:
    """A ground-truth map; its size is checked on the header against the image pixel limit
    (:data:`uniap.features.image.DEFAULT_MAX_PIXELS`) before it is decoded."""
    from ..features.image import open_image

    with open_image(path, str(path)) as im:
        return np.array(im)


def _splits(root: Path, wanted: Sequence[str] | None, what: str) -> list[str]:
    present = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if wanted is None:
        if not present:
            raise DataError(f"no split folder in {root}")
        return present
    missing = [s for s in wanted if s not in present]
    if missing:
        raise DataError(f"{what} has no split {missing[0]!r} (found: {', '.join(present) or 'none'})")
    return list(wanted)


def _manifest(root: Path) -> dict:
    path = root / "manifest.json"
    if not path.is_file():
        return {}
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {path}: {err}") from None
    return data if isinstance(data, dict) else {}


def _coco_truth(ann: Path, image: dict) -> dict:
    """A COCO image's id and size, checked: integer id (never truncated), positive integer
    height and width within the image pixel limit (the label maps of saved predictions are
    allocated at this size before anything else is read)."""
    from ..features.image import DEFAULT_MAX_PIXELS, check_pixels
    from ..formats.ids import as_id

    name = image.get("file_name")
    try:
        truth = {"image_id": as_id(image.get("id"), "its id")}
        for key in ("height", "width"):
            value = image.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"its {key} must be a positive integer, got {value!r:.40}")
            truth[key] = value
        check_pixels((truth["height"], truth["width"]), DEFAULT_MAX_PIXELS, name)
    except ValueError as err:
        raise DataError(f"{ann}: image {name!r}: {err}") from None
    return truth


def _limit(samples: list[Sample], limit: int | None) -> list[Sample]:
    if not samples:
        raise DataError("no images found")
    return samples[:limit] if limit else samples


class BSDS500:
    """Berkeley Segmentation Data Set 500 (Arbelaez et al., TPAMI 2011), converted to PNG."""

    name = "bsds500"

    def __init__(self, root: Path, splits: Sequence[str] | None = None, limit: int | None = None):
        self.root = Path(root)
        if not (self.root / "images").is_dir() or not (self.root / "groundTruth").is_dir():
            raise DataError(f"{self.root} is not a BSDS500 folder (needs images/ and groundTruth/)")
        self.splits = _splits(self.root / "images", splits, str(self.root))
        if splits is None:  # the manifest's order (val before test in the dev copy)
            order = list(_manifest(self.root).get("splits") or [])
            self.splits.sort(key=lambda s: (order.index(s) if s in order else len(order), s))
        samples = []
        for split in self.splits:
            for image in sorted((self.root / "images" / split).glob("*.jpg"), key=lambda p: p.stem):
                gts = sorted((self.root / "groundTruth" / split).glob(f"{image.stem}_gt*.png"),
                             key=lambda p: int(p.stem.rsplit("_gt", 1)[1]))
                if not gts:
                    raise DataError(f"no human segmentation for {image.name} in groundTruth/{split}")
                bds = [self.root / "boundaries" / split / p.name for p in gts]
                samples.append(Sample(image.stem, image, split, {
                    "segmentations": gts, "boundaries": bds if all(b.is_file() for b in bds) else None,
                }))
        self.samples = _limit(samples, limit)

    @staticmethod
    def load_truth(sample: Sample) -> dict:
        """``segmentations``: the K human label maps; ``boundaries``: their boundary maps or None."""
        segs = [_read_png(p) for p in sample.truth["segmentations"]]
        bds = sample.truth["boundaries"]
        return {"segmentations": segs, "boundaries": None if bds is None else [_read_png(p) != 0 for p in bds]}


class Coco:
    """COCO instances (Lin et al., ECCV 2014): one json with images and instance annotations."""

    name = "coco"

    def __init__(self, root: Path, splits: Sequence[str] | None = None, limit: int | None = None):
        self.root = Path(root)
        if splits is None:
            ann, images = self.root / "instances.json", self.root / "images"
        elif len(splits) == 1:
            ann = self.root / "annotations" / f"instances_{splits[0]}.json"
            images = self.root / splits[0]
        else:
            raise DataError("coco takes one --split (e.g. val2017)")
        if not ann.is_file():
            raise DataError(f"{self.root} is not a COCO folder: no {ann.relative_to(self.root)}")
        if not images.is_dir():
            raise DataError(f"{self.root} is not a COCO folder: no {images.relative_to(self.root)}/")
        self.splits = list(splits or [])
        self.annotations = ann
        try:
            with open(ann, "rb") as fh:
                data = json.load(fh)
        except (OSError, ValueError) as err:  # JSONDecodeError, UnicodeDecodeError
            raise DataError(f"cannot read {ann}: {err}") from None
        try:
            entries = sorted(data["images"], key=lambda im: im["file_name"])
        except (KeyError, TypeError):
            raise DataError(f"{ann} is not a COCO instances file (no images with file_name)") from None
        stems = [Path(im["file_name"]).stem for im in entries]
        if len(set(stems)) != len(stems):
            raise DataError(f"{ann}: several images share a file name stem")
        samples = []
        for im, stem in zip(entries, stems):
            path = images / im["file_name"]
            samples.append(Sample(stem, path, None, _coco_truth(ann, im)))
        self.samples = _limit(samples, limit)
        missing = [s.image for s in self.samples if not s.image.is_file()]
        if missing:
            raise DataError(f"{len(missing)} image(s) of {ann.name} are missing, e.g. {missing[0]}")

    @staticmethod
    def load_truth(sample: Sample) -> dict:
        return dict(sample.truth)


class LabelMaps:
    """Images with one class-id PNG each (CamVid, Cityscapes-like, ...): semantic ground truth."""

    name = "labelmaps"

    def __init__(self, root: Path, splits: Sequence[str] | None = None, limit: int | None = None,
                 num_classes: int | None = None, ignore_index: int | None = None):
        self.root = Path(root)
        images, labels = self.root / "images", self.root / "labels"
        if not images.is_dir() or not labels.is_dir():
            raise DataError(f"{self.root} is not a label-map folder (needs images/ and labels/)")
        flat = any(p.suffix.lower() in IMAGE_SUFFIXES for p in images.iterdir() if p.is_file())
        if flat:
            if splits is not None:
                raise DataError(f"{images} holds images directly, not split folders; leave out --split")
            self.splits: list[str] = []
            pairs = [(images, labels, None)]
        else:
            self.splits = _splits(images, splits, str(self.root))
            pairs = [(images / s, labels / s, s) for s in self.splits]
        samples = []
        for img_dir, lab_dir, split in pairs:
            for image in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
                label = lab_dir / f"{image.stem}.png"
                if not label.is_file():
                    raise DataError(f"no label map {label} for {image.name}")
                samples.append(Sample(image.stem, image, split, {"labels": label}))
        keys = [s.key for s in samples]
        if len(set(keys)) != len(keys):
            raise DataError("several images share a name; predictions are named by stem")
        self.samples = _limit(samples, limit)

        manifest = _manifest(self.root)
        self.class_names: list[str] | None = None
        if num_classes is None and isinstance(manifest.get("classes"), list):
            self.class_names = [str(c.get("name", i)) if isinstance(c, dict) else str(c)
                                for i, c in enumerate(manifest["classes"])]
            num_classes = len(self.class_names)
        if ignore_index is None and manifest.get("void_id") is not None:
            ignore_index = int(manifest["void_id"])
        if num_classes is None:
            raise DataError(f"no manifest.json with classes in {self.root}; give --num-classes")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index

    @staticmethod
    def load_truth(sample: Sample) -> dict:
        return {"labels": _read_png(sample.truth["labels"])}


DATASETS = {"bsds500": BSDS500, "coco": Coco, "labelmaps": LabelMaps}


def open_dataset(name: str, root, splits: Sequence[str] | None = None, limit: int | None = None,
                 **kwargs: Any):
    """The data set ``name`` (``bsds500``, ``coco`` or ``labelmaps``) in folder ``root``.

    Raises
    ------
    DataError
        If ``root`` is missing or does not hold the layout, or a split or file is missing.
    """
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose one of {sorted(DATASETS)}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"no such data folder: {root}")
    return DATASETS[name](root, splits, limit, **kwargs)
