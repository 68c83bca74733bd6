"""Old path of :mod:`uniap.core.api` (the public functions segment and segment_graph), kept so that old imports keep working.

Every name of ``uniap.core.api`` is read through this module (module ``__getattr__``); set
attributes (a test's monkeypatch) on ``uniap.core.api`` itself.  New code imports it
(docs/architecture.md).
"""

from typing import Any

from .core import api as _module


def __getattr__(name: str) -> Any:
    """Every name of the moved module, read from it (set attributes there, not here)."""
    return getattr(_module, name)


def __dir__() -> list[str]:
    return dir(_module)
