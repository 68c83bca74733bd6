"""Image and record ids: exact 64-bit integers, and the stable id of an image's name."""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np

_INT64 = (-(2**63), 2**63 - 1)


def as_id(value: Any, what: str) -> int:
    """``value`` as an exact 64-bit integer id (COCO ids are integers), or a ValueError naming
    ``what``.  An integral float (``3.0``, as some JSON writers give) is that integer; a
    fractional one (``1.5``), a bool, a string, a list or a number beyond 64 bits is refused,
    never rounded or truncated.

    Examples
    --------
    >>> as_id(3.0, "image id")
    3
    >>> as_id(1.5, "image id")
    Traceback (most recent call last):
    ...
    ValueError: image id must be a 64-bit integer (COCO ids are integers), got 1.5
    """
    exact = _int64(value)
    if exact is None:
        raise ValueError(f"{what} must be a 64-bit integer (COCO ids are integers), got {_short_repr(value)}")
    return exact


def _int64(value: Any) -> int | None:
    """``value`` as an exact 64-bit integer, or None when it is not one."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        return None
    value = int(value)
    return value if _INT64[0] <= value <= _INT64[1] else None


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def stable_image_ids(keys: Sequence[str]) -> list[int]:
    """Image ids from the keys alone: 52 bits of their SHA-1, unique among ``keys``.

    The same key gets the same id in every shard and every run over the same inputs (a clash,
    about one in a million pairs of 10M images, moves the later key in sorted order to the
    next free id).  Ids stay below 2**52, exact in JSON readers that use doubles.
    """
    taken: set[int] = set()
    ids = []
    for key in keys:
        image_id = int.from_bytes(hashlib.sha1(key.encode("utf-8", "surrogateescape")).digest()[:7], "big") >> 4
        while image_id in taken or image_id == 0:
            image_id = (image_id + 1) % (1 << 52)
        taken.add(image_id)
        ids.append(image_id)
    return ids
