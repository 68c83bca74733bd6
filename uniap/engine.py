"""Old path of :mod:`uniap.core.levels` (the UniAP level loop), kept so that old imports keep working.

The module *is* ``uniap.core.levels``: ``import uniap.engine`` returns the same module object, so
attributes set on one (a test's monkeypatch) are seen by the other.  New code imports
``uniap.core.levels`` (docs/architecture.md).
"""

import sys

from .core import levels as _module

sys.modules[__name__] = _module
