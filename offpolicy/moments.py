"""Exact mean and variance of every estimator's first output on a sampled segment.

docs/DESIGN.md section 3: along a trajectory drawn from the behaviour policy ``mu``, every estimator
of the contract is a linear recursion

    X_t = alpha_t + b_t * X_{t+1},        alpha_t = c_r * r_t + a_0

whose coefficients ``(c_r, a_0, b)`` depend on ``(s_t, a_t, s_{t+1}, a_{t+1})``, on the remaining
length ``h`` of the segment and (for P3O only) on the step index and the start state. The
reward ``r_t`` enters linearly, so its noise contributes ``c_r**2 * Var[r_t]``. Conditional
first and second moments then follow by backward recursion over ``h`` with the transition
tensor, with no sampling:

    m(s,a)   = sum_{s',a'} P(s'|s,a) mu(a'|s') (E alpha + b m'(s',a'))
    var(s,a) = sum_{s',a'} P mu (c_r^2 Var r + b^2 var'(s',a') + (E alpha + b m' - m(s,a))^2)

(the law of total variance; it stays non-negative in floating point). A transition into a
terminal state is a termination (no bootstrap, trace cut); the segment's end (``h = 1``) cuts
the trace and bootstraps. Time-limit truncations may also fall inside the segment
(``truncation_prob``: after each step, independently, with this probability; ``time_limit``:
after step ``time_limit - 1`` at the latest, the segment starting an episode): a truncation
cuts the trace and bootstraps from ``V(s'_t)``, the final observation, exactly like the
segment's end. The cut is one more random variable of the step, independent of
``(s', a', r)``, so the recursion averages the coefficients of both outcomes (the variance
adds their spread by the same law of total variance). Whatever follows the first cut belongs
to another episode and never reaches the output at ``t = 0``.

This module never calls the estimators: it is the independent ground truth they are tested
against. An estimator contributes only its coefficient function (``_SPECS`` below); its names
are :mod:`offpolicy.registry`'s (contract names, aliases such as ``nstep``, ``puff``, ``p3o``,
and output aliases such as ``td_lambda``), and ``output`` is the quantity an output estimates
or the contract output's name (``"value"`` or ``"value_targets"``). The exact values it
starts from (``V^mu``, ``Q^pi``, V-trace's ``pi_rhobar``) are :mod:`offpolicy.exact`'s.
Calling a backend on the same names: :func:`offpolicy.registry.call_estimator`.

Public API
----------
``exact_moments(mdp, estimator, *, behaviour, target, horizon, values=None, q=None,
truncation_prob=0.0, time_limit=None, **params)``
    -> :class:`Moments`: ``mean_sa``/``var_sa`` [S,A] given (s_0, a_0); ``mean_s``/``var_s``
    [S] given s_0 with a_0 ~ behaviour.
``estimator_target(mdp, estimator, *, behaviour, target, which="fixed_point", **params)``
    -> :class:`Truth`: what the estimator's output is compared against (see its docstring).
``enumerate_segments(mdp, behaviour, horizon, ..., truncation_prob=0.0, time_limit=None)``:
    every trajectory of a segment (truncations included) with its probability, as
    :class:`offpolicy.sampler.Segments`; a brute-force cross-check of :func:`exact_moments`.

Estimators and their ``output`` choices (the first is the default):

============================  ==============================================  ===============
estimator                     outputs                                         parameters
============================  ==============================================  ===============
gae (td_lambda: value)        advantage, value                                lam
vtrace (puff_advantage)       value, advantage, pg_advantage                  lam, rho_clip,
                                                                              c_clip, pg_rho_clip
per_decision_is               value, advantage                                lam
nstep                         value                                           n
retrace, tree_backup,         target (G_0 of the Q-trace)                     lam, c_clip
q_lambda,                                                                     (retrace, IS),
importance_sampling_q                                                         next_q
p3o                           advantage                                       p3o_horizon, weights,
                                                                              means
============================  ==============================================  ===============

``gamma`` defaults to ``mdp.gamma``. ``values`` [S] is the value estimate V used by the
state-value estimators (default: exact ``V^behaviour``), ``q`` [S,A] the Q estimate of the
Q-trace estimators (default: exact ``Q^target``). ``next_q="expected"`` (default) bootstraps
from ``sum_a target(a|s') q(s',a)``, ``"max"`` from ``max_a q(s',a)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from . import exact as _exact
from . import registry as _registry
from .mdp import TabularMDP
from .sampler import Segments

__all__ = [
    "Moments",
    "Truth",
    "ESTIMATORS",
    "exact_moments",
    "estimator_target",
    "enumerate_segments",
    "mdp_arrays",
    "p3o_exact_means",
]


# ---------------------------------------------------------------------------------------------
# MDP access


@dataclasses.dataclass(frozen=True)
class MDPArrays:
    """The tabular quantities the recursion needs, in one place.

    P [S,A,S], reward mean R [S,A,S] and reward variance R_var [S,A,S] (both as a function of
    the transition), terminal [S] bool, gamma.
    """

    P: np.ndarray
    R: np.ndarray
    R_var: np.ndarray
    terminal: np.ndarray
    gamma: float

    @property
    def S(self) -> int:
        return self.P.shape[0]

    @property
    def A(self) -> int:
        return self.P.shape[1]

    @property
    def R_sa(self) -> np.ndarray:
        """Expected reward of (s, a): sum_s' P(s'|s,a) R(s,a,s')."""
        return np.einsum("ijk,ijk->ij", self.P, self.R)


def mdp_arrays(mdp: TabularMDP | MDPArrays) -> MDPArrays:
    """P, the reward per transition and its variance, terminal states and gamma of a
    :class:`~offpolicy.mdp.TabularMDP` (one attribute per quantity; an ``MDPArrays`` is
    returned as is)."""
    if isinstance(mdp, MDPArrays):
        return mdp
    if not isinstance(mdp, TabularMDP):
        raise TypeError(f"mdp: expected an offpolicy.mdp.TabularMDP, got {type(mdp).__name__}")
    S, A = mdp.shape
    var = np.broadcast_to((mdp.reward_std ** 2)[:, :, None], (S, A, S))
    return MDPArrays(mdp.P, mdp.R_sas, var, mdp.terminal, mdp.gamma)


# ---------------------------------------------------------------------------------------------
# exact policy values: offpolicy.exact's (V^pi, Q^pi, the V-trace policy pi_rhobar)


def _tabular(mdp, gamma: float) -> TabularMDP:
    """``mdp`` as the :class:`TabularMDP` :mod:`offpolicy.exact` takes, with discount ``gamma``."""
    if not isinstance(mdp, TabularMDP):
        raise TypeError(f"mdp: exact values need a TabularMDP, got {type(mdp).__name__} "
                        "(pass values= and q= explicitly)")
    return mdp if float(gamma) == mdp.gamma else mdp.replace(gamma=float(gamma))


def _q_pi(mdp, policy: np.ndarray, gamma: float) -> np.ndarray:
    """Q^pi [S,A] under discount ``gamma`` (:func:`offpolicy.exact.q_pi`)."""
    return _exact.q_pi(_tabular(mdp, gamma), policy)


def _vtrace_policy(behaviour: np.ndarray, target: np.ndarray, rho_clip: float) -> np.ndarray:
    """pi_rhobar (:func:`offpolicy.exact.vtrace_policy`), V-trace's fixed-point policy; in a
    state where ``min(rho_clip mu, pi)`` vanishes (pi only on actions mu never takes) V-trace
    never moves the value, and the behaviour stands in."""
    with np.errstate(invalid="ignore"):
        live = np.where(behaviour > 0, np.minimum(rho_clip * behaviour, target), 0.0).sum(1) > 0
    out = behaviour.copy()
    if live.any():
        out[live] = _exact.vtrace_policy(target[live], behaviour[live], rho_clip)
    return out


def p3o_exact_means(mdp: TabularMDP | MDPArrays, policy: np.ndarray, p3o_horizon: int,
                    gamma: float | None = None) -> np.ndarray:
    """means [S,H]: E[r_k | s_0 = s] under ``policy``, zero after a termination."""
    m = mdp_arrays(mdp)
    Pn = m.P * (~m.terminal)[None, None, :]
    out = np.zeros((m.S, p3o_horizon))
    dist = np.eye(m.S)  # row s0: distribution over s_k (alive mass only)
    for k in range(p3o_horizon):
        out[:, k] = dist @ np.einsum("ij,ij->i", policy, m.R_sa)
        dist = dist @ np.einsum("ij,ijk->ik", policy, Pn)
    return out


# ---------------------------------------------------------------------------------------------
# the coefficient functions


class _Ctx:
    """Broadcast-ready arrays: axes (s, a, s', a')."""

    def __init__(self, m: MDPArrays, behaviour, target, values, q, gamma, params):
        self.m, self.mu, self.pi = m, behaviour, target
        self.gamma = float(gamma)
        self.params = params
        self.S, self.A = m.S, m.A
        with np.errstate(divide="ignore", invalid="ignore"):
            rho = np.where(behaviour > 0, target / np.where(behaviour > 0, behaviour, 1.0), 0.0)
        self.rho = rho
        self.V = values
        self.Q = q
        self.beta = (~m.terminal).astype(float)[None, None, :, None]  # bootstrap from s'
        self.cut = False  # a time-limit truncation after the current step (set by _recursion)

    @staticmethod
    def sa(x):
        return np.asarray(x)[:, :, None, None]

    @staticmethod
    def s_(x):
        return np.asarray(x)[:, None, None, None]

    @staticmethod
    def n(x):
        return np.asarray(x)[None, None, :, None]

    @staticmethod
    def na(x):
        return np.asarray(x)[None, None, :, :]

    def kappa(self, h):
        """Trace continues into the next step: not terminated, not truncated after this step
        and not the segment's last step."""
        return self.beta * (1.0 if h > 1 and not self.cut else 0.0)


Coeffs = tuple  # (c_r, a_0, b), each broadcastable to [S,A,S,A]


def _state_trace(ctx: _Ctx, h: int, rho_hat, c_hat, lam) -> Coeffs:
    """A_t = rho_hat (r + gamma beta V(s') - V(s)) + gamma lam c_hat kappa A_{t+1}."""
    rh = ctx.sa(rho_hat)
    a0 = rh * (ctx.gamma * ctx.beta * ctx.n(ctx.V) - ctx.s_(ctx.V))
    b = ctx.gamma * lam * ctx.sa(c_hat) * ctx.kappa(h)
    return rh, a0, b


def _gae(ctx, h, k, s0):
    one = np.ones((ctx.S, ctx.A))
    return _state_trace(ctx, h, one, one, ctx.params["lam"])


def _vtrace(ctx, h, k, s0):
    p = ctx.params
    rho_hat = np.minimum(p["rho_clip"], ctx.rho)
    c_hat = np.minimum(p["c_clip"], ctx.rho)
    return _state_trace(ctx, h, rho_hat, c_hat, p["lam"])


def _vtrace_pg(ctx, h, k, s0):
    """pg_0 = min(pg_rho_clip, rho_0) (r_0 + gamma beta (V(s'_0) + kappa lam A_1) - V(s_0))."""
    if k > 0:
        return _vtrace(ctx, h, k, s0)
    p = ctx.params
    pg = ctx.sa(np.minimum(p["pg_rho_clip"], ctx.rho))
    a0 = pg * (ctx.gamma * ctx.beta * ctx.n(ctx.V) - ctx.s_(ctx.V))
    b = pg * ctx.gamma * p["lam"] * ctx.kappa(h)
    return pg, a0, b


def _pdis(ctx, h, k, s0):
    return _state_trace(ctx, h, ctx.rho, ctx.rho, ctx.params["lam"])


def _nstep(ctx, h, k, s0):
    """G = r + gamma (kappa G' + beta (1 - kappa) V(s')); h is already min(horizon, n)."""
    kap = ctx.kappa(h)
    return 1.0, ctx.gamma * ctx.beta * (1.0 - kap) * ctx.n(ctx.V), ctx.gamma * kap


def _q_trace(c_hat_fn: Callable[[_Ctx], np.ndarray]):
    """G = r + gamma beta EQ(s') + gamma lam kappa c(s',a') (G' - Q(s',a'))."""

    def coeffs(ctx, h, k, s0):
        p = ctx.params
        if p["next_q"] == "max":
            eq = ctx.Q.max(axis=1)
        else:
            eq = np.einsum("ij,ij->i", ctx.pi, ctx.Q)
        b = ctx.gamma * p["lam"] * ctx.kappa(h) * ctx.na(c_hat_fn(ctx))
        a0 = ctx.gamma * ctx.beta * ctx.n(eq) - b * ctx.na(ctx.Q)
        return 1.0, a0, b

    return coeffs


def _p3o(ctx, h, k, s0):
    """A_0 = sum_{k<m} w_k (r_k - mu_k(s_0)): X_k = w_k (r_k - mu_k(s_0)) + kappa X_{k+1}."""
    p = ctx.params
    w = p["weights"][s0, k]
    return w, -w * p["means"][s0, k], ctx.kappa(h)


@dataclasses.dataclass(frozen=True)
class _Spec:
    coeffs: dict  # output name -> coefficient function
    value_outputs: tuple = ()  # outputs offset by V(s_0)
    per_start: bool = False  # coefficients depend on s_0 (P3O)


_SPECS = {
    "gae": _Spec({"advantage": _gae, "value": _gae}, ("value",)),
    "vtrace": _Spec(
        {"value": _vtrace, "advantage": _vtrace, "pg_advantage": _vtrace_pg}, ("value",)
    ),
    "per_decision_is": _Spec({"value": _pdis, "advantage": _pdis}, ("value",)),
    "nstep": _Spec({"value": _nstep}),
    "retrace": _Spec({"target": _q_trace(lambda c: np.minimum(c.params["c_clip"], c.rho))}),
    "tree_backup": _Spec({"target": _q_trace(lambda c: c.pi)}),
    "q_lambda": _Spec({"target": _q_trace(lambda c: np.ones_like(c.pi))}),
    "importance_sampling_q": _Spec(
        {"target": _q_trace(lambda c: np.minimum(c.params["c_clip"], c.rho))}),
    "p3o": _Spec({"advantage": _p3o}, per_start=True),
}
#: the names :func:`exact_moments` accepts: every :mod:`offpolicy.registry` name (contract names,
#: aliases, output aliases) of an estimator with a recursion here
ESTIMATORS = tuple(n for e in _registry.ESTIMATORS.values() if e.moments_name in _SPECS
                   for n in e.all_names) + tuple(_registry.OUTPUT_ALIASES)


def _resolve(estimator: str, output: str | None) -> tuple[str, str]:
    """(recursion, output quantity) of ``estimator`` and ``output``, read from the registry:
    ``output`` is a quantity (``"value"``) or the contract output's name (``"value_targets"``);
    None is the estimator's default output (the output alias's, e.g. ``td_lambda``)."""
    info, out = _registry.resolve(estimator, output)
    if info.moments_name not in _SPECS:
        raise ValueError(f"estimator: {info.name} has no exact moments here (its traces are an "
                         f"input); known: {', '.join(ESTIMATORS)}")
    return info.moments_name, info.quantities[out]


# ---------------------------------------------------------------------------------------------
# the recursion


@dataclasses.dataclass(frozen=True)
class Moments:
    """Exact moments of an estimator's output at the first step of a segment.

    ``mean_sa``, ``var_sa`` [S,A]: given s_0 = s, a_0 = a. ``mean_s``, ``var_s`` [S]: given
    s_0 = s with a_0 ~ behaviour. Entries for actions the behaviour never takes are still the
    conditional moments (useful for Q-targets). Reward noise is included in the variances.
    """

    mean_sa: np.ndarray
    var_sa: np.ndarray
    mean_s: np.ndarray
    var_s: np.ndarray
    output: str
    estimator: str
    horizon: int
    params: dict

    @property
    def second_sa(self) -> np.ndarray:
        return self.var_sa + self.mean_sa**2

    @property
    def second_s(self) -> np.ndarray:
        return self.var_s + self.mean_s**2


def _recursion(ctx: _Ctx, coeffs, h: int, s0=None, cut_probs=None):
    """Backward recursion over the remaining length: returns (mean, var) [S,A] at length h.

    ``cut_probs[k]``: probability of a truncation after step k given none before (None: 0).
    """
    m = ctx.m
    S, A = ctx.S, ctx.A
    W = m.P[:, :, :, None] * ctx.mu[None, None, :, :]  # P(s'|s,a) mu(a'|s')
    R = m.R[:, :, :, None]
    Rv = m.R_var[:, :, :, None]
    mean = np.zeros((S, A))
    var = np.zeros((S, A))
    shape = (S, A, S, A)
    for rem in range(1, h + 1):
        k = h - rem
        p_cut = 0.0 if cut_probs is None else float(cut_probs[k])
        outcomes = []  # (probability, c_r, b, E[X | s,a,s',a',cut]) of each cut outcome
        for weight, cut in ((1.0 - p_cut, False), (p_cut, True)):
            if weight > 0:
                ctx.cut = cut
                c_r, a0, b = (np.broadcast_to(x, shape) for x in coeffs(ctx, rem, k, s0))
                outcomes.append((weight, c_r, b, c_r * R + a0 + b * mean[None, None, :, :]))
        ctx.cut = False
        new_mean = sum(w * np.einsum("ijkl,ijkl->ij", W, g) for w, _, _, g in outcomes)
        var = sum(w * np.einsum("ijkl,ijkl->ij", W, c_r**2 * Rv + b**2 * var[None, None, :, :]
                                + (g - new_mean[:, :, None, None]) ** 2)
                  for w, c_r, b, g in outcomes)
        mean = new_mean
    return mean, var


def _cut_probs(truncation_prob, time_limit, h: int) -> np.ndarray:
    """[h]: probability of a truncation after step k given none before (the segment starts an
    episode, so the time limit cuts after step time_limit - 1)."""
    p = float(truncation_prob)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"truncation_prob: must be in [0, 1], got {truncation_prob!r}")
    probs = np.full(h, p)
    if time_limit is not None:
        if isinstance(time_limit, bool) or int(time_limit) != time_limit or time_limit < 1:
            raise ValueError(f"time_limit: must be an integer >= 1 or None, got {time_limit!r}")
        probs[int(time_limit) - 1:] = 1.0
    return probs


def _defaults(estimator: str, m: MDPArrays, behaviour, target, horizon, params):
    p = _registry.with_defaults(estimator, params)
    p.setdefault("gamma", m.gamma)
    p.setdefault("next_q", "expected")
    if estimator == "p3o":
        H = int(p.setdefault("p3o_horizon", horizon))
        w = p.get("weights")
        if w is None:
            w = p["gamma"] ** np.arange(H)
        w = np.asarray(w, float)
        p["weights"] = np.broadcast_to(w if w.ndim == 2 else w[None, :], (m.S, H))
        means = p.get("means")
        if means is None:
            means = p3o_exact_means(m, behaviour, H)
        p["means"] = np.broadcast_to(np.asarray(means, float), (m.S, H))
    return p


def exact_moments(mdp: TabularMDP | MDPArrays, estimator: str, *, behaviour: np.ndarray,
                  target: np.ndarray, horizon: int, values: npt.ArrayLike | None = None,
                  q: npt.ArrayLike | None = None, output: str | None = None,
                  truncation_prob: float = 0.0, time_limit: int | None = None,
                  **params: Any) -> Moments:
    """Exact mean and variance of ``estimator``'s output at t = 0 of a segment of length horizon.

    Trajectories: s_0 given, a_t ~ behaviour, r_t ~ R (+ noise), s_{t+1} ~ P; a transition into
    a terminal state terminates; the segment end bootstraps. ``truncation_prob``: after each
    step the episode is cut by a time limit with this probability (trace cut, bootstrap from
    ``V(s'_t)``); ``time_limit``: it is cut after step ``time_limit - 1`` at the latest (the
    segment starts an episode). See the module docstring for estimators, outputs and
    parameters (lam, rho_clip, c_clip, pg_rho_clip, n, p3o_horizon, weights [H] or [S,H],
    means [S,H], next_q, gamma).
    """
    m = mdp_arrays(mdp)
    base, output = _resolve(estimator, output)
    spec = _SPECS[base]
    behaviour = np.asarray(behaviour, float)
    target = np.asarray(target, float)
    if horizon < 1:
        raise ValueError(f"horizon: must be >= 1, got {horizon}")
    p = _defaults(base, m, behaviour, target, horizon, params)
    if values is None:
        values = _exact.v_pi(_tabular(mdp, p["gamma"]), behaviour)
    if q is None:
        q = _q_pi(mdp, target, p["gamma"])
    values = np.asarray(values, float)
    q = np.asarray(q, float)
    ctx = _Ctx(m, behaviour, target, values, q, p["gamma"], p)
    coeffs = spec.coeffs[output]
    h = horizon
    if base == "nstep":
        h = min(horizon, int(p.get("n", horizon)))
    if base == "p3o":
        h = min(horizon, int(p["p3o_horizon"]))
    cut_probs = _cut_probs(truncation_prob, time_limit, h)
    p["truncation_prob"], p["time_limit"] = float(truncation_prob), time_limit
    if spec.per_start:
        mean = np.zeros((m.S, m.A))
        var = np.zeros((m.S, m.A))
        for s0 in range(m.S):
            mu_, var_ = _recursion(ctx, coeffs, h, s0, cut_probs)
            mean[s0], var[s0] = mu_[s0], var_[s0]
    else:
        mean, var = _recursion(ctx, coeffs, h, cut_probs=cut_probs)
    if output in spec.value_outputs:
        mean = mean + values[:, None]
    mean_s = np.einsum("ij,ij->i", behaviour, mean)
    var_s = np.einsum("ij,ij->i", behaviour, var + (mean - mean_s[:, None]) ** 2)
    return Moments(mean, var, mean_s, var_s, output, base, horizon, p)


# ---------------------------------------------------------------------------------------------
# what each estimator is compared against


@dataclasses.dataclass(frozen=True)
class Truth:
    """The quantity an estimator's output is compared against, shaped like :class:`Moments`.

    Value outputs: ``mean_s`` = V(s), ``mean_sa`` = V(s) for every a (the value target at s_0
    estimates V(s_0) whichever a_0 was drawn). Advantage and Q outputs: ``mean_sa`` per (s,a),
    ``mean_s`` = sum_a behaviour(a|s) mean_sa(s,a) (the expectation over the sampled a_0).
    """

    mean_sa: np.ndarray
    mean_s: np.ndarray
    description: str


def _truncated_q(m: MDPArrays, policy, H: int, gamma: float) -> np.ndarray:
    """H-step truncated Q (rewards r_0..r_{H-1}, no bootstrap)."""
    Pn = m.P * (~m.terminal)[None, None, :]
    qk = np.zeros((m.S, m.A))
    for _ in range(H):
        qk = m.R_sa + gamma * np.einsum("ijk,k->ij", Pn, np.einsum("ij,ij->i", policy, qk))
    return qk


def estimator_target(mdp: TabularMDP | MDPArrays, estimator: str, *, behaviour: np.ndarray,
                     target: np.ndarray, output: str | None = None, which: str = "fixed_point",
                     **params: Any) -> Truth:
    """What ``estimator``'s output estimates: its fixed point, or the target policy's quantity.

    ``which="fixed_point"``: the mean of the output in the limit of a long segment with exact
    values V (the fixed point of the estimator's operator):

    - gae, nstep (uncorrected): ``A^mu``, ``V^mu`` (the behaviour's);
    - vtrace: ``V^{pi_rhobar}`` (value); ``min(rho_clip, rho) (Q^{pi_rhobar} - V^{pi_rhobar})``
      (advantage; ``pg_rho_clip`` for pg_advantage), ``pi_rhobar`` from
      :func:`offpolicy.exact.vtrace_policy`;
    - per_decision_is: ``V^pi``; ``rho A^pi`` (advantage: the first ratio stays);
    - retrace, tree_backup, q_lambda, importance_sampling_q: ``Q^pi``;
    - p3o: the H-truncated advantage of the behaviour, ``Q_H^mu - V_H^mu``.

    ``which="target"``: the same kind of quantity for the target policy pi (``V^pi``,
    ``A^pi`` for gae/p3o, ``rho A^pi`` for the ratio-weighted advantages, ``Q^pi``);
    ``exact_moments(...).mean_* - truth.mean_*`` is then the bias off-policy.
    """
    if which not in ("fixed_point", "target"):
        raise ValueError(f"which: 'fixed_point' or 'target', got {which!r}")
    m = mdp_arrays(mdp)
    base, output = _resolve(estimator, output)
    mu = np.asarray(behaviour, float)
    pi = np.asarray(target, float)
    gamma = params.get("gamma", m.gamma)
    fixed = which == "fixed_point"
    rho = _Ctx(m, mu, pi, None, None, gamma, {}).rho

    def pack(sa, desc, state_value=None):
        if state_value is not None:
            return Truth(np.broadcast_to(state_value[:, None], (m.S, m.A)).copy(),
                         state_value, desc)
        return Truth(sa, np.einsum("ij,ij->i", mu, sa), desc)

    if _registry.lookup(base).kind == "action":
        return pack(_q_pi(mdp, pi, gamma), "Q^pi")
    if base == "p3o":
        pol, name = (mu, "mu") if fixed else (pi, "pi")
        H = int(params.get("p3o_horizon", params.get("horizon", 1)))
        qh = _truncated_q(m, pol, H, gamma)
        return pack(qh - np.einsum("ij,ij->i", pol, qh)[:, None], f"H-truncated A^{name}")
    if base in ("gae", "nstep"):
        pol, name = (mu, "mu") if fixed else (pi, "pi")
        qp = _q_pi(mdp, pol, gamma)
        vp = np.einsum("ij,ij->i", pol, qp)
        if output == "value":
            return pack(None, f"V^{name}", vp)
        return pack(qp - vp[:, None], f"A^{name}")
    if base == "vtrace" and fixed:
        rho_clip = params.get("rho_clip", 1.0)
        pol = _vtrace_policy(mu, pi, rho_clip)
        qp = _q_pi(mdp, pol, gamma)
        vp = np.einsum("ij,ij->i", pol, qp)
        if output == "value":
            return pack(None, "V^{pi_rhobar}", vp)
        clip = params.get("pg_rho_clip", rho_clip) if output == "pg_advantage" else rho_clip
        return pack(np.minimum(clip, rho) * (qp - vp[:, None]),
                    "min(clip, rho) (Q^{pi_rhobar} - V^{pi_rhobar})")
    # per_decision_is (both), vtrace with which="target"
    qp = _q_pi(mdp, pi, gamma)
    vp = np.einsum("ij,ij->i", pi, qp)
    if output == "value":
        return pack(None, "V^pi", vp)
    return pack(rho * (qp - vp[:, None]), "rho A^pi")


# ---------------------------------------------------------------------------------------------
# brute force: every trajectory of a short segment, with its probability


def enumerate_segments(mdp: TabularMDP | MDPArrays, behaviour: np.ndarray, horizon: int, *,
                       start_state: int, start_action: int | None = None,
                       max_branches: int = 200_000, truncation_prob: float = 0.0,
                       time_limit: int | None = None) -> Segments:
    """Every trajectory of length ``horizon`` from ``start_state`` (and ``start_action``).

    ``truncation_prob`` / ``time_limit``: as in :func:`exact_moments`; each step of a live
    trajectory branches into "truncated after it" and "not", independently of the transition,
    so a step may carry both flags (a termination that also hit the time limit).
    """
    m = mdp_arrays(mdp)
    mu = np.asarray(behaviour, float)
    cut_probs = _cut_probs(truncation_prob, time_limit, horizon)
    noisy = m.R_var > 0
    signs = np.array([1.0, -1.0])
    state = np.array([start_state])
    alive = np.array([True])
    weight = np.array([1.0])
    hist: list[list[np.ndarray]] = [[] for _ in range(6)]  # s, a, r, s', terminated, truncated
    filler_a = int(np.argmax(mu[start_state]))
    for t in range(horizon):
        pa = mu[state]  # [B,A]
        if t == 0 and start_action is not None:
            pa = np.zeros_like(pa)
            pa[:, start_action] = 1.0
        pr = np.repeat(pa[:, :, None, None] * m.P[state][:, :, :, None] * 0.5, 2, axis=-1)
        pr = np.where(noisy[state][:, :, :, None], pr,
                      np.concatenate([2 * pr[..., :1], 0 * pr[..., 1:]], axis=-1))
        pr = pr * alive[:, None, None, None]
        b, a, s2, sg = np.nonzero(pr > 0)
        # the cut after this step: each live branch once per outcome of positive probability
        cuts = [c for c, w in ((False, 1.0 - cut_probs[t]), (True, cut_probs[t])) if w > 0]
        cut = np.repeat(np.array(cuts, bool), b.size)
        p_cut = np.where(cut, cut_probs[t], 1.0 - cut_probs[t])
        b, a, s2, sg = (np.tile(x, len(cuts)) for x in (b, a, s2, sg))
        dead = np.nonzero(~alive)[0]
        if b.size + dead.size > max_branches:
            raise ValueError(f"enumerate_segments: more than {max_branches} trajectories")
        r = m.R[state[b], a, s2] + signs[sg] * np.sqrt(m.R_var[state[b], a, s2])
        new = [
            np.concatenate([state[b], np.full(dead.size, start_state)]),
            np.concatenate([a, np.full(dead.size, filler_a)]),
            np.concatenate([r, np.zeros(dead.size)]),
            np.concatenate([s2, np.full(dead.size, start_state)]),
            np.concatenate([m.terminal[s2], np.zeros(dead.size, bool)]),
            np.concatenate([cut, np.zeros(dead.size, bool)]),
        ]
        parents = np.concatenate([b, dead])
        hist = [[h[parents] for h in col] + [x] for col, x in zip(hist, new, strict=True)]
        weight = np.concatenate([weight[b] * pr[b, a, s2, sg] * p_cut, weight[dead]])
        alive = np.concatenate([alive[b] & ~m.terminal[s2] & ~cut, np.zeros(dead.size, bool)])
        state = new[3]
    s, a, r, s2, term, trunc = (np.stack(col) for col in hist)
    return Segments(s, a, r, s2, term, trunc, weight)
