"""Records back from any uniap output, whatever its format: the readers of the registry."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from . import registry
from .files import _load_json
from .ids import as_id, stable_image_ids

# The most records (Parquet rows, JSON annotations) one read_records call takes in: a Parquet
# part's row count is read from its footer, before any data, so a small hostile file declaring
# 30 million rows is refused at once.  Every record read is held in memory (about 2 KB each).
DEFAULT_MAX_RECORDS = 5_000_000



def _records_of_json(path: Path) -> list[tuple[dict, list[dict], dict | None]]:
    """The record sets of a JSON file, from the first format whose ``read_json`` takes it."""
    document = _load_json(path)
    readers = [fmt for fmt in registry.formats() if fmt.read_json is not None]
    for fmt in readers:
        sets = fmt.read_json(path, document)
        if sets is not None:
            return sets
    raise ValueError(f"{path} is neither " + " nor ".join(str(fmt.json_kind) for fmt in readers))


def _file_reader(path: Path):
    """The format that reads files ending as ``path`` does (None: a JSON file)."""
    suffix = path.suffix.lower()
    return next((fmt for fmt in registry.formats() if suffix in fmt.suffixes), None)


def _suffixes() -> tuple[str, ...]:
    return (".json", *(s for fmt in registry.formats() for s in fmt.suffixes))


def _folder_reader(path: Path):
    """The format whose output folder ``path`` is (None: an ordinary folder)."""
    return next((fmt for fmt in registry.formats() if fmt.is_folder is not None and fmt.is_folder(path)), None)


def _record_files(folder: Path) -> list[Path]:
    """Record files below ``folder``, and formats' output folders (``amg.py``'s: read whole, not searched)."""
    found = []
    suffixes = _suffixes()
    for root, dirs, files in os.walk(folder, followlinks=True):
        if _folder_reader(Path(root)) is not None:
            found.append(Path(root))
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / f for f in sorted(files)
                  if not f.startswith(".") and f.lower().endswith(suffixes)]
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
        folders = [fmt.name for fmt in registry.formats() if fmt.read_folder is not None]
        raise ValueError(f"{path} holds no {' or '.join(_suffixes())} record files"
                         + "".join(f", nor {name} folders" for name in folders))
    sets: list[tuple[dict, list[dict], dict | None]] = []
    origin: dict[str, Path] = {}
    for file in files:
        left = max(limit - taken, 1) if limit else 0  # what this file may still add
        if file.is_dir():  # a format's output folder; named by its path when it records no name
            name = file.relative_to(path).as_posix() if file != path else file.name
            read = _folder_reader(file).read_folder(file, name)
        else:
            reader = _file_reader(file)
            read = reader.read_file(file, left) if reader is not None else _records_of_json(file)
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
