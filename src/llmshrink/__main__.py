"""``python -m llmshrink``: the same as the ``llmshrink`` command."""

import sys

from .cli import main

sys.exit(main())
