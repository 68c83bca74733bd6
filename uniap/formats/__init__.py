"""Output formats behind one registry: each format is one module, registered by one line below.

A format module holds all of its format: the writer (per image, or one collector for the
run), the reader of its files, its layout rule (is ``--out`` a file or a folder; the name of
each image's output) and its ``uniap-merge`` rule, named by one :class:`Format` entry
(:mod:`uniap.formats.registry` documents every field).  ``uniap-cli --format``'s choices,
the planner (:func:`uniap.pipeline.plan.plan_jobs`), ``uniap-merge`` and
:func:`read_records` read the registry, so adding a format is adding its module and one
``register(...)`` line here (``docs/architecture.md`` has a worked example).  Helpers that
are no format of their own live here too: :mod:`uniap.formats.polygons` (COCO polygons,
``--polygons``, and LabelMe's shapes).

>>> from uniap import formats
>>> formats.names()
['sam', 'coco', 'png', 'amg', 'labelme', 'parquet']
>>> sorted(name for name in formats.names() if formats.get(name).merge)
['amg', 'coco', 'parquet', 'sam']
"""

from . import amg, coco, labelme, parquet, png, sam
from .files import atomic_path, json_text, write_json
from .ids import as_id, stable_image_ids
from .reading import DEFAULT_MAX_RECORDS, read_record_sets, read_records
from .registry import Format, PlanError, formats, get, names, register, unregister

# The built-in formats, in the order of --format's choices.  A new format: one line.
register(sam.FORMAT)
register(coco.FORMAT)
register(png.FORMAT)
register(amg.FORMAT)
register(labelme.FORMAT)
register(parquet.FORMAT)

__all__ = [
    "DEFAULT_MAX_RECORDS",
    "Format",
    "PlanError",
    "as_id",
    "atomic_path",
    "formats",
    "get",
    "json_text",
    "names",
    "read_record_sets",
    "read_records",
    "register",
    "stable_image_ids",
    "unregister",
    "write_json",
]
