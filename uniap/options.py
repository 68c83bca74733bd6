"""Old path of :mod:`uniap.core.options` (UniAP's options, presets and their checks), kept so that old imports keep working.

Every name of ``uniap.core.options`` is read through this module (module ``__getattr__``); set
attributes (a test's monkeypatch) on ``uniap.core.options`` itself.  New code imports it
(docs/architecture.md).
"""

from typing import Any

from .core import options as _module


def __getattr__(name: str) -> Any:
    """Every name of the moved module, read from it (set attributes there, not here)."""
    return getattr(_module, name)


def __dir__() -> list[str]:
    return dir(_module)
