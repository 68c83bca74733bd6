"""``--format labelme``: one LabelMe JSON of polygons per image (LabelMe 5, CVAT imports it).

``<out>/<stem>.json`` for each image (``--out`` is the file itself for one image), as
``--format sam`` names them; every piece of every record is a ``polygon`` shape
(:func:`uniap.formats.polygons.labelme_document`), ``imagePath`` the image relative to the
JSON's folder.  The run's provenance is kept under ``uniap`` (before the shapes), so a rerun
skips finished files.  LabelMe files are not read back as records: a polygon is not the mask
it was traced from (``--format sam`` or ``amg`` keep the masks exactly).
"""

from __future__ import annotations

import os
from typing import Any

from .files import _SIGNATURE_RE, write_json
from .polygons import labelme_document, labelme_image_path
from .registry import Format


def write_image(path: str, out: Any) -> None:
    """``--format labelme``: one image's LabelMe JSON, ``imagePath`` pointing at the image
    (``out``: :class:`uniap.pipeline.sinks.ImageOutput`; its ``source`` is the image's file,
    None for a tar member, whose key is written instead)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image_path = labelme_image_path(path, getattr(out, "source", None), out.info["file_name"])
    write_json(path, labelme_document(out.info, out.uniap, out.encoded.records, image_path))


def read_signature(path: str) -> str | None:
    """The settings' digest an existing LabelMe file recorded (None: not uniap's)."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)  # "uniap" comes before the shapes
    match = _SIGNATURE_RE.search(head.split(b'"shapes"', 1)[0])
    return match.group(1).decode() if match else None


FORMAT = Format(
    name="labelme",
    help="one LabelMe JSON of polygons per image",
    out="file-or-folder",
    image_suffix=".json",
    write_image=write_image,
    read_signature=read_signature,
)
