"""Where each image's outputs go, which images are done, and the rules that keep files safe.

A :class:`Job` is one input image and the paths of the outputs it must write.  Planning is
pure bookkeeping on names (no image is opened), linear in the number of inputs:

* outputs mirror each input's key (its path relative to its input root), so names never clash;
* a folder ``--out`` is a folder whatever the input count: an existing folder, a path ending in
  ``/``, or more than one input (``--format png`` and ``amg`` always write a folder per image below it);
* **one output-path rule** (:func:`check_output_paths`), checked for every format over every
  input of the run (all shards): no output path is an input, lies over one, equals another
  output, or is a folder above another output (``--format png``: ``a.jpg``'s folder ``out/a``
  and ``a/p1.png``'s ``out/a/p1``), the run's own files (``failures.jsonl``, the lock)
  included; a path the file system cannot hold (with its temporary's name: a name over 255
  bytes, a path over 4095) fails that image alone, before it is processed;
* an image is done when every requested output exists and was made with the same settings
  (each output records a :func:`signature` of them); without ``overwrite`` an output made with
  other settings is an error, never silently replaced;
* temporary files left by a killed run beside this run's outputs (done or not) are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..formats import get as get_format
from ..formats.ids import stable_image_ids
from ..formats.png import SIGNATURE_FILE  # noqa: F401  (its old home)
from ..formats.registry import PlanError
from .sources import Item, output_stem

# Output kinds: the per-image files a job can write (a per-image format's name, or the picture).
SAM, PNG, VIZ = "sam", "png", "viz"
FAILURES = "failures.jsonl"


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
    """What a run will do: the jobs to run and the images already done.

    ``refused`` holds the images that fail without being processed (an output path too long
    for the file system) with the reason; ``keys`` the keys of this shard's images; ``stale``
    every output path of them (temporaries beside these are removed); ``lock_paths`` the
    run's lock files (:mod:`uniap.pipeline.locks`).
    """

    jobs: list[Job]
    done: int
    failures_path: Path | None
    out_is_folder: bool
    viz_is_folder: bool
    refused: list[tuple[Job, str]] = field(default_factory=list)  # (job, why): fail without running
    keys: frozenset = frozenset()  # keys of this shard's images (jobs, done and refused)
    stale: list[str] = field(default_factory=list)  # every output path of this shard's images
    lock_paths: list[str] = field(default_factory=list)


def signature(settings: dict[str, Any]) -> str:
    """A short digest of everything that decides an image's outputs (stored in every output)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def viz_signature(settings_signature: str, style: str = "levels") -> str:
    """The signature a ``--viz`` picture records: the settings', with the style unless it is
    the default (so pictures drawn before styles existed stay valid)."""
    return settings_signature if style == "levels" else f"{settings_signature}-{style}"


def read_signature(kind: str, path: str) -> str | None:
    """The signature recorded in an existing output, or None when it has none (not ours)."""
    try:
        if kind == VIZ:
            from PIL import Image

            with Image.open(path) as img:
                return img.info.get("uniap-signature")
        reader = get_format(kind).read_signature
        return reader(path) if reader is not None else None
    except (OSError, ValueError):
        return None


def folder_like(path: str) -> bool:
    """Whether the user named a folder: an existing one, or a path ending in a separator."""
    return path.endswith(("/", os.sep)) or os.path.isdir(path)


def output_layout(count: int, *, out: str, format: str, viz: str | None, single: bool) -> tuple[bool, bool]:
    """Whether ``--out`` and ``--viz`` are folders for a run of ``count`` images (PlanError when
    an existing file stands where a folder is needed, or the reverse)."""
    single = single and count == 1
    layout = get_format(format).out  # the format's layout rule: file, folder or file-or-folder
    either = layout == "file-or-folder"
    out_is_folder = layout == "folder" or (either and (not single or folder_like(out)))
    if layout == "file" and folder_like(out):
        raise PlanError(f"--format {format} writes one file, but --out {out} is a folder")
    if either and out_is_folder and os.path.isfile(out.rstrip("/" + os.sep)):
        raise PlanError(f"--out {out} is a file, but {count} images need a folder")
    viz_is_folder = viz is not None and (not single or folder_like(viz))
    if viz_is_folder and os.path.isfile(viz.rstrip("/" + os.sep)):
        raise PlanError(f"--viz {viz} is a file, but {count} images need a folder")
    return out_is_folder, viz_is_folder


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
    viz_style: str = "levels",
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
    format : {"sam", "coco", "png", "amg", "labelme", "parquet"}
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
    viz_style : {"levels", "overlay"}
        How ``viz`` pictures are drawn: a picture drawn otherwise counts as made with other
        settings (:func:`viz_signature`).

    Raises
    ------
    PlanError
        The output-path rule is broken (:func:`check_output_paths`: an output would be an
        input or lie over one, two outputs share a path, or one output's folder would hold
        another's), an output exists as the wrong kind of file, a ``--format png`` folder to
        replace holds files uniap did not write, or an output made with other settings exists
        and ``overwrite`` is False.  An output path too long for the file system is no error:
        that image is in ``Plan.refused`` and fails alone.
    """
    fmt = get_format(format)
    collected = fmt.collected  # one writer for every image, in the main process
    out_is_folder, viz_is_folder = output_layout(len(items), out=out, format=format, viz=viz, single=single)

    # Keys are normalised relative paths, so a root plus a key is already a normalised
    # absolute path: no per-image abspath (planning 100k images stays about a second).
    out_root, viz_root = os.path.abspath(out), viz and os.path.abspath(viz)

    def paths_of(key: str) -> dict[str, str]:
        stem = output_stem(key)
        if os.sep != "/":
            stem = stem.replace("/", os.sep)
        paths = {}
        if fmt.image_suffix is not None:  # an output per image: <out>/<stem><suffix>
            paths[format] = f"{out_root}{os.sep}{stem}{fmt.image_suffix}" if out_is_folder else out_root
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
    # Every input's paths, whatever the shard: each shard refuses the same layout.
    planned = [(image_id, item, paths_of(item.key)) for image_id, item in zip(ids, items)]

    failures = Path(out_root if out_is_folder else os.path.dirname(out_root))
    failures = failures / (FAILURES if shard is None else f"failures-{shard[0]}-of-{shard[1]}.jsonl")
    from .locks import lock_files

    locks = list(dict.fromkeys(path for target, is_folder in ((out_root, out_is_folder), (viz_root, viz_is_folder))
                               if target for path, _ in lock_files(target, is_folder, shard)))
    run_files = [(out_root, "--out")] if collected and fmt.out == "file" else []
    run_files += [(str(failures), "the failure list")] + [(path, "the run's lock") for path in locks]
    check_output_paths({item.path for item in items}, run_files, planned)
    if shard is not None:
        index, count = shard
        planned = planned[index::count]

    expected = {SAM: settings_signature, PNG: settings_signature,
                VIZ: viz_signature(settings_signature, viz_style)}
    listing = _Listing()
    jobs, done, conflicts, refused, stale = [], 0, [], [], []
    for image_id, item, paths in planned:
        too_long = next((why for why in map(_unwritable_name, paths.values()) if why), None)
        if too_long:
            refused.append((Job(item, image_id, {}), too_long))
            continue
        stale += paths.values()
        todo = {}
        for kind, path in paths.items():
            exists = listing.exists(path)
            is_folder = kind != VIZ and get_format(kind).image_is_folder
            if exists and (os.path.isdir(path) != is_folder):
                raise PlanError(f"{path} exists and is a {'folder' if not is_folder else 'file'}; "
                                "move it away or choose another --out")
            if not exists or overwrite:
                check = None if kind == VIZ else get_format(kind).check_replace
                if exists and check is not None:
                    check(path)
                todo[kind] = path
            elif read_signature(kind, path) != expected.get(kind, settings_signature):
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
    return Plan(jobs=jobs, done=done, failures_path=failures, out_is_folder=out_is_folder,
                viz_is_folder=viz_is_folder, refused=refused,
                keys=frozenset(item.key for _, item, _ in planned), stale=stale, lock_paths=locks)


def remove_stale_temporaries(plan: Plan) -> None:
    """Remove ``.<name>.*.tmp`` / ``.old`` left by a killed run beside the outputs of ``plan``'s
    images, finished ones included (call it while holding the run's lock)."""
    _Listing().remove_stale_temporaries(plan.stale)


# Bytes the file system allows in one name and one path (Linux, macOS), less the room that the
# temporary beside an output needs (``.<name>.<8 random>.tmp``: 14 bytes more than the name).
NAME_MAX, PATH_MAX, _TEMPORARY_EXTRA = 255, 4095, 14


def _unwritable_name(path: str) -> str | None:
    """Why ``path`` cannot be written (a name or the path too long), or None."""
    if len(path) + _TEMPORARY_EXTRA <= NAME_MAX and path.isascii():  # most paths: no name can be too long
        return None
    raw = os.fsencode(path)
    if len(raw) + _TEMPORARY_EXTRA > PATH_MAX:
        return (f"cannot write {path[:60]}...: the output path is {len(raw)} bytes, more than the "
                f"{PATH_MAX - _TEMPORARY_EXTRA} a file system path holds (with its temporary's name)")
    if len(raw) + _TEMPORARY_EXTRA > NAME_MAX:
        longest = max(raw.split(os.fsencode(os.sep)), key=len)
        if len(longest) + _TEMPORARY_EXTRA > NAME_MAX:
            return (f"cannot write {path[:60]}...: the name {os.fsdecode(longest[:40])}... is {len(longest)} "
                    f"bytes, more than the {NAME_MAX - _TEMPORARY_EXTRA} a file name holds "
                    "(with its temporary's name)")
    return None


def check_output_paths(inputs: set[str], run_files: Sequence[tuple[str, str]], planned: Sequence) -> None:
    """The one output-path rule, for every format: raise PlanError unless the outputs are
    pairwise apart and apart from the inputs.

    No output path (a file, or a ``--format png`` folder) may be an input, lie over one (be a
    folder above it), equal another output, or be a folder above another output; ``run_files``
    (``--format coco``'s data set, the failure list, the lock files) count as outputs.  Linear:
    each folder above an output is looked at once.

    Parameters
    ----------
    inputs : set of str
        Absolute paths of the input files (a tar shard's path for its members).
    run_files : sequence of (path, owner)
        The run's own files, ``owner`` naming them in messages.
    planned : sequence of (image_id, Item, {kind: path})
        Every input's outputs.
    """
    owner: dict[str, str] = {}
    for path, who in [*run_files, *((p, item.describe()) for _, item, paths in planned for p in paths.values())]:
        if path in owner:
            if owner[path] == who:  # one image's --out and --viz
                raise PlanError(f"--out and --viz would both write {path} for {who}; give them different paths")
            raise PlanError(f"{owner[path]} and {who} would both write {path}; rename one, give --out "
                            "and --viz different paths, or run them separately")
        owner[path] = who
    for path in inputs:
        if path in owner:
            raise PlanError(f"output {path} would overwrite an input image; choose another --out/--viz")
    clear: set[str] = set()  # folders known to be no output (nor their parents)

    sep = os.sep

    def check_above(path: str, what: str) -> None:
        parent = path.rpartition(sep)[0]  # dirname of a normalised absolute path ("" above the top)
        while parent and parent not in clear:
            if parent in owner:
                raise PlanError(
                    f"{owner[parent]} and {what} clash: {parent}, an output of {owner[parent]}, would be the "
                    f"folder holding {path}; rename one, or run them separately")
            clear.add(parent)
            parent = parent.rpartition(sep)[0]

    for path, who in owner.items():
        check_above(path, f"{who} (output {path})")
    for path in inputs:
        check_above(path, f"the input {path}")


class _Listing:
    """Folder listings read once each, so that checking 100k outputs costs one scan per folder."""

    def __init__(self) -> None:
        self._names: dict[str, set[str]] = {}

    def names(self, folder: str) -> set[str]:
        if folder not in self._names:
            try:
                with os.scandir(folder) as entries:
                    self._names[folder] = {e.name for e in entries}
            except OSError:  # missing, not a folder, a name too long: nothing of ours there
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
