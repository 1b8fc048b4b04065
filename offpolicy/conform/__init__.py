"""Conformance: point the contract's property suite at anyone's estimator.

    from offpolicy import conform
    report = conform.check(my_gae, "gae", layout="done_next", gamma=0.99)
    print(report)            # verdict per case family, counterexample, diagnosis
    conform.assert_conforms(my_gae, "gae", layout="done_next", gamma=0.99)   # in a test

``check`` draws every case family real code gets wrong (``cases.FAMILIES``) with hypothesis,
compares the function with the float64 reference (``estimators.numpy``) in the function's own
layout (``layouts``), checks its exact mean and variance against ``offpolicy.moments`` on a
tabular MDP, shrinks the smallest failure into a counterexample and names the bug class it
behaves like (``diagnosis``, from ``offpolicy.mutation``'s catalogue). From the shell:
``python -m offpolicy.conform MODULE:FUNCTION --estimator gae``; in pytest, the
``conform_check`` fixture (``offpolicy._pytest_plugin``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cases import FAMILIES
    from .layouts import (
        LAYOUTS,
        ConformUsageError,
        Contract,
        DoneNext,
        Fold,
        LayoutProtocol,
        OutputPick,
        PufferRows,
        QTables,
        Rlax,
        SingleEpisodeRows,
        StoredValues,
        TorchRL,
    )
    from .registry import ESTIMATORS
    from .report import CaseResult, Counterexample, Report
    from .runner import assert_conforms, check

# name -> submodule. Loaded on first use (PEP 562): ``python -m offpolicy.conform`` imports this
# package before its command line can handle Ctrl-C, and the runner's imports (hypothesis, the
# exact moments) take most of a second.
_WHERE = {
    "FAMILIES": "cases", "ESTIMATORS": "registry", "CaseResult": "report",
    "Counterexample": "report", "Report": "report", "assert_conforms": "runner",
    "check": "runner", **dict.fromkeys(
        ("LAYOUTS", "ConformUsageError", "Contract", "DoneNext", "Fold", "LayoutProtocol",
         "OutputPick", "PufferRows", "QTables", "Rlax", "SingleEpisodeRows", "StoredValues",
         "TorchRL"), "layouts"),
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{where}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


__all__ = [
    "check", "assert_conforms", "Report", "CaseResult", "Counterexample", "ConformUsageError",
    "FAMILIES", "ESTIMATORS", "LAYOUTS", "Contract", "DoneNext", "Rlax", "TorchRL",
    "PufferRows", "SingleEpisodeRows", "QTables", "OutputPick", "StoredValues", "Fold",
    "LayoutProtocol",
]
