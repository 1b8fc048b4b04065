"""Case families: hypothesis strategies for the inputs real estimator code gets wrong.

Every family draws complete, contract-form examples (docs/DESIGN.md section 1: time-major
``[T, B]``, ``terminated``/``truncated`` flags of the step itself, ``next_values[t] = V(s'_t)``)
together with the *world* they come from (for action-value estimators the full Q tables and
policies), so that a layout can rebuild what a library's function takes. Numbers come from a
grid of one-decimal values so that shrunk counterexamples read as short numbers.

Families (``FAMILIES``), each a property the contract pins down and real code breaks. Each
*isolates one factor*: it varies only what its name says, on a plain background (no flag
anywhere else, one-decimal numbers, ratios near 1), so that a failing family is a true
statement about the function:

* ``no_dones``: no flag anywhere;
* ``terminations_inside``: terminations only (no time-out anywhere), all before the last step;
* ``truncations_inside``: time-outs only (no termination anywhere), all before the last step,
  whose bootstrap value (the final observation's) differs from ``values[t+1]`` (the next
  episode's first state);
* ``both_flags_one_step``: one step flagged ``terminated`` and ``truncated`` at once, no other
  flag;
* ``terminated_at_last_step``, ``truncated_at_last_step``: that flag on the segment's last step
  only;
* ``T_equals_1``, ``B_equals_1``: degenerate shapes, no flags;
* ``inconsistent_next_values``: ``next_values[t] != values[t+1]`` inside an episode (a target
  network, a stale or refreshed critic), no flags;
* ``ratios_far_from_1``: some ``|log rho| >= 2``, no flags;
* ``rho_clip_ne_c_clip``: V-trace with different clip levels, no flags;
* ``lambda_0``, ``lambda_0.5``, ``lambda_1``: the trace parameter at its landmarks, no flags;
* ``float64_precision``: values near 1e3 with small rewards, where float32 arithmetic is off;
* ``nan_under_terminated``: NaN in the value read after a termination (must be ignored);
  terminations only;
* ``per_step_gamma_lambda``: ``gamma`` and ``lam`` as ``[T, B]`` arrays (semi-MDP discounts,
  state-dependent lambda; run when the check is told the function takes them).

Mixed families (``MIXED_FAMILIES``, named as mixed) draw every flag combination at once, where
combinations reach bugs a single factor does not: ``mixed_flags`` (terminations, time-outs and
both, anywhere, any λ), ``mixed_done_at_last_step`` (any flag on the last step over mixed
flags), ``mixed_T_equals_1`` and ``mixed_B_equals_1`` (the degenerate shapes with flags).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import strategies as st

from .registry import PARAM_CHOICES, EstimatorSpec

__all__ = ["FAMILIES", "ISOLATED_FAMILIES", "MIXED_FAMILIES", "Case", "Constraints",
           "family_strategy", "family_not_applicable"]

ISOLATED_FAMILIES = (
    "no_dones",
    "terminations_inside",
    "truncations_inside",
    "both_flags_one_step",
    "terminated_at_last_step",
    "truncated_at_last_step",
    "T_equals_1",
    "B_equals_1",
    "inconsistent_next_values",
    "ratios_far_from_1",
    "rho_clip_ne_c_clip",
    "lambda_0",
    "lambda_0.5",
    "lambda_1",
    "float64_precision",
    "nan_under_terminated",
    "per_step_gamma_lambda",
)
MIXED_FAMILIES = ("mixed_flags", "mixed_done_at_last_step", "mixed_T_equals_1",
                  "mixed_B_equals_1")
FAMILIES = ISOLATED_FAMILIES + MIXED_FAMILIES
#: the flag codes each family may draw besides its marked step (the plain background: none)
_BACKGROUND = {"terminations_inside": (0, 0, 0, 1), "nan_under_terminated": (0, 0, 0, 1),
               "truncations_inside": (0, 0, 0, 2)}
_MIXED_BACKGROUND = (0, 0, 0, 0, 1, 2, 3)
_NEEDS_INSIDE = {"terminations_inside", "truncations_inside", "inconsistent_next_values"}
_FORCED_LAMBDA = {"lambda_0": 0.0, "lambda_0.5": 0.5, "lambda_1": 1.0}
MAX_T = 6
MAX_B = 3
NUM_ACTIONS = 2

# flag codes per step: 0 none, 1 terminated, 2 truncated, 3 both; mostly none.
_NONE, _TERM, _TRUNC, _BOTH = 0, 1, 2, 3
_SHORT = np.arange(-20, 21) / 10  # -2.0 .. 2.0, step 0.1
_NONZERO = st.integers(1, 20).flatmap(lambda k: st.sampled_from((k / 10, -k / 10)))
_PROB = np.arange(1, 10) / 10  # 0.1 .. 0.9


@dataclasses.dataclass(frozen=True)
class Constraints:
    """What a layout can hold, for the generator (see ``layouts``)."""

    flags_inside: bool = True  # flags before the last step can be expressed
    truncations_inside: bool = True  # a truncation (bootstrap, cut) before the last step can
    terminal_last: bool = False  # every column must terminate at its last step
    inconsistent_next_values: str | None = None  # why next_values != values[t+1] can't be held
    nan_slot: str | None = None  # why the value after a termination has no slot


@dataclasses.dataclass
class Case:
    """One example: contract inputs, the world they were built from, and parameters."""

    family: str
    inputs: dict  # contract names -> float64 / bool numpy arrays [T, B]
    params: dict
    world: dict = dataclasses.field(default_factory=dict)  # Q tables and policies [T, B, A]

    @property
    def T(self) -> int:
        return self.inputs["rewards"].shape[0]

    @property
    def B(self) -> int:
        return self.inputs["rewards"].shape[1]

    def contract_args(self, spec: EstimatorSpec) -> list:
        return [self.inputs[name] for name in spec.inputs]

    def replace_inputs(self, **changes) -> Case:
        return dataclasses.replace(self, inputs={**self.inputs, **changes})


def family_not_applicable(family: str, spec: EstimatorSpec, fixed: dict,
                          constraints: Constraints) -> str | None:
    """Why ``family`` cannot be run for this estimator, fixed parameters and layout (None: it
    can)."""
    if family in _NEEDS_INSIDE | {"both_flags_one_step"} and not constraints.flags_inside:
        return "the layout holds no done flag inside a segment"
    if family == "truncations_inside" and not constraints.truncations_inside:
        return ("the layout cannot say 'truncated' before the last step (bootstrap from the "
                "final observation, then cut); see its truncation_fold option")
    if family == "no_dones" and constraints.terminal_last:
        return "every row of this layout ends in a termination"
    if family in ("truncated_at_last_step", "T_equals_1", "B_equals_1") \
            and constraints.terminal_last:
        return "every row of this layout ends in a termination"
    if family in ("mixed_done_at_last_step", "terminated_at_last_step") \
            and constraints.terminal_last:
        return None
    if family == "ratios_far_from_1" and not spec.takes_ratios:
        return f"{spec.name} takes no importance ratios"
    if family == "rho_clip_ne_c_clip":
        if not {"rho_clip", "c_clip"} <= set(spec.params):
            return f"{spec.name} has no separate rho_clip and c_clip"
        if "rho_clip" in fixed and "c_clip" in fixed:
            return f"rho_clip and c_clip are fixed at {fixed['rho_clip']} and {fixed['c_clip']}"
    if family in _FORCED_LAMBDA:
        if "lam" not in spec.params:
            return f"{spec.name} has no lambda"
        if "lam" in fixed:
            if fixed["lam"] == _FORCED_LAMBDA[family]:
                return None
            return f"lam is fixed at {fixed['lam']}"
    if family == "per_step_gamma_lambda":
        if not {"gamma", "lam"} & set(spec.params) - set(fixed):
            return "gamma and lam are fixed"
    if family == "inconsistent_next_values" and constraints.inconsistent_next_values:
        return constraints.inconsistent_next_values
    if family == "nan_under_terminated" and constraints.nan_slot:
        return constraints.nan_slot
    return None


def _grid(draw, shape, elements=_SHORT) -> np.ndarray:
    """An array of ``shape`` with entries from ``elements`` (a sequence of values): one draw
    of a seed, the entries from numpy's generator. Drawing each entry through hypothesis
    cost most of a check's time; hypothesis's shrinker is not used (the runner shrinks)."""
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).choice(np.asarray(elements), size=shape)


def _params(draw, family, spec: EstimatorSpec, fixed: dict, shape=None) -> dict:
    params = {}
    for name in spec.params:
        if name in fixed:
            params[name] = fixed[name]
        elif name == "lam" and family in _FORCED_LAMBDA:
            params[name] = _FORCED_LAMBDA[family]
        else:
            params[name] = draw(st.sampled_from(PARAM_CHOICES[name]))
    if family == "per_step_gamma_lambda":
        T, B = shape
        for name, choices in (("gamma", (0.5, 1.0, 0.9, 0.0)), ("lam", (0.5, 1.0, 0.0, 0.9))):
            if name in spec.params and name not in fixed:
                params[name] = _grid(draw, (T, B), np.array(choices, dtype=np.float64))
    if family == "rho_clip_ne_c_clip":
        pairs = [(r, c) for r in (0.5, 1.0, 2.0) for c in (0.5, 1.0, 2.0) if r != c]
        if "rho_clip" in fixed:
            pairs = [(fixed["rho_clip"], c) for c in (0.5, 1.0, 2.0) if c != fixed["rho_clip"]]
        elif "c_clip" in fixed:
            pairs = [(r, fixed["c_clip"]) for r in (0.5, 1.0, 2.0) if r != fixed["c_clip"]]
        params["rho_clip"], params["c_clip"] = draw(st.sampled_from(pairs))
    return params


def _flags(draw, family, T, B, constraints: Constraints):
    """terminated, truncated [T, B] for the family, and a marked position (t, b) or None."""
    background = _MIXED_BACKGROUND if family.startswith("mixed_") else \
        _BACKGROUND.get(family, (_NONE,))
    if not constraints.flags_inside or background == (_NONE,):
        codes = np.zeros((T, B), dtype=int)
    else:
        codes = _grid(draw, (T, B), np.array(background, dtype=int))
    if not family.startswith("mixed_") and family not in _BACKGROUND:
        codes[:] = _NONE
    if family in _NEEDS_INSIDE:  # inside only: the last step is the *_at_last_step families'
        codes[-1] = _NONE
    mark = None
    if family in _NEEDS_INSIDE:
        mark = (draw(st.integers(0, T - 2)), draw(st.integers(0, B - 1)))
        codes[mark] = {"terminations_inside": _TERM, "truncations_inside": _TRUNC,
                       "inconsistent_next_values": _NONE}[family]
    elif family == "both_flags_one_step":
        mark = (draw(st.integers(0, T - 1)), draw(st.integers(0, B - 1)))
        codes[mark] = _BOTH
    elif family in ("terminated_at_last_step", "truncated_at_last_step"):
        mark = (T - 1, draw(st.integers(0, B - 1)))
        codes[mark] = _TERM if family == "terminated_at_last_step" else _TRUNC
    elif family == "mixed_done_at_last_step":
        mark = (T - 1, draw(st.integers(0, B - 1)))
        codes[mark] = draw(st.sampled_from((_TERM, _TRUNC, _BOTH)))
    elif family == "nan_under_terminated" and not ((codes & _TERM) != 0).any():
        mark = (draw(st.integers(0, T - 1)), draw(st.integers(0, B - 1)))
        codes[mark] = _TERM
    if not constraints.truncations_inside:  # keep terminations; drop pure truncations inside
        codes[:-1][codes[:-1] == _TRUNC] = _NONE
    if constraints.terminal_last:
        codes[-1, :] = _TERM
    return (codes & _TERM) != 0, (codes & _TRUNC) != 0, mark


def _shape(draw, family) -> tuple[int, int]:
    low_T = 2 if family in _NEEDS_INSIDE else 1
    T = 1 if family in ("T_equals_1", "mixed_T_equals_1") else draw(st.integers(low_T, MAX_T))
    B = 1 if family in ("B_equals_1", "mixed_B_equals_1") else draw(st.integers(1, MAX_B))
    return T, B


def _continuing(terminated, truncated) -> np.ndarray:
    """[T, B]: step t's next state is s_{t+1} of the same row (t < T-1, no done)."""
    cont = ~(terminated | truncated)
    cont[-1] = False
    return cont


@st.composite
def _state_case(draw, family, spec: EstimatorSpec, fixed, constraints) -> Case:
    T, B = _shape(draw, family)
    terminated, truncated, mark = _flags(draw, family, T, B, constraints)
    big = family == "float64_precision"
    values = _grid(draw, (T, B))
    rewards = _grid(draw, (T, B))
    if big:  # large values, small rewards: float32 arithmetic loses the difference
        values = 1000.0 + values
        rewards = rewards / 100.0
    # the value of the observation after each step; where the episode goes on it is V(s_{t+1})
    after = _grid(draw, (T, B)) + (1000.0 if big else 0.0)
    cont = _continuing(terminated, truncated)
    next_values = np.where(cont, np.vstack([values[1:], values[:1]]), after)
    if family == "truncations_inside":
        t, b = mark
        next_values[t, b] = values[t + 1, b] + draw(_NONZERO)  # final obs != reset obs
    if family == "inconsistent_next_values":
        t, b = mark
        next_values[t, b] = values[t + 1, b] + draw(_NONZERO)
    if family == "nan_under_terminated":
        next_values = np.where(terminated, np.nan, next_values)
    log_rhos = _log_rhos(draw, family, T, B)
    inputs = dict(rewards=rewards, values=values, next_values=next_values,
                  terminated=terminated, truncated=truncated, log_rhos=log_rhos)
    world = dict(log_mu=_grid(draw, (T, B)) - 1.0)  # behaviour log-probs, for log_pi/log_mu
    return Case(family, inputs, _params(draw, family, spec, fixed, (T, B)), world)


def _log_rhos(draw, family, T, B) -> np.ndarray:
    if family not in ("ratios_far_from_1", "rho_clip_ne_c_clip"):
        return _grid(draw, (T, B), np.arange(-10, 11) / 10)
    log_rhos = _grid(draw, (T, B), np.arange(-30, 31) / 10)
    t, b = draw(st.integers(0, T - 1)), draw(st.integers(0, B - 1))
    log_rhos[t, b] = draw(st.integers(20, 30).flatmap(lambda k: st.sampled_from((k / 10,
                                                                                  -k / 10))))
    return log_rhos


def _policy_rows(draw, shape, far=False) -> np.ndarray:
    """[..., 2] probability rows (p, 1 - p)."""
    p = _grid(draw, shape, np.array([0.1, 0.9]) if far else _PROB)
    return np.stack([p, 1.0 - p], axis=-1)


@st.composite
def _action_case(draw, family, spec: EstimatorSpec, fixed, constraints) -> Case:
    T, B = _shape(draw, family)
    terminated, truncated, mark = _flags(draw, family, T, B, constraints)
    big = family == "float64_precision"
    A = NUM_ACTIONS
    offset = 1000.0 if big else 0.0
    q_values = _grid(draw, (T, B, A)) + offset
    rewards = _grid(draw, (T, B)) / (100.0 if big else 1.0)
    far = family in ("ratios_far_from_1", "rho_clip_ne_c_clip")
    target_probs = _policy_rows(draw, (T, B), far)
    behaviour_probs = _policy_rows(draw, (T, B), far)
    if far:  # the taken action's ratio is 9 or 1/9 somewhere: |log rho| = 2.2
        t, b = draw(st.integers(0, T - 1)), draw(st.integers(0, B - 1))
        behaviour_probs[t, b] = 1.0 - target_probs[t, b]
    actions = _grid(draw, (T, B), np.arange(A, dtype=np.int64))
    # the tables after each step: those of s_{t+1} where the episode goes on
    cont = _continuing(terminated, truncated)
    after_q = _grid(draw, (T, B, A)) + offset
    after_pi = _policy_rows(draw, (T, B))
    after_a = _grid(draw, (T, B), np.arange(A, dtype=np.int64))
    roll = lambda x: np.concatenate([x[1:], x[:1]])  # noqa: E731  x_{t+1} at t
    next_q_values = np.where(cont[..., None], roll(q_values), after_q)
    next_target_probs = np.where(cont[..., None], roll(target_probs), after_pi)
    next_actions = np.where(cont, roll(actions), after_a)
    next_behaviour_probs = np.where(cont[..., None], roll(behaviour_probs),
                                    _policy_rows(draw, (T, B)))
    if family in ("truncations_inside", "inconsistent_next_values"):
        t, b = mark
        next_q_values[t, b] = q_values[t + 1, b] + draw(_NONZERO)
    take = lambda x, a: np.take_along_axis(x, a[..., None], axis=-1)[..., 0]  # noqa: E731
    next_expected_q = (next_target_probs * next_q_values).sum(-1)
    if family == "nan_under_terminated":
        next_q_values = np.where(terminated[..., None], np.nan, next_q_values)
        next_expected_q = np.where(terminated, np.nan, next_expected_q)
    pi_taken = take(target_probs, actions)
    inputs = dict(
        rewards=rewards,
        q_taken=take(q_values, actions),
        next_expected_q=next_expected_q,
        terminated=terminated,
        truncated=truncated,
        log_rhos=np.log(pi_taken) - np.log(take(behaviour_probs, actions)),
        target_probs_taken=pi_taken,
    )
    world = dict(q_values=q_values, next_q_values=next_q_values, actions=actions,
                 next_actions=next_actions, target_probs=target_probs,
                 next_target_probs=next_target_probs, behaviour_probs=behaviour_probs,
                 next_behaviour_probs=next_behaviour_probs)
    return Case(family, inputs, _params(draw, family, spec, fixed, (T, B)), world)


def family_strategy(family: str, spec: EstimatorSpec, fixed: dict,
                    constraints: Constraints = Constraints()):
    """A hypothesis strategy of :class:`Case` for ``family`` (see the module docstring)."""
    if family not in FAMILIES:
        raise ValueError(f"family: unknown {family!r}; known: {FAMILIES}")
    make = _state_case if spec.kind == "state" else _action_case
    return make(family, spec, dict(fixed), constraints)
