"""Old path of :mod:`uniap_train.recipes.released.loss` (QuerySD's loss and region pairs), kept so that old imports keep working.

The module *is* ``uniap_train.recipes.released.loss`` (the same module object): each recipe's model and loss
live in its own folder, ``uniap_train/recipes/<name>/`` (``docs/architecture.md``).
"""

import sys

from .recipes.released import loss as _module

sys.modules[__name__] = _module
