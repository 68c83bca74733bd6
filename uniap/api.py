"""Old path of :mod:`uniap.core.api` (the public functions segment and segment_graph), kept so that old imports keep working.

The module *is* ``uniap.core.api``: ``import uniap.api`` returns the same module object, so
attributes set on one (a test's monkeypatch) are seen by the other.  New code imports
``uniap.core.api`` (docs/architecture.md).
"""

import sys

from .core import api as _module

sys.modules[__name__] = _module
