"""Input validation shared by every backend (numpy, torch, taichi).

Every check takes arrays that are already numpy arrays or torch tensors (the backend converts
python lists first) and works on either without copying a tensor to the host: the element
checks use the array's own ``isfinite`` / comparisons and reduce to one python bool.
Every error is a ``ValueError`` (bad value or shape) or ``TypeError`` (bad type) whose message
starts with the argument's name, e.g. ``"next_values: shape (3, 2) does not match rewards (3, 4)"``.

Backends call the grouped checks (``state_inputs``, ``action_inputs``, ``nstep_inputs``,
``p3o_inputs``) so that every backend rejects exactly the same inputs with the same messages;
they return the scalars as python numbers (a numpy scalar or 0-d tensor ``gamma`` becomes a
float), which the backends then use. ``gamma`` and ``lam`` may also be per-step arrays
broadcastable to the rewards' shape (``check_unit_interval``); those are returned unchanged.

The vocabulary is shared with ``offpolicy._checks`` (the tabular objects: MDPs, policies, numpy
only): no name is defined in both, so one name has one meaning (tests/test_registry.py).

``check_outputs_finite`` runs after the computation: with every input valid, a non-finite output
can only come from an overflow (``exp(log_rhos)`` too large where the ratio is read, or a product
of ratios), which raises instead of returning a silent NaN or inf.
"""

from __future__ import annotations

import math
import numbers
import sys

import numpy as np

NORMALIZE_MODES = ("max", "sum", "none")


# ---------------------------------------------------------------------------------------------
# array primitives (numpy or torch)


def _is_torch(x) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _isfinite(x):
    return sys.modules["torch"].isfinite(x) if _is_torch(x) else np.isfinite(x)


def _isnan(x):
    return sys.modules["torch"].isnan(x) if _is_torch(x) else np.isnan(x)


def _dtype_kind(x) -> str:
    """'b' bool, 'i' integer, 'f' real float, 'c' complex, 'o' anything else."""
    if _is_torch(x):
        if x.dtype == sys.modules["torch"].bool:
            return "b"
        if x.dtype.is_complex:
            return "c"
        return "f" if x.dtype.is_floating_point else "i"
    kind = np.asarray(x).dtype.kind
    return {"b": "b", "i": "i", "u": "i", "f": "f", "c": "c"}.get(kind, "o")


def _true_everywhere(mask) -> bool:
    return bool(mask.all())


# ---------------------------------------------------------------------------------------------
# scalars


def _real_scalar(name: str, value) -> float:
    """A python/numpy real number or a 0-d array; NaN is rejected."""
    if isinstance(value, (bool, str)) or tuple(getattr(value, "shape", ())) != ():
        raise TypeError(f"{name}: expected a real number, got {value!r}")
    if _is_torch(value):
        value = value.detach()
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a real number, got {value!r}") from None
    if math.isnan(value):
        raise ValueError(f"{name}: is NaN")
    return value


def _is_array(x) -> bool:
    return isinstance(x, np.ndarray) or _is_torch(x)


def _first_false(ok) -> tuple:
    """The index of the first False entry of a boolean array (numpy or torch)."""
    if _is_torch(ok):
        return tuple(int(i) for i in sys.modules["torch"].nonzero(~ok)[0].tolist())
    return tuple(int(i) for i in np.argwhere(~ok)[0])


def check_unit_interval(name: str, value, shape=None):
    """gamma, lam: a real number in [0, 1] (returned as a python float), or, when ``shape`` (the
    rewards' shape) is given, a numpy array / torch tensor of per-step values broadcastable to
    it, every entry in [0, 1] (returned unchanged; a 0-d array is a scalar).

    Broadcasting is numpy's, except that a 1-d array of length > 1 against ``[T,B]`` rewards
    is refused: it would silently mean per *stream* (and be ambiguous when T = B); per-step
    values against ``[T,B]`` rewards have shape ``(T, 1)``, per-stream values ``(1, B)``.
    """
    if type(value) is float and 0.0 <= value <= 1.0:  # the common case, first (NaN fails)
        return value
    if shape is None or not _is_array(value) or tuple(value.shape) == ():
        if isinstance(value, (list, tuple)):
            raise TypeError(f"{name}: expected a real number or a numpy/torch array, got "
                            f"{value!r} (wrap a sequence in np.asarray)")
        value = _real_scalar(name, value)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}: must lie in [0, 1], got {value}")
        return value
    kind = _dtype_kind(value)
    if kind not in "if":
        raise TypeError(f"{name}: expected a real (float or integer) array, got dtype "
                        f"{value.dtype}")
    got, shape = tuple(value.shape), tuple(shape)
    if len(got) == 1 and len(shape) == 2 and got[0] != 1:
        raise ValueError(f"{name}: shape {got} is not broadcastable to rewards {shape} (a 1-d "
                         f"array against [T,B] rewards is refused as ambiguous: pass "
                         f"({shape[0]}, 1) for per-step or (1, {shape[1]}) for per-stream values)")
    try:
        fits = np.broadcast_shapes(got, shape) == shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"{name}: shape {got} is not broadcastable to rewards {shape}")
    ok = (value >= 0) & (value <= 1)  # NaN fails both
    if not _true_everywhere(ok):
        index = _first_false(ok)
        bad = float(value[index])
        raise ValueError(f"{name}: values must lie in [0, 1], got {bad} at index {index}")
    return value


def check_clip(name: str, value) -> float:
    """A clip level (rho_clip, c_clip, pg_rho_clip): >= 0; +inf means no clipping."""
    value = _real_scalar(name, value)
    if value < 0.0:
        raise ValueError(f"{name}: must be >= 0, got {value}")
    return value


def check_positive(name: str, value) -> float:
    """A strictly positive scalar (batch_reward_std); +inf is allowed."""
    value = _real_scalar(name, value)
    if value <= 0.0:
        raise ValueError(f"{name}: must be > 0, got {value}")
    return value


def check_n(n) -> int:
    """n-step horizon: an integer >= 1 (bool and non-integer values are rejected)."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n: expected an integer >= 1, got {n!r}")
    if n < 1:
        raise ValueError(f"n: must be >= 1, got {n}")
    return int(n)


def check_normalize(normalize) -> str:
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"normalize: must be one of {NORMALIZE_MODES}, got {normalize!r}")
    return normalize


# ---------------------------------------------------------------------------------------------
# arrays


def check_real(name: str, x) -> None:
    """A numeric real array (bool, integer or float dtype)."""
    if _dtype_kind(x) not in "bif":
        raise TypeError(f"{name}: expected a real numeric array, got dtype {x.dtype}")


def check_time_major(reference_name: str, reference, **others) -> None:
    """``reference`` is [T] or [T,B] with T >= 1; every other array has exactly its shape."""
    shape = tuple(reference.shape)
    if len(shape) not in (1, 2):
        raise ValueError(f"{reference_name}: expected shape [T] or [T,B], got {shape}")
    if shape[0] == 0:
        raise ValueError(f"{reference_name}: T = 0 (empty time axis)")
    for name, x in others.items():
        if tuple(x.shape) != shape:
            raise ValueError(
                f"{name}: shape {tuple(x.shape)} does not match {reference_name} {shape}"
            )


def check_flags(name: str, x) -> None:
    """terminated / truncated: bool, or integer/float holding only 0 and 1."""
    kind = _dtype_kind(x)
    if kind == "b":
        return
    if kind not in "if":
        raise TypeError(f"{name}: expected a bool (or 0/1) array, got dtype {x.dtype}")
    if not _true_everywhere((x == 0) | (x == 1)):
        raise ValueError(f"{name}: must hold only 0/1 (or be boolean)")


def check_finite(name: str, x, where=None) -> None:
    """No NaN or inf in ``x`` (only where ``where`` is true, when given)."""
    if _is_torch(x) and x.dtype.is_floating_point:
        # a finite sum means every entry is finite (one read, no [T,B] temporaries: a third of
        # the torch backend's time at 4096x128 went to the exact check); an overflowing sum
        # of finite entries falls through to it
        torch = sys.modules["torch"]
        read = x.detach() if where is None else torch.where(where, x.detach(), 0.0)
        if bool(torch.isfinite(read.sum())):
            return
    ok = _isfinite(x)
    if where is not None:
        ok = ok | ~where
    if not _true_everywhere(ok):
        tail = " where not terminated" if where is not None else ""
        raise ValueError(f"{name}: contains NaN or inf{tail}")


def check_log_rhos(name: str, x) -> None:
    """log importance ratios: -inf (rho = 0) is fine; NaN and +inf (behaviour prob 0) are not."""
    if _is_torch(x) and x.dtype.is_floating_point and bool(x.detach().sum() < math.inf):
        return  # a NaN or +inf entry makes the sum NaN or +inf (see check_finite)
    if _true_everywhere(~_isnan(x)) and _true_everywhere(x < math.inf):
        return
    raise ValueError(f"{name}: contains NaN or +inf (a behaviour probability of 0)")


def check_unit_entries(name: str, x) -> None:
    """Every entry finite and in [0, 1] (``target_probs_taken``: one probability per step;
    a distribution whose rows sum to one is ``offpolicy._checks.check_distribution``)."""
    check_finite(name, x)
    if not _true_everywhere((x >= 0) & (x <= 1)):
        raise ValueError(f"{name}: must lie in [0, 1]")


def check_nonnegative(name: str, x) -> None:
    check_finite(name, x)
    if not _true_everywhere(x >= 0):
        raise ValueError(f"{name}: must be >= 0")


def _not_terminated(terminated):
    return terminated == 0


# ---------------------------------------------------------------------------------------------
# grouped checks, one per family of estimators


def _segment_checks(rewards, arrays, *, finite, bootstrap):
    """The checks every trajectory input shares, in this order: real dtypes, time-major shapes
    matching ``rewards``, 0/1 flags, finite ``rewards`` and ``arrays[finite]``, then
    ``arrays[bootstrap]`` finite except where terminated (it is never read there).
    ``arrays`` holds ``terminated``, ``truncated`` and the other inputs by name."""
    for name, x in dict(rewards=rewards, **arrays).items():
        check_real(name, x)
    check_time_major("rewards", rewards, **arrays)
    check_flags("terminated", arrays["terminated"])
    check_flags("truncated", arrays["truncated"])
    check_finite("rewards", rewards)
    if finite is not None:
        check_finite(finite, arrays[finite])
    check_finite(bootstrap, arrays[bootstrap], where=_not_terminated(arrays["terminated"]))


def state_inputs(rewards, values, next_values, terminated, truncated, *, gamma, lam,
                 log_rhos=None) -> tuple[float, float]:
    """Checks for gae, vtrace, puff_advantage, per_decision_is; returns (gamma, lam), each a
    python float or the per-step array as given."""
    arrays = dict(values=values, next_values=next_values, terminated=terminated,
                  truncated=truncated)
    if log_rhos is not None:
        arrays["log_rhos"] = log_rhos
    _segment_checks(rewards, arrays, finite="values", bootstrap="next_values")
    if log_rhos is not None:
        check_log_rhos("log_rhos", log_rhos)
    return _gamma_lam(gamma, lam, rewards)


def _gamma_lam(gamma, lam, rewards):
    shape = tuple(rewards.shape)
    return check_unit_interval("gamma", gamma, shape), check_unit_interval("lam", lam, shape)


def action_inputs(rewards, q_taken, next_expected_q, terminated, truncated, *, gamma, lam,
                  traces=None, log_rhos=None, target_probs_taken=None) -> tuple[float, float]:
    """Checks for q_trace and its wrappers (retrace, tree_backup, q_lambda,
    importance_sampling_q); at most one of traces / log_rhos / target_probs_taken is given.
    Returns (gamma, lam)."""
    arrays = dict(q_taken=q_taken, next_expected_q=next_expected_q, terminated=terminated,
                  truncated=truncated)
    extra = dict(traces=traces, log_rhos=log_rhos, target_probs_taken=target_probs_taken)
    arrays.update({k: v for k, v in extra.items() if v is not None})
    _segment_checks(rewards, arrays, finite="q_taken", bootstrap="next_expected_q")
    if traces is not None:
        check_nonnegative("traces", traces)
    if log_rhos is not None:
        check_log_rhos("log_rhos", log_rhos)
    if target_probs_taken is not None:
        check_unit_entries("target_probs_taken", target_probs_taken)
    return _gamma_lam(gamma, lam, rewards)


def nstep_inputs(rewards, next_values, terminated, truncated, *, gamma, n) -> tuple[float, int]:
    """Checks for nstep_returns; returns (gamma, n)."""
    arrays = dict(next_values=next_values, terminated=terminated, truncated=truncated)
    _segment_checks(rewards, arrays, finite=None, bootstrap="next_values")
    return check_unit_interval("gamma", gamma, tuple(rewards.shape)), check_n(n)


def p3o_inputs(rewards, reward_mean, reward_std, terminated, truncated, *, batch_reward_std,
               normalize) -> tuple[float, str]:
    """Checks for p3o_advantage: reward_mean and reward_std are rewards' shape plus [H], H >= 1.
    Returns (batch_reward_std, normalize)."""
    for name, x in dict(rewards=rewards, reward_mean=reward_mean, reward_std=reward_std,
                        terminated=terminated, truncated=truncated).items():
        check_real(name, x)
    check_time_major("rewards", rewards, terminated=terminated, truncated=truncated)
    shape = tuple(rewards.shape)
    for name, x in dict(reward_mean=reward_mean, reward_std=reward_std).items():
        got = tuple(x.shape)
        if len(got) != len(shape) + 1 or got[:-1] != shape or got[-1] < 1:
            raise ValueError(
                f"{name}: expected shape rewards.shape + (H,) = {shape} + (H,) with H >= 1, "
                f"got {got}"
            )
    if tuple(reward_std.shape) != tuple(reward_mean.shape):
        raise ValueError(
            f"reward_std: shape {tuple(reward_std.shape)} does not match reward_mean "
            f"{tuple(reward_mean.shape)}"
        )
    check_flags("terminated", terminated)
    check_flags("truncated", truncated)
    check_finite("rewards", rewards)
    check_finite("reward_mean", reward_mean)
    if not _true_everywhere(reward_std > 0):  # NaN fails this too; +inf (weight 0) is allowed
        raise ValueError("reward_std: must be > 0 (and not NaN)")
    return check_positive("batch_reward_std", batch_reward_std), check_normalize(normalize)


# ---------------------------------------------------------------------------------------------
# after the computation

# the largest x with exp(x) finite, per compute dtype (Taichi's float32 exp saturates at 88.5)
EXP_LIMIT = {"float64": math.log(np.finfo(np.float64).max),
             "float32": math.log(np.finfo(np.float32).max)}


def check_outputs_finite(outputs, *, dtype_name: str, log_rhos=None, culprit="rewards",
                         exp_limit=None) -> None:
    """With every input valid, a non-finite output can only come from an overflow: raise a
    ValueError naming ``log_rhos`` (when given: ``exp(log_rhos)`` overflows where the ratio is
    read, or a product of ratios overflows) or ``culprit``, instead of returning NaN or inf.
    One reduction per output when everything is finite."""
    for out in outputs:
        ok = _isfinite(out)
        if _true_everywhere(ok):
            continue
        index = _first_false(ok)
        if log_rhos is None:
            raise ValueError(f"{culprit}: the estimator overflows {dtype_name} (a non-finite "
                             f"output at index {index}); rescale the inputs")
        limit = EXP_LIMIT[dtype_name] if exp_limit is None else exp_limit
        largest = float(log_rhos.max())
        if largest > limit:
            raise ValueError(
                f"log_rhos: exp(log_rhos) overflows {dtype_name} where the ratio is read "
                f"(largest log_rhos {largest:.6g} > {limit:.6g}; a non-finite output at index "
                f"{index}); clip the ratio (vtrace, retrace) or cap log_rhos")
        raise ValueError(
            f"log_rhos: a product of importance ratios overflows {dtype_name} (a non-finite "
            f"output at index {index}); clip the ratios (vtrace, retrace) or use float64")
