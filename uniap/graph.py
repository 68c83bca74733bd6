"""Old path of :mod:`uniap.core.graph` (graphs over grids and their edges), kept so that old imports keep working.

The module *is* ``uniap.core.graph``: ``import uniap.graph`` returns the same module object, so
attributes set on one (a test's monkeypatch) are seen by the other.  New code imports
``uniap.core.graph`` (docs/architecture.md).
"""

import sys

from .core import graph as _module

sys.modules[__name__] = _module
