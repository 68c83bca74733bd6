"""Old path of :mod:`uniap.evaluation.scoring` (a segmenter scored over a data set), kept so that
old imports keep working: ``import uniap.evaluation.runner`` returns that module itself.  The
one runner is :mod:`uniap.pipeline.runner` (``docs/architecture.md``).
"""

import sys

from . import scoring as _module

sys.modules[__name__] = _module
