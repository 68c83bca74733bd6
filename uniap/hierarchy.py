"""Old path of :mod:`uniap.core.hierarchy` (the Hierarchy and Level results), kept so that old imports keep working.

Every name of ``uniap.core.hierarchy`` is read through this module (module ``__getattr__``); set
attributes (a test's monkeypatch) on ``uniap.core.hierarchy`` itself.  New code imports it
(docs/architecture.md).
"""

from typing import Any

from .core import hierarchy as _module


def __getattr__(name: str) -> Any:
    """Every name of the moved module, read from it (set attributes there, not here)."""
    return getattr(_module, name)


def __dir__() -> list[str]:
    return dir(_module)
