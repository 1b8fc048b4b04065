"""``python -m offpolicy.report``: see :mod:`offpolicy.report.cli`."""

from .._cli import run_main
from .cli import main

run_main(main, "python -m offpolicy.report")
