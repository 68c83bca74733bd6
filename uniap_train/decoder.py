"""Old path of :mod:`uniap_train.recipes.paper.model` (the paper recipe's mask decoder (PaperModel)), kept so that old imports keep working.

The module *is* ``uniap_train.recipes.paper.model`` (the same module object): each recipe's model and loss
live in its own folder, ``uniap_train/recipes/<name>/`` (``docs/architecture.md``).
"""

import sys

from .recipes.paper import model as _module

sys.modules[__name__] = _module
