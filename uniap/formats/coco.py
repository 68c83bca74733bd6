"""``--format coco``: one COCO data set of every image, written when the run ends.

Also :func:`coco_image_ids`, the image ids of a ground-truth COCO file (``--image-ids``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from .files import _annotations, _load_json, write_json
from .ids import as_id
from .registry import Format, PlanError

CATEGORY = {"id": 1, "name": "fg", "supercategory": "fg"}


SEMANTIC_CATEGORY = {"id": 2, "name": "semantic", "supercategory": "fg"}


# Keys the COCO writer adds to a record (``id`` becomes the data-set-wide annotation id).
_COCO_KEYS = ("uniap_id", "id", "image_id", "category_id", "iscrowd")


def coco_dataset(items: Iterable[tuple[dict, list[dict]]], uniap_info: dict | None = None) -> dict:
    """One COCO data set from ``(image_info, records)`` pairs, loadable by pycocotools.

    Images keep their ``image_id`` (an ``info`` without one gets its position from 1) and are
    listed by id; annotations follow by image id, then record ``id``, with ids counting from 1
    over the whole data set, so the same images give the same file whatever order (or shards)
    they came in.  Every annotation carries ``image_id``, ``category_id`` (1 "fg", 2
    "semantic" for ``kind == "semantic"``), ``iscrowd`` 0 and its ``score``, so the file also
    loads as results with ``COCO.loadRes``.  The "semantic" category is listed only when some
    record is semantic.  UniAP's per-image record ids become ``uniap_id`` (parents keep
    pointing at them).

    Raises
    ------
    ValueError
        Two images share an id, or an id is not an integer (:func:`as_id`).
    """
    numbered = []
    for position, (info, records) in enumerate(items, start=1):
        numbered.append((as_id(info.get("image_id", position), f"{info.get('file_name')!r}: image id"),
                         info, records))
    numbered.sort(key=lambda item: item[0])
    for (a, info_a, _), (b, info_b, _) in zip(numbered, numbered[1:]):
        if a == b:
            raise ValueError(f"image id {a} is given to both {info_a.get('file_name')!r} and "
                             f"{info_b.get('file_name')!r}")
    images, annotations, semantic = [], [], False
    for image_id, info, records in numbered:
        images.append({"id": image_id, **{k: v for k, v in info.items() if k != "image_id"}})
        for rec in sorted(records, key=lambda r: r.get("id", 0)):
            ann = dict(rec)
            ann["uniap_id"] = ann.pop("id", None)
            is_semantic = rec.get("kind") == "semantic"
            semantic |= is_semantic
            ann.update(id=len(annotations) + 1, image_id=image_id, category_id=2 if is_semantic else 1,
                       iscrowd=0)
            annotations.append(ann)
    categories = [CATEGORY, SEMANTIC_CATEGORY] if semantic else [CATEGORY]
    dataset = {"images": images, "categories": categories, "annotations": annotations}
    if uniap_info is not None:
        dataset["info"] = {"description": "UniAP pseudo-masks", "uniap": uniap_info}
    return dataset


def coco_image_ids(path: str | os.PathLike) -> dict[str, int]:
    """Image id by ``file_name`` of a COCO file (``images[].file_name`` -> ``images[].id``).

    ``uniap-cli --image-ids GT.json`` uses it so that pseudo-masks carry a ground truth's ids.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        ``path`` is not JSON, has no ``images`` list, an image lacks ``file_name`` or an
        integer ``id`` (of 64 bits), or two images share a ``file_name`` or an ``id``.
    """
    document = _load_json(path)
    images = document.get("images") if isinstance(document, dict) else None
    if not isinstance(images, list):
        raise ValueError(f"{path} is not a COCO file: it has no \"images\" list")
    ids: dict[str, int] = {}
    owner: dict[int, str] = {}
    for i, image in enumerate(images):
        name = image.get("file_name") if isinstance(image, dict) else None
        image_id = image.get("id") if isinstance(image, dict) else None
        if not isinstance(name, str) or not isinstance(image_id, int) or isinstance(image_id, bool):
            raise ValueError(f"{path}: images[{i}] needs a string \"file_name\" and an integer \"id\"")
        as_id(image_id, f"{path}: images[{i}].\"id\"")  # within 64 bits, as every writer needs
        if name in ids:
            raise ValueError(f"{path}: file_name {name!r} is listed twice (ids {ids[name]} and {image_id})")
        if image_id in owner:
            raise ValueError(f"{path}: image id {image_id} is given to both {owner[image_id]!r} and {name!r}")
        ids[name] = image_id
        owner[image_id] = name
    return ids


def _records_of_coco(path: Path, dataset: dict) -> list[tuple[dict, list[dict], dict | None]]:
    info_block = dataset.get("info")
    uniap_info = info_block.get("uniap") if isinstance(info_block, dict) else None
    by_id: dict[int, tuple[dict, list[dict], dict | None]] = {}
    for i, image in enumerate(dataset["images"]):
        if not isinstance(image, dict) or "id" not in image:
            raise ValueError(f"{path}: images[{i}] is not an object with an \"id\"")
        image_id = as_id(image["id"], f"{path}: images[{i}].\"id\"")
        info = {"image_id": image_id, **{k: v for k, v in image.items() if k != "id"}}
        if image_id in by_id:
            raise ValueError(f"{path}: image id {image_id} is listed twice")
        by_id[image_id] = (info, [], uniap_info)
    for i, ann in enumerate(_annotations(path, dataset)):
        image_id = as_id(ann.get("image_id"), f"{path}: annotations[{i}].\"image_id\"")
        entry = by_id.get(image_id)
        if entry is None:
            raise ValueError(f"{path}: annotation {ann.get('id')} names image id {image_id}, "
                             "which is not in \"images\"")
        if "uniap_id" in ann:  # ours: undo what coco_dataset added
            rec = {"id": ann["uniap_id"], **{k: v for k, v in ann.items() if k not in _COCO_KEYS}}
            if isinstance(rec.get("segmentation"), list):  # --polygons: the masks they draw, as RLE
                rec["segmentation"] = _polygon_rle(path, i, rec["segmentation"], entry[0])
        else:
            rec = {k: v for k, v in ann.items() if k != "image_id"}
        if rec.get("id") is not None:
            rec["id"] = as_id(rec["id"], f"{path}: annotations[{i}] id")
        entry[1].append(rec)
    return list(by_id.values())


def _polygon_rle(path: Path, i: int, polygons: list, image: dict) -> dict:
    """A COCO polygon segmentation of ours back as the RLE it rasterises to (pycocotools)."""
    from .polygons import polygons_to_rle

    try:
        return polygons_to_rle(polygons, int(image["height"]), int(image["width"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: annotations[{i}]: polygons that cannot be drawn: {err}") from None


def as_polygons(sets: Iterable[tuple]) -> list[tuple]:
    """Record sets ``(info, records, ...)`` with every RLE ``segmentation`` as COCO polygons
    (:func:`uniap.formats.polygons.polygon_record`; ``--polygons``); polygons stay as they are."""
    from .polygons import polygon_record

    return [(info, [polygon_record(rec) if isinstance(rec.get("segmentation"), dict) else rec
                    for rec in records], *rest) for info, records, *rest in sets]


def read_json(path: Path, document: Any) -> list[tuple[dict, list[dict], dict | None]] | None:
    """The record sets of a COCO data set, or None when ``document`` is not one."""
    if not (isinstance(document, dict) and "images" in document):
        return None
    if not isinstance(document["images"], list):
        raise ValueError(f"{path}: \"images\" must be a list, got {type(document['images']).__name__}")
    return _records_of_coco(path, document)


class CocoWriter:
    """``--format coco``: one data set of every image, written when the run ends.

    Images are listed by id and annotations by image id, then record id
    (:func:`coco_dataset`), whatever order the engine finished them in, so a run
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
        that arrive with RLE (the pipeline's workers make the polygons themselves,
        ``Settings.polygons``) are turned into polygons here.
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
            [(info, records, uniap)] = as_polygons([(info, records, uniap)])
        self.items.append((info, records, uniap))

    def discard(self, image_id: int) -> None:
        """An image of the run failed: nothing to do (nothing waits for it)."""

    def close(self) -> None:
        if not self.items:
            return
        done = sorted(self.items, key=lambda item: item[0]["image_id"])
        write_json(self.path, coco_dataset([(info, recs) for info, recs, _ in done], done[0][2]))


def merge(out: Path, sets: list, *, overwrite: bool, polygons: bool = False, **_: Any) -> None:
    """``uniap-merge --format coco``: one data set of every record set, in the file ``out``
    (``polygons``: segmentations as COCO polygons, ``--polygons``)."""
    if not out.parent.is_dir():
        raise ValueError(f"cannot write {out}: no folder {out.parent}")
    if polygons:
        sets = as_polygons(sets)
    write_json(out, coco_dataset([(info, records) for info, records, _ in sets],
                                 next((uniap for _, _, uniap in sets if uniap is not None), None)))


FORMAT = Format(
    name="coco",
    help="one COCO data set",
    out="file",
    collector=CocoWriter,
    read_json=read_json,
    json_kind='a COCO data set ("images")',
    merge=merge,
)
