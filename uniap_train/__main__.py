"""``python -m uniap_train CONFIG.yaml [--set key=value ...]``."""

import sys

from .cli import main

sys.exit(main())
