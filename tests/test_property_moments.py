"""Theorem 14 (proofs/T14_variance_recursion.md): the exact moment recursion of
offpolicy.moments equals the distribution of the reference estimator's output, computed
over every trajectory of the segment (exhaustive enumeration: Monte Carlo with no noise),
for every estimator, any MDP (terminal states, reward noise), policy pair and estimate."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from estimators import numpy as ref
from offpolicy import moments, strategies

pytestmark = pytest.mark.property


@st.composite
def problems(draw, max_states=4, max_actions=3, max_horizon=3, **mdp_kw):
    m = draw(strategies.mdps(max_states=max_states, max_actions=max_actions, **mdp_kw))
    S, A = m.shape
    mu, pi = draw(strategies.policy_pairs(S, A))
    values = draw(strategies.value_estimates(m, mu))
    q = draw(strategies.q_estimates(m, pi))
    h = draw(st.integers(1, max_horizon))
    return m, mu, pi, values, q, h


def enumerated(m, mu, pi, values, q, h, est, out, params, s, a=None):
    """(mean, var) of the reference estimator's first output over all trajectories."""
    seg = moments.enumerate_segments(m, mu, h, start_state=s, start_action=a)
    x = seg.inputs(behaviour=mu, target=pi, values=values, q=q)
    x["states"] = seg.states
    y = moments.call_estimator(ref, est, x, gamma=m.gamma, output=out, **params)
    return seg.moments(np.asarray(y)[0])


def _exact(m, mu, pi, values, q, h, est, out, params):
    kw = dict(params)
    if est == "p3o":
        kw["p3o_horizon"] = len(params["weights"])
        kw["means"] = params["means"][: m.shape[0]]
    return moments.exact_moments(m, est, behaviour=mu, target=pi, horizon=h, values=values,
                                 q=q, output=out, **kw)


def _tol(x):
    return 1e-9 * (1.0 + np.abs(x))


@given(problems(), strategies.estimator_configs())
def test_T14_exact_moments_equal_enumeration_given_state_action(problem, config):
    m, mu, pi, values, q, h = problem
    est, out, params = config
    mom = _exact(m, mu, pi, values, q, h, est, out, params)
    S, A = m.shape
    for s in range(S):
        for a in range(A):
            mean, var = enumerated(m, mu, pi, values, q, h, est, out, params, s, a)
            assert abs(mean - mom.mean_sa[s, a]) <= _tol(mean), (est, out, s, a)
            assert abs(var - mom.var_sa[s, a]) <= _tol(var) * 10, (est, out, s, a)


@given(problems(), strategies.estimator_configs())
def test_T14_exact_moments_equal_enumeration_given_state(problem, config):
    m, mu, pi, values, q, h = problem
    est, out, params = config
    mom = _exact(m, mu, pi, values, q, h, est, out, params)
    for s in range(m.shape[0]):
        mean, var = enumerated(m, mu, pi, values, q, h, est, out, params, s)
        assert abs(mean - mom.mean_s[s]) <= _tol(mean), (est, out, s)
        assert abs(var - mom.var_s[s]) <= _tol(var) * 10, (est, out, s)


# ---- Monte Carlo: the sampler + the reference agree with the exact moments --------------------

MC_CASES = [
    ("gae", "advantage", {"lam": 0.9}),
    ("vtrace", "value", {"lam": 1.0, "rho_clip": 1.0, "c_clip": 1.0}),
    ("vtrace", "pg_advantage", {"lam": 0.8, "rho_clip": 2.0, "c_clip": 1.0,
                                "pg_rho_clip": 1.0}),
    ("per_decision_is", "value", {"lam": 0.9}),
    ("nstep", "value", {"n": 3}),
    ("retrace", "target", {"lam": 0.9}),
    ("tree_backup", "target", {"lam": 1.0}),
    ("importance_sampling_q", "target", {"lam": 0.7}),
]


@pytest.mark.parametrize("est,out,params", MC_CASES, ids=[f"{c[0]}-{c[1]}" for c in MC_CASES])
def test_T14_monte_carlo_matches_exact_moments(est, out, params):
    """Mean within 5 standard errors; sample variance within 5 of its own standard errors,
    sqrt((m4 - s^4) / n) from the sample fourth central moment (plus 1e-12)."""
    from offpolicy import mdp as mdp_mod
    from offpolicy import policies, sampler

    m = mdp_mod.garnet(5, 2, 3, gamma=0.9, seed=11, reward_std=0.5, num_terminal=1)
    mu = policies.random_policy(m, seed=1)
    pi = policies.random_policy(m, seed=2)
    v = moments.v_pi(m, mu) + np.linspace(-0.5, 0.5, 5)  # a stale, wrong critic
    q = moments.q_pi(m, pi) + 0.3
    h, n, s0 = 4, 40_000, 0
    mom = moments.exact_moments(m, est, behaviour=mu, target=pi, horizon=h, values=v, q=q,
                                output=out, **params)
    init = np.eye(5)[s0]
    seg = sampler.sample_segments(m, mu, h, n, seed=1234, initial=init)
    x = seg.inputs(behaviour=mu, target=pi, values=v, q=q)
    y = np.asarray(moments.call_estimator(ref, est, x, gamma=m.gamma, output=out,
                                          **params))[0]
    mean, var = y.mean(), y.var(ddof=1)
    m4 = np.mean((y - mean) ** 4)
    assert abs(mean - mom.mean_s[s0]) <= 5 * np.sqrt(var / n) + 1e-12
    assert abs(var - mom.var_s[s0]) <= 5 * np.sqrt(max(m4 - var**2, 0.0) / n) + 1e-12
