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
import numpy.typing as npt

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


def sa_transition(mdp: TabularMDP, policy: npt.ArrayLike,
                  c: npt.ArrayLike | None = None) -> np.ndarray:
    """``[(s, a), (s', a')] = P_continue(s'|s, a) * policy(a'|s') * c(s', a')``, shape
    ``[S*A, S*A]`` (row-major ``s * A + a``). With ``c = None`` this is ``P^pi``; with a trace
    array and the behaviour policy it is docs/DESIGN.md's ``P^{c mu}``."""
    _check_mdp(mdp)
    pol = _pol(mdp, policy, "policy")
    w = pol if c is None else pol * _c(mdp, c)
    S, A = mdp.shape
    return (mdp.P_continue[:, :, :, None] * w[None, None, :, :]).reshape(S * A, S * A)


def state_transition(mdp: TabularMDP, policy: npt.ArrayLike,
                     x: npt.ArrayLike | None = None) -> np.ndarray:
    """``P_x(s, s') = sum_a policy(a|s) x(s, a) P_continue(s'|s, a)``, shape ``[S, S]``
    (``x = None``: ``P_pi``)."""
    _check_mdp(mdp)
    pol = _pol(mdp, policy, "policy")
    w = pol if x is None else pol * as_float_array(x, "x", shape=mdp.shape)
    return np.einsum("sa,sat->st", w, mdp.P_continue)


# ---- values ----------------------------------------------------------------------------------


def v_pi(mdp: TabularMDP, policy: npt.ArrayLike) -> np.ndarray:
    """``V^pi = (I - gamma P_pi)^{-1} r_pi`` (``[S]``; 0 at terminal states)."""
    _check_mdp(mdp)
    pol = _pol(mdp, policy, "policy")
    Ppi = state_transition(mdp, pol)
    r = (pol * mdp.R).sum(axis=1)
    return _solve(np.eye(mdp.num_states) - mdp.gamma * Ppi, r, "v_pi")


def q_pi(mdp: TabularMDP, policy: npt.ArrayLike) -> np.ndarray:
    """``Q^pi(s, a) = R(s, a) + gamma sum_s' P_continue(s'|s, a) V^pi(s')`` (``[S, A]``); equal
    to ``(I - gamma P^pi)^{-1} R`` over state-action pairs."""
    v = v_pi(mdp, policy)
    return mdp.R + mdp.gamma * mdp.P_continue @ v


def a_pi(mdp: TabularMDP, policy: npt.ArrayLike) -> np.ndarray:
    """Advantage ``A^pi(s, a) = Q^pi(s, a) - V^pi(s)`` (``[S, A]``)."""
    _check_mdp(mdp)
    pol = _pol(mdp, policy, "policy")
    q = q_pi(mdp, pol)
    return q - (pol * q).sum(axis=1, keepdims=True)


def bellman_q(mdp: TabularMDP, policy: npt.ArrayLike, q: npt.ArrayLike) -> np.ndarray:
    """``(T^pi Q)(s, a) = R(s, a) + gamma sum_s' P_continue(s'|s, a) sum_a' pi(a'|s') Q(s', a')``.
    """
    _check_mdp(mdp)
    pol = _pol(mdp, policy, "policy")
    q = _q(mdp, q)
    return mdp.R + mdp.gamma * mdp.P_continue @ (pol * q).sum(axis=1)


def bellman_v(mdp: TabularMDP, policy: npt.ArrayLike, v: npt.ArrayLike) -> np.ndarray:
    """``(T^pi V)(s) = sum_a pi(a|s) (R(s, a) + gamma sum_s' P_continue(s'|s, a) V(s'))``."""
    _check_mdp(mdp)
    pol = _pol(mdp, policy, "policy")
    v = _v(mdp, v)
    return (pol * (mdp.R + mdp.gamma * mdp.P_continue @ v)).sum(axis=1)


def state_distribution(mdp: TabularMDP, policy: npt.ArrayLike, *,
                       discount: float | None = None) -> np.ndarray:
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


def lambda_operator(mdp: TabularMDP, policy: npt.ArrayLike, v: npt.ArrayLike,
                    lam: float) -> np.ndarray:
    """``T^lam V = V + (I - gamma lam P_pi)^{-1} (T^pi V - V)`` (``[S]``)."""
    _check_mdp(mdp)
    pol = _pol(mdp, policy, "policy")
    v = _v(mdp, v)
    lam = check_lam(lam)
    K = mdp.gamma * lam * state_transition(mdp, pol)
    _check_series(K, "lam")
    return v + _solve(np.eye(mdp.num_states) - K, bellman_v(mdp, pol, v) - v, "lambda_operator")


def lambda_modulus(gamma: float, lam: float) -> float:
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


def retrace_traces(target: npt.ArrayLike, behaviour: npt.ArrayLike, lam: float = 1.0) -> np.ndarray:
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


def tree_backup_traces(target: npt.ArrayLike, lam: float = 1.0) -> np.ndarray:
    """Tree-backup(lam): ``c = lam * pi``."""
    pi = as_float_array(target, "target", ndim=2)
    check_policy(pi, "target", *pi.shape)
    return check_lam(lam) * pi


def q_lambda_traces(target: npt.ArrayLike, lam: float = 1.0) -> np.ndarray:
    """Q^pi(lam) (Harutyunyan et al. 2016): ``c = lam`` everywhere (``target`` gives the shape)."""
    pi = as_float_array(target, "target", ndim=2)
    check_policy(pi, "target", *pi.shape)
    return np.full(pi.shape, check_lam(lam))


def is_traces(target: npt.ArrayLike, behaviour: npt.ArrayLike, lam: float = 1.0) -> np.ndarray:
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


def retrace_operator(mdp: TabularMDP, target: npt.ArrayLike, behaviour: npt.ArrayLike,
                     q: npt.ArrayLike, c: npt.ArrayLike, *, n: int | None = None) -> np.ndarray:
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


def retrace_linear_part(mdp: TabularMDP, target: npt.ArrayLike, behaviour: npt.ArrayLike,
                        c: npt.ArrayLike, *, n: int | None = None) -> np.ndarray:
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


def retrace_modulus(mdp: TabularMDP, target: npt.ArrayLike, behaviour: npt.ArrayLike,
                    c: npt.ArrayLike, *, n: int | None = None) -> np.ndarray:
    """Exact per-(s, a) sup-norm modulus: the absolute row sums of :func:`retrace_linear_part`,
    so ``|R Q1 - R Q2|(s, a) <= modulus(s, a) ||Q1 - Q2||_inf``. Without terminal states and
    with ``0 <= c <= pi / mu`` it equals docs/DESIGN.md's ``eta`` (:func:`retrace_eta`); terminal
    states only lower it. ``[S, A]``."""
    B = retrace_linear_part(mdp, target, behaviour, c, n=n)
    return np.abs(B).sum(axis=1).reshape(mdp.shape)


def retrace_eta(mdp: TabularMDP, behaviour: npt.ArrayLike, c: npt.ArrayLike) -> np.ndarray:
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


def _clip_level(x, name: str, *, low_open: bool) -> float:
    """A clip level: a real number > 0 (``low_open``) or >= 0; ``inf`` is allowed and means
    no clipping (``min(inf, rho) = rho``). NaN and ``-inf`` are refused."""
    if isinstance(x, float | np.floating) and np.isposinf(x):
        return float("inf")
    return check_scalar(x, name, low=0.0, low_open=low_open)


def _rho(pi: np.ndarray, mu: np.ndarray) -> np.ndarray:
    check_covers(pi, mu, "behaviour")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mu > 0, pi / mu, 0.0)


def vtrace_policy(target: npt.ArrayLike, behaviour: npt.ArrayLike, rho_clip: float) -> np.ndarray:
    """``pi_rhobar(a|s) ∝ min(rho_clip mu(a|s), pi(a|s))``: the policy whose value V-trace
    converges to (``pi`` itself once ``rho_clip >= max pi / mu``; ``rho_clip = inf``: ``pi``
    restricted to the actions ``mu`` takes, renormalised)."""
    pi = as_float_array(target, "target", ndim=2)
    mu = as_float_array(behaviour, "behaviour", shape=pi.shape)
    check_policy(pi, "target", *pi.shape)
    check_policy(mu, "behaviour", *pi.shape)
    rc = _clip_level(rho_clip, "rho_clip", low_open=True)
    w = np.where(mu > 0, pi, 0.0) if np.isinf(rc) else np.minimum(rc * mu, pi)
    z = w.sum(axis=1, keepdims=True)
    if np.any(z <= 0):
        s = int(np.flatnonzero(z[:, 0] <= 0)[0])
        raise ValueError(f"behaviour: shares no action with target in state {s}")
    return w / z


def vtrace_fixed_point(mdp: TabularMDP, target: npt.ArrayLike, behaviour: npt.ArrayLike,
                       rho_clip: float) -> np.ndarray:
    """``V^{pi_rhobar}``: the fixed point of the V-trace operator for every ``c_clip`` and
    ``lam``."""
    pi, mu = _pair(mdp, target, behaviour)
    return v_pi(mdp, vtrace_policy(pi, mu, rho_clip))


def _vtrace_parts(mdp, target, behaviour, rho_clip, c_clip, lam):
    pi, mu = _pair(mdp, target, behaviour)
    rc = _clip_level(rho_clip, "rho_clip", low_open=True)
    cc = _clip_level(c_clip, "c_clip", low_open=False)
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


def vtrace_operator(mdp: TabularMDP, target: npt.ArrayLike, behaviour: npt.ArrayLike,
                    v: npt.ArrayLike, *, rho_clip: float = 1.0, c_clip: float = 1.0,
                    lam: float = 1.0, n: int | None = None) -> np.ndarray:
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


def vtrace_linear_part(mdp: TabularMDP, target: npt.ArrayLike, behaviour: npt.ArrayLike, *,
                       rho_clip: float = 1.0, c_clip: float = 1.0, lam: float = 1.0,
                       n: int | None = None) -> np.ndarray:
    """``L = I + (I - gamma P_c)^{-1} (gamma P_rho - D_rho)`` (``[S, S]``, terminal rows 0):
    ``V V1 - V V2 = L (V1 - V2)``. With ``n``, the linear part of the n-step truncation
    (:func:`vtrace_operator` with ``n``): ``L_n = I + sum_{t<n} (gamma P_c)^t (gamma P_rho -
    D_rho)``; ``n = 1`` is the one-step operator ``I + gamma P_rho - D_rho`` and ``L_n`` tends
    to ``L`` as ``n`` grows (when the series converges). Clip levels may be ``inf`` (no
    clipping). As :func:`retrace_linear_part` for the Q-traces."""
    _check_mdp(mdp)
    Pc, Prho, _, d_rho = _vtrace_parts(mdp, target, behaviour, rho_clip, c_clip, lam)
    S = mdp.num_states
    if n is None:
        _check_series(Pc, "c_clip")
        L = np.eye(S) + _solve(np.eye(S) - Pc, Prho - np.diag(d_rho), "vtrace_linear_part")
    else:
        L = np.eye(S) + _partial_series(Pc, Prho - np.diag(d_rho), n)
    L[mdp.terminal] = 0.0
    return L


def vtrace_modulus(mdp: TabularMDP, target: npt.ArrayLike, behaviour: npt.ArrayLike, *,
                   rho_clip: float = 1.0, c_clip: float = 1.0, lam: float = 1.0,
                   n: int | None = None) -> np.ndarray:
    """Exact per-state sup-norm modulus of the V-trace operator (with ``n``: of its n-step
    truncation): absolute row sums of :func:`vtrace_linear_part` (``[S]``; 0 at terminal
    states). Its max is the contraction modulus; when ``c_clip <= rho_clip`` (IMPALA's
    assumption) it is at most :func:`vtrace_modulus_bound`. With ``c_clip > rho_clip`` it can
    exceed 1: the operator then need not contract in sup norm (iterating it may still
    converge, to the same fixed point, when the spectral radius of the linear part is below
    1)."""
    L = vtrace_linear_part(mdp, target, behaviour, rho_clip=rho_clip, c_clip=c_clip, lam=lam,
                           n=n)
    return np.abs(L).sum(axis=1)


def vtrace_modulus_bound(mdp: TabularMDP, target: npt.ArrayLike, behaviour: npt.ArrayLike, *,
                         rho_clip: float = 1.0) -> float:
    """IMPALA's bound ``1 - (1 - gamma) min_s d_rho(s)``, ``d_rho(s) = sum_a min(rho_clip mu,
    pi)``, the min over non-terminal states."""
    pi, mu = _pair(mdp, target, behaviour)
    rc = check_scalar(rho_clip, "rho_clip", low=0.0, low_open=True)
    d_rho = (mu * np.minimum(rc, _rho(pi, mu))).sum(axis=1)
    return float(1.0 - (1.0 - mdp.gamma) * d_rho[~mdp.terminal].min())


# ---- iteration -------------------------------------------------------------------------------


def fixed_point_iteration(op: Callable[[np.ndarray], np.ndarray], x0: npt.ArrayLike, *,
                          tol: float = 1e-10, max_iter: int = 100_000) -> np.ndarray:
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


# ---- theorems T15-T22 (proofs/T15_*.md ... proofs/T22_*.md) -----------------------------------

__all__ += [
    "gae_bias",
    "gae_variance_on_policy",
    "vtrace_truncation_mass",
    "vtrace_bias_bound",
    "vtrace_pg_fixed_point",
    "spectral_radius",
    "q_lambda_threshold",
    "optimal_q",
]


def gae_bias(mdp: TabularMDP, policy: npt.ArrayLike, value_error: npt.ArrayLike, lam: float, *,
             horizon: int | None = None) -> np.ndarray:
    """On-policy bias of GAE with the critic ``V = V^pi + e`` (proofs/T15): ``[S, A]`` with
    ``E[A_0 | s_0 = s, a_0 = a] - A^pi(s, a)`` for a segment of ``horizon`` steps (None: infinite):

        b(s, a) = -e(s) + gamma sum_{k=0}^{h-2} (1 - lam) (gamma lam)^k [P_c P_pi^k e](s, a)
                        + gamma (gamma lam)^{h-1} [P_c P_pi^{h-1} e](s, a)
        b(s, a) = -e(s) + gamma (1 - lam) [P_c (I - gamma lam P_pi)^{-1} e](s, a)   (h = inf)

    with ``P_c = mdp.P_continue`` ([S, A, S]) and ``P_pi`` = :func:`state_transition`. The
    ``-e(s)`` part does not depend on the action; the propagated part does, except e.g. at
    ``lam = 1`` with an infinite horizon (where it vanishes)."""
    _check_mdp(mdp)
    pol = _pol(mdp, policy, "policy")
    e = _v(mdp, value_error, "value_error")
    lam = check_lam(lam)
    g = mdp.gamma
    Ppi = state_transition(mdp, pol)
    if horizon is None:
        K = g * lam * Ppi
        _check_series(K, "lam")
        acc = (1.0 - lam) * _solve(np.eye(mdp.num_states) - K, e, "gae_bias")
    else:
        h = check_int(horizon, "horizon", low=1)
        acc = np.zeros_like(e)
        term = e  # (gamma lam)^k P_pi^k e
        for _ in range(h - 1):
            acc += (1.0 - lam) * term
            term = g * lam * (Ppi @ term)
        acc += term
    return g * (mdp.P_continue @ acc) - e[:, None]


def gae_variance_on_policy(mdp: TabularMDP, policy: npt.ArrayLike, lam: float,
                           horizon: int) -> np.ndarray:
    """Exact variance of on-policy GAE with the exact critic ``V = V^pi`` given ``(s_0, a_0)``
    (proofs/T16), ``[S, A]``: the TD errors are martingale differences, so

        Var[A_0 | s, a] = m0(s, a) + sum_{l=1}^{h-1} (gamma lam)^{2l} [P_c P_pi^{l-1} m](s, a)

    with ``m0(s, a) = E[(delta_0 - A^pi(s, a))^2 | s, a]`` and ``m(s) = E_pi[delta^2 | s]``
    (reward noise included). Non-decreasing in ``lam``; with ``lam = 1`` and ``horizon = n``
    it is the variance of the n-step return."""
    _check_mdp(mdp)
    pol = _pol(mdp, policy, "policy")
    lam = check_lam(lam)
    h = check_int(horizon, "horizon", low=1)
    g = mdp.gamma
    v = v_pi(mdp, pol)
    q = q_pi(mdp, pol)
    boot = g * np.where(mdp.terminal, 0.0, v)  # gamma beta(s') V(s')
    target = mdp.R_sas + boot[None, None, :]  # r + gamma beta V(s') per transition
    noise = mdp.reward_std**2
    m0 = np.einsum("sat,sat->sa", mdp.P, (target - q[:, :, None]) ** 2) + noise
    m_sa = np.einsum("sat,sat->sa", mdp.P, (target - v[:, None, None]) ** 2) + noise
    m = (pol * m_sa).sum(axis=1)
    m[mdp.terminal] = 0.0  # never reached as a live step
    Ppi = state_transition(mdp, pol)
    out = m0.copy()
    w = 1.0
    x = m  # P_pi^{l-1} m
    for _ in range(1, h):
        w *= (g * lam) ** 2
        out += w * (mdp.P_continue @ x)
        x = Ppi @ x
    return out


def vtrace_truncation_mass(target: npt.ArrayLike, behaviour: npt.ArrayLike,
                           rho_clip: float) -> np.ndarray:
    """``1 - Z(s) = E_mu[(rho - rho_clip)^+ | s] = sum_a (pi - rho_clip mu)^+`` (``[S]``): the
    probability mass the truncation ``min(rho_clip, rho)`` removes (proofs/T20), an upper bound
    on ``TV(pi_rhobar(.|s), pi(.|s))`` (proofs/T17). 0 once ``rho_clip >= max pi / mu``."""
    pi = as_float_array(target, "target", ndim=2)
    mu = as_float_array(behaviour, "behaviour", shape=pi.shape)
    check_policy(pi, "target", *pi.shape)
    check_policy(mu, "behaviour", *pi.shape)
    rc = check_scalar(rho_clip, "rho_clip", low=0.0, low_open=True)
    return np.maximum(pi - rc * mu, 0.0).sum(axis=1)


def vtrace_bias_bound(mdp: TabularMDP, target: npt.ArrayLike, behaviour: npt.ArrayLike,
                      rho_clip: float) -> np.ndarray:
    """Per-state bound on V-trace's fixed-point bias (proofs/T17), ``[S]``:

        |V^{pi_rhobar} - V^pi| <= (I - gamma P_{pi_rhobar})^{-1} [(1 - Z) * span_a Q^pi(s, .)]
                               <= max_s (1 - Z(s)) span_a Q^pi(s, .) / (1 - gamma)

    with ``1 - Z`` = :func:`vtrace_truncation_mass` (simulation lemma + ``TV <= 1 - Z``)."""
    pi, mu = _pair(mdp, target, behaviour)
    clipped = vtrace_policy(pi, mu, rho_clip)
    q = q_pi(mdp, pi)
    span = q.max(axis=1) - q.min(axis=1)
    gap = vtrace_truncation_mass(pi, mu, rho_clip) * span
    gap[mdp.terminal] = 0.0
    M = np.eye(mdp.num_states) - mdp.gamma * state_transition(mdp, clipped)
    return _solve(M, gap, "vtrace_bias_bound")


def vtrace_pg_fixed_point(mdp: TabularMDP, target: npt.ArrayLike, behaviour: npt.ArrayLike, *,
                          rho_clip: float = 1.0, pg_rho_clip: float | None = None) -> np.ndarray:
    """``E[pg_0 | s_0 = s, a_0 = a]`` of V-trace's policy-gradient advantage at its value fixed
    point ``V = V^{pi_rhobar}`` (proofs/T21), ``[S, A]``, for every segment length, ``lam`` and
    ``c_clip``: ``min(pg_rho_clip, pi/mu) (Q^{pi_rhobar} - V^{pi_rhobar})``."""
    pi, mu = _pair(mdp, target, behaviour)
    pg = rho_clip if pg_rho_clip is None else pg_rho_clip
    pg = check_scalar(pg, "pg_rho_clip", low=0.0)
    clipped = vtrace_policy(pi, mu, rho_clip)
    q = q_pi(mdp, clipped)
    adv = q - (clipped * q).sum(axis=1, keepdims=True)
    return np.minimum(pg, _rho(pi, mu)) * adv


def spectral_radius(M: npt.ArrayLike) -> float:
    """``max |eigenvalue|`` of a square matrix (e.g. :func:`retrace_linear_part`): iterating an
    affine map with this linear part converges from every start iff it is below 1."""
    M = as_float_array(M, "M", ndim=2)
    if M.shape[0] != M.shape[1]:
        raise ValueError(f"M: expected a square matrix, got shape {M.shape}")
    return float(np.abs(np.linalg.eigvals(M)).max())


def q_lambda_threshold(mdp: TabularMDP, target: npt.ArrayLike, behaviour: npt.ArrayLike, *,
                       grid: int = 200, tol: float = 1e-13) -> float:
    """The smallest ``lam`` in ``[0, 1]`` at which Q^pi(lam)'s linear part
    ``B(lam) = (I - gamma lam P^mu)^{-1} gamma (P^pi - lam P^mu)`` reaches spectral radius 1
    (proofs/T18), or ``inf`` if it stays below 1 on ``[0, 1]``. Found as the first of ``grid``
    equal steps with radius >= 1, refined by bisection to ``tol``; a crossing and recrossing
    within one grid step would be missed. Harutyunyan et al.'s ``(1 - gamma) / (gamma eps)``
    is a lower bound on it."""
    pi, mu = _pair(mdp, target, behaviour)
    grid = check_int(grid, "grid", low=1)
    tol = check_scalar(tol, "tol", low=0.0, low_open=True)

    def unstable(lam: float) -> bool:
        B = retrace_linear_part(mdp, pi, mu, q_lambda_traces(pi, lam))
        return spectral_radius(B) >= 1.0

    lo = 0.0
    if unstable(lo):
        return 0.0
    for i in range(1, grid + 1):
        hi = i / grid
        if unstable(hi):
            break
        lo = hi
    else:
        return float("inf")
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if unstable(mid) else (mid, hi)
    return hi


def optimal_q(mdp: TabularMDP, *, tol: float = 1e-12, max_iter: int = 100_000) -> np.ndarray:
    """``Q*`` (``[S, A]``): value iteration ``Q <- R + gamma P_c max_a' Q`` until the greedy
    policy is stable, then that policy's exact ``Q^pi`` (one policy-iteration step repeated until
    no action improves by more than ``tol``); the result satisfies ``T Q* = Q*`` to round-off."""
    _check_mdp(mdp)
    tol = check_scalar(tol, "tol", low=0.0, low_open=True)
    max_iter = check_int(max_iter, "max_iter", low=1)
    S, A = mdp.shape
    q = np.zeros((S, A))
    for _ in range(max_iter):
        new = mdp.R + mdp.gamma * mdp.P_continue @ q.max(axis=1)
        done = np.max(np.abs(new - q)) <= 1e-6 * (1.0 + np.max(np.abs(new)))
        q = new
        if done:
            break
    for _ in range(max_iter):
        greedy = np.zeros((S, A))
        greedy[np.arange(S), q.argmax(axis=1)] = 1.0
        q_new = q_pi(mdp, greedy)
        improve = mdp.R + mdp.gamma * mdp.P_continue @ q_new.max(axis=1) - q_new
        q = q_new
        if improve.max() <= tol * (1.0 + np.abs(q).max()):
            return q
    raise RuntimeError(f"optimal_q: no convergence in {max_iter} iterations")
