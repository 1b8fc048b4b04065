"""Exact tabular quantities: values, Bellman operators, the Retrace family, V-trace, moduli.

Matrix forms follow docs/DESIGN.md §3. Terminal states have value 0 and nothing is bootstrapped
from them: every kernel here is ``mdp.P_continue = P * [s' not terminal]``, so transitions
into a terminal state contribute their reward only. Consequently every operator maps the
entries of terminal states to 0, and ``gamma = 1`` works on proper MDPs.

Shapes: policies and ``Q`` are ``[S, A]``, ``V`` is ``[S]``, trace arrays ``c`` are ``[S, A]``
and include lambda (``retrace_traces(pi, mu, lam) = lam * min(1, pi / mu)`` etc.).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._checks import as_float_array, check_covers, check_int, check_lam, check_policy, check_scalar
from .mdp import TabularMDP

__all__ = [
    "sa_transition",
    "state_transition",
    "q_pi",
    "v_pi",
    "a_pi",
    "bellman_q",
    "bellman_v",
    "state_distribution",
    "lambda_operator",
    "lambda_modulus",
    "retrace_traces",
    "tree_backup_traces",
    "q_lambda_traces",
    "is_traces",
    "retrace_operator",
    "retrace_linear_part",
    "retrace_modulus",
    "retrace_eta",
    "vtrace_policy",
    "vtrace_fixed_point",
    "vtrace_operator",
    "vtrace_linear_part",
    "vtrace_modulus",
    "vtrace_modulus_bound",
    "fixed_point_iteration",
]


# ---- validation helpers ----------------------------------------------------------------------


def _check_mdp(mdp) -> TabularMDP:
    if not isinstance(mdp, TabularMDP):
        raise TypeError(f"mdp: expected a TabularMDP, got {type(mdp).__name__}")
    return mdp


def _pol(mdp: TabularMDP, policy, name: str) -> np.ndarray:
    return check_policy(policy, name, mdp.num_states, mdp.num_actions)


def _q(mdp: TabularMDP, q, name: str = "q") -> np.ndarray:
    return as_float_array(q, name, shape=(mdp.num_states, mdp.num_actions))


def _v(mdp: TabularMDP, v, name: str = "v") -> np.ndarray:
    return as_float_array(v, name, shape=(mdp.num_states,))


def _c(mdp: TabularMDP, c, name: str = "c") -> np.ndarray:
    c = as_float_array(c, name, shape=(mdp.num_states, mdp.num_actions))
    if np.any(c < 0):
        raise ValueError(f"{name}: trace coefficients must be non-negative")
    return c


def _solve(M: np.ndarray, b: np.ndarray, what: str) -> np.ndarray:
    try:
        return np.linalg.solve(M, b)
    except np.linalg.LinAlgError as exc:  # pragma: no cover - guarded by callers
        raise ValueError(f"{what}: singular system") from exc


def _partial_series(K: np.ndarray, x: np.ndarray, n) -> np.ndarray:
    """``sum_{t<n} K^t x`` (x a vector or a matrix): the n-step truncation of the Neumann series."""
    n = check_int(n, "n", low=0)
    total = np.zeros_like(x)
    term = x
    for _ in range(n):
        total += term
        term = K @ term
    return total


def _check_series(K: np.ndarray, name: str) -> None:
    """Raise unless the Neumann series sum_t K^t converges (spectral radius < 1)."""
    if np.abs(K).sum(axis=1).max() < 1.0:
        return
    r = float(np.abs(np.linalg.eigvals(K)).max())
    if r >= 1.0 - 1e-12:
        raise ValueError(
            f"{name}: the series sum_t K^t diverges (K is the discounted, trace-weighted "
            f"kernel; its spectral radius is {r:.6g} >= 1); use smaller traces, gamma < 1, "
            "a proper MDP, or the n-step form"
        )


# ---- kernels ---------------------------------------------------------------------------------


def sa_transition(mdp: TabularMDP, policy, c=None) -> np.ndarray:
    """``[(s, a), (s', a')] = P_continue(s'|s, a) * policy(a'|s') * c(s', a')``, shape
    ``[S*A, S*A]`` (row-major ``s * A + a``). With ``c = None`` this is ``P^pi``; with a trace
    array and the behaviour policy it is docs/DESIGN.md's ``P^{c mu}``."""
    _check_mdp(mdp)
    pol = _pol(mdp, policy, "policy")
    w = pol if c is None else pol * _c(mdp, c)
    S, A = mdp.shape
    return (mdp.P_continue[:, :, :, None] * w[None, None, :, :]).reshape(S * A, S * A)


def state_transition(mdp: TabularMDP, policy, x=None) -> np.ndarray:
    """``P_x(s, s') = sum_a policy(a|s) x(s, a) P_continue(s'|s, a)``, shape ``[S, S]``
    (``x = None``: ``P_pi``)."""
    _check_mdp(mdp)
    pol = _pol(mdp, policy, "policy")
    w = pol if x is None else pol * as_float_array(x, "x", shape=mdp.shape)
    return np.einsum("sa,sat->st", w, mdp.P_continue)


# ---- values ----------------------------------------------------------------------------------


def v_pi(mdp: TabularMDP, policy) -> np.ndarray:
    """``V^pi = (I - gamma P_pi)^{-1} r_pi`` (``[S]``; 0 at terminal states)."""
    _check_mdp(mdp)
    pol = _pol(mdp, policy, "policy")
    Ppi = state_transition(mdp, pol)
    r = (pol * mdp.R).sum(axis=1)
    return _solve(np.eye(mdp.num_states) - mdp.gamma * Ppi, r, "v_pi")


def q_pi(mdp: TabularMDP, policy) -> np.ndarray:
    """``Q^pi(s, a) = R(s, a) + gamma sum_s' P_continue(s'|s, a) V^pi(s')`` (``[S, A]``); equal
    to ``(I - gamma P^pi)^{-1} R`` over state-action pairs."""
    v = v_pi(mdp, policy)
    return mdp.R + mdp.gamma * mdp.P_continue @ v


def a_pi(mdp: TabularMDP, policy) -> np.ndarray:
    """Advantage ``A^pi(s, a) = Q^pi(s, a) - V^pi(s)`` (``[S, A]``)."""
    _check_mdp(mdp)
    pol = _pol(mdp, policy, "policy")
    q = q_pi(mdp, pol)
    return q - (pol * q).sum(axis=1, keepdims=True)


def bellman_q(mdp: TabularMDP, policy, q) -> np.ndarray:
    """``(T^pi Q)(s, a) = R(s, a) + gamma sum_s' P_continue(s'|s, a) sum_a' pi(a'|s') Q(s', a')``.
    """
    _check_mdp(mdp)
    pol = _pol(mdp, policy, "policy")
    q = _q(mdp, q)
    return mdp.R + mdp.gamma * mdp.P_continue @ (pol * q).sum(axis=1)


def bellman_v(mdp: TabularMDP, policy, v) -> np.ndarray:
    """``(T^pi V)(s) = sum_a pi(a|s) (R(s, a) + gamma sum_s' P_continue(s'|s, a) V(s'))``."""
    _check_mdp(mdp)
    pol = _pol(mdp, policy, "policy")
    v = _v(mdp, v)
    return (pol * (mdp.R + mdp.gamma * mdp.P_continue @ v)).sum(axis=1)


def state_distribution(mdp: TabularMDP, policy, *, discount: float | None = None) -> np.ndarray:
    """Normalised discounted state-visitation distribution of ``policy`` from ``mdp.initial``:
    ``d ∝ initial^T (I - discount P_pi)^{-1}`` (``discount`` defaults to ``mdp.gamma``; 1 gives
    expected visit counts, which needs a proper MDP). Terminal states get 0. Use it as the
    ``weights`` of the divergences in :mod:`offpolicy.policies`."""
    _check_mdp(mdp)
    pol = _pol(mdp, policy, "policy")
    g = mdp.gamma if discount is None else check_scalar(discount, "discount", low=0.0, high=1.0)
    Ppi = state_transition(mdp, pol)
    M = np.eye(mdp.num_states) - g * Ppi
    if g == 1.0:
        _check_series(Ppi, "discount")
    d = _solve(M.T, np.asarray(mdp.initial), "state_distribution")
    d = np.clip(d, 0.0, None)
    return d / d.sum()


# ---- lambda operator -------------------------------------------------------------------------


def lambda_operator(mdp: TabularMDP, policy, v, lam: float) -> np.ndarray:
    """``T^lam V = V + (I - gamma lam P_pi)^{-1} (T^pi V - V)`` (``[S]``)."""
    _check_mdp(mdp)
    pol = _pol(mdp, policy, "policy")
    v = _v(mdp, v)
    lam = check_lam(lam)
    K = mdp.gamma * lam * state_transition(mdp, pol)
    _check_series(K, "lam")
    return v + _solve(np.eye(mdp.num_states) - K, bellman_v(mdp, pol, v) - v, "lambda_operator")


def lambda_modulus(gamma, lam: float) -> float:
    """``gamma (1 - lam) / (1 - gamma lam)``: the sup-norm modulus of ``T^lam`` (an upper bound;
    attained without terminal states). ``gamma`` may be a float or a TabularMDP."""
    if isinstance(gamma, TabularMDP):
        g = gamma.gamma
    else:
        g = check_scalar(gamma, "gamma", low=0.0, high=1.0)
    lam = check_lam(lam)
    if g * lam == 1.0:
        return 0.0
    return g * (1.0 - lam) / (1.0 - g * lam)


# ---- Retrace family --------------------------------------------------------------------------


def _pair(mdp, target, behaviour):
    _check_mdp(mdp)
    return _pol(mdp, target, "target"), _pol(mdp, behaviour, "behaviour")


def retrace_traces(target, behaviour, lam: float = 1.0) -> np.ndarray:
    """Retrace(lam): ``c = lam * min(1, pi / mu)`` (1 where ``mu = 0``; such pairs are never
    taken, so the value there does not matter)."""
    pi = as_float_array(target, "target", ndim=2)
    mu = as_float_array(behaviour, "behaviour", shape=pi.shape)
    check_policy(pi, "target", *pi.shape)
    check_policy(mu, "behaviour", *pi.shape)
    lam = check_lam(lam)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(mu > 0, pi / mu, 1.0)
    return lam * np.minimum(1.0, ratio)


def tree_backup_traces(target, lam: float = 1.0) -> np.ndarray:
    """Tree-backup(lam): ``c = lam * pi``."""
    pi = as_float_array(target, "target", ndim=2)
    check_policy(pi, "target", *pi.shape)
    return check_lam(lam) * pi


def q_lambda_traces(target, lam: float = 1.0) -> np.ndarray:
    """Q^pi(lam) (Harutyunyan et al. 2016): ``c = lam`` everywhere (``target`` gives the shape)."""
    pi = as_float_array(target, "target", ndim=2)
    check_policy(pi, "target", *pi.shape)
    return np.full(pi.shape, check_lam(lam))


def is_traces(target, behaviour, lam: float = 1.0) -> np.ndarray:
    """Per-decision importance sampling: ``c = lam * pi / mu``; needs ``mu > 0`` where
    ``pi > 0`` (0 where both vanish)."""
    pi = as_float_array(target, "target", ndim=2)
    mu = as_float_array(behaviour, "behaviour", shape=pi.shape)
    check_policy(pi, "target", *pi.shape)
    check_policy(mu, "behaviour", *pi.shape)
    check_covers(pi, mu, "behaviour")
    lam = check_lam(lam)
    with np.errstate(divide="ignore", invalid="ignore"):
        return lam * np.where(mu > 0, pi / mu, 0.0)


def retrace_operator(mdp: TabularMDP, target, behaviour, q, c, *, n: int | None = None):
    """The Retrace-family operator ``R Q = Q + (I - gamma P^{c mu})^{-1} (T^pi Q - Q)``,
    or with ``n`` its n-step truncation ``Q + sum_{t<n} (gamma P^{c mu})^t (T^pi Q - Q)``
    (the mean of the sampled Q-trace target over ``n`` steps). ``c``: a trace array ``[S, A]``
    (lambda included). Returns ``[S, A]``."""
    pi, mu = _pair(mdp, target, behaviour)
    q = _q(mdp, q)
    c = _c(mdp, c)
    S, A = mdp.shape
    K = mdp.gamma * sa_transition(mdp, mu, c)
    d = (bellman_q(mdp, pi, q) - q).ravel()
    if n is None:
        _check_series(K, "c")
        return q + _solve(np.eye(S * A) - K, d, "retrace_operator").reshape(S, A)
    return q + _partial_series(K, d, n).reshape(S, A)


def retrace_linear_part(mdp: TabularMDP, target, behaviour, c, *, n: int | None = None):
    """The matrix ``B`` (``[S*A, S*A]``) with ``R Q1 - R Q2 = B (Q1 - Q2)``:
    ``B = (I - gamma P^{c mu})^{-1} gamma (P^pi - P^{c mu})`` (n-step:
    ``I - sum_{t<n} (gamma P^{c mu})^t (I - gamma P^pi)``)."""
    pi, mu = _pair(mdp, target, behaviour)
    c = _c(mdp, c)
    S, A = mdp.shape
    I = np.eye(S * A)
    K = mdp.gamma * sa_transition(mdp, mu, c)
    Kpi = mdp.gamma * sa_transition(mdp, pi)
    if n is None:
        _check_series(K, "c")
        return _solve(I - K, Kpi - K, "retrace_linear_part")
    return I - _partial_series(K, I, n) @ (I - Kpi)


def retrace_modulus(mdp: TabularMDP, target, behaviour, c, *, n: int | None = None):
    """Exact per-(s, a) sup-norm modulus: the absolute row sums of :func:`retrace_linear_part`,
    so ``|R Q1 - R Q2|(s, a) <= modulus(s, a) ||Q1 - Q2||_inf``. Without terminal states and
    with ``0 <= c <= pi / mu`` it equals docs/DESIGN.md's ``eta`` (:func:`retrace_eta`); terminal
    states only lower it. ``[S, A]``."""
    B = retrace_linear_part(mdp, target, behaviour, c, n=n)
    return np.abs(B).sum(axis=1).reshape(mdp.shape)


def retrace_eta(mdp: TabularMDP, behaviour, c) -> np.ndarray:
    """docs/DESIGN.md's ``eta = 1 - (1 - gamma) (I - gamma P^{c mu})^{-1} 1`` (``[S, A]``), an upper
    bound on :func:`retrace_modulus` when ``0 <= c <= pi / mu``, itself ``<= gamma``."""
    _check_mdp(mdp)
    mu = _pol(mdp, behaviour, "behaviour")
    c = _c(mdp, c)
    S, A = mdp.shape
    K = mdp.gamma * sa_transition(mdp, mu, c)
    _check_series(K, "c")
    x = _solve(np.eye(S * A) - K, np.ones(S * A), "retrace_eta")
    return (1.0 - (1.0 - mdp.gamma) * x).reshape(S, A)


# ---- V-trace ---------------------------------------------------------------------------------


def _rho(pi: np.ndarray, mu: np.ndarray) -> np.ndarray:
    check_covers(pi, mu, "behaviour")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mu > 0, pi / mu, 0.0)


def vtrace_policy(target, behaviour, rho_clip: float) -> np.ndarray:
    """``pi_rhobar(a|s) ∝ min(rho_clip mu(a|s), pi(a|s))``: the policy whose value V-trace
    converges to (``pi`` itself once ``rho_clip >= max pi / mu``)."""
    pi = as_float_array(target, "target", ndim=2)
    mu = as_float_array(behaviour, "behaviour", shape=pi.shape)
    check_policy(pi, "target", *pi.shape)
    check_policy(mu, "behaviour", *pi.shape)
    rc = check_scalar(rho_clip, "rho_clip", low=0.0, low_open=True)
    w = np.minimum(rc * mu, pi)
    z = w.sum(axis=1, keepdims=True)
    if np.any(z <= 0):
        s = int(np.flatnonzero(z[:, 0] <= 0)[0])
        raise ValueError(f"behaviour: shares no action with target in state {s}")
    return w / z


def vtrace_fixed_point(mdp: TabularMDP, target, behaviour, rho_clip: float) -> np.ndarray:
    """``V^{pi_rhobar}``: the fixed point of the V-trace operator for every ``c_clip`` and
    ``lam``."""
    pi, mu = _pair(mdp, target, behaviour)
    return v_pi(mdp, vtrace_policy(pi, mu, rho_clip))


def _vtrace_parts(mdp, target, behaviour, rho_clip, c_clip, lam):
    pi, mu = _pair(mdp, target, behaviour)
    rc = check_scalar(rho_clip, "rho_clip", low=0.0, low_open=True)
    cc = check_scalar(c_clip, "c_clip", low=0.0)
    lam = check_lam(lam)
    rho = _rho(pi, mu)
    rho_hat = np.minimum(rc, rho)
    c_hat = lam * np.minimum(cc, rho)
    g = mdp.gamma
    Pc = g * state_transition(mdp, mu, c_hat)
    Prho = g * state_transition(mdp, mu, rho_hat)
    r_rho = (mu * rho_hat * mdp.R).sum(axis=1)
    d_rho = (mu * rho_hat).sum(axis=1)
    return Pc, Prho, r_rho, d_rho


def vtrace_operator(
    mdp: TabularMDP, target, behaviour, v, *, rho_clip: float = 1.0, c_clip: float = 1.0,
    lam: float = 1.0, n: int | None = None,
) -> np.ndarray:
    """``V V = V + (I - gamma P_c)^{-1} (r_rho + gamma P_rho V - d_rho V)`` with
    ``rho_hat = min(rho_clip, pi/mu)`` and trace ``c_hat = lam min(c_clip, pi/mu)``; with ``n``
    the n-step truncation ``V + sum_{t<n} (gamma P_c)^t (...)`` (the mean of the sampled
    V-trace target over ``n`` steps). Terminal entries are 0. Returns ``[S]``."""
    _check_mdp(mdp)
    v = _v(mdp, v)
    Pc, Prho, r_rho, d_rho = _vtrace_parts(mdp, target, behaviour, rho_clip, c_clip, lam)
    d = r_rho + Prho @ v - d_rho * v
    if n is None:
        _check_series(Pc, "c_clip")
        out = v + _solve(np.eye(mdp.num_states) - Pc, d, "vtrace_operator")
    else:
        out = v + _partial_series(Pc, d, n)
    return np.where(mdp.terminal, 0.0, out)


def vtrace_linear_part(
    mdp: TabularMDP, target, behaviour, *, rho_clip: float = 1.0, c_clip: float = 1.0,
    lam: float = 1.0,
) -> np.ndarray:
    """``L = I + (I - gamma P_c)^{-1} (gamma P_rho - D_rho)`` (``[S, S]``, terminal rows 0):
    ``V V1 - V V2 = L (V1 - V2)``."""
    _check_mdp(mdp)
    Pc, Prho, _, d_rho = _vtrace_parts(mdp, target, behaviour, rho_clip, c_clip, lam)
    S = mdp.num_states
    _check_series(Pc, "c_clip")
    L = np.eye(S) + _solve(np.eye(S) - Pc, Prho - np.diag(d_rho), "vtrace_linear_part")
    L[mdp.terminal] = 0.0
    return L


def vtrace_modulus(
    mdp: TabularMDP, target, behaviour, *, rho_clip: float = 1.0, c_clip: float = 1.0,
    lam: float = 1.0,
) -> np.ndarray:
    """Exact per-state sup-norm modulus of the V-trace operator: absolute row sums of
    :func:`vtrace_linear_part` (``[S]``; 0 at terminal states). Its max is the contraction
    modulus; when ``c_clip <= rho_clip`` (IMPALA's assumption) it is at most
    :func:`vtrace_modulus_bound`. With ``c_clip > rho_clip`` it can exceed 1: the operator
    then need not contract in sup norm (iterating it may still converge, to the same fixed
    point, when the spectral radius of the linear part is below 1)."""
    L = vtrace_linear_part(mdp, target, behaviour, rho_clip=rho_clip, c_clip=c_clip, lam=lam)
    return np.abs(L).sum(axis=1)


def vtrace_modulus_bound(mdp: TabularMDP, target, behaviour, *, rho_clip: float = 1.0) -> float:
    """IMPALA's bound ``1 - (1 - gamma) min_s d_rho(s)``, ``d_rho(s) = sum_a min(rho_clip mu,
    pi)``, the min over non-terminal states."""
    pi, mu = _pair(mdp, target, behaviour)
    rc = check_scalar(rho_clip, "rho_clip", low=0.0, low_open=True)
    d_rho = (mu * np.minimum(rc, _rho(pi, mu))).sum(axis=1)
    return float(1.0 - (1.0 - mdp.gamma) * d_rho[~mdp.terminal].min())


# ---- iteration -------------------------------------------------------------------------------


def fixed_point_iteration(
    op: Callable[[np.ndarray], np.ndarray], x0, *, tol: float = 1e-10, max_iter: int = 100_000,
) -> np.ndarray:
    """Iterate ``x <- op(x)`` until ``max |x_new - x| <= tol``; raises ``RuntimeError`` if it
    does not converge within ``max_iter`` steps (or blows up)."""
    x = np.asarray(x0, dtype=np.float64)
    tol = check_scalar(tol, "tol", low=0.0, low_open=True)
    max_iter = check_int(max_iter, "max_iter", low=1)
    for _ in range(max_iter):
        y = op(x)
        if not np.all(np.isfinite(y)):
            raise RuntimeError("fixed_point_iteration: iterates overflowed (divergent operator)")
        if np.max(np.abs(y - x)) <= tol:
            return y
        x = y
    raise RuntimeError(f"fixed_point_iteration: no convergence in {max_iter} iterations")
