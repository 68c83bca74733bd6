"""``--format amg``: segment-anything's ``scripts/amg.py`` folders, one PNG per mask.

``amg.py`` (``write_masks_to_folder``) writes, for every image, a folder named after the image's
stem holding ``0.png``, ``1.png``, ... (one binary mask each: 0 and 255, 8-bit greyscale, in
the order of the records) and a ``metadata.csv`` whose header is :data:`HEADER` and whose row
``i`` describes ``i.png``: ``id`` (``i``), ``area``, the XYWH ``bbox``, the ``point_coords``
(``point_input_x``, ``point_input_y``), ``predicted_iou``, ``stability_score`` and the XYWH
``crop_box``, each as Python's ``str`` of SAM's value (integers for areas and boxes, floats for
points and scores), rows joined by ``"\\n"`` with no newline after the last, as ``amg.py``
writes them.  Tools that read SAM's folders read these unchanged.

uniap adds one hidden file, :data:`SIDECAR` (``.uniap.json``): the image entry (``image_id``,
``file_name``, ``height``, ``width``), the run's provenance (with its settings signature, so a
rerun knows a finished folder) and the record keys that ``metadata.csv`` has no column for
(``level``, ``levels``, ``kind``, ``parent``, ``score``, ...), so :func:`read_amg` gives back the
records exactly.  A folder written by ``amg.py`` itself has no sidecar and reads back with
SAM's keys only (its ``file_name`` is the folder's name, its size that of its masks).

Each folder is built beside its destination and renamed into place
(:func:`uniap.formats.files.atomic_path`), so no half-written folder is ever left.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .registry import Format, PlanError

__all__ = ["FORMAT", "HEADER", "check_records", "is_amg_folder", "merge", "metadata_text", "read_amg",
           "read_signature", "write_amg", "write_image"]

HEADER = ("id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,"
          "stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h")
COLUMNS = tuple(HEADER.split(","))
METADATA = "metadata.csv"
SIDECAR = ".uniap.json"
# The names an amg folder holds (anything else in a folder to be replaced is not uniap's).
FOLDER_FILE = re.compile(r"\d+\.png|metadata\.csv")
# Record keys that metadata.csv and the PNGs hold; the sidecar keeps the others.
_AMG_KEYS = ("segmentation", "area", "bbox", "point_coords", "predicted_iou", "stability_score",
             "crop_box")


def _text(value: Any, integer: bool) -> str:
    """``str`` of a value as SAM's record holds it: boxes and areas are integers there (an
    integral float is written as its integer), points and scores floats."""
    if integer:
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return str(int(value))
        raise ValueError(f"expected an integer, got {value!r}")
    return str(float(value))


def metadata_text(records: list[dict]) -> str:
    """``metadata.csv`` of ``records``, byte for byte as ``amg.py`` writes it.

    Parameters
    ----------
    records : list of dict
        SAM-style records (``area``, ``bbox``, ``point_coords``, ``predicted_iou``,
        ``stability_score``, ``crop_box``); row ``i`` is ``records[i]``.

    Returns
    -------
    str
        The header and one row per record, joined by ``"\\n"``, no newline after the last.

    Raises
    ------
    ValueError
        A record lacks one of these keys, or a box or area is not an integer.

    Examples
    --------
    >>> rec = {"area": 6, "bbox": [1.0, 2.0, 3.0, 2.0], "point_coords": [[2.0, 3.0]],
    ...        "predicted_iou": 0.75, "stability_score": 1.0, "crop_box": [0, 0, 8, 5]}
    >>> print(metadata_text([rec]))
    id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h
    0,6,1,2,3,2,2.0,3.0,0.75,1.0,0,0,8,5
    """
    rows = [HEADER]
    for i, rec in enumerate(records):
        try:
            fields = [str(i), _text(rec["area"], True), *(_text(v, True) for v in _four(rec["bbox"], "bbox")),
                      *(_text(v, False) for v in _point(rec["point_coords"])),
                      _text(rec["predicted_iou"], False), _text(rec["stability_score"], False),
                      *(_text(v, True) for v in _four(rec["crop_box"], "crop_box"))]
        except KeyError as err:
            raise ValueError(f"record {rec.get('id', i)} has no {err.args[0]!r}, which metadata.csv needs") from None
        except (TypeError, ValueError) as err:
            raise ValueError(f"record {rec.get('id', i)}: {err}") from None
        rows.append(",".join(fields))
    return "\n".join(rows)


def check_records(records: list[dict]) -> str:
    """Raise ValueError naming the record unless every record can be written (the keys
    ``metadata.csv`` needs, a COCO RLE ``segmentation``).

    Parameters
    ----------
    records : list of dict
        The records of one image.

    Returns
    -------
    str
        ``metadata.csv``'s text (:func:`metadata_text`).
    """
    from ..rle import check_rle

    text = metadata_text(records)
    for i, rec in enumerate(records):
        try:
            check_rle(rec.get("segmentation"))
        except ValueError as err:
            raise ValueError(f"record {rec.get('id', i)}: {err}") from None
    return text


def _four(values: Any, name: str) -> list:
    if not isinstance(values, (list, tuple)) or len(values) != 4:
        raise ValueError(f"{name} must be 4 numbers, got {values!r}")
    return list(values)


def _point(point_coords: Any) -> list:
    if not isinstance(point_coords, (list, tuple)) or not point_coords or len(point_coords[0]) != 2:
        raise ValueError(f"point_coords must be [[x, y], ...], got {point_coords!r}")
    return list(point_coords[0])


def write_amg(folder: str | os.PathLike, records: list[dict], image: dict | None = None,
              uniap: dict | None = None) -> None:
    """Write one image's records as ``amg.py``'s folder (module docstring), atomically.

    Parameters
    ----------
    folder : path
        The image's folder (``<out>/<image stem>``); replaced whole when it exists.
    records : list of dict
        SAM-style records (:mod:`uniap.records`), written in this order: ``i.png`` and row
        ``i`` are ``records[i]``.
    image : dict, optional
        The image entry (``image_id``, ``file_name``, ``height``, ``width``) for the sidecar.
    uniap : dict, optional
        The run's provenance for the sidecar.  Without ``image`` and ``uniap`` the sidecar
        still holds the records' other keys.

    Raises
    ------
    ValueError
        A record lacks a key ``metadata.csv`` needs, or its segmentation is not a COCO RLE
        (nothing is written then).

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from uniap.records import encode_rle
    >>> mask = np.zeros((1, 4, 5), bool); mask[0, 1:3, 2:4] = True
    >>> rec = {"id": 0, "segmentation": encode_rle(mask)[0], "area": 4, "bbox": [2.0, 1.0, 2.0, 2.0],
    ...        "predicted_iou": 1.0, "stability_score": 1.0, "point_coords": [[2.0, 1.0]],
    ...        "crop_box": [0, 0, 5, 4]}
    >>> out = Path(tempfile.mkdtemp()) / "img"
    >>> write_amg(out, [rec])
    >>> sorted(p.name for p in out.iterdir())
    ['.uniap.json', '0.png', 'metadata.csv']
    >>> read_amg(out)[1][0]["area"]
    4
    """
    from PIL import Image

    from ..rle import decode_rle
    from .files import atomic_path, json_text

    text = check_records(records)  # every record checked before anything is written
    extras = [{k: v for k, v in rec.items() if k not in _AMG_KEYS} for rec in records]
    sidecar = {"image": image, "uniap": uniap, "records": extras}
    with atomic_path(folder, directory=True) as tmp:
        for i, rec in enumerate(records):
            mask = decode_rle(rec["segmentation"]).view(np.uint8) * np.uint8(255)
            Image.fromarray(mask).save(tmp / f"{i}.png")
        (tmp / METADATA).write_text(text)  # text mode: "\n" as amg.py, no trailing newline
        (tmp / SIDECAR).write_text(json_text(sidecar))


def is_amg_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a ``metadata.csv`` that starts with ``amg.py``'s header.

    Parameters
    ----------
    folder : path
        The folder to look at.

    Returns
    -------
    bool
    """
    try:
        with open(Path(folder) / METADATA, "rb") as f:
            return f.readline().rstrip(b"\r\n") == HEADER.encode()
    except OSError:
        return False


def read_signature(folder: str | os.PathLike) -> str | None:
    """The settings signature in a folder's sidecar, or None (no sidecar, not uniap's).

    Parameters
    ----------
    folder : path
        An amg folder.

    Returns
    -------
    str or None
    """
    try:
        with open(Path(folder) / SIDECAR, "rb") as f:
            document = json.loads(f.read())
        value = document["uniap"]["signature"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, str) else None


def read_amg(folder: str | os.PathLike, name: str | None = None) -> tuple[dict, list[dict], dict | None]:
    """One ``amg.py`` folder back as ``(image_info, records, provenance)``.

    The masks are read from the PNGs (a pixel is in the mask when it is not 0) and encoded as
    COCO RLE; the other SAM keys come from ``metadata.csv`` (``bbox`` as floats, as uniap's
    records hold it), the remaining record keys and the image entry from the sidecar when
    there is one.  A folder written by ``amg.py`` reads back too: its ``file_name`` is
    ``name`` (default: the folder's name), its ``height`` and ``width`` those of its masks.

    Parameters
    ----------
    folder : path
        The image's folder.
    name : str, optional
        The ``file_name`` of a folder without uniap's sidecar (default: the folder's name).

    Returns
    -------
    (dict, list of dict, dict or None)
        The image entry, the records in row order, the run's provenance (None without a
        sidecar).

    Raises
    ------
    ValueError
        No ``metadata.csv`` with ``amg.py``'s header, a row that is not 14 numbers, a row's
        PNG missing, unreadable or of another size than the others, a row's ``area`` that is
        not its PNG's, or a sidecar that is not JSON.  The message names the file.
    """
    from PIL import Image

    from ..rle import encode_rle

    folder = Path(folder)
    path = folder / METADATA
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise ValueError(f"{folder} is not an amg.py folder: no {METADATA}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not text: {err}") from None
    if not lines or lines[0] != HEADER:
        raise ValueError(f"{path} does not start with amg.py's header {HEADER!r}")
    sidecar = _read_sidecar(folder)
    extras = sidecar.get("records") if isinstance(sidecar.get("records"), list) else None
    rows = [line for line in lines[1:] if line.strip()]
    if extras is not None and len(extras) != len(rows):
        extras = None  # the folder was edited after uniap wrote it: its CSV and PNGs decide
    records: list[dict] = []
    shape: tuple[int, int] | None = None
    for n, line in enumerate(rows, start=2):
        values = line.split(",")
        try:
            if len(values) != len(COLUMNS):
                raise ValueError(f"{len(values)} fields, not {len(COLUMNS)}")
            number = [float(v) for v in values]
            ints = [int(v) for k, v in zip(COLUMNS, values) if k in ("id", "area") or "box" in k]
        except ValueError as err:
            raise ValueError(f"{path}, line {n}: not amg.py's row ({err})") from None
        row_id, area = ints[0], ints[1]
        png = folder / f"{row_id}.png"
        try:
            with Image.open(png) as img:
                mask = np.asarray(img)
        except FileNotFoundError:
            raise ValueError(f"{path}, line {n}: its mask {png.name} is missing") from None
        except OSError as err:
            raise ValueError(f"{png} is not a readable PNG: {err}") from None
        if mask.ndim == 3:  # a colour PNG (cv2.imwrite of a 3-channel mask): any channel set
            mask = mask.any(axis=2)
        if shape is not None and mask.shape != shape:
            raise ValueError(f"{png} is {mask.shape[1]}x{mask.shape[0]}, the other masks "
                             f"{shape[1]}x{shape[0]}")
        shape = mask.shape
        mask = mask != 0
        if int(mask.sum()) != area:
            raise ValueError(f"{path}, line {n}: area {area}, but {png.name} has {int(mask.sum())} pixels")
        rec = {"id": row_id, "segmentation": encode_rle(mask[None])[0], "area": area,
               "bbox": number[2:6], "predicted_iou": number[8],
               "point_coords": [number[6:8]], "stability_score": number[9], "crop_box": ints[6:10]}
        if extras is not None and isinstance(extras[n - 2], dict):
            rec.update(extras[n - 2])
        records.append(rec)
    if extras is not None:  # uniap's order: the record's own keys, as the writer had them
        records = [_sam_order(rec) for rec in records]
    image = sidecar.get("image") if isinstance(sidecar.get("image"), dict) else None
    if image is None:
        height, width = shape if shape is not None else (None, None)
        image = {"file_name": name if name is not None else folder.name, "height": height, "width": width}
    return dict(image), records, sidecar.get("uniap")


# uniap's record key order (records.py): SAM's keys, then uniap's.
_ORDER = ("id", "segmentation", "area", "bbox", "predicted_iou", "stability_score", "point_coords",
          "crop_box")


def _sam_order(rec: dict) -> dict:
    return {**{k: rec[k] for k in _ORDER if k in rec}, **{k: v for k, v in rec.items() if k not in _ORDER}}


def _read_sidecar(folder: Path) -> dict:
    path = folder / SIDECAR
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not JSON: {err}") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path} is not a uniap sidecar (a JSON object)")
    return document


def write_image(path: str, out: Any) -> None:
    """``--format amg``: one image's ``amg.py`` folder (``out``: :class:`uniap.pipeline.sinks.ImageOutput`).

    Parameters
    ----------
    path : str
        The image's folder, ``<out>/<stem>``.
    out : ImageOutput
        The image's records (``out.encoded.records``), its entry and the run's provenance.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_amg(path, out.encoded.records, image=out.info, uniap=out.uniap)


def check_replace(path: str | os.PathLike) -> None:
    """Refuse (:class:`PlanError`) to replace a folder that holds anything but what
    :func:`write_amg` writes there (another image's outputs, the user's files).

    Parameters
    ----------
    path : path
        An existing folder about to be replaced.
    """
    try:
        names = os.listdir(path)
    except OSError as err:
        raise PlanError(f"cannot read {path}: {(err.strerror or str(err)).lower()}") from None
    foreign = sorted(n for n in names if not FOLDER_FILE.fullmatch(n) and not n.startswith("."))
    if foreign:
        raise PlanError(f"{path} holds {os.path.join(path, foreign[0])}, which uniap did not write; "
                        "it is not replaced: move it away or choose another --out")


def read_folder(folder: Path, name: str) -> list[tuple[dict, list[dict], dict | None]]:
    """The one record set of an ``amg.py`` folder (:func:`read_amg`), for :func:`uniap.formats.read_records`."""
    return [read_amg(folder, name)]


def merge(out: Path, sets: list, *, overwrite: bool, stem: Callable[[str], str], **_: Any) -> None:
    """``uniap-merge --format amg``: one ``amg.py`` folder per image in the folder ``out``.

    Parameters
    ----------
    out : Path
        The folder that receives ``<stem of file_name>/`` of every image.
    sets : list of (dict, list of dict, dict or None)
        The record sets, by image id.
    overwrite : bool
        Replace existing folders (those holding only what uniap writes).
    stem : callable
        The name every output of an image starts with (:func:`uniap.pipeline.sources.output_stem`).

    Raises
    ------
    ValueError
        A record ``metadata.csv`` cannot hold, a name outside ``out``, two images of one
        folder, or an existing folder (or file) in the way; checked for every image before
        any is written.
    """
    from .files import per_image_paths

    paths = per_image_paths(out, sets, "", overwrite, stem)
    for (info, records, _), path in zip(sets, paths):
        try:
            check_records(records)  # every image can be written before any is
        except ValueError as err:
            raise ValueError(f"image {info['file_name']!r}: {err}") from None
        if path.exists():
            if not path.is_dir():
                raise ValueError(f"{path} exists and is a file; --format amg writes a folder there")
            check_replace(path)
    for (info, records, uniap), path in zip(sets, paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_amg(path, records, image=info, uniap=uniap)


FORMAT = Format(
    name="amg",
    help="segment-anything's amg.py folders (one PNG per mask plus metadata.csv)",
    out="folder",
    image_suffix="",
    image_is_folder=True,
    write_image=write_image,
    read_signature=read_signature,
    check_replace=check_replace,
    is_folder=is_amg_folder,
    read_folder=read_folder,
    merge=merge,
)
