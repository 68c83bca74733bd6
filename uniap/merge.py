"""``uniap-merge``: join record sets (COCO shards, Parquet parts, SAM files) into one, or convert.

``uniap-merge all.json shard-0.json shard-1.json`` writes one COCO data set of every image of
the inputs: image ids are kept, annotation ids count from 1 in the order of image id, then
record id, exactly as ``uniap-cli --format coco`` orders an unsharded run, so merging the
shards of a run gives the file the unsharded run writes.  ``--format parquet`` or ``sam``
writes the same records as Parquet parts or one SAM-style JSON per image (``OUT/<file_name
without suffix>.json``, as ``uniap-cli`` names them) instead, ``--format amg`` one
segment-anything ``amg.py`` folder per image (``OUT/<file_name without suffix>/``), any format
with a merge rule in :mod:`uniap.formats`; any input format goes to any output format
(:func:`uniap.io.read_records` reads them).  ``--polygons`` writes COCO polygons instead of RLE.

Exit status: 0 done; 2 a usage error (a missing, unreadable or malformed input, an id that is
not a 64-bit integer, an image in two inputs, more records than ``--max-records``, an output
that exists without ``--overwrite`` or that would be written over an input); 1 an operating
system error while writing.  Every file is written atomically, after every input was read
and checked; a Parquet folder this command created is removed again when writing fails.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from . import formats
from . import io
from .cli import UsageError, add_version, nonnegative_int, positive_int, run_command

# The formats with a merge rule (uniap.formats.registry), as registered when this module loaded.
FORMATS = tuple(sorted(name for name in formats.names() if formats.get(name).merge is not None))
# What uniap-merge writes, where it says more than the format's own help.
_MERGE_HELP = {"coco": "one data set (default)", "parquet": "part files of one row per record in OUT",
               "sam": "one SAM-style JSON per image in OUT",
               "amg": "one segment-anything amg.py folder (a PNG per mask, metadata.csv) per image in OUT"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uniap-merge",
        description="Merge uniap record sets (COCO shards, Parquet parts, SAM JSON files or "
        "folders of them) into one COCO data set, or convert them to Parquet parts or SAM files.",
        epilog="Example: uniap-merge coco.json coco-0-of-2.json coco-1-of-2.json",
    )
    add_version(parser)
    parser.add_argument("out", metavar="OUT",
                        help="the output: a COCO file (--format coco), a folder otherwise")
    parser.add_argument("inputs", metavar="INPUT", nargs="+",
                        help="COCO or SAM JSON files, Parquet parts, amg.py folders, or folders holding them")
    parser.add_argument("--format", choices=sorted(n for n in formats.names() if formats.get(n).merge),
                        default="coco",
                        help="; ".join(f"{n}: {_MERGE_HELP.get(n, formats.get(n).help)}" for n in FORMATS))
    parser.add_argument("--images-per-part", type=positive_int, metavar="N",
                        help="--format parquet: images per part file (default "
                        "uniap.pipeline.sinks.IMAGES_PER_PART, 1000)")
    parser.add_argument("--max-records", type=nonnegative_int, metavar="N",
                        help="refuse inputs of more than N records in all (Parquet rows, checked on each "
                        "part's footer before reading; default uniap.io.DEFAULT_MAX_RECORDS, 5000000; "
                        "0: no limit): every record is held in memory")
    parser.add_argument("--polygons", action="store_true",
                        help="--format coco: segmentations as COCO polygons (CVAT, LabelMe imports) "
                        "instead of RLE")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing OUT (coco), existing parts (parquet) or the "
                        "images' existing files or folders (sam, amg)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Read every input, check that no image is in two of them, write OUT."""
    if args.images_per_part is not None and args.format != "parquet":
        raise UsageError("--images-per-part applies to --format parquet only")
    if args.polygons and args.format != "coco":
        raise UsageError("--polygons applies to --format coco only")
    out = Path(args.out)
    fmt = formats.get(args.format)  # its layout and merge rules
    if fmt.out == "file" and (out.is_dir() or args.out.endswith(("/", os.sep))):
        folders = [n for n in sorted(formats.names()) if formats.get(n).merge and formats.get(n).out != "file"]
        raise UsageError(f"--format {args.format} writes one file, but {args.out} is a folder "
                         f"(--format {' or '.join(folders)} write folders)")
    if fmt.out != "file" and out.is_file():
        raise UsageError(f"--format {args.format} writes a folder, but {args.out} is a file")
    _check_not_an_input(out, args.inputs)
    if not args.overwrite:  # before reading anything (SAM files are checked once their names are known)
        existing = fmt.collector.existing if fmt.collector is not None else None
        taken = existing(args.out) if existing else None
        if taken:
            raise UsageError(f"{taken} exists; pass --overwrite to replace it")

    sets: list[tuple[dict, list[dict], dict | None]] = []
    origin: dict[str, str] = {}
    ids: dict[int, str] = {}
    limit = io.DEFAULT_MAX_RECORDS if args.max_records is None else args.max_records
    taken = 0
    for path in args.inputs:
        try:  # what the inputs before this one left of the limit (0: none)
            read = io.read_record_sets(path, max(limit - taken, 1) if limit else 0)
        except (FileNotFoundError, ValueError, ImportError) as err:
            raise UsageError(str(err)) from None
        taken += sum(max(len(records), 1) for _, records, _ in read)
        if limit and taken > limit:
            raise UsageError(f"{path}: the inputs hold more than the limit of {limit} records "
                             "(--max-records; 0 lifts it)")
        for entry in read:
            name, image_id = entry[0]["file_name"], entry[0]["image_id"]
            if name in origin:
                where = f"{path}, named twice" if origin[name] == path else f"both {origin[name]} and {path}"
                raise UsageError(f"image {name!r} is in {where}")
            if image_id in ids:
                raise UsageError(f"image id {image_id} is given to {ids[image_id]!r} ({origin[ids[image_id]]}) "
                                 f"and to {name!r} ({path})")
            origin[name], ids[image_id] = path, name
            sets.append(entry)
    sets.sort(key=lambda entry: entry[0]["image_id"])
    from .pipeline.sources import output_stem

    try:
        fmt.merge(out, sets, overwrite=args.overwrite, images_per_part=args.images_per_part, stem=output_stem,
                  **({"polygons": True} if args.polygons else {}))
    except (ValueError, ImportError) as err:  # records that a format cannot hold, no pyarrow
        raise UsageError(str(err)) from None
    return 0


def _check_not_an_input(out: Path, inputs: Sequence[str]) -> None:
    """OUT is no input, lies in no input folder and holds no input."""
    target = out.resolve()
    for path in inputs:
        source = Path(path).resolve()
        if target == source or source in target.parents or target in source.parents:
            raise UsageError(f"{out} would be written over the input {path}; choose another OUT")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    return run_command(parser, run, parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
