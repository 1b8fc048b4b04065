"""The numpy reference: every estimator of docs/DESIGN.md section 2, plain and in float64.

This module is the oracle every other backend is held to, so it is written to be read: a
backward loop over time, vectorised over the batch, with each convention on its own line in
one place:

* ``_masks``: ``kappa_t = not done_t and t < T-1`` (the trace continues into t+1) and
  ``beta_t = not terminated_t`` (bootstrapping allowed);
* ``_ratio``: ``rho_t = exp(log_rhos_t)``; ``_clip``: ``min(level, rho_t)``;
* ``_state_value_trace``: the state-value trace (GAE, V-trace, per-decision IS), whose trace
  uses ``c_t`` of the *same* step;
* ``_action_value_trace``: the action-value trace (Retrace, tree-backup, Q(lambda), IS), whose
  trace uses ``c_{t+1}`` of the *next* step.

Shapes: every array is time-major, ``[T]`` or ``[T, B]`` (``p3o_advantage``'s predictions add a
trailing ``[H]``). Inputs may be float32/float64/integer arrays or python lists; flags may be
bool or 0/1 numbers. **Every output is a float64 numpy array** of the rewards' shape, whatever
the input dtype. Bad input raises ``ValueError``/``TypeError`` naming the argument (see
``estimators._validate``). Values under ``terminated`` (``next_values``, ``next_expected_q``) are
never read: NaN or inf there cannot change any output.

``gamma`` and ``lam`` are scalars or per-step arrays broadcastable to the rewards' shape (a 1-d
array against ``[T,B]`` rewards is refused as ambiguous: use ``(T, 1)`` or ``(1, B)``), every
entry in [0, 1]. ``gamma_t`` multiplies the bootstrap of step t and the trace from t into t+1;
``lam_t`` multiplies the trace from t into t+1. The recurrences below are written with the
per-step ``gamma_t``, ``lam_t``; a scalar is the constant array.

**Overflow never passes silently.** Where ``exp(log_rhos_t)`` overflows float64 (log_rhos above
~709.78) and the ratio is *read* unclipped, or a product of ratios overflows, the output would be
inf or NaN: a ``ValueError`` naming ``log_rhos`` is raised instead (after the computation, from
the non-finite output). Where the ratio is not read (a cut trace: the trace factor is exactly
0 even where the ratio is inf; ``c_0`` of the action-value trace) or is clipped
(``min(level, inf) = level``: V-trace, Retrace) a huge log-ratio is fine. A trace weight
``gamma_t lam_t = 0`` counts as a cut here: the trace factor is exactly 0 even where the
ratio is inf (``lam_t = 0`` cuts the trace as ``truncated[t]`` does, docs/DESIGN.md section 1).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from . import _validate
from ._types import GAEOutput, PDISOutput, VTraceOutput

__all__ = [
    "gae",
    "vtrace",
    "puff_advantage",
    "per_decision_is",
    "nstep_returns",
    "q_trace",
    "retrace",
    "tree_backup",
    "q_lambda",
    "importance_sampling_q",
    "p3o_advantage",
]


# ---------------------------------------------------------------------------------------------
# input conversion


def _array(x) -> np.ndarray:
    return np.asarray(x)  # its dtype is checked by _validate before any conversion


def _float64(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _bool(x: np.ndarray) -> np.ndarray:
    return np.asarray(x) != 0


def _as_2d(x: np.ndarray) -> np.ndarray:
    """[T] -> [T, 1]; [T, B] unchanged."""
    return x.reshape(x.shape[0], -1) if x.ndim == 1 else x


def _like_rewards(out: np.ndarray, rewards: np.ndarray) -> np.ndarray:
    return out.reshape(rewards.shape)


def _per_step(x, rewards: np.ndarray) -> np.ndarray:
    """gamma or lam (validated: a scalar or an array broadcastable to the rewards' shape) as a
    2-d float64 array of the rewards' [T,B] shape; a scalar is the constant array."""
    if _validate._is_torch(x):
        x = x.detach().cpu().numpy()
    return _as_2d(np.broadcast_to(_float64(x), rewards.shape))


def _quiet():
    """exp may overflow and inf * 0 may appear where a value is never read: no warnings (an
    overflow that reaches an output raises, see ``_finite``)."""
    return np.errstate(over="ignore", invalid="ignore")


def _finite(outputs, log_rhos=None, culprit="rewards"):
    _validate.check_outputs_finite(outputs, dtype_name="float64", log_rhos=log_rhos,
                                   culprit=culprit)
    return outputs


# ---------------------------------------------------------------------------------------------
# the conventions, each written once


def _masks(terminated: np.ndarray, truncated: np.ndarray):
    """kappa_t (the trace continues into t+1) and beta_t (bootstrap from s'_t allowed), [T,B]."""
    done = terminated | truncated
    kappa = ~done
    kappa[-1] = False  # the end of the segment always cuts the trace
    beta = ~terminated  # a terminal s'_t has value 0: no bootstrap
    return kappa, beta


def _ratio(log_rhos: np.ndarray) -> np.ndarray:
    """rho_t = pi(a_t|s_t) / mu(a_t|s_t) (inf where exp overflows; see the module docstring)."""
    with _quiet():
        return np.exp(log_rhos)


def _clip(rho: np.ndarray, level: float) -> np.ndarray:
    """min(level, rho); level = inf leaves rho unclipped."""
    return np.minimum(level, rho)


def _next_step(x: np.ndarray) -> np.ndarray:
    """x_{t+1} at index t (zero at t = T-1, where kappa = 0 so it is never used)."""
    return np.concatenate([x[1:], np.zeros_like(x[:1])])


# ---------------------------------------------------------------------------------------------
# the two core recurrences


def _state_value_trace(rewards, values, next_values, terminated, truncated, rho_hat, c_hat,
                       gamma, lam):
    """docs/DESIGN.md section 2, all arrays [T,B] float64 / bool (gamma, lam per step):

        delta_t = rho_hat_t (r_t + gamma_t beta_t V(s'_t) - V(s_t))
        A_t     = delta_t + gamma_t lam_t c_hat_t kappa_t A_{t+1}
    """
    T = rewards.shape[0]
    kappa, beta = _masks(terminated, truncated)
    bootstrap = np.where(beta, next_values, 0.0)  # next_values under terminated is never read
    advantages = np.zeros_like(values)
    next_advantage = np.zeros_like(values[0])
    with _quiet():  # inf * 0 where a cut discards it (c_hat inf): the select gives exactly 0
        delta = rho_hat * (rewards + gamma * bootstrap - values)
        for t in reversed(range(T)):
            # gamma_t lam_t = 0 weights the trace by 0 like a cut, even where c_hat is inf
            read = kappa[t] & (gamma[t] * lam[t] > 0)
            trace = np.where(read, c_hat[t] * next_advantage, 0.0)
            advantages[t] = delta[t] + gamma[t] * lam[t] * trace
            next_advantage = advantages[t]
    return advantages


def _action_value_trace(rewards, q_taken, next_expected_q, terminated, truncated, traces,
                        gamma, lam):
    """docs/DESIGN.md section 2, all arrays [T,B] float64 / bool (gamma, lam per step):

        G_t = r_t + gamma_t beta_t E_pi Q(s'_t, .)
                  + gamma_t lam_t kappa_t c_{t+1} (G_{t+1} - Q(s_{t+1}, a_{t+1}))
    """
    T = rewards.shape[0]
    kappa, beta = _masks(terminated, truncated)
    bootstrap = np.where(beta, next_expected_q, 0.0)  # never read under terminated
    next_traces = _next_step(traces)  # c_{t+1}: the first action a_t is never corrected
    next_q_taken = _next_step(q_taken)  # Q(s_{t+1}, a_{t+1})
    targets = np.zeros_like(q_taken)
    next_target = np.zeros_like(q_taken[0])
    with _quiet():  # inf * 0 where a cut discards it (c inf): the select gives exactly 0
        for t in reversed(range(T)):
            read = kappa[t] & (gamma[t] * lam[t] > 0)  # gamma_t lam_t = 0 weights it by 0
            correction = np.where(read, next_traces[t] * (next_target - next_q_taken[t]), 0.0)
            targets[t] = rewards[t] + gamma[t] * bootstrap[t] + gamma[t] * lam[t] * correction
            next_target = targets[t]
    return targets


# ---------------------------------------------------------------------------------------------
# state-value estimators


def _state_arrays(rewards, values, next_values, terminated, truncated, log_rhos, gamma, lam):
    """Convert, validate, and return 2-d float64/bool arrays (log_rhos None when not given;
    gamma and lam as per-step [T,B] arrays)."""
    arrays = [_array(x) for x in (rewards, values, next_values, terminated, truncated)]
    lr = None if log_rhos is None else _array(log_rhos)
    gamma, lam = _validate.state_inputs(*arrays, gamma=gamma, lam=lam, log_rhos=lr)
    r, v, nv = (_as_2d(_float64(x)) for x in arrays[:3])
    term, trunc = (_as_2d(_bool(x)) for x in arrays[3:])
    lr = None if lr is None else _as_2d(_float64(lr))
    gamma, lam = _per_step(gamma, arrays[0]), _per_step(lam, arrays[0])
    return arrays[0], r, v, nv, term, trunc, lr, gamma, lam


def gae(rewards: npt.ArrayLike, values: npt.ArrayLike, next_values: npt.ArrayLike,
        terminated: npt.ArrayLike, truncated: npt.ArrayLike, *, gamma: npt.ArrayLike,
        lam: npt.ArrayLike) -> GAEOutput:
    """Generalised advantage estimation (Schulman et al. 2016) and TD(lambda) returns.

    ``delta_t = r_t + gamma_t beta_t V(s'_t) - V(s_t)``,
    ``A_t = delta_t + gamma_t lam_t kappa_t A_{t+1}``, ``returns_t = V(s_t) + A_t``.
    Shapes ``[T]`` or ``[T,B]``; ``gamma``, ``lam`` scalars or per-step arrays (module docstring).

    Returns ``GAEOutput(advantages, returns)``, float64 numpy arrays of the rewards' shape.
    """
    shape_ref, r, v, nv, term, trunc, _, gamma, lam = _state_arrays(
        rewards, values, next_values, terminated, truncated, None, gamma, lam)
    ones = np.ones_like(r)
    adv = _state_value_trace(r, v, nv, term, trunc, ones, ones, gamma, lam)
    adv, ret = _finite((adv, v + adv))
    return GAEOutput(_like_rewards(adv, shape_ref), _like_rewards(ret, shape_ref))


def _vtrace(rewards, values, next_values, terminated, truncated, log_rhos, gamma, lam,
            rho_clip, c_clip, pg_rho_clip):
    shape_ref, r, v, nv, term, trunc, lr, gamma, lam = _state_arrays(
        rewards, values, next_values, terminated, truncated, log_rhos, gamma, lam)
    rho_clip = _validate.check_clip("rho_clip", rho_clip)
    c_clip = _validate.check_clip("c_clip", c_clip)
    pg_rho_clip = _validate.check_clip("pg_rho_clip", pg_rho_clip)
    rho = _ratio(lr)
    adv = _state_value_trace(r, v, nv, term, trunc, _clip(rho, rho_clip), _clip(rho, c_clip),
                             gamma, lam)
    value_targets = v + adv
    # q_t = r_t + gamma_t beta_t [kappa_t (lam_t v_{t+1} + (1-lam_t) V(s'_t))
    #                             + (1-kappa_t) V(s'_t)]
    kappa, beta = _masks(term, trunc)
    bootstrap = np.where(beta, nv, 0.0)  # beta_t V(s'_t); kappa_t implies beta_t
    v_next = _next_step(value_targets)
    with _quiet():
        q = r + gamma * np.where(kappa, lam * v_next + (1 - lam) * bootstrap, bootstrap)
        pg = _clip(rho, pg_rho_clip) * (q - v)
    outputs = _finite((adv, value_targets, pg), log_rhos=lr)
    return VTraceOutput(*(_like_rewards(x, shape_ref) for x in outputs))


def vtrace(rewards: npt.ArrayLike, values: npt.ArrayLike, next_values: npt.ArrayLike,
           terminated: npt.ArrayLike, truncated: npt.ArrayLike, log_rhos: npt.ArrayLike, *,
           gamma: npt.ArrayLike, lam: npt.ArrayLike = 1.0, rho_clip: float = 1.0,
           c_clip: float = 1.0, pg_rho_clip: float = 1.0) -> VTraceOutput:
    """V-trace (Espeholt et al. 2018, IMPALA), with the trace parameter lambda.

    ``rho_t = exp(log_rhos_t)``, ``rho_hat_t = min(rho_clip, rho_t)``, ``c_t = min(c_clip, rho_t)``;
    ``delta_t = rho_hat_t (r_t + gamma beta_t V(s'_t) - V(s_t))``,
    ``A_t = delta_t + gamma lam c_t kappa_t A_{t+1}``, ``v_t = V(s_t) + A_t``;
    ``q_t = r_t + gamma beta_t [kappa_t (lam v_{t+1} + (1-lam) V(s'_t)) + (1-kappa_t) V(s'_t)]``,
    ``pg_t = min(pg_rho_clip, rho_t) (q_t - V(s_t))``. Shapes ``[T]`` or ``[T,B]``; ``gamma``,
    ``lam`` scalars or per-step arrays (``gamma_t``, ``lam_t`` in every formula).

    Returns ``VTraceOutput(advantages, value_targets, pg_advantages)``, float64 numpy arrays;
    ``advantages`` is A_t (= ``value_targets - values`` = ``puff_advantage``). A huge log-ratio
    is fine where the ratio is clipped (finite clip levels) or the trace is cut; read unclipped
    (a clip level of inf) where ``exp`` overflows it raises ``ValueError`` naming ``log_rhos``.
    """
    return _vtrace(rewards, values, next_values, terminated, truncated, log_rhos, gamma, lam,
                   rho_clip, c_clip, pg_rho_clip)


def puff_advantage(rewards: npt.ArrayLike, values: npt.ArrayLike, next_values: npt.ArrayLike,
                   terminated: npt.ArrayLike, truncated: npt.ArrayLike, log_rhos: npt.ArrayLike, *,
                   gamma: npt.ArrayLike, lam: npt.ArrayLike = 1.0, rho_clip: float = 1.0,
                   c_clip: float = 1.0) -> np.ndarray:
    """PufferLib's "puff advantage": V-trace's ``A_t = v_t - V(s_t)`` (see ``vtrace``).

    Arguments are in this contract's layout; ``estimators.layout.from_pufferlib`` converts
    PufferLib's rows. Returns a float64 numpy array of the rewards' shape.
    """
    return _vtrace(rewards, values, next_values, terminated, truncated, log_rhos, gamma, lam,
                   rho_clip, c_clip, 1.0).advantages


def per_decision_is(rewards: npt.ArrayLike, values: npt.ArrayLike, next_values: npt.ArrayLike,
                    terminated: npt.ArrayLike, truncated: npt.ArrayLike, log_rhos: npt.ArrayLike, *,
                    gamma: npt.ArrayLike, lam: npt.ArrayLike) -> PDISOutput:
    """Per-decision importance sampling with control variates (Precup et al. 2000;
    Sutton & Barto eq. 7.13), with lambda.

    The state-value trace with ``rho_hat_t = c_t = rho_t`` (no clipping):
    ``A_t = rho_t (r_t + gamma beta_t V(s'_t) - V(s_t)) + gamma lam rho_t kappa_t A_{t+1}``,
    ``value_targets_t = V(s_t) + A_t``. Unbiased for the target policy's return, high variance.
    ``gamma``, ``lam``: scalars or per-step arrays.

    Returns ``PDISOutput(advantages, value_targets)``, float64 numpy arrays. The ratio is read
    at every step (in delta_t), so a log-ratio whose ``exp`` overflows float64 (> ~709.78), or
    a product of ratios that overflows, raises ``ValueError`` naming ``log_rhos``.
    """
    shape_ref, r, v, nv, term, trunc, lr, gamma, lam = _state_arrays(
        rewards, values, next_values, terminated, truncated, log_rhos, gamma, lam)
    rho = _ratio(lr)
    adv = _state_value_trace(r, v, nv, term, trunc, rho, rho, gamma, lam)
    adv, targets = _finite((adv, v + adv), log_rhos=lr)
    return PDISOutput(_like_rewards(adv, shape_ref), _like_rewards(targets, shape_ref))


# ---------------------------------------------------------------------------------------------
# n-step returns


def nstep_returns(rewards: npt.ArrayLike, next_values: npt.ArrayLike, terminated: npt.ArrayLike,
                  truncated: npt.ArrayLike, *, gamma: npt.ArrayLike, n: int) -> np.ndarray:
    """n-step returns ``G_t = sum_{k<m} D_{t,k} r_{t+k} + D_{t,m} beta_{t+m-1} V(s'_{t+m-1})``
    with the discount ``D_{t,k} = prod_{j<k} gamma_{t+j}`` (``gamma^k`` for a scalar gamma).

    ``m = min(n, T-t, 1 + steps to the first done at or after t)``: the window stops at the
    first termination/truncation and at the end of the segment. For uncorrected n-step Q
    targets pass ``next_values = max_a Q_target(s'_t, a)``. Shapes ``[T]`` or ``[T,B]``;
    ``gamma`` a scalar or a per-step array; returns a float64 numpy array.
    """
    arrays = [_array(x) for x in (rewards, next_values, terminated, truncated)]
    gamma, n = _validate.nstep_inputs(*arrays, gamma=gamma, n=n)
    r, nv = (_as_2d(_float64(x)) for x in arrays[:2])
    term, trunc = (_as_2d(_bool(x)) for x in arrays[2:])
    gamma = _per_step(gamma, arrays[0])
    T = r.shape[0]
    kappa, beta = _masks(term, trunc)
    bootstrap = np.where(beta, nv, 0.0)
    returns = np.zeros_like(r)
    with _quiet():
        for t in range(T):
            total = np.zeros_like(r[0])
            discount = np.ones_like(r[0])  # D_{t,k}, multiplied up step by step
            is_open = np.ones(r.shape[1], dtype=bool)  # the window from t still covers t+k
            for k in range(min(n, T - t)):
                total = total + np.where(is_open, discount * r[t + k], 0.0)
                discount = discount * gamma[t + k]
                closes = is_open & (~kappa[t + k] | (k == n - 1))  # t+k is the window's last
                total = total + np.where(closes, discount * bootstrap[t + k], 0.0)
                is_open = is_open & ~closes
            returns[t] = total
    (returns,) = _finite((returns,))
    return _like_rewards(returns, arrays[0])


# ---------------------------------------------------------------------------------------------
# action-value estimators


def _q_trace(rewards, q_taken, next_expected_q, terminated, truncated, gamma, lam,
             coefficient_name=None, coefficient_input=None, coefficient=None):
    """Convert and validate, compute the traces c_t = coefficient(coefficient_input), run the
    core. Without a coefficient input (Q(lambda)) the traces are 1."""
    arrays = [_array(x) for x in (rewards, q_taken, next_expected_q, terminated, truncated)]
    extra = {} if coefficient_name is None else {coefficient_name: _array(coefficient_input)}
    gamma, lam = _validate.action_inputs(*arrays, gamma=gamma, lam=lam, **extra)
    r, q, nq = (_as_2d(_float64(x)) for x in arrays[:3])
    term, trunc = (_as_2d(_bool(x)) for x in arrays[3:])
    gamma, lam = _per_step(gamma, arrays[0]), _per_step(lam, arrays[0])
    if coefficient_name is None:
        traces = np.ones_like(r)
    else:
        traces = coefficient(_as_2d(_float64(extra[coefficient_name])))
    targets = _action_value_trace(r, q, nq, term, trunc, traces, gamma, lam)
    (targets,) = _finite((targets,), log_rhos=extra.get("log_rhos"))
    return _like_rewards(targets, arrays[0])


def q_trace(rewards: npt.ArrayLike, q_taken: npt.ArrayLike, next_expected_q: npt.ArrayLike,
            terminated: npt.ArrayLike, truncated: npt.ArrayLike, traces: npt.ArrayLike, *,
            gamma: npt.ArrayLike, lam: npt.ArrayLike) -> np.ndarray:
    """The general action-value trace (Munos et al. 2016's operator, sampled):

    ``G_t = r_t + gamma_t beta_t next_expected_q_t
             + gamma_t lam_t kappa_t c_{t+1} (G_{t+1} - Q(s_{t+1}, a_{t+1}))``

    with ``c = traces`` (>= 0, finite). ``next_expected_q_t = sum_a pi(a|s'_t) Q(s'_t, a)``.
    Shapes ``[T]`` or ``[T,B]``; ``gamma``, ``lam`` scalars or per-step arrays; returns a
    float64 numpy array of targets for Q(s_t, a_t).
    """
    return _q_trace(rewards, q_taken, next_expected_q, terminated, truncated, gamma, lam,
                    "traces", traces, lambda c: c)


def retrace(rewards: npt.ArrayLike, q_taken: npt.ArrayLike, next_expected_q: npt.ArrayLike,
            terminated: npt.ArrayLike, truncated: npt.ArrayLike, log_rhos: npt.ArrayLike, *,
            gamma: npt.ArrayLike, lam: npt.ArrayLike) -> np.ndarray:
    """Retrace(lambda) (Munos et al. 2016): ``q_trace`` with ``c_t = min(1, rho_t)``.
    Returns a float64 numpy array. ``c_t`` is clipped, so any finite log-ratio is fine (an
    overflowed ratio gives ``min(1, inf) = 1``)."""
    return _q_trace(rewards, q_taken, next_expected_q, terminated, truncated, gamma, lam,
                    "log_rhos", log_rhos, lambda lr: _clip(_ratio(lr), 1.0))


def tree_backup(rewards: npt.ArrayLike, q_taken: npt.ArrayLike, next_expected_q: npt.ArrayLike,
                terminated: npt.ArrayLike, truncated: npt.ArrayLike,
                target_probs_taken: npt.ArrayLike, *, gamma: npt.ArrayLike,
                lam: npt.ArrayLike) -> np.ndarray:
    """Tree-backup(lambda) (Precup et al. 2000): ``q_trace`` with ``c_t = pi(a_t|s_t)``
    (``target_probs_taken``, in [0, 1]). Returns a float64 numpy array."""
    return _q_trace(rewards, q_taken, next_expected_q, terminated, truncated, gamma, lam,
                    "target_probs_taken", target_probs_taken, lambda p: p)


def q_lambda(rewards: npt.ArrayLike, q_taken: npt.ArrayLike, next_expected_q: npt.ArrayLike,
             terminated: npt.ArrayLike, truncated: npt.ArrayLike, *, gamma: npt.ArrayLike,
             lam: npt.ArrayLike) -> np.ndarray:
    """Q^pi(lambda) (Harutyunyan et al. 2016): ``q_trace`` with ``c_t = 1``; safe only for
    lam < (1 - gamma) / (gamma eps). Returns a float64 numpy array."""
    return _q_trace(rewards, q_taken, next_expected_q, terminated, truncated, gamma, lam)


def importance_sampling_q(rewards: npt.ArrayLike, q_taken: npt.ArrayLike,
                          next_expected_q: npt.ArrayLike, terminated: npt.ArrayLike,
                          truncated: npt.ArrayLike, log_rhos: npt.ArrayLike, *,
                          gamma: npt.ArrayLike, lam: npt.ArrayLike) -> np.ndarray:
    """Per-decision importance sampling for Q: ``q_trace`` with ``c_t = rho_t`` (unclipped).
    Returns a float64 numpy array. ``rho_t`` is read only where the trace enters step t
    (``kappa_{t-1}``); there a log-ratio whose ``exp`` overflows float64 (or an overflowing
    product of ratios) raises ``ValueError`` naming ``log_rhos``; elsewhere (t = 0, after a
    cut) it is never read and may be huge."""
    return _q_trace(rewards, q_taken, next_expected_q, terminated, truncated, gamma, lam,
                    "log_rhos", log_rhos, _ratio)


# ---------------------------------------------------------------------------------------------
# P3O


def _p3o_weights(reward_std, batch_reward_std, normalize):
    """w_{t,k} = max(0, sigma_{t,k}^-2 - sigma_r^-2), normalised over k < H for each t.

    Normalisation divides by max_k w_{t,k} ("max") or sum_k w_{t,k} ("sum") over all H
    predicted offsets (before the window is cut at a done). Where every weight of a row is 0
    the normalised weights are defined as 0 (no division by zero).
    """
    weights = np.maximum(0.0, reward_std**-2.0 - batch_reward_std**-2.0)
    if normalize == "max":
        scale = weights.max(axis=-1, keepdims=True)
    elif normalize == "sum":
        scale = weights.sum(axis=-1, keepdims=True)
    else:
        scale = np.ones_like(weights[..., :1])
    return weights / np.where(scale > 0, scale, 1.0)  # all-zero rows stay 0


def p3o_advantage(rewards: npt.ArrayLike, reward_mean: npt.ArrayLike, reward_std: npt.ArrayLike,
                  terminated: npt.ArrayLike, truncated: npt.ArrayLike, *, batch_reward_std: float,
                  normalize: str = "max") -> np.ndarray:
    """P3O variance-weighted advantage (an experimental PufferLib estimator).

    A value head predicts the mean ``mu_{t,k}`` (``reward_mean``) and std ``sigma_{t,k}``
    (``reward_std``, > 0; +inf gives weight 0) of ``r_{t+k}`` given ``s_t`` for ``k < H``;
    ``A_t = sum_{k<m} w_{t,k} (r_{t+k} - mu_{t,k})`` with ``w`` from ``_p3o_weights`` and
    ``m = min(H, T-t, 1 + steps to the first done at or after t)``; no bootstrap.
    Shapes: rewards ``[T]``/``[T,B]``, predictions ``[T,H]``/``[T,B,H]``.
    Returns a float64 numpy array of the rewards' shape.
    """
    arrays = [_array(x) for x in (rewards, reward_mean, reward_std, terminated, truncated)]
    batch_reward_std, normalize = _validate.p3o_inputs(
        *arrays, batch_reward_std=batch_reward_std, normalize=normalize)
    r = _as_2d(_float64(arrays[0]))
    mean, std = (_float64(x).reshape(r.shape + x.shape[-1:]) for x in arrays[1:3])
    term, trunc = (_as_2d(_bool(x)) for x in arrays[3:])
    T, H = r.shape[0], mean.shape[-1]  # type: ignore[misc]  # numpy stubs: reshape -> 0-d
    with _quiet():  # sigma^-2 may overflow: an overflow that reaches the output raises
        weights = _p3o_weights(std, batch_reward_std, normalize)
    kappa, _ = _masks(term, trunc)
    advantages = np.zeros_like(r)
    for t in range(T):
        total = np.zeros_like(r[0])
        is_open = np.ones(r.shape[1], dtype=bool)  # the window from t still covers step t+k
        for k in range(min(H, T - t)):
            total = total + np.where(is_open, weights[t, :, k] * (r[t + k] - mean[t, :, k]), 0.0)
            is_open = is_open & kappa[t + k]
        advantages[t] = total
    (advantages,) = _finite((advantages,), culprit="reward_std")
    return _like_rewards(advantages, arrays[0])
