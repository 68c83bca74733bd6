"""Helpers shared by the command-line and pipeline tests."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image


def exit_status(entry: Callable[[Sequence[str]], int], argv: list[str]) -> int:
    """``entry(argv)``, counting argparse's own usage exits (status 2) as return codes."""
    try:
        return entry(argv)
    except SystemExit as exc:
        return int(exc.code)


def save_image(path: Path, image: np.ndarray) -> Path:
    """Write ``image`` to ``path`` (format from the suffix), creating its folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path
