"""The bias/variance report: ``python -m offpolicy.report`` (see ``reports/README.md``).

Modules: :mod:`.grid` (axes, profiles, cell ids), :mod:`.compute` (one cell's exact figures),
:mod:`.montecarlo` (the Monte Carlo column), :mod:`.cell` (the parameters both hand the
estimator), :mod:`.run` (pool, resume), :mod:`.store` (append-only cell store, atomic writes),
:mod:`.render` (tables, aggregations), :mod:`.plots`, :mod:`.check` (baseline gating) and
:mod:`.cli` (the command line).
"""

from offpolicy._extras import require

require("offpolicy.report", "report", "matplotlib", "tqdm")

from .cli import main  # noqa: E402  (after the extra is checked)

__all__ = ["main"]
