"""One cell of the report: exact figures from :mod:`offpolicy.moments`, a Monte Carlo column
from :mod:`offpolicy.sampler` and the numpy reference estimators.

Definitions (also in ``reports/README.md``):

* Segment starts. Every figure is about the estimator's output at the first step of a segment
  of length T. Start states are drawn from ``d``, the behaviour policy's discounted state
  occupancy from the MDP's initial distribution, over non-terminal states, normalised
  (``d ∝ initial (I - gamma P_mu)^{-1}``; with gamma = 1 the expected visit counts), and the
  first action from mu. "V" outputs (value targets) are compared per state (weights ``d(s)``),
  "A"/"Q" outputs per state-action (weights ``d(s) mu(a|s)``).
* ``bias_target``: the weighted RMS of ``E[X | start] - target``, the target being the target
  policy's V^pi, A^pi or Q^pi (the same for every estimator of a kind, so MSEs compare).
  ``bias_fixed``: the same against ``moments.estimator_target(which="fixed_point")``, the limit
  of the estimator's operator (V^{pi_rhobar} for V-trace, V^mu / A^mu for the uncorrected
  estimators, Q^pi for the Q-traces); ``fp_gap``: fixed point against target, the bias left
  once the operator has converged. ``var``: the weighted mean of ``Var[X | start]``.
  ``mse = bias_target**2 + var``, which is ``E[(X - target)^2]`` over random starts.
* ``modulus``: the contraction modulus of the estimator's expected operator at this segment
  length, from :mod:`offpolicy.exact`.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from offpolicy import mdp as mdps
from offpolicy import moments, registry

from . import grid, montecarlo
from .cell import p3o_means
from .cell import params as _params

# ---------------------------------------------------------------------------------------------
# the MDP suite


def build_mdp(name: str):
    if name == "garnet_small":
        return mdps.garnet(10, 3, 3, gamma=0.9, seed=0)
    if name == "garnet_medium":
        return mdps.garnet(25, 4, 3, gamma=0.95, seed=1, reward_std=0.2, num_terminal=2)
    if name == "chain":
        return mdps.chain(10, gamma=0.95, slip=0.1, start="uniform")
    if name == "gridworld":
        return mdps.gridworld(5, 5, gamma=0.95, slip=0.1, step_reward=-0.01, start="uniform")
    if name == "sb_loop":
        return mdps.sutton_barto_loop()
    raise ValueError(f"unknown MDP {name!r}; known: {', '.join(grid.MDPS)}")



# ---------------------------------------------------------------------------------------------
# per-(mdp, staleness, value quality) setup, cached per process


@functools.lru_cache(maxsize=64)
def setup(mdp_name: str, stale: int, values: str, seed: int) -> dict:
    from offpolicy import exact, policies

    m = build_mdp(mdp_name)
    pi, eta = policies_for(m)
    mu = policies.stale_policy(m, pi, stale, step_size=eta)
    d = exact.state_distribution(m, mu)
    q_pi = exact.q_pi(m, pi)
    v_pi = exact.v_pi(m, pi)
    if values == "exact":
        V, Q = v_pi, q_pi
    elif values == "stale":
        Q, V = exact.q_pi(m, mu), exact.v_pi(m, mu)
    elif values == "noisy":
        rng = np.random.default_rng(grid.cell_seed(seed, "noisy", mdp_name))
        live = ~m.terminal
        sigma = 0.1 * float(np.abs(v_pi[live]).max() or 1.0)
        V = np.where(live, v_pi + sigma * rng.standard_normal(v_pi.shape), 0.0)
        Q = np.where(live[:, None], q_pi + sigma * rng.standard_normal(q_pi.shape), 0.0)
    else:
        raise ValueError(f"unknown value quality {values!r}")
    return dict(mdp=m, pi=pi, mu=mu, d=d, V=V, Q=Q, v_pi=v_pi, seed=seed,
                kl=policies.kl_divergence(pi, mu, weights=d),
                tv=policies.total_variation(pi, mu, weights=d))


def policies_for(m):
    """(target, eta): the target is one softened policy-improvement step from the
    uniform policy, ``epsilon_greedy(Q^uniform, 0.2)``; the behaviour ``k`` steps behind is
    ``policies.stale_policy(mdp, target, k, step_size=eta)`` with ``eta = 0.5 / max |A^pi|``, so
    one step changes a log-probability by at most 1/2 whatever the reward scale."""
    from offpolicy import exact, policies

    pi = policies.epsilon_greedy(exact.q_pi(m, policies.uniform_policy(m)), 0.2)
    adv = exact.a_pi(m, pi)[~m.terminal]
    eta = 0.5 / float(np.abs(adv).max())
    return pi, eta


# ---------------------------------------------------------------------------------------------
# one cell


def _weights(su, quantity):
    """(weights over starts, the matching mean and variance of Moments)."""
    if quantity == "V":
        return su["d"], lambda mom: (mom.mean_s, mom.var_s)
    return su["d"][:, None] * su["mu"], lambda mom: (mom.mean_sa, mom.var_sa)


def exact_metrics(cell: dict, su: dict) -> tuple[dict, np.ndarray]:
    """The exact columns of ``cell``, and the target its output is compared against."""
    est = grid.ESTIMATORS[cell["estimator"]]
    name = cell["estimator"]  # report names are moments names
    params = _params(cell)
    m, mu, pi = su["mdp"], su["mu"], su["pi"]
    if name == "p3o":
        params["means"] = p3o_means(cell, su)
    with np.errstate(over="ignore", invalid="ignore"):  # unclipped IS may overflow to inf
        mom = moments.exact_moments(m, name, behaviour=mu, target=pi, horizon=cell["T"],
                                    values=su["V"], q=su["Q"], **params)
    tgt, fix = truths(cell["mdp"], cell["stale"], name, cell["rho_clip"],
                      cell["T"] if name == "p3o" else None)
    w, pick = _weights(su, est.quantity)
    mean, var = pick(mom)
    err_t, err_f = mean - tgt, mean - fix
    bias_t = math.sqrt(float((w * err_t**2).sum()))
    out = {
        "kl": su["kl"],
        "tv": su["tv"],
        "bias_target": bias_t,
        "bias_fixed": math.sqrt(float((w * err_f**2).sum())),
        "fp_gap": math.sqrt(float((w * (fix - tgt) ** 2).sum())),
        "bias_mean": float((w * err_t).sum()),
        "var": float((w * var).sum()),
        "mse": bias_t**2 + float((w * var).sum()),
        "modulus": modulus(cell),
    }
    return out, tgt


@functools.lru_cache(maxsize=1024)
def truths(mdp_name, stale, name, rho_clip, horizon):
    """(target, fixed point) of an estimator's output, ``[S]`` for "V" outputs, ``[S, A]`` for
    "A" and "Q" outputs. The target is the target policy's quantity, ``V^pi``, ``A^pi`` or
    ``Q^pi`` (:mod:`offpolicy.exact`), the same for every estimator of a kind so that their MSEs
    compare; the fixed point is ``moments.estimator_target(which="fixed_point")`` (it depends
    on the policies, the clip level and, for P3O, the horizon only)."""
    from offpolicy import exact

    su = setup(mdp_name, stale, "exact", 0)
    m, pi, mu = su["mdp"], su["pi"], su["mu"]
    quantity = grid.ESTIMATORS[name].quantity
    kw = {} if rho_clip is None else {"rho_clip": rho_clip}
    if horizon is not None:
        kw["horizon"] = horizon
    fix = moments.estimator_target(m, name, behaviour=mu, target=pi, which="fixed_point", **kw)
    if quantity == "V":
        return exact.v_pi(m, pi), fix.mean_s
    return (exact.a_pi(m, pi) if quantity == "A" else exact.q_pi(m, pi)), fix.mean_sa


def modulus(cell: dict) -> float:
    """Sup-norm contraction modulus of the estimator's expected operator over a segment of
    length T (the operator whose fixed point ``bias_fixed`` measures against), from
    :mod:`offpolicy.exact`. NaN for P3O, which does not bootstrap."""
    return _modulus(cell["mdp"], cell["stale"], cell["estimator"], cell["lam"], cell["n"],
                    cell["rho_clip"], cell["c_clip"], cell["T"])


@functools.lru_cache(maxsize=4096)
def _modulus(mdp_name, stale, name, lam, n, rho_clip, c_clip, T) -> float:
    from offpolicy import exact

    su = setup(mdp_name, stale, "exact", 0)  # the policies do not depend on values or seed
    m, pi, mu = su["mdp"], su["pi"], su["mu"]
    info = registry.lookup(name)
    if info.kind == "action":
        c = {
            "retrace": lambda: exact.retrace_traces(pi, mu, lam),
            "tree_backup": lambda: exact.tree_backup_traces(pi, lam),
            "q_lambda": lambda: exact.q_lambda_traces(pi, lam),
            "importance_sampling_q": lambda: exact.is_traces(pi, mu, lam),
        }[info.name]()
        return float(exact.retrace_modulus(m, pi, mu, c, n=T).max())
    if info.kind == "reward":  # P3O does not bootstrap
        return float("nan")
    # state-value estimators: the T-step truncated V-trace operator of a (target, clip) pair
    if info.moments_name == "vtrace":
        args = dict(target=pi, rho_clip=rho_clip, c_clip=c_clip, lam=lam)
    elif info.name == "per_decision_is":  # unclipped ratios
        args = dict(target=pi, rho_clip=math.inf, c_clip=math.inf, lam=lam)
    elif info.name == "gae":  # on-policy lambda-operator of mu
        args = dict(target=mu, lam=lam)
    elif info.name == "nstep_returns":  # lambda = 1, cut after n steps
        args, T = dict(target=mu, lam=1.0), min(T, n)
    else:
        raise ValueError(name)
    return float(exact.vtrace_modulus(m, behaviour=mu, n=T, **args).max())


def compute_cell(cell: dict, seed: int, mc_samples: int) -> dict:
    su = setup(cell["mdp"], cell["stale"], cell["values"], seed)
    metrics, tgt = exact_metrics(cell, su)
    if cell["mc"]:
        metrics.update(montecarlo.mc_metrics(cell, su, tgt, seed, mc_samples, metrics))
    return {"id": grid.cell_id(cell), "cell": cell, "metrics": metrics}
