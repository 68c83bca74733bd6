"""Old path of :mod:`uniap_train.recipes.paper.loss` (the paper recipe's Dice matching and mask losses), kept so that old imports keep working.

The module *is* ``uniap_train.recipes.paper.loss`` (the same module object): each recipe's model and loss
live in its own folder, ``uniap_train/recipes/<name>/`` (``docs/architecture.md``).
"""

import sys

from .recipes.paper import loss as _module

sys.modules[__name__] = _module
