"""Old home of the output formats, kept so that ``uniap.io.<name>`` keeps working.

Each format now lives in its own module of :mod:`uniap.formats` (writer, reader, layout and
merge rules together); this module re-exports the names it used to define.  New code imports
:mod:`uniap.formats` (``docs/architecture.md``).
"""

from __future__ import annotations

# ruff: noqa: F401  (re-exports)

from .formats import names as _names
from .formats.coco import _COCO_KEYS, CATEGORY, SEMANTIC_CATEGORY, _records_of_coco, coco_dataset, coco_image_ids
from .formats.files import _annotations, _first_line, _load_json, atomic_path, json_text, write_json
from .formats.ids import _INT64, _int64, _short_repr, as_id, stable_image_ids
from .formats.parquet import (
    PARQUET_BATCH_ROWS,
    PARQUET_IMAGE_COLUMNS,
    PARQUET_INSTALL,
    PARQUET_RECORD_COLUMNS,
    _arrow_type,
    _exact_ints,
    _parquet_batch,
    _read_parquet,
    parquet_table,
    pyarrow_modules,
    utf8_text,
    write_parquet,
)
from .formats.png import PNG_COLUMNS, write_png
from .formats.reading import DEFAULT_MAX_RECORDS, _record_files, _records_of_json, read_record_sets, read_records
from .formats.sam import sam_document

FORMATS = tuple(_names())

__all__ = [
    "CATEGORY", "DEFAULT_MAX_RECORDS", "FORMATS", "PARQUET_BATCH_ROWS", "PARQUET_IMAGE_COLUMNS",
    "PARQUET_INSTALL", "PARQUET_RECORD_COLUMNS", "PNG_COLUMNS", "SEMANTIC_CATEGORY", "as_id",
    "atomic_path", "coco_dataset", "coco_image_ids", "json_text", "parquet_table", "pyarrow_modules",
    "read_record_sets", "read_records", "sam_document", "stable_image_ids", "utf8_text", "write_json",
    "write_parquet", "write_png",
]
