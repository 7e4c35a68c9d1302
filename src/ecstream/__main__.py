"""``python -m ecstream``: the ``ecstream`` command."""

import sys

from .cli import main

sys.exit(main())
