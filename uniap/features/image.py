"""Loading images as ``(H, W, 3)`` uint8 RGB arrays, from files or arrays."""

from __future__ import annotations

import io
import os
import re
import threading
from pathlib import Path

import numpy as np

from .base import MissingFileError

__all__ = ["DEFAULT_MAX_PIXELS", "load_image", "load_image_bytes", "check_pixels", "open_image"]

ImageLike = str | os.PathLike | np.ndarray

# The most pixels (height x width) an image file may declare before it is decoded: Pillow's
# decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, 89.5 million: 9459 x 9459), which
# keeps 8000 x 8000 work (64 million) possible and refuses a 12000 x 12000 PNG of zeros (a few
# hundred KB on disk, over 9 GB of memory once decoded and segmented).  ``max_pixels`` / ``--max-pixels``
# change it; 0 lifts it.
DEFAULT_MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3
_PIL_LIMIT = threading.Lock()  # held while Pillow's own limit is lifted to read a header (open_image)

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def load_image(image: ImageLike, *, max_pixels: int | None = None) -> np.ndarray:
    """Load or validate an image as an ``(H, W, 3)`` uint8 RGB array.

    Parameters
    ----------
    image : str, path-like, PIL image or ndarray
        A file path, read with Pillow: the EXIF orientation is applied, grayscale, palette,
        CMYK and 16-bit images are converted to RGB, an alpha channel is dropped, and only the
        first frame of a multi-frame file is used.  Or an array of shape (H, W) (gray),
        (H, W, 1), (H, W, 3) (RGB) or (H, W, 4) (RGBA, alpha dropped), of dtype uint8 (0..255),
        bool, or float with values in [0, 1] (scaled by 255 and rounded).
    max_pixels : int, optional
        The most pixels (height x width) an image may have, checked on the file's header before
        anything is decoded.  None (default): :data:`DEFAULT_MAX_PIXELS` (89.5 million) for
        files and PIL images, no limit for arrays (already in memory); 0: no limit.

    Returns
    -------
    ndarray of shape (H, W, 3), uint8
        C-contiguous.  A uint8 RGB input array is returned without a copy.

    Raises
    ------
    MissingFileError
        If the path does not exist (also a ValueError and a FileNotFoundError).
    ValueError
        If the file cannot be read or is not an image, has more than ``max_pixels`` pixels, or
        is a float image holding NaN/inf (the message names the file); or the array is empty,
        has the wrong shape, more than ``max_pixels`` pixels, holds NaN/inf, or floats
        outside [0, 1].
    TypeError
        If ``image`` is neither a path nor an array, or the array's dtype is not uint8, bool or
        floating.

    Examples
    --------
    >>> import numpy as np
    >>> load_image(np.zeros((4, 5))).shape
    (4, 5, 3)
    >>> load_image(np.full((2, 2, 4), 255, np.uint8))[0, 0]
    array([255, 255, 255], dtype=uint8)
    """
    if isinstance(image, (str, os.PathLike)):
        return _read_file(Path(image), _file_limit(max_pixels))
    if isinstance(image, np.ndarray):
        if max_pixels is not None:
            check_pixels(image.shape[:2], _file_limit(max_pixels), "image array")
        return _from_array(image)
    if type(image).__module__.startswith("PIL."):
        check_pixels(image.size[::-1], _file_limit(max_pixels), "<PIL image>")
        return _from_pil(image, "<PIL image>")
    raise TypeError(
        f"image must be a file path or a numpy array, got {type(image).__name__}"
    )


def check_pixels(shape, max_pixels: int | None, where: str) -> None:
    """ValueError naming ``where`` when an image of ``shape`` ``(height, width)`` has more than
    ``max_pixels`` pixels (None or 0: no limit).

    Examples
    --------
    >>> check_pixels((100, 100), 10_000, "a.png")
    >>> check_pixels((100, 101), 10_000, "a.png")
    Traceback (most recent call last):
    ...
    ValueError: cannot read image 'a.png': 100 x 101 = 10100 pixels, more than the limit of 10000 (--max-pixels / max_pixels; 0 lifts it)
    """
    height, width = int(shape[0]), int(shape[1])
    if max_pixels and height * width > max_pixels:
        raise ValueError(f"cannot read image {where!r}: {height} x {width} = {height * width} pixels, "
                         f"more than the limit of {max_pixels} (--max-pixels / max_pixels; 0 lifts it)")


def _file_limit(max_pixels: int | None) -> int:
    """The cap for an image to decode: ``max_pixels``, the default when None, 0 for none."""
    if max_pixels is None:
        return DEFAULT_MAX_PIXELS
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 0:
        raise ValueError(f"max_pixels must be an integer >= 0 (0: no limit), got {max_pixels!r}")
    return int(max_pixels)


def _read_file(path: Path, max_pixels: int) -> np.ndarray:
    try:
        path.stat()
    except FileNotFoundError:
        raise MissingFileError(2, "image file not found", str(path)) from None
    except OSError as err:  # a symbolic link loop, a name too long, no permission
        raise ValueError(f"cannot read image {str(path)!r}: {(err.strerror or str(err)).lower()}") from None
    if path.is_dir():
        raise ValueError(f"cannot read image {str(path)!r}: it is a directory")
    return _decode(path, str(path), max_pixels)


def load_image_bytes(data: bytes, where: str, *, max_pixels: int | None = None) -> np.ndarray:
    """Decode an encoded image (the bytes of a JPEG, PNG, ... file) as :func:`load_image` does.

    Parameters
    ----------
    data : bytes
        The file's contents, e.g. a tar member's (:mod:`uniap.pipeline.sources`).
    where : str
        Where the bytes come from, named in error messages.
    max_pixels : int, optional
        The most pixels the image may have, read from its header before decoding
        (default :data:`DEFAULT_MAX_PIXELS`; 0: no limit).

    Returns
    -------
    ndarray of shape (H, W, 3), uint8
        As :func:`load_image` returns for the same file on disk.

    Raises
    ------
    ValueError
        If the bytes are not a readable image, or one of more than ``max_pixels`` pixels (the
        message names ``where``).

    Examples
    --------
    >>> from io import BytesIO
    >>> from PIL import Image
    >>> buf = BytesIO()
    >>> Image.new("L", (5, 4), 7).save(buf, format="PNG")
    >>> load_image_bytes(buf.getvalue(), "tiny.png").shape
    (4, 5, 3)
    """
    return _decode(io.BytesIO(data), where, _file_limit(max_pixels))


def _decode(source, where: str, max_pixels: int) -> np.ndarray:
    """Open ``source`` (a path or a binary file object) with Pillow, check its size on the
    header (nothing is decoded yet), then decode it; errors name ``where``."""
    try:
        with open_image(source, where, max_pixels) as img:
            return _from_pil(img, where)
    except ValueError as err:
        if where in str(err):
            raise
        raise ValueError(f"cannot read image {where!r}: {err}") from err
    except Exception as err:  # PIL raises OSError, UnidentifiedImageError, SyntaxError, ...
        reason = str(err) or type(err).__name__
        if not isinstance(source, (str, os.PathLike)):  # PIL names the file object: "<_io.BytesIO ...>"
            reason = re.sub(r"<_io\.\w+ object at 0x[0-9a-f]+>", "it", reason)
        raise ValueError(f"cannot read image {where!r}: {reason}") from err


def open_image(source, where: str, max_pixels: int | None = None):
    """``PIL.Image.open(source)`` (the header only: nothing is decoded yet) with its size
    checked against ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`; 0: no limit).

    ``max_pixels`` takes the place of Pillow's own decompression-bomb limit
    (``PIL.Image.MAX_IMAGE_PIXELS``), which would warn above 89.5 million pixels and refuse
    twice that whatever ``max_pixels`` says: Pillow's limit is lifted while the header is read,
    under a lock so that concurrent loads restore it in turn.  Use it as a context manager.

    Raises
    ------
    ValueError
        The image has more than ``max_pixels`` pixels (the message names ``where``).
    OSError, PIL.UnidentifiedImageError
        Pillow cannot open ``source``.
    """
    from PIL import Image

    max_pixels = _file_limit(max_pixels)
    with _PIL_LIMIT:
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            img = Image.open(source)
        finally:
            Image.MAX_IMAGE_PIXELS = limit
    try:
        check_pixels(img.size[::-1], max_pixels, where)
    except ValueError:
        img.close()
        raise
    return img


def _from_pil(img, where: str) -> np.ndarray:
    from PIL import ImageOps

    img.load()
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode == "F" and not np.isfinite(arr).all():
            raise ValueError(f"cannot read image {where!r}: the float image holds NaN or inf values")
        if mode in _SIXTEEN_BIT:
            arr = arr / 257.0
        elif arr.size and (arr.min() < 0 or arr.max() > 255):
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return _from_array(gray)
    if mode in ("P", "PA") or (mode in ("L", "RGB") and "transparency" in img.info):
        img = img.convert("RGBA")  # avoids Pillow's warning about palette transparency
    if img.mode != "RGB":
        img = img.convert("RGB")
    arr = np.array(img)  # a writable copy (np.asarray of a Pillow image is read-only)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.size == 0:
        raise ValueError(f"cannot read image {where!r}: decoded to shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _from_array(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        pass
    elif arr.ndim != 2:
        raise ValueError(
            "image array must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
            f"got {arr.shape}"
        )
    if arr.size == 0:
        raise ValueError(f"image array is empty: shape {arr.shape}")
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * np.uint8(255)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError("image array holds NaN or inf values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"float image values must lie in [0, 1], got range [{lo:g}, {hi:g}]; "
                "divide by 255 or pass a uint8 array"
            )
        out = np.rint(arr * 255.0).astype(np.uint8)
    else:
        raise TypeError(
            f"image array dtype must be uint8, bool or float in [0, 1], got {arr.dtype}; "
            "convert it, e.g. with skimage.util.img_as_ubyte"
        )
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    elif out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    elif out.shape[2] == 4:
        out = out[:, :, :3]
    return np.ascontiguousarray(out)
