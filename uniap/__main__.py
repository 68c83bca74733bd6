"""``python -m uniap`` is ``uniap-cli``."""

import sys

from .cli import main

sys.exit(main())
