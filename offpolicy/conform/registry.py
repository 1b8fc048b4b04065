"""Which contract estimators the conformance runner checks, and the parameter values it draws.

The entries themselves (inputs in call order, outputs in the reference's order, parameters,
the ``offpolicy.moments`` recursion and output names) are :mod:`offpolicy.registry`'s; this
module adds what only the runner needs: the drawn :data:`PARAM_CHOICES` and
:class:`ConformUsageError`.
"""

from __future__ import annotations

import math

import numpy as np

from offpolicy import registry as _registry

__all__ = ["EstimatorSpec", "ESTIMATORS", "PARAM_CHOICES", "spec_for", "ConformUsageError"]


class ConformUsageError(ValueError):
    """Bad arguments to the runner (not a verdict on the function)."""

# Drawn parameter values, the first of each list is where hypothesis shrinks to: short numbers
# that make a counterexample readable, then the values real code uses.
PARAM_CHOICES: dict[str, tuple] = {
    "gamma": (0.5, 0.9, 1.0, 0.99),
    "lam": (0.5, 1.0, 0.0, 0.9),
    "rho_clip": (1.0, 0.5, 2.0, math.inf),
    "c_clip": (1.0, 0.5, 2.0, math.inf),
    "pg_rho_clip": (1.0, 0.5, 2.0),
    "n": (2, 1, 3, 5),
}


#: a contract estimator as the runner sees it: the shared registry's entry
EstimatorSpec = _registry.EstimatorInfo

#: the estimators the runner checks: those with contract array inputs (state or action
#: values) and exact moments to check against (not the general ``q_trace``, not P3O)
ESTIMATORS: dict[str, EstimatorSpec] = {
    name: info for name, info in _registry.ESTIMATORS.items()
    if info.kind in ("state", "action") and info.moments_name is not None
}


def spec_for(estimator: str) -> EstimatorSpec:
    """The spec of ``estimator`` (a contract name or a registry alias such as ``puff``);
    :class:`ConformUsageError` (a ``ValueError``) naming the argument if it is unknown."""
    name = _registry.ALIASES.get(estimator, estimator) if isinstance(estimator, str) else None
    if name not in ESTIMATORS:
        raise ConformUsageError(f"estimator: unknown {estimator!r}; known: {', '.join(ESTIMATORS)}")
    return ESTIMATORS[name]


def select_reference_output(spec: EstimatorSpec, result, output: str) -> np.ndarray:
    """The named output of the reference's result (a namedtuple or a single array)."""
    if len(spec.outputs) == 1:
        return np.asarray(result, dtype=np.float64)
    return np.asarray(result[spec.outputs.index(output)], dtype=np.float64)
