"""``python -m offpolicy.report``: see :mod:`offpolicy.report.cli`."""

import sys

from .cli import main

sys.exit(main())
