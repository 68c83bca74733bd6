"""Writing files safely, and reading JSON with errors of one line: what every format shares.

Every writer builds the whole output beside its destination (a temporary file or folder in
the same directory) and renames it into place, so a failure never leaves a half-written
file and never damages what was there before.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

# The settings' digest as every JSON output of uniap records it (``"signature":"..."``).
_SIGNATURE_RE = re.compile(rb'"signature":"([0-9a-f]{8,64})"')


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
    """``document`` as compact JSON (the text every writer of uniap produces).  Our documents
    are trees of dicts and lists, never cyclic: the cycle check (a set of ids kept for every
    container, about a fifth of the time of a 250-mask file) is skipped."""
    return json.dumps(document, separators=(",", ":"), check_circular=False)


def write_json(path: str | os.PathLike, document: Any) -> None:
    """Write ``document`` as JSON to ``path`` atomically."""
    text = json_text(document)
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


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


def _annotations(path: Path, document: dict) -> list[dict]:
    """``document["annotations"]`` checked: a list of objects (absent: none)."""
    annotations = document.get("annotations", [])
    if not isinstance(annotations, list):
        raise ValueError(f"{path}: \"annotations\" must be a list, got {type(annotations).__name__}")
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            raise ValueError(f"{path}: annotations[{i}] must be an object, got {type(ann).__name__}")
    return annotations


def per_image_paths(out: Path, sets: list, suffix: str, overwrite: bool,
                    stem: Callable[[str], str]) -> list[Path]:
    """``out/<stem(file_name)><suffix>`` of every record set (``uniap-merge``'s per-image
    formats): inside ``out``, one per image, and new unless ``overwrite`` (ValueError)."""
    paths = []
    for info, _, _ in sets:
        name = info["file_name"]
        parts = name.replace("\\", "/").split("/")
        if os.path.isabs(name) or ".." in parts or not name:
            raise ValueError(f"file_name {name!r} is not a relative path inside OUT")
        paths.append(out / (stem(name) + suffix))
    if len(set(paths)) != len(paths):
        seen: dict[Path, str] = {}
        for (info, _, _), path in zip(sets, paths):
            if path in seen:
                raise ValueError(f"{seen[path]!r} and {info['file_name']!r} would both write {path}")
            seen[path] = info["file_name"]
    if not overwrite:
        taken = next((p for p in paths if p.exists()), None)
        if taken is not None:
            raise ValueError(f"{taken} exists; pass --overwrite to replace it")
    return paths
