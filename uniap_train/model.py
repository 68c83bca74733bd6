"""Old path of :mod:`uniap_train.recipes.released.model` (the released recipe's query head, attention and EMA), kept so that old imports keep working.

Every name of ``uniap_train.recipes.released.model`` is read through this module (module ``__getattr__``): each recipe's model and loss
live in its own folder, ``uniap_train/recipes/<name>/`` (``docs/architecture.md``).
"""

from typing import Any

from .recipes.released import model as _module


def __getattr__(name: str) -> Any:
    """Every name of the moved module, read from it (set attributes there, not here)."""
    return getattr(_module, name)


def __dir__() -> list[str]:
    return dir(_module)
