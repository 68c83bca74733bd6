"""COCO run-length encoding of masks: encode, decode, and check an RLE before pycocotools sees it.

The one encoding every mask record holds (:mod:`uniap.records`) and every format writes or
reads (:mod:`uniap.formats`), so it sits below both: it imports NumPy (and pycocotools when
called) only.  :mod:`uniap.records` re-exports these names where they were.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def encode_rle(masks: np.ndarray) -> list[dict]:
    """COCO RLE of boolean masks (K, H, W), with ``counts`` as ``str`` for JSON (pycocotools)."""
    from pycocotools import mask as mask_utils

    if masks.shape[0] == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(np.moveaxis(masks, 0, -1).astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def decode_rle(rle: dict) -> np.ndarray:
    """Boolean (H, W) mask of one COCO RLE record (``counts`` as ``str`` or ``bytes``)."""
    from pycocotools import mask as mask_utils

    counts = rle["counts"]
    rle = {"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(rle).astype(bool)


# Characters of one count in COCO's compressed RLE: 5 bits each, so 7 hold any count below
# 2**34 (an image of 17 gigapixels); a longer one is corrupt.
_MAX_RLE_CHARS_PER_COUNT = 7


def check_rle(rle: object, shape: Sequence[int] | None = None) -> None:
    """Raise ``ValueError`` unless ``rle`` is a COCO RLE that decodes to exactly one mask.

    pycocotools trusts its input: a ``size`` of [60000, 60000] allocates gigabytes before
    anything is checked, and empty or truncated ``counts`` decode to masks read from
    uninitialised memory, different from one process to the next.  This reads the counts
    (compressed ``str``/``bytes`` or a list of ints) without allocating the mask: ``size``
    must be two non-negative integers, equal to ``shape`` when given; every character a valid
    RLE character, the last one closing its count; every run non-negative; and the runs must
    add up to exactly H * W pixels.  The counts string may be at most
    ``7 * (H * W + 1)`` characters long, so checking costs time in proportion to the image.

    Parameters
    ----------
    rle : dict
        ``{"size": [H, W], "counts": ...}``.
    shape : (H, W), optional
        The image's shape.

    Raises
    ------
    ValueError
        Naming the problem.

    Examples
    --------
    >>> check_rle({"size": [2, 3], "counts": [1, 4, 1]})
    >>> check_rle({"size": [2, 3], "counts": "0"})
    Traceback (most recent call last):
    ...
    ValueError: RLE counts decode to 0 pixels, but size [2, 3] has 6
    """
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError(f"an RLE must be a dict with 'size' and 'counts', got {_short(rle)}")
    size = rle["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in size)):
        raise ValueError(f"RLE size must be [height, width], two non-negative integers, got {_short(size)}")
    height, width = int(size[0]), int(size[1])
    if shape is not None and (height, width) != (int(shape[0]), int(shape[1])):
        raise ValueError(f"RLE size {[height, width]} differs from the image's {[int(shape[0]), int(shape[1])]}")
    pixels = height * width
    counts = rle["counts"]
    if isinstance(counts, (list, tuple)):
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in counts):
            raise ValueError("RLE counts given as a list must be integers")
        runs = np.asarray(counts, dtype=np.int64) if counts else np.zeros(0, np.int64)
    elif isinstance(counts, (str, bytes)):
        runs = _rle_string_counts(counts, pixels)
    else:
        raise ValueError(f"RLE counts must be a string or a list of integers, got {type(counts).__name__}")
    if (runs < 0).any():
        raise ValueError(f"RLE counts hold a negative run ({int(runs.min())})")
    total = int(runs.sum())
    if total != pixels:
        raise ValueError(f"RLE counts decode to {total} pixels, but size {[height, width]} has {pixels}")


def _rle_string_counts(counts: str | bytes, pixels: int) -> np.ndarray:
    """The runs of a compressed COCO RLE string (pycocotools' ``rleFrString``), checked."""
    if len(counts) > _MAX_RLE_CHARS_PER_COUNT * (pixels + 1):
        raise ValueError(f"RLE counts are {len(counts)} characters long, too long for {pixels} pixels")
    if isinstance(counts, str):
        try:
            counts = counts.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError("RLE counts hold a character that is not ASCII") from None
    c = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, np.int64)
    if ((c < 0) | (c > 63)).any():
        bad = int(np.flatnonzero((c < 0) | (c > 63))[0])
        raise ValueError(f"RLE counts hold an invalid character {chr(c[bad] + 48)!r} at position {bad}")
    more = (c & 0x20) != 0
    if more[-1]:
        raise ValueError("RLE counts are truncated: the last character continues a count")
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > _MAX_RLE_CHARS_PER_COUNT:
        raise ValueError("RLE counts hold a count too large for any image")
    # Character k of a count holds bits 5k..5k+4; the last one's bit 4 is the sign.
    group = np.repeat(np.arange(ends.size), lengths)
    k = np.arange(c.size) - starts[group]
    x = np.bincount(group, weights=(c & 0x1F) << (5 * k), minlength=ends.size).astype(np.int64)
    negative = (c[ends] & 0x10) != 0
    x[negative] -= np.left_shift(1, 5 * lengths[negative])
    # Runs from the fourth on are stored as differences to the run two before.
    runs = x.copy()
    runs[3::2] = np.cumsum(x[1::2])[1:]
    runs[4::2] = np.cumsum(x[2::2])[1:]
    return runs


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
