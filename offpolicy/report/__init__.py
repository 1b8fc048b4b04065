"""The bias/variance report: ``python -m offpolicy.report`` (see ``reports/README.md``).

Modules: :mod:`.grid` (axes, profiles, cell ids), :mod:`.compute` (one cell's exact figures),
:mod:`.montecarlo` (the Monte Carlo column), :mod:`.cell` (the parameters both hand the
estimator), :mod:`.run` (pool, resume), :mod:`.store` (append-only cell store, atomic writes),
:mod:`.render` (tables, aggregations), :mod:`.plots`, :mod:`.check` (baseline gating) and
:mod:`.cli` (the command line).
"""

from offpolicy._extras import require

require("offpolicy.report", "report", "matplotlib", "tqdm")

__all__ = ["main"]


def __getattr__(name: str):
    # imported on first use: ``python -m offpolicy.report`` imports this package before its
    # __main__ can take Ctrl-C over, and the command line's modules take a second to import
    if name == "main":
        from .cli import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
