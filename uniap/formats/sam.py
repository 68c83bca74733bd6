"""``--format sam``: one SA-1B-like JSON per image (DESIGN.md 4).

``<out>/<stem>.json`` for each image (``--out`` is the file itself for one image), holding
``{"image", "uniap", "annotations"}``; read back by :func:`read_json`, merged by
:func:`merge` (``uniap-merge --format sam``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from .files import _SIGNATURE_RE, _annotations, per_image_paths, write_json
from .ids import as_id, stable_image_ids
from .registry import Format


def sam_document(image_info: dict, uniap_info: dict, records: list[dict]) -> dict:
    """The ``--format sam`` document of one image (DESIGN.md 4).

    Parameters
    ----------
    image_info : dict
        ``file_name``, ``height``, ``width`` and optionally ``image_id`` (and anything else,
        kept).  Without an ``image_id``, the image gets the stable id of its ``file_name``
        (:func:`stable_image_ids`), the id ``uniap-cli`` gives it.
    uniap_info : dict
        The run's settings (``uniap`` block).
    records : list of dict
        The masks.

    Returns
    -------
    dict
        ``{"image": {"image_id", "file_name", "height", "width", ...}, "uniap", "annotations"}``.

    Examples
    --------
    >>> doc = sam_document({"file_name": "a.jpg", "height": 4, "width": 6}, {}, [])
    >>> list(doc["image"]), isinstance(doc["image"]["image_id"], int)
    (['image_id', 'file_name', 'height', 'width'], True)
    """
    image = dict(image_info)
    if image.get("image_id") is None:
        if "file_name" not in image:
            raise ValueError("image_info needs an image_id or a file_name to derive one from")

        image["image_id"] = stable_image_ids([str(image["file_name"])])[0]
    image = {"image_id": image.pop("image_id"), **image}
    return {"image": image, "uniap": uniap_info, "annotations": records}


def write_image(path: str, out: Any) -> None:
    """``--format sam``: the SA-1B-like JSON of one image (``out``: :class:`uniap.pipeline.sinks.ImageOutput`)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json(path, sam_document(out.info, out.uniap, out.encoded.records))


def read_signature(path: str) -> str | None:
    """The settings' digest an existing SAM file recorded (None: not uniap's)."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)  # "image" and "uniap" come before the annotations
    match = _SIGNATURE_RE.search(head.split(b'"annotations"', 1)[0])
    return match.group(1).decode() if match else None


def read_json(path: Path, document: Any) -> list[tuple[dict, list[dict], dict | None]] | None:
    """The one record set of a SAM-style document, or None when ``document`` is not one."""
    if not (isinstance(document, dict) and "images" not in document
            and isinstance(document.get("image"), dict) and "annotations" in document):
        return None
    records = _annotations(path, document)
    image = dict(document["image"])
    if image.get("image_id") is not None:
        image["image_id"] = as_id(image["image_id"], f"{path}: \"image\".\"image_id\"")
    for i, rec in enumerate(records):
        if rec.get("id") is not None:
            rec["id"] = as_id(rec["id"], f"{path}: annotations[{i}].\"id\"")
    return [(image, records, document.get("uniap"))]


def merge(out: Path, sets: list, *, overwrite: bool, stem: Callable[[str], str], **_: Any) -> None:
    """``uniap-merge --format sam``: one SAM file per image in the folder ``out``."""
    paths = per_image_paths(out, sets, ".json", overwrite, stem)
    for (info, records, uniap), path in zip(sets, paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, sam_document(info, uniap, records))


FORMAT = Format(
    name="sam",
    help="one SA-1B-like JSON per image (default)",
    out="file-or-folder",
    image_suffix=".json",
    write_image=write_image,
    read_signature=read_signature,
    read_json=read_json,
    json_kind='a SAM-style file ("image", "annotations")',
    merge=merge,
)
