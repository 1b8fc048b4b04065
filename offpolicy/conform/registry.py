"""What each contract estimator takes and returns, for the conformance runner.

One entry per estimator of docs/DESIGN.md section 2: the contract inputs in call order, the
outputs in the order the reference returns them, the scalar parameters with the values the
runner draws when the user does not fix them, and how ``offpolicy.moments`` names it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

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


@dataclasses.dataclass(frozen=True)
class EstimatorSpec:
    """A contract estimator as the runner sees it."""

    name: str
    kind: str  # "state" (values, next_values) or "action" (q_taken, next_expected_q)
    inputs: tuple[str, ...]  # contract inputs, in the reference's positional order
    outputs: tuple[str, ...]  # output names, in the reference's order
    params: tuple[str, ...]
    moments_name: str  # offpolicy.moments' estimator name
    moments_outputs: dict  # our output name -> offpolicy.moments' output name

    @property
    def takes_ratios(self) -> bool:
        return "log_rhos" in self.inputs

    def reference(self):
        """The float64 reference function (``estimators.numpy``)."""
        from estimators import numpy as reference

        return getattr(reference, self.name)


_STATE = ("rewards", "values", "next_values", "terminated", "truncated")
_ACTION = ("rewards", "q_taken", "next_expected_q", "terminated", "truncated")

ESTIMATORS: dict[str, EstimatorSpec] = {
    s.name: s
    for s in (
        EstimatorSpec("gae", "state", _STATE, ("advantages", "returns"), ("gamma", "lam"),
                      "gae", {"advantages": "advantage", "returns": "value"}),
        EstimatorSpec("vtrace", "state", _STATE + ("log_rhos",),
                      ("advantages", "value_targets", "pg_advantages"),
                      ("gamma", "lam", "rho_clip", "c_clip", "pg_rho_clip"), "vtrace",
                      {"advantages": "advantage", "value_targets": "value",
                       "pg_advantages": "pg_advantage"}),
        EstimatorSpec("puff_advantage", "state", _STATE + ("log_rhos",), ("advantages",),
                      ("gamma", "lam", "rho_clip", "c_clip"), "vtrace",
                      {"advantages": "advantage"}),
        EstimatorSpec("per_decision_is", "state", _STATE + ("log_rhos",),
                      ("advantages", "value_targets"), ("gamma", "lam"), "per_decision_is",
                      {"advantages": "advantage", "value_targets": "value"}),
        EstimatorSpec("nstep_returns", "state",
                      ("rewards", "next_values", "terminated", "truncated"), ("returns",),
                      ("gamma", "n"), "nstep", {"returns": "value"}),
        EstimatorSpec("retrace", "action", _ACTION + ("log_rhos",), ("targets",),
                      ("gamma", "lam"), "retrace", {"targets": "target"}),
        EstimatorSpec("tree_backup", "action", _ACTION + ("target_probs_taken",), ("targets",),
                      ("gamma", "lam"), "tree_backup", {"targets": "target"}),
        EstimatorSpec("q_lambda", "action", _ACTION, ("targets",), ("gamma", "lam"),
                      "q_lambda", {"targets": "target"}),
        EstimatorSpec("importance_sampling_q", "action", _ACTION + ("log_rhos",), ("targets",),
                      ("gamma", "lam"), "importance_sampling_q", {"targets": "target"}),
    )
}


def spec_for(estimator: str) -> EstimatorSpec:
    """The spec of ``estimator``; ``ValueError`` naming the argument if it is unknown."""
    if not isinstance(estimator, str) or estimator not in ESTIMATORS:
        raise ConformUsageError(f"estimator: unknown {estimator!r}; known: {', '.join(ESTIMATORS)}")
    return ESTIMATORS[estimator]


def select_reference_output(spec: EstimatorSpec, result, output: str) -> np.ndarray:
    """The named output of the reference's result (a namedtuple or a single array)."""
    if len(spec.outputs) == 1:
        return np.asarray(result, dtype=np.float64)
    return np.asarray(result[spec.outputs.index(output)], dtype=np.float64)
