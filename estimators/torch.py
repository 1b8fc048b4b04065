"""The torch backend: the estimators of ``estimators.numpy``, batched, on any device, with autograd.

Same functions, arguments and conventions as the numpy reference (see its module docstring and
docs/DESIGN.md section 2). Differences:

* outputs keep the inputs' floating dtype (the promotion of the float inputs; integer or bool
  inputs give ``torch.get_default_dtype()``) and device; numpy arrays and python lists are
  converted with ``torch.as_tensor`` onto the device of the first tensor argument;
* gradients flow to rewards, values, next_values, q_taken, next_expected_q, log_rhos, traces,
  target_probs_taken, reward_mean and reward_std wherever the output depends on them (through
  ``min`` clips the gradient is that of the selected branch); entries that are never read
  (``next_values`` under ``terminated``) get a zero gradient, even when they hold NaN;
* the recurrences loop over T (vectorised over B) and the windowed estimators loop over the
  window offset k (vectorised over T and B); no operation writes into a tensor in place;
* ``gamma`` and ``lam`` may be per-step tensors (or numpy arrays) broadcastable to the rewards'
  shape (see ``estimators.numpy``); a tensor ``gamma``/``lam`` (also 0-d) keeps autograd, so
  gradients flow to it. They are cast to the compute dtype and do not take part in choosing it;
* a log-ratio whose ``exp`` overflows the compute dtype (above ~709.78 in float64, ~88.72 in
  float32) raises ``ValueError`` naming ``log_rhos`` where the ratio is read unclipped (as in
  the reference); where it is clipped or never read the output and the gradients stay finite
  (``exp`` is evaluated on a masked input there, so its backward never computes 0 * inf).

Validation is ``estimators._validate``, shared with every backend (one device sync per check).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

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


def _tensors(**named):
    """Tensors stay as they are; anything else becomes a tensor on the first tensor's device."""
    device = next((x.device for x in named.values() if isinstance(x, torch.Tensor)), None)
    out = []
    for name, x in named.items():
        if not isinstance(x, torch.Tensor):
            x = np.asarray(x)
            _validate.check_real(name, x)  # strings, objects, complex: TypeError naming x
            x = torch.as_tensor(x, device=device)
        out.append(x)
    return out


def _float_dtype(*xs) -> torch.dtype:
    dtype = None
    for x in xs:
        if x.dtype.is_floating_point:
            dtype = x.dtype if dtype is None else torch.promote_types(dtype, x.dtype)
    return torch.get_default_dtype() if dtype is None else dtype


def _as_2d(x: torch.Tensor) -> torch.Tensor:
    """[T] -> [T, 1]; [T, B] unchanged."""
    return x.reshape(x.shape[0], -1) if x.dim() == 1 else x


def _floats(dtype, *xs):
    return [_as_2d(x.to(dtype)) for x in xs]


def _bools(*xs):
    return [_as_2d(x != 0) for x in xs]


def _per_step(x, checked, dtype, rewards):
    """gamma or lam as a [T,B] tensor of the compute dtype on the rewards' device. ``x`` is the
    argument as given (a tensor keeps its graph), ``checked`` its validated value."""
    if not isinstance(x, torch.Tensor):
        x = checked if isinstance(checked, float) else torch.as_tensor(checked)
    x = torch.as_tensor(x, dtype=dtype, device=rewards.device)
    return _as_2d(torch.broadcast_to(x, tuple(rewards.shape)))


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _finite(outputs, log_rhos=None, culprit="rewards"):
    _validate.check_outputs_finite([x.detach() for x in outputs],
                                   dtype_name=_dtype_name(outputs[0].dtype),
                                   log_rhos=None if log_rhos is None else log_rhos.detach(),
                                   culprit=culprit)
    return outputs


# ---------------------------------------------------------------------------------------------
# the conventions, each written once (as in estimators.numpy)


def _masks(terminated, truncated):
    """kappa_t (the trace continues into t+1) and beta_t (bootstrap from s'_t allowed), [T,B]."""
    done = terminated | truncated
    kappa = torch.cat([~done[:-1], torch.zeros_like(done[-1:])])  # segment end cuts the trace
    beta = ~terminated  # a terminal s'_t has value 0: no bootstrap
    return kappa, beta


def _ratio(log_rhos):
    """exp(log_rhos), inf where it overflows; there exp's input is masked so that its backward
    (grad * exp(x)) gives 0, not 0 * inf = NaN, where the ratio is clipped or never read."""
    with torch.no_grad():
        overflows = torch.isinf(torch.exp(log_rhos)) & (log_rhos > 0)
    safe = torch.exp(torch.where(overflows, 0.0, log_rhos))
    return torch.where(overflows, torch.inf, safe)


def _clip(rho, level: float):
    return torch.clamp(rho, max=level)


def _shift(x, k: int):
    """x_{t+k} at index t, zero (False) past the end of the segment."""
    if k == 0:
        return x
    return torch.cat([x[k:], torch.zeros_like(x[:k])])


# ---------------------------------------------------------------------------------------------
# the two core recurrences


def _state_value_trace(rewards, values, next_values, terminated, truncated, rho_hat, c_hat,
                       gamma, lam):
    """delta_t = rho_hat_t (r_t + gamma_t beta_t V(s'_t) - V(s_t)),
    A_t = delta_t + gamma_t lam_t c_hat_t kappa_t A_{t+1} (gamma, lam: [T,B])."""
    kappa, beta = _masks(terminated, truncated)
    bootstrap = torch.where(beta, next_values, 0.0)
    delta = rho_hat * (rewards + gamma * bootstrap - values)
    # a cut, or a trace weight gamma_t lam_t = 0, gives an exact 0 trace factor even where
    # c_hat is inf (masked before multiplying, so the backward pass never sees 0 * inf either;
    # a finite c_hat is kept where gamma_t lam_t = 0: the gradient w.r.t. lam_t there is not 0)
    gamma_lam = gamma * lam
    c_cut = torch.where(kappa & ~((gamma_lam == 0) & torch.isinf(c_hat)), c_hat, 0.0)
    advantages = []
    next_advantage = torch.zeros_like(delta[0])
    for t in reversed(range(rewards.shape[0])):
        next_advantage = delta[t] + gamma_lam[t] * (c_cut[t] * next_advantage)
        advantages.append(next_advantage)
    return torch.stack(advantages[::-1])


def _action_value_trace(rewards, q_taken, next_expected_q, terminated, truncated, traces,
                        gamma, lam):
    """G_t = r_t + gamma_t beta_t E_pi Q(s'_t)
    + gamma_t lam_t kappa_t c_{t+1} (G_{t+1} - Q_{t+1}) (gamma, lam: [T,B])."""
    kappa, beta = _masks(terminated, truncated)
    bootstrap = torch.where(beta, next_expected_q, 0.0)
    # c_{t+1} (the first action is never corrected), exactly 0 where the trace is cut or
    # weighted by gamma_t lam_t = 0, even where c is inf (masked before multiplying: no 0 * inf
    # forward or backward; a finite c is kept, for the gradient w.r.t. gamma_t, lam_t)
    gamma_lam = gamma * lam
    next_traces = _shift(traces, 1)
    next_traces = torch.where(kappa & ~((gamma_lam == 0) & torch.isinf(next_traces)),
                              next_traces, 0.0)
    next_q_taken = _shift(q_taken, 1)
    discounted = gamma * bootstrap
    targets = []
    next_target = torch.zeros_like(bootstrap[0])
    for t in reversed(range(rewards.shape[0])):
        correction = next_traces[t] * (next_target - next_q_taken[t])
        next_target = rewards[t] + discounted[t] + gamma_lam[t] * correction
        targets.append(next_target)
    return torch.stack(targets[::-1])


# ---------------------------------------------------------------------------------------------
# state-value estimators


def _state_arrays(rewards, values, next_values, terminated, truncated, log_rhos, gamma, lam):
    named = dict(rewards=rewards, values=values, next_values=next_values,
                 terminated=terminated, truncated=truncated)
    if log_rhos is not None:
        named["log_rhos"] = log_rhos
    xs = _tensors(**named)
    lr = xs[5] if log_rhos is not None else None
    g, l = _validate.state_inputs(*xs[:5], gamma=gamma, lam=lam, log_rhos=lr)
    floats = [xs[0], xs[1], xs[2]] + ([lr] if lr is not None else [])
    dtype = _float_dtype(*floats)
    r, v, nv = _floats(dtype, *xs[:3])
    term, trunc = _bools(*xs[3:5])
    lr = None if lr is None else _floats(dtype, lr)[0]
    gamma, lam = _per_step(gamma, g, dtype, xs[0]), _per_step(lam, l, dtype, xs[0])
    return xs[0].shape, r, v, nv, term, trunc, lr, gamma, lam


def gae(rewards: torch.Tensor | npt.ArrayLike, values: torch.Tensor | npt.ArrayLike,
        next_values: torch.Tensor | npt.ArrayLike, terminated: torch.Tensor | npt.ArrayLike,
        truncated: torch.Tensor | npt.ArrayLike, *, gamma: torch.Tensor | npt.ArrayLike,
        lam: torch.Tensor | npt.ArrayLike) -> GAEOutput:
    """GAE(gamma, lam) (Schulman et al. 2016): ``A_t = delta_t + gamma lam kappa_t A_{t+1}``,
    ``delta_t = r_t + gamma beta_t V(s'_t) - V(s_t)``; returns ``GAEOutput(advantages,
    returns = V + A)``, tensors of the rewards' shape, input dtype and device."""
    shape, r, v, nv, term, trunc, _, gamma, lam = _state_arrays(
        rewards, values, next_values, terminated, truncated, None, gamma, lam)
    ones = torch.ones_like(r)
    adv = _state_value_trace(r, v, nv, term, trunc, ones, ones, gamma, lam)
    adv, ret = _finite((adv, v + adv))
    return GAEOutput(adv.reshape(shape), ret.reshape(shape))


def _vtrace(rewards, values, next_values, terminated, truncated, log_rhos, gamma, lam,
            rho_clip, c_clip, pg_rho_clip):
    shape, r, v, nv, term, trunc, lr, gamma, lam = _state_arrays(
        rewards, values, next_values, terminated, truncated, log_rhos, gamma, lam)
    rho_clip = _validate.check_clip("rho_clip", rho_clip)
    c_clip = _validate.check_clip("c_clip", c_clip)
    pg_rho_clip = _validate.check_clip("pg_rho_clip", pg_rho_clip)
    rho = _ratio(lr)
    adv = _state_value_trace(r, v, nv, term, trunc, _clip(rho, rho_clip), _clip(rho, c_clip),
                             gamma, lam)
    value_targets = v + adv
    kappa, beta = _masks(term, trunc)
    bootstrap = torch.where(beta, nv, 0.0)  # beta_t V(s'_t); kappa_t implies beta_t
    v_next = _shift(value_targets, 1)
    q = r + gamma * torch.where(kappa, lam * v_next + (1 - lam) * bootstrap, bootstrap)
    pg = _clip(rho, pg_rho_clip) * (q - v)
    adv, value_targets, pg = _finite((adv, value_targets, pg), log_rhos=lr)
    return VTraceOutput(adv.reshape(shape), value_targets.reshape(shape), pg.reshape(shape))


def vtrace(rewards: torch.Tensor | npt.ArrayLike, values: torch.Tensor | npt.ArrayLike,
           next_values: torch.Tensor | npt.ArrayLike, terminated: torch.Tensor | npt.ArrayLike,
           truncated: torch.Tensor | npt.ArrayLike, log_rhos: torch.Tensor | npt.ArrayLike, *,
           gamma: torch.Tensor | npt.ArrayLike, lam: torch.Tensor | npt.ArrayLike = 1.0,
           rho_clip: float = 1.0, c_clip: float = 1.0, pg_rho_clip: float = 1.0) -> VTraceOutput:
    """V-trace (Espeholt et al. 2018) with lambda: ``delta_t = min(rho_clip, rho_t) (r_t +
    gamma beta_t V(s'_t) - V(s_t))``, ``A_t = delta_t + gamma lam min(c_clip, rho_t) kappa_t
    A_{t+1}``, ``v_t = V + A``, ``pg_t = min(pg_rho_clip, rho_t) (q_t - V(s_t))`` with
    ``q_t = r_t + gamma beta_t [kappa_t (lam v_{t+1} + (1-lam) V(s'_t)) + (1-kappa_t) V(s'_t)]``.
    Returns ``VTraceOutput(advantages, value_targets, pg_advantages)`` (input dtype/device)."""
    return _vtrace(rewards, values, next_values, terminated, truncated, log_rhos, gamma, lam,
                   rho_clip, c_clip, pg_rho_clip)


def puff_advantage(rewards: torch.Tensor | npt.ArrayLike, values: torch.Tensor | npt.ArrayLike,
                   next_values: torch.Tensor | npt.ArrayLike,
                   terminated: torch.Tensor | npt.ArrayLike,
                   truncated: torch.Tensor | npt.ArrayLike, log_rhos: torch.Tensor | npt.ArrayLike,
                   *, gamma: torch.Tensor | npt.ArrayLike, lam: torch.Tensor | npt.ArrayLike = 1.0,
                   rho_clip: float = 1.0, c_clip: float = 1.0) -> torch.Tensor:
    """PufferLib's puff advantage: V-trace's ``A_t = v_t - V(s_t)`` (see ``vtrace``)."""
    return _vtrace(rewards, values, next_values, terminated, truncated, log_rhos, gamma, lam,
                   rho_clip, c_clip, 1.0).advantages


def per_decision_is(rewards: torch.Tensor | npt.ArrayLike, values: torch.Tensor | npt.ArrayLike,
                    next_values: torch.Tensor | npt.ArrayLike,
                    terminated: torch.Tensor | npt.ArrayLike,
                    truncated: torch.Tensor | npt.ArrayLike, log_rhos: torch.Tensor | npt.ArrayLike,
                    *, gamma: torch.Tensor | npt.ArrayLike,
                    lam: torch.Tensor | npt.ArrayLike) -> PDISOutput:
    """Per-decision IS with control variates (Precup et al. 2000): the state-value trace with
    ``rho_hat_t = c_t = rho_t``. Returns ``PDISOutput(advantages, value_targets)``."""
    shape, r, v, nv, term, trunc, lr, gamma, lam = _state_arrays(
        rewards, values, next_values, terminated, truncated, log_rhos, gamma, lam)
    rho = _ratio(lr)
    adv = _state_value_trace(r, v, nv, term, trunc, rho, rho, gamma, lam)
    adv, targets = _finite((adv, v + adv), log_rhos=lr)
    return PDISOutput(adv.reshape(shape), targets.reshape(shape))


# ---------------------------------------------------------------------------------------------
# n-step returns


def nstep_returns(rewards: torch.Tensor | npt.ArrayLike, next_values: torch.Tensor | npt.ArrayLike,
                  terminated: torch.Tensor | npt.ArrayLike, truncated: torch.Tensor | npt.ArrayLike,
                  *, gamma: torch.Tensor | npt.ArrayLike, n: int) -> torch.Tensor:
    """``G_t = sum_{k<m} D_{t,k} r_{t+k} + D_{t,m} beta_{t+m-1} V(s'_{t+m-1})``,
    ``D_{t,k} = prod_{j<k} gamma_{t+j}``, ``m = min(n, T-t, 1 + steps to the first done at or
    after t)``."""
    xs = _tensors(rewards=rewards, next_values=next_values, terminated=terminated,
                  truncated=truncated)
    g, n = _validate.nstep_inputs(*xs, gamma=gamma, n=n)
    dtype = _float_dtype(*xs[:2])
    r, nv = _floats(dtype, *xs[:2])
    term, trunc = _bools(*xs[2:])
    gamma = _per_step(gamma, g, dtype, xs[0])
    kappa, beta = _masks(term, trunc)
    bootstrap = torch.where(beta, nv, 0.0)
    total = torch.zeros_like(r)
    discount = torch.ones_like(r)  # D_{t,k}, multiplied up step by step
    is_open = torch.ones_like(kappa)  # the window from t still covers step t+k
    for k in range(min(n, r.shape[0])):
        total = total + torch.where(is_open, discount * _shift(r, k), 0.0)
        discount = discount * _shift(gamma, k)
        closes = is_open & (~_shift(kappa, k) | (k == n - 1))
        total = total + torch.where(closes, discount * _shift(bootstrap, k), 0.0)
        is_open = is_open & ~closes
    (total,) = _finite((total,))
    return total.reshape(xs[0].shape)


# ---------------------------------------------------------------------------------------------
# action-value estimators


def _q_trace(rewards, q_taken, next_expected_q, terminated, truncated, gamma, lam,
             coefficient_name=None, coefficient_input=None, coefficient=None):
    named = dict(rewards=rewards, q_taken=q_taken, next_expected_q=next_expected_q,
                 terminated=terminated, truncated=truncated)
    if coefficient_name is not None:
        named[coefficient_name] = coefficient_input
    xs = _tensors(**named)
    extra = {} if coefficient_name is None else {coefficient_name: xs[5]}
    g, l = _validate.action_inputs(*xs[:5], gamma=gamma, lam=lam, **extra)
    dtype = _float_dtype(*xs[:3], *extra.values())
    r, q, nq = _floats(dtype, *xs[:3])
    term, trunc = _bools(*xs[3:5])
    gamma, lam = _per_step(gamma, g, dtype, xs[0]), _per_step(lam, l, dtype, xs[0])
    if coefficient_name is None:
        traces = torch.ones_like(r)
    else:
        traces = coefficient(_floats(dtype, xs[5])[0])
    targets = _action_value_trace(r, q, nq, term, trunc, traces, gamma, lam)
    log_rhos = _floats(dtype, xs[5])[0] if coefficient_name == "log_rhos" else None
    (targets,) = _finite((targets,), log_rhos=log_rhos)
    return targets.reshape(xs[0].shape)


def q_trace(rewards: torch.Tensor | npt.ArrayLike, q_taken: torch.Tensor | npt.ArrayLike,
            next_expected_q: torch.Tensor | npt.ArrayLike, terminated: torch.Tensor | npt.ArrayLike,
            truncated: torch.Tensor | npt.ArrayLike, traces: torch.Tensor | npt.ArrayLike, *,
            gamma: torch.Tensor | npt.ArrayLike, lam: torch.Tensor | npt.ArrayLike) -> torch.Tensor:
    """``G_t = r_t + gamma beta_t next_expected_q_t + gamma lam kappa_t c_{t+1} (G_{t+1} -
    Q(s_{t+1}, a_{t+1}))`` with ``c = traces`` (Munos et al. 2016)."""
    return _q_trace(rewards, q_taken, next_expected_q, terminated, truncated, gamma, lam,
                    "traces", traces, lambda c: c)


def retrace(rewards: torch.Tensor | npt.ArrayLike, q_taken: torch.Tensor | npt.ArrayLike,
            next_expected_q: torch.Tensor | npt.ArrayLike, terminated: torch.Tensor | npt.ArrayLike,
            truncated: torch.Tensor | npt.ArrayLike, log_rhos: torch.Tensor | npt.ArrayLike, *,
            gamma: torch.Tensor | npt.ArrayLike, lam: torch.Tensor | npt.ArrayLike) -> torch.Tensor:
    """Retrace(lambda) (Munos et al. 2016): ``q_trace`` with ``c_t = min(1, rho_t)``."""
    return _q_trace(rewards, q_taken, next_expected_q, terminated, truncated, gamma, lam,
                    "log_rhos", log_rhos, lambda lr: _clip(_ratio(lr), 1.0))


def tree_backup(rewards: torch.Tensor | npt.ArrayLike, q_taken: torch.Tensor | npt.ArrayLike,
                next_expected_q: torch.Tensor | npt.ArrayLike,
                terminated: torch.Tensor | npt.ArrayLike, truncated: torch.Tensor | npt.ArrayLike,
                target_probs_taken: torch.Tensor | npt.ArrayLike, *,
                gamma: torch.Tensor | npt.ArrayLike,
                lam: torch.Tensor | npt.ArrayLike) -> torch.Tensor:
    """Tree-backup(lambda) (Precup et al. 2000): ``q_trace`` with ``c_t = pi(a_t|s_t)``."""
    return _q_trace(rewards, q_taken, next_expected_q, terminated, truncated, gamma, lam,
                    "target_probs_taken", target_probs_taken, lambda p: p)


def q_lambda(rewards: torch.Tensor | npt.ArrayLike, q_taken: torch.Tensor | npt.ArrayLike,
             next_expected_q: torch.Tensor | npt.ArrayLike,
             terminated: torch.Tensor | npt.ArrayLike, truncated: torch.Tensor | npt.ArrayLike, *,
             gamma: torch.Tensor | npt.ArrayLike,
             lam: torch.Tensor | npt.ArrayLike) -> torch.Tensor:
    """Q^pi(lambda) (Harutyunyan et al. 2016): ``q_trace`` with ``c_t = 1``."""
    return _q_trace(rewards, q_taken, next_expected_q, terminated, truncated, gamma, lam)


def importance_sampling_q(rewards: torch.Tensor | npt.ArrayLike,
                          q_taken: torch.Tensor | npt.ArrayLike,
                          next_expected_q: torch.Tensor | npt.ArrayLike,
                          terminated: torch.Tensor | npt.ArrayLike,
                          truncated: torch.Tensor | npt.ArrayLike,
                          log_rhos: torch.Tensor | npt.ArrayLike, *,
                          gamma: torch.Tensor | npt.ArrayLike,
                          lam: torch.Tensor | npt.ArrayLike) -> torch.Tensor:
    """Per-decision importance sampling for Q: ``q_trace`` with ``c_t = rho_t``."""
    return _q_trace(rewards, q_taken, next_expected_q, terminated, truncated, gamma, lam,
                    "log_rhos", log_rhos, _ratio)


# ---------------------------------------------------------------------------------------------
# P3O


def _p3o_weights(reward_std, batch_reward_std, normalize):
    """As ``estimators.numpy._p3o_weights``: normalised over all H offsets; all-zero rows -> 0."""
    weights = torch.clamp(reward_std**-2.0 - batch_reward_std**-2.0, min=0.0)
    if normalize == "max":
        scale = weights.amax(dim=-1, keepdim=True)
    elif normalize == "sum":
        scale = weights.sum(dim=-1, keepdim=True)
    else:
        scale = torch.ones_like(weights[..., :1])
    return weights / torch.where(scale > 0, scale, 1.0)


def p3o_advantage(rewards: torch.Tensor | npt.ArrayLike, reward_mean: torch.Tensor | npt.ArrayLike,
                  reward_std: torch.Tensor | npt.ArrayLike,
                  terminated: torch.Tensor | npt.ArrayLike, truncated: torch.Tensor | npt.ArrayLike,
                  *, batch_reward_std: float, normalize: str = "max") -> torch.Tensor:
    """P3O variance-weighted advantage: ``A_t = sum_{k<m} w_{t,k} (r_{t+k} - mu_{t,k})``,
    ``w_{t,k} = max(0, sigma_{t,k}^-2 - batch_reward_std^-2)`` normalised per t, ``m = min(H,
    T-t, 1 + steps to the first done at or after t)``. Predictions ``[T,(B,)H]``."""
    xs = _tensors(rewards=rewards, reward_mean=reward_mean, reward_std=reward_std,
                  terminated=terminated, truncated=truncated)
    batch_reward_std, normalize = _validate.p3o_inputs(
        *xs, batch_reward_std=batch_reward_std, normalize=normalize)
    dtype = _float_dtype(*xs[:3])
    (r,) = _floats(dtype, xs[0])
    mean, std = (x.to(dtype).reshape(r.shape + x.shape[-1:]) for x in xs[1:3])
    term, trunc = _bools(*xs[3:])
    weights = _p3o_weights(std, batch_reward_std, normalize)
    kappa, _ = _masks(term, trunc)
    total = torch.zeros_like(r)
    is_open = torch.ones_like(kappa)  # the window from t still covers step t+k
    for k in range(min(mean.shape[-1], r.shape[0])):
        term_k = weights[..., k] * (_shift(r, k) - mean[..., k])
        total = total + torch.where(is_open, term_k, 0.0)
        is_open = is_open & _shift(kappa, k)
    (total,) = _finite((total,), culprit="reward_std")
    return total.reshape(xs[0].shape)
