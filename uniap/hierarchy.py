"""Old path of :mod:`uniap.core.hierarchy` (the Hierarchy and Level results), kept so that old imports keep working.

The module *is* ``uniap.core.hierarchy``: ``import uniap.hierarchy`` returns the same module object, so
attributes set on one (a test's monkeypatch) are seen by the other.  New code imports
``uniap.core.hierarchy`` (docs/architecture.md).
"""

import sys

from .core import hierarchy as _module

sys.modules[__name__] = _module
