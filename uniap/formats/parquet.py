"""``--format parquet``: part files of one row per record, written as the run goes.

Parquet parts hold one row per record: the image's ``file_name``, ``image_id``, ``height``,
``width``, then every record key, ``segmentation`` as ``segmentation_size`` (list of 2 int)
and ``segmentation_counts`` (the COCO RLE string), lists (``bbox``, ``point_coords``,
``crop_box``, ``levels``) as list columns.  Keys this module does not know are JSON text
columns (field metadata ``uniap.json``).  A ``file_name`` whose bytes are not UTF-8 is stored
with ``\\xNN`` escapes for those bytes (:func:`utf8_text`).  An image without records is one
row whose record columns are all null, so every image survives a round trip; a key missing
from a record is a null.  The schema metadata ``uniap`` holds the provenance of the part's
first image (as COCO's ``info.uniap`` does for a data set).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .files import _first_line, atomic_path, json_text
from .ids import _int64, _short_repr
from .registry import Format, PlanError

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


# Rows decoded at a time from a Parquet part (its memory, whatever the file's size).
PARQUET_BATCH_ROWS = 65_536

# Image rows per Parquet part file (ParquetWriter's default).
IMAGES_PER_PART = 1000


_PART_RE = re.compile(r"part-(\d{5,})(?:-of-(\d{5,})-(\d{5,}))?\.parquet")


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


class ParquetWriter:
    """``--format parquet``: part files of one row per record, written as the run goes.

    Part ``k`` holds the images of ranks ``[k*N, (k+1)*N)`` of ``image_ids`` (the jobs in plan
    order), sorted by image id, and is written as soon as all of them have been added or
    discarded; so at most a few parts are buffered, and the files are the same whatever order
    the engine (local or Ray) finishes images in.  Parts are ``part-00000.parquet``, ... in the
    ``out`` folder, ``part-<i>-of-<n>-00000.parquet``, ... for ``shard=(i, n)``; every part is
    written, an empty one (all its images failed) too.  Columns: the module docstring.

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
        pyarrow_modules()  # fail before the first image
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
        write_parquet(path, [(info, recs) for info, recs, _ in items], items[0][2] if items else None)
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


def merge(out: Path, sets: list, *, overwrite: bool, images_per_part: int | None = None, **_: Any) -> None:
    """``uniap-merge --format parquet``: the record sets as part files in the folder ``out``."""
    writer = ParquetWriter(str(out), image_ids=[info["image_id"] for info, _, _ in sets],
                           overwrite=overwrite, images_per_part=images_per_part)
    for info, records, _ in sets:  # every value fits its column before anything is written
        parquet_table([(info, records)])
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        for info, records, uniap in sets:
            writer.add(info, records, uniap)
        writer.close()
    except BaseException:
        if created:  # no folder of partial parts left behind
            shutil.rmtree(out, ignore_errors=True)
        raise


FORMAT = Format(
    name="parquet",
    help="part files, one row per record",
    out="folder",
    collector=ParquetWriter,
    read_file=_read_parquet,
    suffixes=(".parquet",),
    merge=merge,
)
