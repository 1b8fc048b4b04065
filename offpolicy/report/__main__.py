"""``python -m offpolicy.report``: see :mod:`offpolicy.report.cli`."""

from .._cli import run_main


def main():
    from .cli import main  # imported once Ctrl-C is handled: it takes a second

    return main()


run_main(main, "python -m offpolicy.report")
