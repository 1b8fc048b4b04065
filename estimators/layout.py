"""Build the contract's time-major inputs from other layouts (numpy arrays or torch tensors).

The contract (docs/DESIGN.md section 1) stores transition t = (s_t, a_t, r_t, s'_t) in row t of
``[T, B]`` arrays and wants ``next_values[t] = V(s'_t)`` explicitly. Two helpers:

* ``next_values_from_values``: shift ``values`` by one step and append a bootstrap value;
* ``from_pufferlib`` / ``to_pufferlib``: PufferLib's ``[segments, horizon]`` rows, where the
  reward and done of the action taken at column j are stored at column j+1.

Every function accepts numpy arrays (or lists) and torch tensors; torch in gives torch out,
keeping dtype, device and autograd.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

__all__ = ["next_values_from_values", "from_pufferlib", "to_pufferlib"]


def _xp(*xs):
    """torch if any argument is a tensor, else numpy."""
    torch = sys.modules.get("torch")
    if torch is not None and any(isinstance(x, torch.Tensor) for x in xs):
        return torch
    return np


def _asarray(xp, x, like=None, dtype=None):
    """x as an array of the backend xp (on ``like``'s device for torch)."""
    if xp is np:
        return np.asarray(x, dtype=dtype)
    return xp.as_tensor(x, dtype=dtype, device=None if like is None else like.device)


def _shape_error(name, x, expected):
    return ValueError(f"{name}: shape {tuple(x.shape)} does not match {expected}")


def next_values_from_values(
    values: npt.ArrayLike | torch.Tensor, bootstrap_value: npt.ArrayLike | torch.Tensor, *,
    truncated: npt.ArrayLike | torch.Tensor | None = None,
    truncation_values: npt.ArrayLike | torch.Tensor | None = None,
) -> np.ndarray | torch.Tensor:
    """``next_values[t] = values[t+1]`` for ``t < T-1`` and ``next_values[T-1] = bootstrap_value``.

    ``values`` is ``[T]`` or ``[T,B]``; ``bootstrap_value`` is a scalar or ``[B]``: the value of
    the observation that followed the segment's last action (ignored by the estimators if the
    last step terminated). The result has ``values``' shape and dtype.

    Assumes the observation after ``a_t`` is ``s_{t+1}`` whenever the episode goes on, which
    holds for every step except a time-limit cut: after ``terminated[t]`` ``values[t+1]`` is
    the next episode's first state, but the estimators ignore ``next_values`` there; after
    ``truncated[t]`` (t < T-1) the bootstrap must be the value of the *final* observation, which
    ``values`` does not hold. So a segment with truncations inside must pass ``truncated`` and
    ``truncation_values`` (``values``' shape, read only where ``truncated[t]`` and t < T-1);
    an inside truncation without ``truncation_values`` raises ``ValueError``.
    """
    xp = _xp(values, bootstrap_value, truncated, truncation_values)
    values = _asarray(xp, values)
    if values.ndim not in (1, 2) or values.shape[0] == 0:
        raise ValueError(f"values: expected shape [T] or [T,B] with T >= 1, "
                         f"got {tuple(values.shape)}")
    last = _asarray(xp, bootstrap_value, values, dtype=values.dtype)
    if tuple(last.shape) not in ((), tuple(values.shape[1:])):
        raise _shape_error("bootstrap_value", last, f"a scalar or {tuple(values.shape[1:])}")
    last = last + xp.zeros_like(values[-1:])  # broadcast to [1] or [1, B]
    next_values = xp.concatenate([values[1:], last])
    if truncated is None:
        return next_values
    truncated = _asarray(xp, truncated, values)
    if tuple(truncated.shape) != tuple(values.shape):
        raise _shape_error("truncated", truncated, f"values {tuple(values.shape)}")
    T = values.shape[0]
    before_last = _asarray(xp, (np.arange(T) < T - 1).reshape((T,) + (1,) * (values.ndim - 1)),
                           values)
    inside = (truncated != 0) & before_last
    if not bool(inside.any()):
        return next_values
    if truncation_values is None:
        raise ValueError("truncation_values: required where truncated[t] for t < T-1 (values[t+1]"
                         " is the next episode's first state, not the final observation)")
    truncation_values = _asarray(xp, truncation_values, values, dtype=values.dtype)
    if tuple(truncation_values.shape) != tuple(values.shape):
        raise _shape_error("truncation_values", truncation_values, f"values {tuple(values.shape)}")
    return xp.where(inside, truncation_values, next_values)


def from_pufferlib(
    values: npt.ArrayLike | torch.Tensor, rewards: npt.ArrayLike | torch.Tensor,
    dones: npt.ArrayLike | torch.Tensor, importance: npt.ArrayLike | torch.Tensor | None = None, *,
    truncations: npt.ArrayLike | torch.Tensor | None = None,
    truncation_values: npt.ArrayLike | torch.Tensor | None = None,
) -> dict[str, np.ndarray | torch.Tensor]:
    """Convert PufferLib's rollout rows into the contract's ``[T, B]`` keyword arguments.

    PufferLib (``compute_puff_advantage`` and its rollout buffers) stores ``[S, H]`` rows
    (S segments, horizon H), one column per observation: column j holds ``values[:, j] =
    V(o_j)``, the ratio ``importance[:, j]`` of the action taken at ``o_j``, and the
    ``rewards[:, j]`` / ``dones[:, j]`` the environment returned *with* ``o_j``, i.e. for the
    action taken at column j-1. A row of H observations therefore holds T = H-1 transitions::

        rewards[t]     = rewards_row[:, t+1]        values[t]  = values_row[:, t]
        next_values[t] = values_row[:, t+1]          log_rhos[t] = log(importance_row[:, t])
        terminated[t]  = dones_row[:, t+1] and not truncations_row[:, t+1]
        truncated[t]   = truncations_row[:, t+1]

    Assumptions, exactly: column 0's reward and done (they belong to the previous segment) and
    the last column's importance (its action's reward is not in the row) are not used; a done
    is a termination unless ``truncations`` marks it (PufferLib's kernel treats every done as
    terminal: pass no ``truncations`` to reproduce it); the last transition bootstraps from the
    value of the row's final observation, ``values_row[:, H-1]``; after an auto-reset the
    stored observation is the next episode's first, so a truncated step needs the final
    observation's value in ``truncation_values[:, t+1]`` (``ValueError`` if missing).

    Returns a dict with ``rewards, values, next_values, terminated, truncated`` (and
    ``log_rhos`` when ``importance`` is given) for ``puff_advantage(**d, gamma=...)`` and the
    other estimators; flags are bool. ``to_pufferlib`` maps the results back: PufferLib's
    ``puff_advantage_row`` (rho_t times the whole TD error, trace ``gamma lam c_t (1 - done)``,
    last column left 0) then equals ``to_pufferlib(puff_advantage(**d, ...))``
    (tests/test_estimators_reference.py checks this against a transcription of that loop).
    """
    named = dict(values=values, rewards=rewards, dones=dones, importance=importance,
                 truncations=truncations, truncation_values=truncation_values)
    xp = _xp(*named.values())
    rows = {k: _asarray(xp, x, _first_tensor(named)) for k, x in named.items() if x is not None}
    shape = tuple(rows["values"].shape)
    if len(shape) != 2 or shape[1] < 2:
        raise ValueError(f"values: expected PufferLib rows [S, H] with H >= 2, got {shape}")
    for name, x in rows.items():
        if tuple(x.shape) != shape:
            raise _shape_error(name, x, f"values {shape}")
    if "truncation_values" in rows:  # next_values keeps values' dtype (as_tensor keeps grad)
        rows["truncation_values"] = _asarray(xp, rows["truncation_values"], rows["values"],
                                             dtype=rows["values"].dtype)
    done = rows["dones"][:, 1:] != 0
    if "truncations" in rows:
        truncated = rows["truncations"][:, 1:] != 0
    else:
        truncated = xp.zeros_like(done)
    next_values = rows["values"][:, 1:]
    if bool(truncated.any()):
        if "truncation_values" not in rows:
            raise ValueError("truncation_values: required where truncations is set (the stored "
                             "observation after an auto-reset is the next episode's first)")
        next_values = xp.where(truncated, rows["truncation_values"][:, 1:], next_values)
    out = dict(
        rewards=rows["rewards"][:, 1:].T,
        values=rows["values"][:, :-1].T,
        next_values=next_values.T,
        terminated=(done & ~truncated).T,
        truncated=truncated.T,
    )
    if "importance" in rows:
        out["log_rhos"] = xp.log(rows["importance"][:, :-1]).T
    return out


def to_pufferlib(x: npt.ArrayLike | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Map a contract ``[T, B]`` result back to PufferLib's ``[B, T+1]`` rows: column j holds
    the result for the action taken at column j; the last column (no transition) is 0, as
    PufferLib's kernel leaves it."""
    xp = _xp(x)
    x = _asarray(xp, x)
    if x.ndim != 2:
        raise ValueError(f"x: expected shape [T, B], got {tuple(x.shape)}")
    return xp.concatenate([x.T, xp.zeros_like(x.T[:, :1])], axis=1)


def _first_tensor(named):
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    return next((x for x in named.values() if isinstance(x, torch.Tensor)), None)
