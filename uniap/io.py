"""Output files: SAM-style JSON, one COCO data set, PNG label maps; always written atomically.

Every writer builds the whole output beside its destination (a temporary file or folder in
the same directory) and renames it into place, so a failure never leaves a half-written
file and never damages what was there before.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

FORMATS = ("sam", "coco", "png")
CATEGORY = {"id": 1, "name": "fg", "supercategory": "fg"}
PNG_COLUMNS = (
    "id", "level", "threshold", "kind", "label", "area", "bbox_x0", "bbox_y0", "bbox_w",
    "bbox_h", "num_patches", "parent", "score", "point_x", "point_y",
)


@contextmanager
def atomic_path(path: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    On an exception the temporary file or folder is removed and ``path`` is left as it was.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
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
    """``document`` as compact JSON (the text every writer of uniap produces)."""
    return json.dumps(document, separators=(",", ":"))


def write_json(path: str | os.PathLike, document: Any) -> None:
    """Write ``document`` as JSON to ``path`` atomically."""
    text = json_text(document)
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def sam_document(image_info: dict, uniap_info: dict, records: list[dict]) -> dict:
    """The ``--format sam`` document of one image (DESIGN.md 4)."""
    return {"image": image_info, "uniap": uniap_info, "annotations": records}


def coco_dataset(items: Sequence[tuple[dict, list[dict]]], uniap_info: dict | None = None) -> dict:
    """One COCO data set from ``(image_info, records)`` pairs, loadable by pycocotools.

    Image ids count from 1 in the order given; annotation ids count from 1 over the whole
    data set and every annotation carries ``image_id``, ``category_id`` 1 ("fg"),
    ``iscrowd`` 0 and its ``score``, so the file also loads as results with ``COCO.loadRes``.
    UniAP's per-image record ids become ``uniap_id`` (parents keep pointing at them).
    """
    images, annotations = [], []
    for image_id, (info, records) in enumerate(items, start=1):
        images.append({"id": image_id, **info})
        for rec in records:
            ann = dict(rec)
            ann["uniap_id"] = ann.pop("id")
            ann.update(id=len(annotations) + 1, image_id=image_id, category_id=1, iscrowd=0)
            annotations.append(ann)
    dataset = {"images": images, "categories": [CATEGORY], "annotations": annotations}
    if uniap_info is not None:
        dataset["info"] = {"description": "UniAP pseudo-masks", "uniap": uniap_info}
    return dataset


def write_png(
    folder: str | os.PathLike,
    pixel_labels: np.ndarray,
    records: list[dict],
    semantic_labels: np.ndarray | None = None,
    extra_files: dict[str, str] | None = None,
) -> None:
    """``--format png``: one 16-bit label PNG per level plus ``metadata.csv``, atomically.

    ``level_<i>.png`` holds level i's instance labels (cluster ids, 0-based, canonical);
    ``semantic_<i>.png`` the semantic groups when present; ``metadata.csv`` one row per
    record (its ``label`` column is the cluster id in the PNG of its level and kind);
    ``extra_files`` maps further file names to their text (the pipeline's ``uniap.json``).
    """
    from PIL import Image

    if pixel_labels.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError("more than 65535 clusters in a level: too many for a 16-bit PNG")
    with atomic_path(folder, directory=True) as tmp:
        for i, labels in enumerate(pixel_labels):
            Image.fromarray(labels.astype(np.uint16)).save(tmp / f"level_{i}.png")
            if semantic_labels is not None:
                Image.fromarray(semantic_labels[i].astype(np.uint16)).save(tmp / f"semantic_{i}.png")
        with open(tmp / "metadata.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(PNG_COLUMNS)
            for rec in records:
                maps = pixel_labels if rec["kind"] == "instance" else semantic_labels
                px, py = rec["point_coords"][0]
                label = int(maps[rec["level"]][int(py), int(px)])
                writer.writerow([
                    rec["id"], rec["level"], rec["threshold"], rec["kind"], label, rec["area"],
                    *rec["bbox"], rec["num_patches"], rec["parent"], rec["score"], px, py,
                ])
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
