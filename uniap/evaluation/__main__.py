"""``python -m uniap.evaluation`` is ``uniap-eval``."""

import sys

from .cli import main

sys.exit(main())
