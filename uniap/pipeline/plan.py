"""Where each image's outputs go, which images are done, and the rules that keep files safe.

A :class:`Job` is one input image and the paths of the outputs it must write.  Planning is
pure bookkeeping on names (no image is opened), linear in the number of inputs:

* outputs mirror each input's key (its path relative to its input root), so names never clash;
* a folder ``--out`` is a folder whatever the input count: an existing folder, a path ending in
  ``/``, or more than one input (``--format png`` always writes a folder per image below it);
* no output is an input file, lies over one, or is another output of the run;
* an image is done when every requested output exists and was made with the same settings
  (each output records a :func:`signature` of them); without ``overwrite`` an output made with
  other settings is an error, never silently replaced;
* temporary files left by a killed run beside this run's outputs are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from .sources import Item, output_stem

# Output kinds: the per-image files a job can write.
SAM, PNG, VIZ = "sam", "png", "viz"
FAILURES = "failures.jsonl"
SIGNATURE_FILE = "uniap.json"  # inside a --format png folder
_SIGNATURE_RE = re.compile(rb'"signature":"([0-9a-f]{8,64})"')


class PlanError(ValueError):
    """Outputs that cannot be written safely (a clash with an input, an existing file, ...)."""


@dataclass(frozen=True)
class Job:
    """One image and the outputs it writes.

    Attributes
    ----------
    item : Item
        The input (a file or a tar member).
    image_id : int
        The image's id in every output (COCO ``image_id``): from ``image_ids`` when given,
        else :func:`stable_image_ids` of its key, so it is the same in every shard and run.
    outputs : dict
        Output kind (``"sam"``, ``"png"``, ``"viz"``) -> path still to write.  Kinds whose output
        already exists with the same settings are left out.
    """

    item: Item
    image_id: int
    outputs: dict[str, str] = field(default_factory=dict)


@dataclass
class Plan:
    """What a run will do: the jobs to run and the images already done."""

    jobs: list[Job]
    done: int
    failures_path: Path | None
    out_is_folder: bool
    viz_is_folder: bool


def stable_image_ids(keys: Sequence[str]) -> list[int]:
    """Image ids from the keys alone: 52 bits of their SHA-1, unique among ``keys``.

    The same key gets the same id in every shard and every run over the same inputs (a clash,
    about one in a million pairs of 10M images, moves the later key in sorted order to the
    next free id).  Ids stay below 2**52, exact in JSON readers that use doubles.
    """
    taken: set[int] = set()
    ids = []
    for key in keys:
        image_id = int.from_bytes(hashlib.sha1(key.encode("utf-8", "surrogateescape")).digest()[:7], "big") >> 4
        while image_id in taken or image_id == 0:
            image_id = (image_id + 1) % (1 << 52)
        taken.add(image_id)
        ids.append(image_id)
    return ids


def signature(settings: dict[str, Any]) -> str:
    """A short digest of everything that decides an image's outputs (stored in every output)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def read_signature(kind: str, path: str) -> str | None:
    """The signature recorded in an existing output, or None when it has none (not ours)."""
    try:
        if kind == SAM:
            with open(path, "rb") as f:
                head = f.read(1 << 16)  # "image" and "uniap" come before the annotations
            match = _SIGNATURE_RE.search(head.split(b'"annotations"', 1)[0])
            return match.group(1).decode() if match else None
        if kind == PNG:
            with open(os.path.join(path, SIGNATURE_FILE), "rb") as f:
                match = _SIGNATURE_RE.search(f.read(1 << 16))
            return match.group(1).decode() if match else None
        if kind == VIZ:
            from PIL import Image

            with Image.open(path) as img:
                return img.info.get("uniap-signature")
    except (OSError, ValueError):
        return None
    return None


def folder_like(path: str) -> bool:
    """Whether the user named a folder: an existing one, or a path ending in a separator."""
    return path.endswith(("/", os.sep)) or os.path.isdir(path)


def plan_jobs(
    items: Sequence[Item],
    *,
    out: str,
    format: str,
    viz: str | None,
    overwrite: bool,
    settings_signature: str,
    single: bool,
    shard: tuple[int, int] | None = None,
    image_ids: dict[str, int] | None = None,
) -> Plan:
    """Outputs of every input, after the safety rules (module docstring).

    Parameters
    ----------
    items : sequence of Item
        Every input of the run, sorted by key (all shards: the layout and the image ids do
        not depend on the shard).
    out : str
        ``--out``: a file for one image (``sam``), a folder otherwise; the data set file for
        ``coco``; the root folder for ``png``.
    format : {"sam", "coco", "png", "parquet"}
        ``coco`` and ``parquet`` write files of every image at the end (every image is a job).
    viz : str or None
        A picture file for one image, a folder otherwise.
    overwrite : bool
        Replace existing outputs of these images (never anything else).
    settings_signature : str
        :func:`signature` of the run's settings.
    single : bool
        The user named exactly one image file: ``out`` and ``viz`` may then name files.
        Folders, globs, lists and tar shards always write into folders, however many images
        they hold, so the layout never depends on what was found.
    shard : (i, n), optional
        Keep images i, i+n, i+2n, ... of ``items``.
    image_ids : dict, optional
        Image id of every key (e.g. from a ground-truth COCO file); default
        :func:`stable_image_ids`.

    Raises
    ------
    PlanError
        An output would be an input or lie over one, two outputs share a path, an output
        exists as the wrong kind of file, or an output made with other settings exists and
        ``overwrite`` is False.
    """
    single = single and len(items) == 1
    collected = format in ("coco", "parquet")  # one writer for every image, in the main process
    out_is_folder = format in ("png", "parquet") or (format == "sam" and (not single or folder_like(out)))
    if format == "coco" and folder_like(out):
        raise PlanError(f"--format coco writes one file, but --out {out} is a folder")
    if format == "sam" and out_is_folder and os.path.isfile(out.rstrip("/" + os.sep)):
        raise PlanError(f"--out {out} is a file, but {len(items)} images need a folder")
    viz_is_folder = viz is not None and (not single or folder_like(viz))
    if viz_is_folder and os.path.isfile(viz.rstrip("/" + os.sep)):
        raise PlanError(f"--viz {viz} is a file, but {len(items)} images need a folder")

    # Keys are normalised relative paths, so a root plus a key is already a normalised
    # absolute path: no per-image abspath (planning 100k images stays about a second).
    out_root, viz_root = os.path.abspath(out), viz and os.path.abspath(viz)

    def paths_of(key: str) -> dict[str, str]:
        stem = output_stem(key)
        if os.sep != "/":
            stem = stem.replace("/", os.sep)
        paths = {}
        if format == "sam":
            paths[SAM] = f"{out_root}{os.sep}{stem}.json" if out_is_folder else out_root
        elif format == "png":
            paths[PNG] = f"{out_root}{os.sep}{stem}"
        if viz_root:
            paths[VIZ] = f"{viz_root}{os.sep}{stem}.png" if viz_is_folder else viz_root
        return paths

    if image_ids is None:
        ids = stable_image_ids([item.key for item in items])
    else:
        missing = [item.key for item in items if item.key not in image_ids]
        if missing:
            raise PlanError(f"{len(missing)} input(s) have no image id in --image-ids, e.g. {missing[0]!r} "
                            "(matched by file_name, the path relative to the input root)")
        ids = [int(image_ids[item.key]) for item in items]
    numbered = list(zip(ids, items))
    if shard is not None:
        index, count = shard
        numbered = numbered[index::count]
    planned = [(image_id, item, paths_of(item.key)) for image_id, item in numbered]

    _check_against_inputs(items, planned, out if format == "coco" else None)
    failures = Path(out if out_is_folder else (os.path.dirname(os.path.abspath(out)) or "."))
    failures = failures / (FAILURES if shard is None else f"failures-{shard[0]}-of-{shard[1]}.jsonl")

    listing = _Listing()
    jobs, done, conflicts = [], 0, []
    for image_id, item, paths in planned:
        todo = {}
        for kind, path in paths.items():
            exists = listing.exists(path)
            if exists and (os.path.isdir(path) != (kind == PNG)):
                raise PlanError(f"{path} exists and is a {'folder' if kind != PNG else 'file'}; "
                                "move it away or choose another --out")
            if not exists or overwrite:
                todo[kind] = path
            elif read_signature(kind, path) != settings_signature:
                conflicts.append(path)
        if todo or collected:  # those files are written whole every run
            jobs.append(Job(item, image_id, todo))
        else:
            done += 1
    if conflicts:
        raise PlanError(
            f"{len(conflicts)} existing output(s) were made with other settings or not by uniap, "
            f"e.g. {conflicts[0]}; pass --overwrite to replace them or choose another --out"
        )
    listing.remove_stale_temporaries(path for job in jobs for path in job.outputs.values())
    return Plan(jobs=jobs, done=done, failures_path=failures, out_is_folder=out_is_folder,
                viz_is_folder=viz_is_folder)


def _check_against_inputs(items: Sequence[Item], planned: list, coco_out: str | None) -> None:
    """No output is an input, contains one (a png folder), or is another output."""
    inputs = {item.path for item in items}  # absolute already (sources)
    seen: dict[str, str] = {}
    folders = set()
    outputs = [(coco_out and os.path.abspath(coco_out), "--out")] if coco_out else []
    for _, item, paths in planned:
        outputs += [(path, item.describe()) for path in paths.values()]
        if PNG in paths:
            folders.add(paths[PNG])
    for path, owner in outputs:
        if path in inputs:
            raise PlanError(f"output {path} would overwrite an input image; choose another --out/--viz")
        if path in seen:
            raise PlanError(f"{seen[path]} and {owner} would both write {path}; "
                            "give --out and --viz different paths")
        seen[path] = owner
    if folders:
        for path in inputs:
            parent = os.path.dirname(path)
            while parent and parent not in folders and os.path.dirname(parent) != parent:
                parent = os.path.dirname(parent)
            if parent in folders:
                raise PlanError(f"output folder {parent} holds the input {path}; choose another --out")


class _Listing:
    """Folder listings read once each, so that checking 100k outputs costs one scan per folder."""

    def __init__(self) -> None:
        self._names: dict[str, set[str]] = {}

    def names(self, folder: str) -> set[str]:
        if folder not in self._names:
            try:
                with os.scandir(folder) as entries:
                    self._names[folder] = {e.name for e in entries}
            except (FileNotFoundError, NotADirectoryError):
                self._names[folder] = set()
        return self._names[folder]

    def exists(self, path: str) -> bool:
        folder, _, name = path.rpartition(os.sep)
        return name in self.names(folder or os.sep)

    def remove_stale_temporaries(self, paths: Iterable[str]) -> None:
        """Remove ``.<name>.*.tmp`` / ``.old`` left beside ``paths`` by a killed run.

        Only names of this run's own outputs are touched: a concurrent shard writing other
        images into the same folder keeps its temporaries.
        """
        wanted: dict[str, set[str]] = {}
        for path in paths:
            folder, _, name = path.rpartition(os.sep)
            wanted.setdefault(folder or os.sep, set()).add(name)
        for folder, names in wanted.items():
            stale = [e for e in self.names(folder) if e.startswith(".") and e.endswith((".tmp", ".old"))]
            for entry in stale:
                owner = entry[1:].rsplit(".", 2)[0]
                if owner in names:
                    path = os.path.join(folder, entry)
                    if os.path.isdir(path):
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        try:
                            os.unlink(path)
                        except FileNotFoundError:
                            pass
