"""Pipeline sources: what the user named (files, folders, globs, file lists, tar shards) as items.

:func:`expand_inputs` plans the run: it turns the inputs into a sorted list of :class:`Item`,
each with a *key*, its path relative to its input root (``"a/img.jpg"``), which the outputs
mirror, so that two images called ``img.jpg`` in different folders never write the same file.
:func:`decode` reads one item as an ``(H, W, 3)`` uint8 RGB array.  Items are plain, picklable,
hashable data, so they can be sent to spawned worker processes and Ray tasks.

Rules
-----
folder
    Searched recursively for files whose suffix is in :data:`IMAGE_SUFFIXES` (any case); the
    key is the path relative to the folder.  Files and folders whose name starts with ``.`` are
    skipped.  Symlinked folders are followed, each real folder read once (a link to a folder
    that is already read, or to one of its ancestors, adds nothing).  A ``.tar`` inside a
    folder is not opened: name shards directly or with a glob.
file
    A named file is an input whatever its suffix; a ``.tar`` is a tar shard.  All named files
    share one root, the common path of their folders: ``a/img.jpg b/img.jpg`` give the keys
    ``a/img.jpg`` and ``b/img.jpg``, a single file its name.  A path that exists is never
    read as a glob.
glob
    ``*``, ``?``, ``[...]``, ``**`` (recursive); matches every file as the shell would (hidden
    names only when the pattern names them); the root is the pattern's longest folder prefix
    without magic (``data/*/x/*.jpg``: ``data``).  Matched ``.tar`` files are tar shards.
file list (``file_lists``)
    One path per line, ``-`` for stdin; surrounding whitespace is stripped, blank lines and
    lines starting with ``#`` are skipped; relative paths are relative to the list's folder
    (the working folder for stdin).  The key is the path relative to that folder when it lies
    inside it, else the absolute path without its anchor (``/data/x.jpg``: ``data/x.jpg``).
    Lines are paths, never globs; a listed folder is an error.
tar shard
    A plain, uncompressed ``.tar`` (SA-1B, WebDataset): each regular member with an image
    suffix is an item keyed by its member name (normalised: no leading ``/`` or ``./``, ``..``
    never above the top); other members (SA-1B's ``.json``) and hidden ones (``._x.jpg``) are
    skipped.  Byte offsets are read once, so :meth:`Item.read_bytes` is a seek and a read.
    Compressed tars (``.tar.gz``, ``.tgz``, ``.tar.bz2``, ``.tar.xz``, ``.tar.zst``) are refused:
    their members cannot be reached by seeking.

The same physical file named twice (the same real root and key, or the same tar member) is
one item, the first one named.  Two different files with the same key, or keys that give the
same output name once the image suffix is dropped (``a/img.jpg`` and ``a/img.png``, see
:func:`output_stem`), are an :class:`InputError`.
"""

from __future__ import annotations

import fnmatch
import gc
import glob
import heapq
import os
import stat
import sys
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "IMAGE_SUFFIXES",
    "InputError",
    "Item",
    "decode",
    "expand_inputs",
    "output_stem",
]

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)

_COMPRESSED_TAR_SUFFIXES = (
    ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tbz2", ".tar.xz", ".txz", ".tar.zst", ".tar.zstd",
)
_COMPRESSED_MAGIC = {  # the first bytes of gzip, bzip2, xz and zstd streams
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
}
_SEPS = os.sep + (os.altsep or "")
_SEP_ENDS = tuple(_SEPS)
_TAR_BLOCK = 512


class InputError(ValueError):
    """A bad input specification (missing file, glob matching nothing, unreadable list or tar,
    name clash); the message names it."""


@dataclass(frozen=True)
class Item:
    """One image to process: a file on disk, or a member of a plain tar file.

    Attributes
    ----------
    key : str
        The path relative to its input root, ``/``-separated, without ``.``, ``..`` or a leading
        ``/`` (``"a/img.jpg"``): what the outputs mirror.
    path : str
        The absolute path of the file on disk (for a tar member: of the tar file).
    member : str or None
        The tar member's name as stored in the tar; None for a plain file.
    offset, size : int
        For a tar member, where its data starts in the tar file and how many bytes it has;
        -1 for a plain file.
    """

    key: str
    path: str
    member: str | None = None
    offset: int = -1
    size: int = -1

    def read_bytes(self) -> bytes:
        """The file's bytes; for a tar member one seek and one read, without parsing the tar.

        Raises
        ------
        OSError
            If the file cannot be read.
        ValueError
            If a tar member's data end past the end of the tar file (truncated since planning).
        """
        with open(self.path, "rb") as f:
            if self.member is None:
                return f.read()
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise ValueError(
                f"cannot read {self.describe()!r}: the tar file ends {self.size - len(data)} "
                "bytes before the member's end (was it truncated after planning?)"
            )
        return data

    def describe(self) -> str:
        """``path``, or ``tarpath:member`` for a tar member: how messages name the item."""
        return self.path if self.member is None else f"{self.path}:{self.member}"


def output_stem(key: str) -> str:
    """The key without its image suffix: the name every output of the item starts with.

    ``"a/img.jpg"`` gives ``"a/img"`` (written as ``a/img.json``, ``a/img.png``, ...); a key
    without an image suffix (a named file such as ``scan.raw``) is kept whole.

    >>> output_stem("a/img.JPG"), output_stem("scan.raw")
    ('a/img', 'scan.raw')
    """
    dot = key.rfind(".")
    if dot <= key.rfind("/") + 1:  # no suffix, or a name that only starts with a dot
        return key
    return key[:dot] if key[dot:].lower() in IMAGE_SUFFIXES else key


def decode(item: Item, max_pixels: int | None = None) -> np.ndarray:
    """Read ``item`` as an ``(H, W, 3)`` uint8 RGB array, as :func:`uniap.features.load_image`.

    The EXIF orientation is applied; grey, palette, CMYK and 16-bit images become RGB and an
    alpha channel is dropped.  An image of more than ``max_pixels`` pixels (default
    :data:`uniap.features.image.DEFAULT_MAX_PIXELS`; 0: no limit) is refused on its header,
    before it is decoded.

    Raises
    ------
    ValueError
        If the item cannot be read, is not an image or has too many pixels; the message names
        :meth:`Item.describe`.
    """
    from ..features.image import load_image, load_image_bytes

    if item.member is None:
        return load_image(item.path, max_pixels=max_pixels)  # its messages name the path, which is describe()
    try:
        data = item.read_bytes()
    except OSError as err:
        raise ValueError(
            f"cannot read image {item.describe()!r}: {err.strerror or err}"
        ) from err
    return load_image_bytes(data, item.describe(), max_pixels=max_pixels)


def expand_inputs(inputs: Sequence[str], file_lists: Sequence[str] = ()) -> list[Item]:
    """Plan a run: files, folders, globs, file lists and tar shards as sorted items.

    Parameters
    ----------
    inputs : sequence of str or path-like
        Files, folders (searched recursively) and glob patterns; ``.tar`` files are shards.
    file_lists : sequence of str or path-like
        Files naming one input path per line (``"-"``: stdin); see the module's rules.

    Returns
    -------
    list of Item
        Sorted by key, one per physical image, keys unique.

    Raises
    ------
    InputError
        If a path does not exist (``no such file or folder: X``), a glob matches no file, a file
        list or tar cannot be read or names a missing file (with the line number), a tar is
        compressed or corrupt, two files have the same key or output name, or nothing is found.
    """
    was_enabled = gc.isenabled()
    gc.disable()  # hundreds of thousands of acyclic objects: collections would only cost time
    try:
        return _expand(inputs, file_lists)
    finally:
        if was_enabled:
            gc.enable()


def _expand(inputs: Sequence[str], file_lists: Sequence[str]) -> list[Item]:
    inputs = [os.fspath(spec) for spec in inputs]
    file_lists = [os.fspath(spec) for spec in file_lists]
    found: list[tuple[str, Item]] = []  # (identity of the physical file, item), input order
    named: list[str] = []  # absolute paths of the files named directly
    named_at = -1  # where in ``found`` they go: at the first one's place, so input order holds
    tar_hints = 0
    for spec in inputs:
        try:
            st = os.stat(spec)
        except (FileNotFoundError, NotADirectoryError):
            st = None
        except OSError as err:
            raise InputError(f"cannot access {spec}: {err.strerror or err}") from None
        if st is not None and stat.S_ISDIR(st.st_mode):
            pairs, tars = _walk_folder(spec)
            found += pairs
            tar_hints += tars
        elif st is not None:
            if _is_tar(spec):
                found += _tar_members(spec)
            else:
                named_at = len(found) if named_at < 0 else named_at
                named.append(os.path.abspath(spec))
        elif glob.has_magic(spec):
            found += _glob(spec)
        else:
            raise InputError(f"no such file or folder: {spec}")
    if named:
        found[named_at:named_at] = _named_files(named)
    seen_stdin = False
    for spec in file_lists:
        if spec == "-":
            if seen_stdin:
                raise InputError("--file-list - (stdin) is given twice")
            seen_stdin = True
        found += _file_list(spec)

    items = list({ident: item for ident, item in reversed(found)}.values())  # first one wins
    if not items:
        if not inputs and not file_lists:
            raise InputError("no images found: no inputs given")
        where = ", ".join([*inputs, *(f"--file-list {f}" for f in file_lists)])
        hint = (
            f" (they hold {tar_hints} .tar file(s), which are read as shards only when named, "
            "e.g. as 'folder/*.tar')" if tar_hints else ""
        )
        raise InputError(f"no images found in {where}{hint}")
    items.sort(key=lambda it: (it.key, it.path, it.member or ""))
    _check_clashes(items)
    return items


# ---------------------------------------------------------------------------------------------
# the kinds of input


def _walk_folder(folder: str) -> tuple[list[tuple[str, Item]], int]:
    """Image files under ``folder`` (hidden names skipped) and the number of .tar files seen."""
    root = os.path.abspath(folder)
    real_root = os.path.realpath(root)
    out: list[tuple[str, Item]] = []
    tars = 0
    visited: set[str] = set()
    pending = [(root, real_root, "")]  # (folder, its real path, key prefix)
    links: list[tuple[str, str]] = []  # symlinked folders, read after all the real ones
    suffixes = IMAGE_SUFFIXES
    while pending or links:
        if pending:
            path, real, prefix = pending.pop()
        else:
            prefix, path = heapq.heappop(links)
            real = os.path.realpath(path)
        if real in visited:
            continue
        visited.add(real)
        real_dir = _with_sep(real)
        try:
            with os.scandir(path) as it:
                for entry in it:
                    name = entry.name
                    if name[0] == ".":
                        continue
                    dot = name.rfind(".")
                    suffix = name[dot:].lower() if dot > 0 else ""
                    try:
                        is_file = suffix in suffixes and entry.is_file()
                        is_dir = not is_file and entry.is_dir()
                    except OSError:  # a symbolic link loop, say: that entry alone fails
                        if suffix in suffixes:  # decoding it reports why, as for any bad image
                            out.append((real_dir + name, Item(prefix + name, entry.path)))
                        continue
                    if is_file:
                        out.append((real_dir + name, Item(prefix + name, entry.path)))
                    elif is_dir:
                        if entry.is_symlink():
                            heapq.heappush(links, (prefix + name + "/", entry.path))
                        else:
                            pending.append((entry.path, real_dir + name, prefix + name + "/"))
                    elif suffix == ".tar":
                        tars += 1
        except OSError as err:
            raise InputError(f"cannot read folder {path}: {err.strerror or err}") from None
    return out, tars


def _named_files(paths: list[str]) -> list[tuple[str, Item]]:
    """Files named directly: one root for all, the common path of their folders."""
    if not paths:
        return []
    try:
        root = os.path.commonpath([os.path.dirname(p) for p in paths])
    except ValueError:  # different drives (Windows): keys are the paths without their anchors
        return [(p, Item(_strip_anchor(p), p)) for p in paths]
    real_root = _with_sep(os.path.realpath(root))
    cut = len(_with_sep(root))
    return [(real_root + p[cut:], Item(_to_key(p[cut:]), p)) for p in paths]


def _glob(pattern: str) -> list[tuple[str, Item]]:
    root = os.path.dirname(pattern)
    while glob.has_magic(root):
        root = os.path.dirname(root)
    base = os.path.abspath(root or os.curdir)
    real_base = os.path.realpath(base)
    out: list[tuple[str, Item]] = []
    matched = False
    recursive = "**" in pattern.replace(os.altsep or os.sep, os.sep).split(os.sep)
    for match in _recursive_glob(pattern, root) if recursive else glob.glob(pattern):
        if not _is_file(match):
            continue
        matched = True
        found = _file_under(os.path.abspath(match), base, real_base)
        if recursive and len(found) == 1 and found[0][1].member is None:
            found = [(os.path.realpath(match), found[0][1])]  # one physical file, one item
        out += found
    if not matched:
        raise InputError(f"no file matches {pattern!r}")
    return out


def _is_file(path: str) -> bool:
    """A regular file, or an entry that cannot be examined (a symbolic link loop), which then
    fails alone when decoded."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return False
    except OSError:
        return True


def _recursive_glob(pattern: str, root: str) -> list[str]:
    """``glob.glob(pattern, recursive=True)`` that enters each real folder once per ``**``.

    Python's glob follows symbolic links to folders without remembering where it has been, so
    a link to a parent (``sub/up -> ..``) makes it list for ever.  Here each ``**`` walks the
    folders below it as :func:`_walk_folder` does: real folders before linked ones, each real
    folder once; hidden names only where the pattern names them, as the shell and glob do.
    """
    parts = [p for p in pattern[len(root):].replace(os.altsep or os.sep, os.sep).split(os.sep) if p]
    if parts and parts[-1] == "**":
        parts.append("*")  # "a/**": every file below a
    matches: list[str] = []

    def step(folder: str, i: int) -> None:
        part = parts[i]
        last = i == len(parts) - 1
        if part == "**":
            for below in _folders_below(folder):
                step(below, i + 1)
            return
        if not glob.has_magic(part):
            path = os.path.join(folder, part)
            if last:
                matches.append(path)
            elif os.path.isdir(path):
                step(path, i + 1)
            return
        try:
            with os.scandir(folder or os.curdir) as it:
                names = sorted(e.name for e in it)
        except OSError:
            return
        for name in names:
            if name[0] == "." and part[0] != ".":
                continue
            if fnmatch.fnmatchcase(name, part):
                path = os.path.join(folder, name)
                if last:
                    matches.append(path)
                elif os.path.isdir(path):
                    step(path, i + 1)

    if parts:
        step(root, 0)
    return matches


def _folders_below(folder: str) -> list[str]:
    """``folder`` and every non-hidden folder below it, each real folder once, real ones first."""
    found: list[str] = []
    visited: set[str] = set()
    pending = [folder]
    links: list[str] = []
    while pending or links:
        path = pending.pop() if pending else heapq.heappop(links)
        real = os.path.realpath(path or os.curdir)
        if real in visited:
            continue
        visited.add(real)
        found.append(path)
        try:
            with os.scandir(path or os.curdir) as it:
                entries = sorted(it, key=lambda e: e.name, reverse=True)
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.name[0] == "." or not entry.is_dir():
                    continue
                is_link = entry.is_symlink()
            except OSError:
                continue
            child = os.path.join(path, entry.name)
            if is_link:
                heapq.heappush(links, child)
            else:
                pending.append(child)
    return found


def _file_list(spec: str) -> list[tuple[str, Item]]:
    if spec == "-":
        where, base = "<stdin>", os.getcwd()
        if sys.stdin is None:
            raise InputError("--file-list -: there is no stdin to read")
        try:
            text = sys.stdin.read()
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"cannot read the file list from stdin: {err}") from None
    else:
        where, base = spec, os.path.dirname(os.path.abspath(spec))
        try:
            with open(spec, encoding="utf-8-sig", errors="surrogateescape") as f:
                text = f.read()
        except OSError as err:
            raise InputError(f"cannot read file list {spec}: {err.strerror or err}") from None
    real_base = os.path.realpath(base)
    out: list[tuple[str, Item]] = []
    missing: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "\0" in line:
            raise InputError(f"file list {where}, line {number}: a NUL byte in the path {line!r}")
        path = os.path.normpath(os.path.join(base, line))
        try:
            mode = os.stat(path).st_mode
        except OSError as err:
            missing.append(f"line {number}: {line} ({err.strerror or err})")
            continue
        if stat.S_ISDIR(mode):
            raise InputError(
                f"file list {where}, line {number}: {line} is a folder (list its files instead)"
            )
        out += _file_under(path, base, real_base)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise InputError(
            f"file list {where} names files that do not exist: "
            + "; ".join(missing[:3]) + more
        )
    return out


def _file_under(path: str, base: str, real_base: str) -> list[tuple[str, Item]]:
    """A file found through ``base`` (a glob's root, a list's folder): its item(s)."""
    if _is_tar(path):
        return _tar_members(path)
    prefix = _with_sep(base)
    if path.startswith(prefix):
        rel = path[len(prefix):]
        return [(_with_sep(real_base) + rel, Item(_to_key(rel), path))]
    return [(path, Item(_strip_anchor(path), path))]


def _is_tar(path: str) -> bool:
    """A tar shard by its name; a compressed tar is an InputError."""
    lower = path.lower()
    if lower.endswith(_COMPRESSED_TAR_SUFFIXES):
        raise InputError(_compressed_message(path))
    return lower.endswith(".tar")


def _compressed_message(path: str, kind: str = "compressed") -> str:
    return (
        f"{path} is a {kind} tar: use a plain, uncompressed .tar (as SA-1B and WebDataset ship "
        "them), whose members can be read by seeking; e.g. decompress it first"
    )


def _tar_members(path: str) -> list[tuple[str, Item]]:
    """The image members of a plain tar: (identity, item), offsets read from the headers."""
    path = os.path.abspath(path)
    real = os.path.realpath(path)
    members: dict[str, Item] = {}  # a name stored twice: the last copy counts, as in tar
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(6)
        for magic, kind in _COMPRESSED_MAGIC.items():
            if head.startswith(magic):
                raise InputError(_compressed_message(path, f"{kind}-compressed"))
        with tarfile.open(path, mode="r:") as tf:
            for info in tf:
                if not info.isreg():
                    continue
                key = _member_key(info.name)
                if key is None or output_stem(key) == key:  # no image suffix
                    continue
                if info.issparse():
                    raise InputError(f"cannot read tar {path}: member {info.name} is sparse")
                if info.offset_data + info.size > size:
                    raise InputError(
                        f"cannot read tar {path}: it is truncated (member {info.name} needs "
                        f"{info.offset_data + info.size} bytes, the file has {size})"
                    )
                members[info.name] = Item(key, path, info.name, info.offset_data, info.size)
            end = tf.offset
        _check_tar_end(path, end, size)
    except InputError:
        raise
    except (tarfile.TarError, OSError, EOFError) as err:
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise InputError(f"cannot read tar {path}: {reason}") from None
    return [(real + "\0" + name, item) for name, item in members.items()]


def _check_tar_end(path: str, end: int, size: int) -> None:
    """tarfile stops quietly at a damaged header after the first: check what follows ``end``."""
    left = size - end
    if left == 0:  # no end-of-archive blocks: lenient, every member read is whole
        return
    if left < _TAR_BLOCK:
        raise InputError(
            f"cannot read tar {path}: it is truncated (a partial header at byte {end})"
        )
    with open(path, "rb") as f:
        f.seek(end)
        block = f.read(_TAR_BLOCK)
    if block.count(0) != _TAR_BLOCK:
        raise InputError(
            f"cannot read tar {path}: it is corrupt (an unreadable header at byte {end})"
        )


# ---------------------------------------------------------------------------------------------
# keys and clashes


def _to_key(rel: str) -> str:
    """A normalised native relative path (no ``.`` or ``..`` in it) as a key."""
    return rel.replace(os.sep, "/") if os.sep != "/" else rel


def _with_sep(folder: str) -> str:
    """``folder`` ending with a separator (``/`` stays ``/``)."""
    return folder if folder.endswith(_SEP_ENDS) else folder + os.sep


def _strip_anchor(path: str) -> str:
    """An absolute path without its drive and root, as a key: ``/data/x.jpg`` -> ``data/x.jpg``."""
    return _to_key(os.path.splitdrive(path)[1].lstrip(_SEPS))


def _member_key(name: str) -> str | None:
    """A tar member name as a key; None for an empty or hidden one."""
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        if part[0] == ".":
            return None
        parts.append(part)
    return "/".join(parts) or None


def _check_clashes(items: list[Item]) -> None:
    """Different files with the same key, or with keys giving the same output name."""
    by_key: dict[str, Item] = {}
    by_stem: dict[str, Item] = {}
    for item in items:
        other = by_key.setdefault(item.key, item)
        if other is not item:
            raise InputError(
                f"two inputs have the key {item.key!r} and would write the same outputs: "
                f"{item.key} from {other.describe()} and from {item.describe()}; name their "
                "parent folder instead, or run them separately"
            )
        stem = output_stem(item.key)
        other = by_stem.setdefault(stem, item)
        if other is not item:
            raise InputError(
                f"{other.key} from {other.describe()} and {item.key} from {item.describe()} "
                f"would both be written as {stem}.*: rename one, or run them separately"
            )
