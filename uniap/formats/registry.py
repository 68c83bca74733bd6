"""What a format is, and the table of formats that ``uniap-cli``, the planner, ``uniap-merge`` and
:func:`uniap.formats.read_records` read.

A format is one module (``uniap/formats/<name>.py``) that ends with one :class:`Format`
entry naming its pieces, plus one line in ``uniap/formats/__init__.py`` that registers it.
Every field but ``name`` and ``help`` is optional: a format supplies the pieces it has.

Writing (``uniap-cli --format NAME``) takes one of two shapes:

* **per image**: ``write_image(path, out)`` writes one image's output at ``path``
  (``<out>/<stem><image_suffix>``; a folder when ``image_is_folder``), atomically
  (:func:`uniap.formats.files.atomic_path`).  ``out`` has ``info`` (the COCO/SAM ``image``
  entry), ``uniap`` (provenance, with the settings' ``signature``), ``image`` (the pixels),
  ``hierarchy`` and ``encoded`` (``records``, ``pixel_labels``, ``semantic_labels``,
  ``contour_labels``).  ``read_signature(path)`` returns the signature an existing output
  recorded (None: not uniap's), so that a rerun skips finished images;
  ``check_replace(path)`` may refuse to replace an output (raise :class:`PlanError`).
* **collected**: ``collector(out, shard=, image_ids=, overwrite=)`` is built once in the main
  process and gets ``add(info, records, uniap)``, ``discard(image_id)``, ``close()``; its
  static ``existing(out, shard)`` names a file a run would replace.

``out`` says what ``--out`` is: ``"file"`` (always one file), ``"folder"`` (always a folder),
or ``"file-or-folder"`` (a file for one image unless it names a folder, else a folder).

Reading back (:func:`uniap.formats.read_records`, ``uniap-merge``'s inputs): ``read_json(path,
document)`` gives the record sets of a loaded JSON document, or None when the document is not
this format; ``read_file(path, max_records)`` those of a file ending in one of ``suffixes``;
``read_folder(folder, name)`` those of a folder that ``is_folder(folder)`` says is one
image's output of this format (read whole, not searched; ``name`` is its path below the
folder read, the ``file_name`` of a folder that does not record one).
A record set is ``(image_info, records, provenance)``.

Merging (``uniap-merge --format NAME``): ``merge(out, sets, overwrite=, images_per_part=,
stem=, polygons=)`` writes the record sets (sorted by image id) to ``out``;
``stem(file_name)`` is the name every output of an image starts with; ``polygons``
(``uniap-merge --polygons``, COCO only) asks for COCO polygon segmentations.  A user mistake is a ``ValueError`` (one line).

Examples
--------
>>> from uniap import formats
>>> formats.names()
['sam', 'coco', 'png', 'amg', 'labelme', 'parquet']
>>> formats.get("coco").out, formats.get("png").image_is_folder
('file', True)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


class PlanError(ValueError):
    """Outputs that cannot be written safely (a clash with an input, an existing file, ...)."""


@dataclass(frozen=True)
class Format:
    """One output format: its name and the pieces it has (module docstring)."""

    name: str
    help: str
    out: str = "folder"  # "file", "folder" or "file-or-folder"
    # writing, per image
    image_suffix: str | None = None  # "<stem><suffix>": ".json", "" for a folder; None: collected
    image_is_folder: bool = False
    write_image: Callable[[str, Any], None] | None = None
    read_signature: Callable[[str], str | None] | None = None
    check_replace: Callable[[str], None] | None = None
    # writing, collected in the main process
    collector: type | None = None
    # reading back
    read_json: Callable[[Path, Any], list | None] | None = None
    json_kind: str | None = None  # how an error names the documents read_json takes
    read_file: Callable[[Path, int], list] | None = None
    suffixes: tuple[str, ...] = ()
    is_folder: Callable[[Path], bool] | None = None  # a folder that is one image's output
    read_folder: Callable[[Path, str], list] | None = None
    # uniap-merge
    merge: Callable[..., None] | None = None

    def __post_init__(self) -> None:
        if self.out not in ("file", "folder", "file-or-folder"):
            raise ValueError(f"format {self.name!r}: out must be 'file', 'folder' or 'file-or-folder', "
                             f"got {self.out!r}")
        if (self.write_image is None) == (self.collector is None):
            raise ValueError(f"format {self.name!r} needs exactly one of write_image and collector")
        if (self.is_folder is None) != (self.read_folder is None):
            raise ValueError(f"format {self.name!r}: give both is_folder and read_folder, or neither")
        if self.write_image is not None and self.image_suffix is None:
            raise ValueError(f"format {self.name!r} writes per image: give its image_suffix")

    @property
    def collected(self) -> bool:
        """Whether one writer in the main process gathers every image's records."""
        return self.collector is not None


_REGISTRY: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    """Add ``fmt`` under ``fmt.name`` (a name taken already is an error)."""
    if fmt.name in _REGISTRY:
        raise ValueError(f"format {fmt.name!r} is registered already")
    _REGISTRY[fmt.name] = fmt
    return fmt


def unregister(name: str) -> Format:
    """Remove the format called ``name`` and return it (a plugin's tests, the docs' examples)."""
    return _REGISTRY.pop(get(name).name)


def names() -> list[str]:
    """Registered format names, in the order they were registered (``--format``'s choices)."""
    return list(_REGISTRY)


def get(name: str) -> Format:
    """The format called ``name``; ``ValueError`` naming the choices if there is none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"format must be one of {tuple(_REGISTRY)}, got {name!r}") from None


def formats() -> list[Format]:
    """Every registered format, in order."""
    return list(_REGISTRY.values())
