"""Pictures of a hierarchy: the image, then one panel per level with masks coloured; or all
masks of one image drawn over it in one picture (:func:`overlay`, as SAM's ``show_anns``).

Colours follow a region from level to level (:func:`follow_palettes`): a region keeps its
colour where it survives unchanged, and the largest part of a region that splits keeps the
region's colour while its other parts take nearby shades of it, so a coarse region's parts
form one colour family at every finer level.

Plotting libraries are imported inside the functions, so importing uniap does not need them.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from .io import atomic_path

# The ways ``--viz`` draws an image's masks (:func:`uniap.pipeline.run`'s ``viz_style``).
VIZ_STYLES = ("levels", "overlay")
# The golden ratio's fractional part: successive hues i * GOLDEN (mod 1) stay far apart.
GOLDEN = 0.6180339887498949


def boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour has another label (one-pixel lines)."""
    edge = np.zeros(labels.shape, bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge


def colour_labels(labels: np.ndarray, image: np.ndarray, alpha: float = 0.55, seed: int = 0,
                  palette: np.ndarray | None = None) -> np.ndarray:
    """Overlay each cluster of ``labels`` (H, W) in its own colour, boundaries in white.

    ``palette`` (K, 3) gives label ``k`` the colour ``palette[k]`` (RGB, 0-255); without it
    the colours are random (from ``seed``).
    """
    if palette is None:
        k = int(labels.max()) + 1
        palette = np.random.default_rng(seed).integers(40, 256, size=(k, 3))
    palette = np.asarray(palette, np.float32)
    out = (1 - alpha) * image.astype(np.float32) + alpha * palette[labels]
    out[boundaries(labels)] = 255.0
    return out.astype(np.uint8)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    from skimage.color import hsv2rgb

    return np.round(hsv2rgb(hsv.reshape(-1, 1, 3)).reshape(-1, 3) * 255.0).astype(np.float32)


def _root_hsv(n: int, seed: int) -> np.ndarray:
    """``n`` well-separated colours (HSV in [0, 1]): hues i * GOLDEN, shifted by ``seed``."""
    rng = np.random.default_rng(seed)
    hue = (rng.random() + np.arange(n) * GOLDEN) % 1.0
    return np.stack([hue, rng.uniform(0.55, 0.9, n), rng.uniform(0.8, 1.0, n)], axis=1)


def _shades(hsv: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Nearby colours of ``hsv`` (M, 3): hue moved by 0.03-0.09 either way, saturation and
    value by up to 0.2, kept vivid enough to read over an image."""
    m = len(hsv)
    hue = (hsv[:, 0] + rng.choice([-1.0, 1.0], m) * rng.uniform(0.03, 0.09, m)) % 1.0
    sat = np.clip(hsv[:, 1] + rng.uniform(-0.2, 0.2, m), 0.4, 1.0)
    val = np.clip(hsv[:, 2] + rng.uniform(-0.2, 0.2, m), 0.6, 1.0)
    return np.stack([hue, sat, val], axis=1)


def _children_palette(parent_hsv: np.ndarray, parent: np.ndarray, area: np.ndarray,
                      rng: np.random.Generator) -> np.ndarray:
    """Colours (HSV) of regions whose enclosing region is ``parent``: the largest part of each
    parent keeps the parent's colour (a region that survives unchanged is its parent's only
    part), the others take shades of it."""
    hsv = parent_hsv[parent].copy()
    order = np.lexsort((-area, parent))  # by parent, largest part first
    first = np.ones(len(order), bool)
    first[1:] = parent[order][1:] != parent[order][:-1]
    shaded = order[~first]
    hsv[shaded] = _shades(hsv[shaded], rng)
    return hsv


def follow_palettes(stack: np.ndarray, seed: int = 0) -> list[np.ndarray]:
    """One palette per map of nested label maps (L, H, W), finest first, so that a region can
    be followed from map to map.

    The coarsest map's regions get well-separated colours; going finer, the largest part of
    each region keeps its colour (so a region that survives unchanged keeps it) and its other
    parts take nearby shades of it.  A map's labels need not be nested in the next one's: a
    label then takes the colour family of the next map's label at its last pixel.

    Parameters
    ----------
    stack : ndarray of shape (L, H, W), int
        Label maps, finest first, labels >= 0.
    seed : int
        Picks the coarsest map's hues and the shades.

    Returns
    -------
    list of ndarray of shape (K_l, 3), float32
        RGB colours (0-255) of labels 0 .. K_l - 1 of map ``l``; ``palette[l][stack[l]]``
        colours map ``l``.

    Examples
    --------
    >>> fine = np.array([[0, 1], [2, 2]])
    >>> coarse = np.array([[0, 0], [1, 1]])  # label 2 survives unchanged as label 1
    >>> palettes = follow_palettes(np.stack([fine, coarse]))
    >>> bool((palettes[0][2] == palettes[1][1]).all())
    True
    """
    stack = np.asarray(stack)
    if stack.ndim != 3:
        raise ValueError(f"expected label maps of shape (L, H, W), got shape {stack.shape}")
    if stack.shape[0] == 0:
        return []
    if stack.size and int(stack.min()) < 0:
        raise ValueError("labels must be >= 0")
    sizes = [int(m.max()) + 1 if m.size else 1 for m in stack]
    hsv = _root_hsv(sizes[-1], seed)
    palettes = [hsv]
    for level in range(len(stack) - 2, -1, -1):
        fine, coarse = stack[level].ravel(), stack[level + 1].ravel()
        parent = np.zeros(sizes[level], np.int64)
        parent[fine] = coarse  # nested maps: every pixel of a label has the same coarse label
        area = np.bincount(fine, minlength=sizes[level])
        rng = np.random.default_rng([seed, level])
        hsv = _children_palette(hsv, parent, area, rng)
        palettes.append(hsv)
    return [_hsv_to_rgb(p) for p in palettes[::-1]]


def panel_shape(height: int, width: int, max_side: int = 480) -> tuple[int, int]:
    """The (height, width) of :func:`hierarchy_panels`' panels for an image of that size: shrunk
    so that the longer side is at most ``max_side``, never enlarged.

    Examples
    --------
    >>> panel_shape(400, 600), panel_shape(40, 60)
    ((320, 480), (40, 60))
    """
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def hierarchy_panels(
    image: np.ndarray,
    pixel_labels: np.ndarray,
    titles: Sequence[str] | None = None,
    columns: int = 3,
    max_side: int = 480,
    contour_labels: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """The image and one coloured panel per level, tiled ``columns`` per row, as RGB uint8.

    Colours follow regions across levels (:func:`follow_palettes`).  Contour regions, when
    given, follow on their own rows, one panel per cut, coloured the same way.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8
    pixel_labels : ndarray of shape (L, H, W)
        Or already of the panels' size (:func:`panel_shape`), which spares a large image's
        full-size maps.
    titles : sequence of str, optional
        One caption per panel (the image, the levels, then the contour cuts); drawn above
        each panel.
    columns : int
        Panels per row.
    max_side : int
        Panels are shrunk so that their longer side is at most this many pixels.
    contour_labels : ndarray of shape (K, H, W), optional
        The contour regions of the watershed superpixels, finest cut first
        (:attr:`uniap.pipeline.image.ImageSegmentation.contour_labels`); or of the panels' size.
    seed : int
        Picks the colours.

    Examples
    --------
    >>> image = np.zeros((20, 30, 3), np.uint8)
    >>> levels = np.zeros((2, 20, 30), np.int32); levels[0, :, 15:] = 1
    >>> hierarchy_panels(image, levels, columns=3).shape
    (28, 106, 3)
    """
    from PIL import Image, ImageDraw

    from .core.graph import nearest_index

    height, width = image.shape[:2]
    ph, pw = panel_shape(height, width, max_side)
    maps = [np.asarray(pixel_labels)] + ([] if contour_labels is None else [np.asarray(contour_labels)])
    if (ph, pw) != (height, width):  # shrink first: colouring and drawing then touch panel pixels only
        image = np.asarray(Image.fromarray(image).resize((pw, ph), Image.Resampling.BILINEAR))
    # maps already of the panels' size (made so by the caller, to spare memory) stay as they are
    maps = [m if m.shape[1:] == (ph, pw) else m[:, nearest_index(ph, m.shape[1])][:, :, nearest_index(pw, m.shape[2])]
            for m in maps]
    blocks = [[image] + _follow_panels(maps[0], image, seed)]
    if len(maps) > 1 and len(maps[1]):
        blocks.append(_follow_panels(maps[1], image, seed + 1))
    caption = 16 if titles else 0
    rows_of = [-(-len(block) // columns) for block in blocks]
    sheet = Image.new("RGB", (columns * (pw + 4) + 4, sum(rows_of) * (ph + caption + 4) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    n, row0 = 0, 0
    for block, nrows in zip(blocks, rows_of):  # each block starts a row
        for i, panel in enumerate(block):
            r, c = divmod(i, columns)
            x0, y0 = 4 + c * (pw + 4), 4 + (row0 + r) * (ph + caption + 4)
            sheet.paste(Image.fromarray(panel), (x0, y0 + caption))
            if titles and n < len(titles):
                draw.text((x0 + 2, y0 + 2), titles[n], fill=(0, 0, 0))
            n += 1
        row0 += nrows
    return np.asarray(sheet)


def _follow_panels(stack: np.ndarray, image: np.ndarray, seed: int) -> list[np.ndarray]:
    palettes = follow_palettes(stack, seed=seed)
    return [colour_labels(labels, image, palette=palette) for labels, palette in zip(stack, palettes)]


def overlay(image: np.ndarray, records: Sequence[dict], alpha: float = 0.45, seed: int = 0) -> np.ndarray:
    """All masks of one image drawn over it in one picture, as SAM's ``show_anns``.

    Masks are painted largest first, so smaller masks lie on top of the regions that hold
    them; each pixel takes the colour of the smallest mask covering it, blended with the
    image (``alpha``), and the outlines of what is visible are white.  A mask takes the colour
    family of the mask it is drawn on (the one under most of its pixels): the largest such
    part keeps that colour, so a mask repeated (an instance region equal to a contour region)
    shows one colour, and the other parts take shades of it; masks drawn on the bare image get
    well-separated colours.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8
    records : sequence of dict
        SAM-style records with a COCO RLE ``segmentation`` of the image's size
        (:mod:`uniap.records`), e.g. a ``--format sam`` file's ``"annotations"``.
    alpha : float
        Opacity of the colours.
    seed : int
        Picks the colours.

    Returns
    -------
    ndarray of shape (H, W, 3), uint8

    Examples
    --------
    >>> from uniap.records import encode_rle
    >>> image = np.zeros((4, 6, 3), np.uint8)
    >>> big = np.ones((1, 4, 6), bool); small = np.zeros((1, 4, 6), bool); small[0, 1:3, 1:3] = True
    >>> records = [{"id": 0, "area": 24, "parent": -1, "segmentation": encode_rle(big)[0]},
    ...            {"id": 1, "area": 4, "parent": 0, "segmentation": encode_rle(small)[0]}]
    >>> picture = overlay(image, records)
    >>> picture.shape, bool((picture[2, 2] != picture[0, 5]).any())
    ((4, 6, 3), True)
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got shape {image.shape}")
    height, width = image.shape[:2]
    # The record painted last at each pixel, in column-major order (COCO RLE's): a mask's runs
    # are then slices, painted without decoding the mask at the image's size (16,000 records
    # of a 15-megapixel image: seconds, not minutes).
    owner = np.full(height * width, -1, np.int32)
    hsv = np.zeros((len(records) + 1, 3))  # the last row: no record (never drawn)
    roots = _root_hsv(len(records), seed)
    shades = np.random.default_rng([seed, 1])
    taken = np.zeros(len(records) + 1, bool)  # whether a record's colour went to a part already
    n_roots = 0
    order = sorted(range(len(records)), key=lambda i: (-float(records[i].get("area", 0)), i))
    for i in order:
        pixels = _mask_pixels(records[i], height, width)
        under = owner[pixels]
        # The mask's colour family is that of the region it is drawn on (most of its pixels):
        # the first (largest) part keeps the region's colour, later parts take shades of it.
        host = int(np.bincount(under + 1).argmax()) - 1 if under.size else -1
        if host < 0:
            hsv[i], n_roots = roots[n_roots], n_roots + 1
        elif not taken[host]:
            hsv[i], taken[host] = hsv[host], True
        else:
            hsv[i] = _shades(hsv[host][None], shades)[0]
        owner[pixels] = i
    owner = owner.reshape(width, height).T
    palette = _hsv_to_rgb(hsv)
    covered = owner >= 0
    out = image.astype(np.float32)
    out[covered] = (1 - alpha) * out[covered] + alpha * palette[owner[covered]]
    out[boundaries(owner)] = 255.0
    return out.astype(np.uint8)


def _mask_pixels(record: dict, height: int, width: int) -> np.ndarray:
    """Column-major indices of a record's mask pixels, from its COCO RLE's runs (compressed
    string or list of counts), checked against the image's size."""
    from .records import _rle_string_counts

    rle = record["segmentation"]
    name = record.get("id", "?")
    if list(rle["size"]) != [height, width]:
        raise ValueError(f"record {name}'s mask is {rle['size'][0]}x{rle['size'][1]}, the image {height}x{width}")
    counts = rle["counts"]
    runs = np.asarray(counts, np.int64) if isinstance(counts, list) else _rle_string_counts(counts, height * width)
    if (runs.size and runs.min() < 0) or runs.sum() != height * width:
        raise ValueError(f"record {name}'s RLE does not cover its {height}x{width} pixels")
    ends = np.cumsum(runs)
    starts, ends = (ends - runs)[1::2], ends[1::2]  # runs alternate: 0s first, then 1s
    lengths = ends - starts
    offsets = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return np.arange(offsets.size) + offsets


def save_panels(path: str | os.PathLike, sheet: np.ndarray, text: dict[str, str] | None = None) -> None:
    """Write an RGB picture as PNG, atomically; ``text`` goes into PNG text chunks."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    with atomic_path(path) as tmp:
        Image.fromarray(sheet).save(tmp, format="PNG", compress_level=3, pnginfo=info)
