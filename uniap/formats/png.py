"""``--format png``: a folder per image of 16-bit label maps, ``metadata.csv`` and ``uniap.json``."""

from __future__ import annotations

import csv
import os
import re

import numpy as np

from .files import _SIGNATURE_RE, atomic_path, json_text
from .registry import Format, PlanError

PNG_COLUMNS = (
    "id", "level", "threshold", "kind", "label", "area", "bbox_x0", "bbox_y0", "bbox_w",
    "bbox_h", "num_patches", "parent", "score", "point_x", "point_y",
)

SIGNATURE_FILE = "uniap.json"  # the run's settings, inside each folder


def write_png(
    folder: str | os.PathLike,
    pixel_labels: np.ndarray,
    records: list[dict],
    semantic_labels: np.ndarray | None = None,
    extra_files: dict[str, str] | None = None,
    contour_labels: np.ndarray | None = None,
) -> None:
    """``--format png``: one 16-bit label PNG per level plus ``metadata.csv``, atomically.

    ``level_<i>.png`` holds level i's instance labels (cluster ids, 0-based, canonical);
    ``semantic_<i>.png`` the semantic groups when present; ``contour_<k>.png`` the contour
    regions of cut k when present; ``metadata.csv`` one row per
    record (its ``label`` column is the cluster id in the PNG of its level and kind);
    ``extra_files`` maps further file names to their text (the pipeline's ``uniap.json``).
    """
    from PIL import Image

    if pixel_labels.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError("more than 65535 clusters in a level: too many for a 16-bit PNG")
    if contour_labels is not None and contour_labels.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError("more than 65535 contour regions in a cut: too many for a 16-bit PNG "
                         "(--no-contours leaves them out)")
    with atomic_path(folder, directory=True) as tmp:
        for i, labels in enumerate(pixel_labels):
            Image.fromarray(labels.astype(np.uint16)).save(tmp / f"level_{i}.png")
            if semantic_labels is not None:
                Image.fromarray(semantic_labels[i].astype(np.uint16)).save(tmp / f"semantic_{i}.png")
        for k, labels in enumerate(contour_labels if contour_labels is not None else ()):
            Image.fromarray(labels.astype(np.uint16)).save(tmp / f"contour_{k}.png")
        by_kind = {"instance": pixel_labels, "semantic": semantic_labels, "contour": contour_labels}
        with open(tmp / "metadata.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(PNG_COLUMNS)
            for rec in records:
                maps = by_kind[rec["kind"]]
                px, py = rec["point_coords"][0]
                label = int(maps[rec["level"]][int(py), int(px)])
                writer.writerow([
                    rec["id"], rec["level"], rec["threshold"], rec["kind"], label, rec["area"],
                    *rec["bbox"], rec["num_patches"], rec["parent"], rec["score"], px, py,
                ])
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)


def write_image(path: str, out) -> None:
    """``--format png``: a folder of 16-bit label maps, ``metadata.csv`` and ``uniap.json``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    extra = {SIGNATURE_FILE: json_text({"image": out.info, "uniap": out.uniap})}
    write_png(path, out.encoded.pixel_labels, out.encoded.records, out.encoded.semantic_labels,
              extra_files=extra, contour_labels=out.encoded.contour_labels)


def read_signature(path: str) -> str | None:
    """The settings' digest an existing folder recorded in ``uniap.json`` (None: not uniap's)."""
    with open(os.path.join(path, SIGNATURE_FILE), "rb") as f:
        match = _SIGNATURE_RE.search(f.read(1 << 16))
    return match.group(1).decode() if match else None


_PNG_FOLDER_FILE = re.compile(r"(?:level|semantic|contour)_\d+\.png|metadata\.csv|" + re.escape(SIGNATURE_FILE))


def _check_png_folder(path: str) -> None:
    """A ``--format png`` folder about to be replaced holds only what uniap writes there."""
    try:
        names = os.listdir(path)
    except OSError as err:
        raise PlanError(f"cannot read {path}: {(err.strerror or str(err)).lower()}") from None
    foreign = sorted(n for n in names if not _PNG_FOLDER_FILE.fullmatch(n) and not n.startswith("."))
    if foreign:
        raise PlanError(f"{path} holds {os.path.join(path, foreign[0])}, which uniap did not write; "
                        "it is not replaced: move it away or choose another --out")


FORMAT = Format(
    name="png",
    help="16-bit label maps per level plus metadata.csv",
    out="folder",
    image_suffix="",
    image_is_folder=True,
    write_image=write_image,
    read_signature=read_signature,
    check_replace=_check_png_folder,
)
