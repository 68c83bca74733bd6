"""Pictures of a hierarchy: the image, then one panel per level with masks coloured.

Plotting libraries are imported inside the functions, so importing uniap does not need them.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from .io import atomic_path


def boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour has another label (one-pixel lines)."""
    edge = np.zeros(labels.shape, bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge


def colour_labels(labels: np.ndarray, image: np.ndarray, alpha: float = 0.55, seed: int = 0) -> np.ndarray:
    """Overlay each cluster of ``labels`` (H, W) in its own colour, boundaries in white."""
    k = int(labels.max()) + 1
    palette = np.random.default_rng(seed).integers(40, 256, size=(k, 3)).astype(np.float32)
    out = (1 - alpha) * image.astype(np.float32) + alpha * palette[labels]
    out[boundaries(labels)] = 255.0
    return out.astype(np.uint8)


def hierarchy_panels(
    image: np.ndarray,
    pixel_labels: np.ndarray,
    titles: Sequence[str] | None = None,
    columns: int = 3,
    max_side: int = 480,
) -> np.ndarray:
    """The image and one coloured panel per level, tiled ``columns`` per row, as RGB uint8.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8
    pixel_labels : ndarray of shape (L, H, W)
    titles : sequence of str, optional
        One caption per panel (image first); drawn above each panel.
    columns : int
        Panels per row.
    max_side : int
        Panels are shrunk so that their longer side is at most this many pixels.
    """
    from PIL import Image, ImageDraw

    from .hierarchy import nearest_index

    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    ph, pw = max(1, round(height * scale)), max(1, round(width * scale))
    if scale < 1.0:  # shrink first: colouring and drawing then touch panel pixels only
        image = np.asarray(Image.fromarray(image).resize((pw, ph), Image.Resampling.BILINEAR))
        pixel_labels = pixel_labels[:, nearest_index(ph, height)][:, :, nearest_index(pw, width)]
    panels = [image] + [colour_labels(lab, image, seed=i) for i, lab in enumerate(pixel_labels)]
    caption = 16 if titles else 0
    rows = -(-len(panels) // columns)
    sheet = Image.new("RGB", (columns * (pw + 4) + 4, rows * (ph + caption + 4) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for n, panel in enumerate(panels):
        r, c = divmod(n, columns)
        x0, y0 = 4 + c * (pw + 4), 4 + r * (ph + caption + 4)
        sheet.paste(Image.fromarray(panel), (x0, y0 + caption))
        if titles:
            draw.text((x0 + 2, y0 + 2), titles[n], fill=(0, 0, 0))
    return np.asarray(sheet)


def save_panels(path: str | os.PathLike, sheet: np.ndarray, text: dict[str, str] | None = None) -> None:
    """Write an RGB picture as PNG, atomically; ``text`` goes into PNG text chunks."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    with atomic_path(path) as tmp:
        Image.fromarray(sheet).save(tmp, format="PNG", compress_level=3, pnginfo=info)
