"""``python -m cnet``: the cnet command."""

import sys

from .cli import main

sys.exit(main())
