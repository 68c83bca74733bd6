"""Old path of :mod:`uniap.core.options` (UniAP's options, presets and their checks), kept so that old imports keep working.

The module *is* ``uniap.core.options``: ``import uniap.options`` returns the same module object, so
attributes set on one (a test's monkeypatch) are seen by the other.  New code imports
``uniap.core.options`` (docs/architecture.md).
"""

import sys

from .core import options as _module

sys.modules[__name__] = _module
