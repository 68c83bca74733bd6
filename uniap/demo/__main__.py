"""``python -m uniap.demo``: the same as ``uniap-demo``."""

import sys

from .server import main

sys.exit(main())
