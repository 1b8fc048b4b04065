"""``python -m offpolicy.conform``: the command line of :mod:`offpolicy.conform.cli`, imported
only once Ctrl-C is handled (the imports take a second: an interrupt then is one line too)."""

from offpolicy._cli import run_main

if __name__ == "__main__":

    def _main() -> int:
        from offpolicy.conform.cli import main

        return main()

    run_main(_main, "python -m offpolicy.conform")
else:  # imported (tests, tools): the command line's functions
    from offpolicy.conform.cli import _parser, main  # noqa: F401
