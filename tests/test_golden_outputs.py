"""Outputs stay the same through refactors: ``uniap-cli`` in every format against recorded digests.

``tests/data/golden_outputs.json`` was recorded from the code *before* the layering refactor of
issue 24 (the registry of formats, the core package, the ``Segmenter`` protocol); a refactor
that changes no behaviour leaves every digest as it is.  The digests are of contents, not of
file bytes, where bytes depend on a library version and not on uniap: PNG files by their pixels
(zlib's output differs between versions), Parquet parts by their rows and schema metadata
(the writer names its pyarrow version).  JSON and CSV are hashed byte for byte.

Regenerate only for an intended change of outputs, and say so in the commit::

    python tests/test_golden_outputs.py > tests/data/golden_outputs.json

``--viz`` is left out on purpose: its pictures are a drawing, not data, and change with the
palette.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

GOLDEN = Path(__file__).parent / "data" / "golden_outputs.json"

# name -> (format, extra flags); --out is a folder except for coco (one file)
RUNS = {
    "sam": ("sam", []),
    "coco": ("coco", []),
    "png": ("png", []),
    "parquet": ("parquet", []),
    "grid-sam": ("sam", ["--refine", "none", "--semantic", "--all-levels"]),
    "grid-png": ("png", ["--refine", "none", "--semantic"]),
    "slic-coco": ("coco", ["--superpixel-method", "slic", "--levels", "0.8,0.5", "--min-size", "2"]),
    "semantic-parquet": ("parquet", ["--semantic", "--preset", "paper"]),
}


def make_images(root: Path) -> None:
    """Three small pictures from integer arithmetic alone (no random generator, no JPEG), so
    every NumPy and Pillow decodes the same pixels: three colour blocks, a disc, a texture."""
    for index, (height, width) in enumerate([(40, 48), (48, 48), (56, 40)]):
        yy, xx = np.mgrid[:height, :width]
        image = np.zeros((height, width, 3), np.int64)
        image[: height // 2] = (200, 30, 30)
        image[height // 2:, : width // 2] = (30, 200, 30)
        image[height // 2:, width // 2:] = (30, 30, 200)
        disc = (yy - height * 2 // 3) ** 2 + (xx - width // 3) ** 2 < (6 + 2 * index) ** 2
        image[disc] = (220, 220, 40)
        image += ((xx * 7 + yy * 13 + index * 5) % 23)[..., None]  # texture
        folder = root / ("sub" if index == 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"img{index}.png")


def digest(path: Path) -> str:
    """The file's contents as a SHA-256: pixels for PNG, rows and metadata for Parquet."""
    h = hashlib.sha256()
    if path.suffix == ".png":
        with Image.open(path) as image:
            h.update(f"{image.mode} {image.size}".encode())
            h.update(np.asarray(image).tobytes())
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        h.update(json.dumps(table.to_pylist(), sort_keys=True, default=str).encode())
        h.update(str(table.schema).encode())
        h.update(json.dumps({k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()},
                            sort_keys=True).encode())
    else:
        h.update(path.read_bytes())
    return h.hexdigest()


def outputs(images: Path, out_root: Path) -> dict[str, dict[str, str]]:
    """Run every entry of :data:`RUNS` and digest what it wrote, by path relative to its output."""
    from uniap.cli import main as cli

    result = {}
    for name, (format, flags) in RUNS.items():
        out = out_root / (f"{name}.json" if format == "coco" else name)
        status = cli([str(images), "--out", str(out), "--format", format, "--quiet", *flags])
        assert status == 0, f"{name}: exit status {status}"
        files = [out] if out.is_file() else sorted(p for p in out.rglob("*") if p.is_file())
        result[name] = {(p.name if p == out else p.relative_to(out).as_posix()): digest(p) for p in files}
    return result


def test_outputs_match_the_recorded_digests(tmp_path):
    pytest.importorskip("pyarrow")
    images = tmp_path / "images"
    make_images(images)
    golden = json.loads(GOLDEN.read_text())
    got = outputs(images, tmp_path / "out")
    assert sorted(got) == sorted(golden)
    for name in golden:
        assert sorted(got[name]) == sorted(golden[name]), f"{name}: different files"
        changed = [path for path in golden[name] if got[name][path] != golden[name][path]]
        assert not changed, f"{name}: changed outputs {changed}"


if __name__ == "__main__":  # pragma: no cover - records the digests
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        make_images(Path(folder) / "images")
        json.dump(outputs(Path(folder) / "images", Path(folder) / "out"), sys.stdout, indent=1, sort_keys=True)
        print()
