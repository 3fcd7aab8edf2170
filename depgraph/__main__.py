"""``python -m depgraph ...``: the same command line as ``depgraph ...``."""

import sys

from .cli import main

sys.exit(main())
