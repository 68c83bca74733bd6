"""Old path of :mod:`uniap_train.recipes.released.model` (the released recipe's query head, attention and EMA), kept so that old imports keep working.

The module *is* ``uniap_train.recipes.released.model`` (the same module object): each recipe's model and loss
live in its own folder, ``uniap_train/recipes/<name>/`` (``docs/architecture.md``).
"""

import sys

from .recipes.released import model as _module

sys.modules[__name__] = _module
