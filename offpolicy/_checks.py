"""Small argument-validation helpers shared by the offpolicy package.

Every helper takes the argument's *name* and raises ``ValueError`` (or ``TypeError``)
with a message that starts with that name, so a caller always learns which argument was bad.
These check the tabular objects (MDPs, policies: numpy); the estimators' array arguments (numpy
or torch) are ``estimators._validate``'s, and no name is defined in both modules, so one name has
one meaning (``check_distribution``: rows sum to one; ``_validate.check_unit_entries``: every
entry in [0, 1]).
"""

from __future__ import annotations

import numbers

import numpy as np

#: tolerance for "sums to one" / "equals one" checks on probability arrays
PROB_ATOL = 1e-8


def as_float_array(x, name: str, *, ndim: int | None = None, shape=None) -> np.ndarray:
    """``x`` as a float64 array, checked for numeric dtype, finiteness, ``ndim`` and ``shape``.

    ``shape`` may contain ``None`` for "any size" in that dimension.
    """
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: expected a numeric array, got {type(x).__name__}") from exc
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {arr.shape}")
    if shape is not None:
        if arr.ndim != len(shape) or any(
            want is not None and got != want for got, want in zip(arr.shape, shape, strict=True)
        ):
            want_s = "(" + ", ".join("?" if w is None else str(w) for w in shape) + ")"
            raise ValueError(f"{name}: expected shape {want_s}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or inf")
    return arr


def check_distribution(arr: np.ndarray, name: str, *, atol: float = PROB_ATOL) -> None:
    """Raise unless ``arr`` is non-negative and sums to one along its last axis."""
    if np.any(arr < 0):
        idx = tuple(int(i) for i in np.argwhere(arr < 0)[0])
        raise ValueError(f"{name}: negative probability {arr[idx]:.3g} at index {idx}")
    sums = arr.sum(axis=-1)
    bad = np.abs(sums - 1.0) > atol
    if np.any(bad):
        idx = tuple(int(i) for i in np.argwhere(np.atleast_1d(bad))[0])
        val = np.atleast_1d(sums)[idx]
        where = f" (row {idx})" if arr.ndim > 1 else ""
        raise ValueError(f"{name}: probabilities sum to {val:.12g}, not 1{where}")


def check_scalar(
    x,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``x`` as a finite float inside the given (closed unless ``*_open``) interval."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real | np.floating | np.integer):
        raise TypeError(f"{name}: expected a real number, got {type(x).__name__}")
    v = float(x)
    if not np.isfinite(v):
        raise ValueError(f"{name}: must be finite, got {v}")
    if low is not None and (v < low or (low_open and v == low)):
        op = ">" if low_open else ">="
        raise ValueError(f"{name}: must be {op} {low}, got {v}")
    if high is not None and (v > high or (high_open and v == high)):
        op = "<" if high_open else "<="
        raise ValueError(f"{name}: must be {op} {high}, got {v}")
    return v


def check_int(x, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """``x`` as a Python int inside ``[low, high]``."""
    if isinstance(x, bool) or not isinstance(x, numbers.Integral | np.integer):
        raise TypeError(f"{name}: expected an integer, got {type(x).__name__}")
    v = int(x)
    if low is not None and v < low:
        raise ValueError(f"{name}: must be >= {low}, got {v}")
    if high is not None and v > high:
        raise ValueError(f"{name}: must be <= {high}, got {v}")
    return v


def check_policy(policy, name: str, num_states: int, num_actions: int) -> np.ndarray:
    """A policy ``[S, A]``: finite, non-negative, rows summing to one. Returns float64."""
    arr = as_float_array(policy, name, shape=(num_states, num_actions))
    check_distribution(arr, name)
    return arr


def check_lam(lam, name: str = "lam") -> float:
    """A trace parameter in ``[0, 1]``."""
    return check_scalar(lam, name, low=0.0, high=1.0)


def check_covers(target: np.ndarray, behaviour: np.ndarray, name: str = "behaviour") -> None:
    """Raise unless ``behaviour > 0`` wherever ``target > 0`` (needed for importance ratios)."""
    bad = (target > 0) & (behaviour <= 0)
    if np.any(bad):
        s, a = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name}: must be > 0 wherever the target policy is > 0 "
            f"(state {s}, action {a}: target {target[s, a]:.3g}, {name} 0)"
        )
