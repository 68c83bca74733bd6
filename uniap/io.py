"""Output files: SAM-style JSON, one COCO data set, PNG label maps, Parquet parts; always atomic.

Every writer builds the whole output beside its destination (a temporary file or folder in
the same directory) and renames it into place, so a failure never leaves a half-written
file and never damages what was there before.  :func:`read_records` reads the records of any
of these formats and of ``amg.py`` folders (:mod:`uniap.formats.amg`) back (PNG label maps and
LabelMe files excepted), :func:`coco_image_ids` the image ids of a
ground-truth COCO file.

Parquet parts (``--format parquet``) hold one row per record: the image's ``file_name``,
``image_id``, ``height``, ``width``, then every record key, ``segmentation`` as
``segmentation_size`` (list of 2 int) and ``segmentation_counts`` (the COCO RLE string), lists
(``bbox``, ``point_coords``, ``crop_box``, ``levels``) as list columns.  Keys this module does
not know are JSON text columns (field metadata ``uniap.json``).  A ``file_name`` whose bytes
are not UTF-8 is stored with ``\\xNN`` escapes for those bytes (:func:`utf8_text`).  An image without records is
one row whose record columns are all null, so every image survives a round trip; a key missing
from a record is a null.  The schema metadata ``uniap`` holds the provenance of the part's
first image (as COCO's ``info.uniap`` does for a data set).
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

FORMATS = ("sam", "coco", "png", "amg", "labelme", "parquet")
CATEGORY = {"id": 1, "name": "fg", "supercategory": "fg"}
SEMANTIC_CATEGORY = {"id": 2, "name": "semantic", "supercategory": "fg"}
PNG_COLUMNS = (
    "id", "level", "threshold", "kind", "label", "area", "bbox_x0", "bbox_y0", "bbox_w",
    "bbox_h", "num_patches", "parent", "score", "point_x", "point_y",
)
# Keys the COCO writer adds to a record (``id`` becomes the data-set-wide annotation id).
_COCO_KEYS = ("uniap_id", "id", "image_id", "category_id", "iscrowd")
PARQUET_IMAGE_COLUMNS = ("file_name", "image_id", "height", "width")
# Every documented record key as a Parquet column, in record order: (name, arrow type).
PARQUET_RECORD_COLUMNS = (
    ("id", "int64"), ("segmentation_size", "list<int64>"), ("segmentation_counts", "string"),
    ("area", "int64"), ("bbox", "list<double>"), ("predicted_iou", "double"),
    ("stability_score", "double"), ("point_coords", "list<list<double>>"),
    ("crop_box", "list<int64>"), ("level", "int64"), ("levels", "list<int64>"),
    ("threshold", "double"), ("kind", "string"), ("num_patches", "int64"), ("parent", "int64"),
    ("score", "double"),
)
PARQUET_INSTALL = "Parquet files need pyarrow: pip install 'uniap[parquet]'"
# The most records (Parquet rows, JSON annotations) one read_records call takes in: a Parquet
# part's row count is read from its footer, before any data, so a small hostile file declaring
# 30 million rows is refused at once.  Every record read is held in memory (about 2 KB each).
DEFAULT_MAX_RECORDS = 5_000_000
# Rows decoded at a time from a Parquet part (its memory, whatever the file's size).
PARQUET_BATCH_ROWS = 65_536
_INT64 = (-(2**63), 2**63 - 1)


def as_id(value: Any, what: str) -> int:
    """``value`` as an exact 64-bit integer id (COCO ids are integers), or a ValueError naming
    ``what``.  An integral float (``3.0``, as some JSON writers give) is that integer; a
    fractional one (``1.5``), a bool, a string, a list or a number beyond 64 bits is refused,
    never rounded or truncated.

    Examples
    --------
    >>> as_id(3.0, "image id")
    3
    >>> as_id(1.5, "image id")
    Traceback (most recent call last):
    ...
    ValueError: image id must be a 64-bit integer (COCO ids are integers), got 1.5
    """
    exact = _int64(value)
    if exact is None:
        raise ValueError(f"{what} must be a 64-bit integer (COCO ids are integers), got {_short_repr(value)}")
    return exact


def _int64(value: Any) -> int | None:
    """``value`` as an exact 64-bit integer, or None when it is not one."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        return None
    value = int(value)
    return value if _INT64[0] <= value <= _INT64[1] else None


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@contextmanager
def atomic_path(path: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    On an exception the temporary file or folder is removed and ``path`` is left as it was.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the folder from everyone else
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if directory and path.exists():
            # A folder cannot be replaced in one step: move the old one aside first.
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if not directory:
                os.chmod(tmp, 0o644)
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def json_text(document: Any) -> str:
    """``document`` as compact JSON (the text every writer of uniap produces)."""
    return json.dumps(document, separators=(",", ":"))


def write_json(path: str | os.PathLike, document: Any) -> None:
    """Write ``document`` as JSON to ``path`` atomically."""
    text = json_text(document)
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def sam_document(image_info: dict, uniap_info: dict, records: list[dict]) -> dict:
    """The ``--format sam`` document of one image (DESIGN.md 4).

    Parameters
    ----------
    image_info : dict
        ``file_name``, ``height``, ``width`` and optionally ``image_id`` (and anything else,
        kept).  Without an ``image_id``, the image gets the stable id of its ``file_name``
        (:func:`uniap.pipeline.plan.stable_image_ids`), the id ``uniap-cli`` gives it.
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
        from .pipeline.plan import stable_image_ids

        image["image_id"] = stable_image_ids([str(image["file_name"])])[0]
    image = {"image_id": image.pop("image_id"), **image}
    return {"image": image, "uniap": uniap_info, "annotations": records}


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


def write_png(
    folder: str | os.PathLike,
    pixel_labels: np.ndarray,
    records: list[dict],
    semantic_labels: np.ndarray | None = None,
    extra_files: dict[str, str] | None = None,
    contour_labels: np.ndarray | None = None,
) -> None:
    """``--format png``: one 16-bit label PNG per level plus ``metadata.csv``, atomically.

    ``level_<i>.png`` holds level i's instance labels (cluster ids, 0-based, canonical);
    ``semantic_<i>.png`` the semantic groups when present; ``contour_<k>.png`` the contour
    regions of cut k when present; ``metadata.csv`` one row per
    record (its ``label`` column is the cluster id in the PNG of its level and kind);
    ``extra_files`` maps further file names to their text (the pipeline's ``uniap.json``).
    """
    from PIL import Image

    if pixel_labels.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError("more than 65535 clusters in a level: too many for a 16-bit PNG")
    if contour_labels is not None and contour_labels.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError("more than 65535 contour regions in a cut: too many for a 16-bit PNG "
                         "(--no-contours leaves them out)")
    with atomic_path(folder, directory=True) as tmp:
        for i, labels in enumerate(pixel_labels):
            Image.fromarray(labels.astype(np.uint16)).save(tmp / f"level_{i}.png")
            if semantic_labels is not None:
                Image.fromarray(semantic_labels[i].astype(np.uint16)).save(tmp / f"semantic_{i}.png")
        for k, labels in enumerate(contour_labels if contour_labels is not None else ()):
            Image.fromarray(labels.astype(np.uint16)).save(tmp / f"contour_{k}.png")
        by_kind = {"instance": pixel_labels, "semantic": semantic_labels, "contour": contour_labels}
        with open(tmp / "metadata.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(PNG_COLUMNS)
            for rec in records:
                maps = by_kind[rec["kind"]]
                px, py = rec["point_coords"][0]
                label = int(maps[rec["level"]][int(py), int(px)])
                writer.writerow([
                    rec["id"], rec["level"], rec["threshold"], rec["kind"], label, rec["area"],
                    *rec["bbox"], rec["num_patches"], rec["parent"], rec["score"], px, py,
                ])
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)


# ------------------------------------------------------------------------------- Parquet


def pyarrow_modules():
    """``(pyarrow, pyarrow.parquet)``, or an ImportError that says how to install them."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ImportError(PARQUET_INSTALL) from None
    return pyarrow, pyarrow.parquet


def utf8_text(name: Any) -> Any:
    """A file name as text that UTF-8 can hold: bytes of a name that are not UTF-8 (read by Python
    as lone surrogates) become ``\\xNN`` escapes, so one such name cannot fail a Parquet part."""
    if not isinstance(name, str):
        return name
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return name


def _arrow_type(pa, name: str):
    if name.startswith("list<"):
        return pa.list_(_arrow_type(pa, name[5:-1]))
    return {"int64": pa.int64(), "double": pa.float64(), "string": pa.string()}[name]


def parquet_table(items: Iterable[tuple[dict, list[dict]]], uniap_info: dict | None = None):
    """A ``pyarrow.Table`` with one row per record of ``(image_info, records)`` pairs.

    Columns and conventions: the module docstring.  Rows follow ``items`` and each image's
    records in the order given.

    Raises
    ------
    ValueError
        A segmentation is not a COCO RLE with string counts, or a value does not fit its column.
    ImportError
        pyarrow is not installed.
    """
    pa, _ = pyarrow_modules()
    items = list(items)
    known = {name for name, _ in PARQUET_RECORD_COLUMNS} | {"segmentation"}
    extra = sorted({key for _, records in items for rec in records for key in rec} - known)
    columns: dict[str, list] = {name: [] for name in PARQUET_IMAGE_COLUMNS}
    columns.update({name: [] for name, _ in PARQUET_RECORD_COLUMNS})
    columns.update({name: [] for name in extra})
    for info, records in items:
        for rec in records or [None]:  # an image without records: one row of nulls
            for name in PARQUET_IMAGE_COLUMNS:
                columns[name].append(utf8_text(info.get(name)) if name == "file_name" else info.get(name))
            if rec is None:
                for name in columns:
                    if name not in PARQUET_IMAGE_COLUMNS:
                        columns[name].append(None)
                continue
            seg = rec.get("segmentation")
            if seg is not None and not (isinstance(seg, dict) and isinstance(seg.get("counts"), str)):
                raise ValueError(f"{info.get('file_name')!r}: Parquet stores segmentations as COCO RLE "
                                 f"with string counts, not {type(seg).__name__} {str(seg)[:40]}")
            for name, _ in PARQUET_RECORD_COLUMNS:
                if name == "segmentation_size":
                    columns[name].append(None if seg is None else seg.get("size"))
                elif name == "segmentation_counts":
                    columns[name].append(None if seg is None else seg["counts"])
                else:
                    columns[name].append(rec.get(name))
            for name in extra:
                columns[name].append(json_text(rec[name]) if name in rec else None)
    fields, arrays = [], []
    typed = [(name, "string" if name == "file_name" else "int64") for name in PARQUET_IMAGE_COLUMNS]
    for name, type_name in typed + list(PARQUET_RECORD_COLUMNS):
        kind = _arrow_type(pa, type_name)
        values = columns[name]
        if type_name in ("int64", "list<int64>"):  # pyarrow would truncate 1.5 to 1
            values = _exact_ints(values, name, type_name, columns["file_name"])
        try:
            arrays.append(pa.array(values, type=kind))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as err:
            raise ValueError(f"record key {name!r} does not fit a {type_name} column: {err}") from None
        fields.append(pa.field(name, kind))
    for name in extra:
        arrays.append(pa.array(columns[name], type=pa.string()))
        fields.append(pa.field(name, pa.string(), metadata={"uniap.json": "1"}))
    metadata = {"uniap": json_text(uniap_info)} if uniap_info is not None else None
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=metadata))


def _exact_ints(values: list, name: str, type_name: str, names: list) -> list:
    """``values`` of an int64 (or list<int64>) column as exact integers, or a ValueError
    naming the image and the key: pyarrow itself would truncate 1.5 to 1."""
    nested = type_name.startswith("list<")
    out = []
    for row, value in enumerate(values):
        if value is None:
            out.append(None)
            continue
        items = value if nested and isinstance(value, (list, tuple)) else [value]
        exact = [None if v is None else _int64(v) for v in items]
        if (nested and not isinstance(value, (list, tuple))) or any(
                e is None and v is not None for e, v in zip(exact, items)):
            what = "image key" if name in PARQUET_IMAGE_COLUMNS else "record key"
            raise ValueError(f"{names[row]!r}: {what} {name!r} holds {_short_repr(value)}, which does not fit "
                             f"the {type_name} column (64-bit integers, never truncated)")
        out.append(exact if nested else exact[0])
    return out


def write_parquet(path: str | os.PathLike, items: Iterable[tuple[dict, list[dict]]],
                  uniap_info: dict | None = None) -> None:
    """Write :func:`parquet_table` of ``items`` to ``path`` atomically (one part file)."""
    _, pq = pyarrow_modules()
    table = parquet_table(items, uniap_info)
    with atomic_path(path) as tmp:
        pq.write_table(table, str(tmp))


def _read_parquet(path: Path, max_records: int = 0) -> list[tuple[dict, list[dict], dict | None]]:
    """The record sets of one Parquet part, streamed :data:`PARQUET_BATCH_ROWS` rows at a time.

    The row count comes from the footer and is checked against ``max_records`` (0: no limit)
    before any data is read; then only the rows that hold a record become Python objects (an
    image's row without records is found by vectorised null checks), so memory is one batch
    plus the records read, whatever the file's size.
    """
    pa, pq = pyarrow_modules()
    import pyarrow.compute as pc

    try:
        part = pq.ParquetFile(str(path))
        schema, rows = part.schema_arrow, part.metadata.num_rows
    except Exception as err:  # pyarrow's own errors for a file that is not Parquet
        raise ValueError(f"{path} is not a Parquet file: {_first_line(err)}") from None
    missing = [name for name in PARQUET_IMAGE_COLUMNS if name not in schema.names]
    if missing:
        raise ValueError(f"{path} is not a uniap Parquet part: no column {missing[0]!r}")
    if max_records and rows > max_records:
        raise ValueError(f"{path} holds {rows} rows, more than the limit of {max_records} records "
                         "(--max-records / max_records; 0 lifts it)")
    meta = schema.metadata or {}
    try:
        uniap_info = json.loads(meta[b"uniap"]) if b"uniap" in meta else None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: its \"uniap\" metadata is not JSON: {err}") from None
    as_json = {f.name for f in schema if f.metadata and f.metadata.get(b"uniap.json") == b"1"}
    record_columns = [name for name in schema.names if name not in PARQUET_IMAGE_COLUMNS]
    out: dict[str, tuple[dict, list[dict], dict | None]] = {}  # rows of an image may be apart
    try:
        for batch in part.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            _parquet_batch(pa, pc, path, batch, record_columns, as_json, out, uniap_info)
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"{path}: unreadable Parquet data: {_first_line(err)}") from None
    return list(out.values())


def _parquet_batch(pa, pc, path: Path, batch, record_columns: list[str], as_json: set[str],
                   out: dict, uniap_info: dict | None) -> None:
    """Add one record batch of a Parquet part to ``out`` (``file_name`` -> record set)."""
    names = batch.column("file_name")
    if names.null_count:
        raise ValueError(f"{path}: a row has no file_name")
    codes = names.dictionary_encode() if not pa.types.is_dictionary(names.type) else names
    first = np.unique(codes.indices.to_numpy(zero_copy_only=False), return_index=True)[1]
    for row in np.sort(first).tolist():  # each image's first row in this batch, in row order
        name = names[row].as_py()
        if name not in out:
            info = {"image_id": batch.column("image_id")[row].as_py(), "file_name": name,
                    "height": batch.column("height")[row].as_py(), "width": batch.column("width")[row].as_py()}
            out[name] = (info, [], uniap_info)
    has = None  # rows holding a record: any record column not null
    for key in record_columns:
        valid = pc.is_valid(batch.column(key))
        has = valid if has is None else pc.or_(has, valid)
    if has is None:
        return
    rows = np.flatnonzero(has.to_numpy(zero_copy_only=False))
    if not rows.size:
        return
    taken = batch.select(["file_name", *record_columns]).take(pa.array(rows))
    for values in taken.to_pylist():
        name = values.pop("file_name")
        rec: dict[str, Any] = {}
        for key, value in values.items():
            if value is None:
                continue
            if key == "segmentation_size":
                rec["segmentation"] = {"size": value, "counts": values.get("segmentation_counts")}
            elif key == "segmentation_counts":
                rec.setdefault("segmentation", {"size": None, "counts": value})
            elif key in as_json:
                try:
                    rec[key] = json.loads(value)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}: image {name!r}: column {key!r} is not JSON: {err}") from None
            else:
                rec[key] = value
        out[name][1].append(rec)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ------------------------------------------------------------------------- reading back


def _load_json(path: str | os.PathLike) -> Any:
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no such file", str(path)) from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder, not a JSON file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not JSON: {err}") from None


def _records_of_json(path: Path) -> list[tuple[dict, list[dict], dict | None]]:
    document = _load_json(path)
    if isinstance(document, dict) and "images" in document:
        if not isinstance(document["images"], list):
            raise ValueError(f"{path}: \"images\" must be a list, got {type(document['images']).__name__}")
        return _records_of_coco(path, document)
    if isinstance(document, dict) and isinstance(document.get("image"), dict) and "annotations" in document:
        records = _annotations(path, document)
        image = dict(document["image"])
        if image.get("image_id") is not None:
            image["image_id"] = as_id(image["image_id"], f"{path}: \"image\".\"image_id\"")
        for i, rec in enumerate(records):
            if rec.get("id") is not None:
                rec["id"] = as_id(rec["id"], f"{path}: annotations[{i}].\"id\"")
        return [(image, records, document.get("uniap"))]
    raise ValueError(f"{path} is neither a SAM-style file (\"image\", \"annotations\") nor a COCO "
                     "data set (\"images\")")


def _annotations(path: Path, document: dict) -> list[dict]:
    """``document["annotations"]`` checked: a list of objects (absent: none)."""
    annotations = document.get("annotations", [])
    if not isinstance(annotations, list):
        raise ValueError(f"{path}: \"annotations\" must be a list, got {type(annotations).__name__}")
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            raise ValueError(f"{path}: annotations[{i}] must be an object, got {type(ann).__name__}")
    return annotations


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
    from .formats.polygons import polygons_to_rle

    try:
        return polygons_to_rle(polygons, int(image["height"]), int(image["width"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: annotations[{i}]: polygons that cannot be drawn: {err}") from None


def _record_files(folder: Path) -> list[Path]:
    """Record files below ``folder``, and ``amg.py`` folders (read whole, not searched)."""
    from .formats.amg import METADATA, is_amg_folder

    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        if METADATA in files and is_amg_folder(root):
            found.append(Path(root))
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / f for f in sorted(files)
                  if not f.startswith(".") and f.lower().endswith((".json", ".parquet"))]
    return found


def read_record_sets(path: str | os.PathLike, max_records: int | None = None,
                     ) -> list[tuple[dict, list[dict], dict | None]]:
    """``(image_info, records, provenance)`` of every image in ``path``, by image id.

    As :func:`read_records`, with each image's ``uniap`` provenance (None when the file has
    none; a COCO data set and a Parquet part record one for all their images).
    """
    limit = DEFAULT_MAX_RECORDS if max_records is None else max_records
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"max_records must be an integer >= 0 (0: no limit), got {max_records!r}")
    taken = 0
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "no such file or folder", str(path))
    files = _record_files(path) if path.is_dir() else [path]
    if path.is_dir() and not files:
        raise ValueError(f"{path} holds no .json or .parquet record files, nor amg.py folders")
    sets: list[tuple[dict, list[dict], dict | None]] = []
    origin: dict[str, Path] = {}
    for file in files:
        left = max(limit - taken, 1) if limit else 0  # what this file may still add
        if file.is_dir():  # an amg.py folder; without uniap's sidecar named by its path
            from .formats.amg import read_amg

            name = file.relative_to(path).as_posix() if file != path else file.name
            read = [read_amg(file, name)]
        elif file.suffix.lower() == ".parquet":
            read = _read_parquet(file, left)
        else:
            read = _records_of_json(file)
        taken += sum(max(len(records), 1) for _, records, _ in read)
        if limit and taken > limit:
            raise ValueError(f"{file}: more than the limit of {limit} records in all "
                             "(--max-records / max_records; 0 lifts it)")
        for entry in read:
            name = entry[0].get("file_name")
            if not isinstance(name, str):
                raise ValueError(f"{file}: an image has no \"file_name\"")
            if entry[0].get("image_id") is not None:
                entry[0]["image_id"] = as_id(entry[0]["image_id"], f"{file}: image {name!r}: image id")
            if name in origin:
                where = str(file) if origin[name] == file else f"{origin[name]} and {file}"
                raise ValueError(f"image {name!r} is listed twice: in {where}")
            origin[name] = file
            sets.append(entry)
    missing = [entry for entry in sets if entry[0].get("image_id") is None]
    if missing:  # SAM files from before image ids: the ids uniap-cli gives their names
        from .pipeline.plan import stable_image_ids

        for entry, image_id in zip(missing, stable_image_ids([e[0]["file_name"] for e in missing])):
            entry[0]["image_id"] = image_id
    sets.sort(key=lambda entry: (entry[0]["image_id"], entry[0]["file_name"]))
    for a, b in zip(sets, sets[1:]):
        if a[0]["image_id"] == b[0]["image_id"]:
            raise ValueError(f"image id {a[0]['image_id']} is given to both {a[0]['file_name']!r} "
                             f"({origin[a[0]['file_name']]}) and {b[0]['file_name']!r} "
                             f"({origin[b[0]['file_name']]})")
    return sets


def read_records(path: str | os.PathLike, max_records: int | None = None) -> dict[str, tuple[dict, list[dict]]]:
    """The records of any uniap output, back as ``{file_name: (image_info, records)}``.

    ``path`` is a SAM-style JSON (one image), a COCO data set, a Parquet part, an ``amg.py``
    folder (:func:`uniap.formats.amg.read_amg`: a folder whose ``metadata.csv`` has
    ``amg.py``'s header, uniap's or SAM's own), or a folder holding any of these (searched
    recursively; hidden names skipped). ``image_info`` is
    ``{"image_id", "file_name", "height", "width"}`` (plus whatever else a COCO ``images``
    entry holds); ``records`` are the SAM-style dicts of :mod:`uniap.records`, equal (``==``)
    whichever format they were read from: COCO's ``uniap_id`` is the record ``id`` again and
    the keys the COCO writer adds are dropped, and its polygons (``--polygons``) are the RLE
    they rasterise to (a COCO file not made by uniap keeps its annotations as they are, less
    ``image_id``).  The dict is ordered by image id.

    Image and annotation ids are exact 64-bit integers (:func:`as_id`: ``3.0`` is 3, ``1.5``
    is an error, never truncated).  Parquet parts are streamed in batches of
    :data:`PARQUET_BATCH_ROWS` rows; ``max_records`` (default :data:`DEFAULT_MAX_RECORDS`, 5
    million; 0: no limit) bounds the records (Parquet rows, JSON annotations; an image
    without records counts one) read in all, a Parquet part's rows checked on its footer before
    its data are read.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        A file is not one of these formats or is malformed (the message names the file), an id
        is not an integer, two images share a ``file_name`` or an id, or the records exceed
        ``max_records``.
    ImportError
        A Parquet file is read without pyarrow installed.
    """
    return {info["file_name"]: (info, records) for info, records, _ in read_record_sets(path, max_records)}
