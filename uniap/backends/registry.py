"""The table of backends: :func:`register` adds one, :func:`get` and :func:`for_array` pick one.

A module of its own so that each backend's module imports the table, not the package that
imports every backend (``uniap/backends/__init__.py``): no import circle.
"""

from __future__ import annotations

import warnings
from typing import Any

from .base import Backend

_REGISTRY: dict[str, Backend] = {}
_AUTO_CACHE: dict[type, str] = {}


def register(cls: type[Backend]) -> type[Backend]:
    """Class decorator: add a backend under ``cls.name`` (a duplicate replaces it, with a warning)."""
    if cls.name in _REGISTRY:
        warnings.warn(f"backend {cls.name!r} registered twice; the later one wins", stacklevel=2)
    _REGISTRY[cls.name] = cls()
    return cls


def names() -> list[str]:
    """Registered backend names."""
    return list(_REGISTRY)


def available() -> dict[str, str | None]:
    """Every registered backend mapped to None when it can run here, else the reason why not."""
    return {name: be.unavailable_reason() for name, be in _REGISTRY.items()}


def get(name: str) -> Backend:
    """The backend called ``name``; ``ValueError`` if unknown or unusable here, saying why."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; choose one of {['auto', *_REGISTRY]}")
    be = _REGISTRY[name]
    reason = be.unavailable_reason()
    if reason is not None:
        raise ValueError(f"backend {name!r} is not available: {reason}")
    return be


def for_array(x: Any) -> Backend:
    """The backend ``backend="auto"`` picks for ``x``: its own library's, Numba for NumPy."""
    kind = type(x)
    if kind not in _AUTO_CACHE:
        choice = None
        for name in _AUTO_ORDER:
            be = _REGISTRY.get(name)
            if be is not None and be.accepts(x) and be.unavailable_reason() is None:
                choice = name
                break
        if choice is None:
            raise TypeError(
                f"features of type {kind.__module__}.{kind.__qualname__} are not supported; "
                "pass a NumPy array, a torch tensor or a CuPy array"
            )
        _AUTO_CACHE[kind] = choice
    return _REGISTRY[_AUTO_CACHE[kind]]


# Preference order of backend="auto" among the backends that accept an array.
_AUTO_ORDER = ("numba", "numpy", "torch", "cupy")
