"""Theorem 14 (proofs/T14_variance_recursion.md): the exact moment recursion of
offpolicy.moments equals the distribution of the reference estimator's output, computed
over every trajectory of the segment (exhaustive enumeration: Monte Carlo with no noise),
for every estimator, any MDP (terminal states, reward noise), policy pair and estimate, with
time-limit truncations inside the segment (a per-step probability and/or a time limit shorter
than the segment). Each (estimator, output) is its own parametrisation, so each gets the whole
example budget."""

import types

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from estimators import numpy as ref
from offpolicy import exact, moments, registry, strategies

pytestmark = pytest.mark.property


@st.composite
def problems(draw, max_states=4, max_actions=3, max_horizon=3, **mdp_kw):
    m = draw(strategies.mdps(max_states=max_states, max_actions=max_actions, **mdp_kw))
    S, A = m.shape
    mu, pi = draw(strategies.policy_pairs(S, A))
    values = draw(strategies.value_estimates(m, mu))
    q = draw(strategies.q_estimates(m, pi))
    h = draw(st.integers(1, max_horizon))
    # truncations inside the segment: none, at random after any step, or by a time limit
    cuts = draw(st.sampled_from([(0.0, None), (0.4, None), (1.0, None), (0.0, 1), (0.0, 2),
                                 (0.3, 2)]))
    return m, mu, pi, values, q, h, dict(zip(("truncation_prob", "time_limit"), cuts,
                                             strict=True))


def enumerated(m, mu, pi, values, q, h, est, out, params, s, a=None, cuts=None,
               backend=ref):
    """(mean, var) of the reference estimator's first output over all trajectories."""
    seg = moments.enumerate_segments(m, mu, h, start_state=s, start_action=a, **(cuts or {}))
    x = seg.inputs(behaviour=mu, target=pi, values=values, q=q)
    x["states"] = seg.states
    y = registry.call_estimator(backend, est, x, gamma=m.gamma, output=out, **params)
    return seg.moments(np.asarray(y)[0])


def _exact(m, mu, pi, values, q, h, est, out, params, cuts=None):
    kw = dict(params, **(cuts or {}))
    if registry.lookup(est).kind == "reward":  # P3O: weights and means per start state
        kw["p3o_horizon"] = len(params["weights"])
        kw["means"] = params["means"][: m.shape[0]]
    return moments.exact_moments(m, est, behaviour=mu, target=pi, horizon=h, values=values,
                                 q=q, output=out, **kw)


def _tol(x):
    return 1e-9 * (1.0 + np.abs(x))


def enumeration_violation(problem, config, given_action, backend=ref):
    """Largest violation of the T14 tolerances (mean within 1e-9 relative, variance within
    1e-8) over every start, in units of the tolerance (<= 1: the recursion agrees with the
    distribution of ``backend``'s output)."""
    m, mu, pi, values, q, h, cuts = problem
    est, out, params = config
    mom = _exact(m, mu, pi, values, q, h, est, out, params, cuts)
    worst = 0.0
    starts = np.ndindex(*m.shape) if given_action else ((s, None) for s in range(m.shape[0]))
    for s, a in starts:
        mean, var = enumerated(m, mu, pi, values, q, h, est, out, params, s, a, cuts, backend)
        want_mean = mom.mean_s[s] if a is None else mom.mean_sa[s, a]
        want_var = mom.var_s[s] if a is None else mom.var_sa[s, a]
        worst = max(worst, abs(mean - want_mean) / _tol(mean),
                    abs(var - want_var) / (10 * _tol(var)))
    return worst


CONFIGS = [pytest.param(est, out, id=f"{est}-{out}") for est, out in strategies.ESTIMATOR_OUTPUTS]


@pytest.mark.parametrize("est,out", CONFIGS)
@given(st.data())
def test_T14_exact_moments_equal_enumeration_given_state_action(est, out, data):
    problem = data.draw(problems())
    config = data.draw(strategies.estimator_configs(estimators=(est,), outputs=(out,)))
    assert enumeration_violation(problem, config, given_action=True) <= 1


@pytest.mark.parametrize("est,out", CONFIGS)
@given(st.data())
def test_T14_exact_moments_equal_enumeration_given_state(est, out, data):
    problem = data.draw(problems())
    config = data.draw(strategies.estimator_configs(estimators=(est,), outputs=(out,)))
    assert enumeration_violation(problem, config, given_action=False) <= 1


def test_T14_check_detects_a_trace_run_through_a_truncation():
    """With truncations inside the segment the enumeration sees a reference that lets the
    trace (or the n-step window) run on across them; without, it cannot."""
    from offpolicy import mdp as mdp_mod

    m = mdp_mod.garnet(3, 2, 2, gamma=0.9, seed=9, reward_std=0.5)
    rng = np.random.default_rng(6)
    mu, pi = rng.dirichlet(np.ones(2), size=3), rng.dirichlet(np.ones(2), size=3)
    v, q = rng.normal(size=3), rng.normal(size=(3, 2))
    names = [n for n in ref.__all__ if n != "p3o_advantage"]

    def ignoring_truncation(fn):
        def call(*args, **kw):
            args = list(args)
            i = 3 if fn is ref.nstep_returns else 4  # the truncated flags
            args[i] = np.zeros_like(args[i])
            return fn(*args, **kw)

        return call

    bad = types.SimpleNamespace(**{n: ignoring_truncation(getattr(ref, n)) for n in names})
    for est, out, params in [("gae", "advantage", {"lam": 0.9}),
                             ("vtrace", "value", {"lam": 1.0, "c_clip": 1.0}),
                             ("retrace", "target", {"lam": 1.0}), ("nstep", "value", {"n": 3})]:
        cut = (m, mu, pi, v, q, 3, {"truncation_prob": 0.5, "time_limit": 2})
        uncut = (m, mu, pi, v, q, 3, {})
        assert enumeration_violation(cut, (est, out, params), True) <= 1
        assert enumeration_violation(uncut, (est, out, params), True, backend=bad) <= 1
        assert enumeration_violation(cut, (est, out, params), True, backend=bad) > 1e3, est


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


CUTS = {"uncut": {}, "cut": {"truncation_prob": 0.25, "time_limit": 3}}


@pytest.mark.parametrize("cuts", list(CUTS))
@pytest.mark.parametrize("est,out,params", MC_CASES, ids=[f"{c[0]}-{c[1]}" for c in MC_CASES])
def test_T14_monte_carlo_matches_exact_moments(est, out, params, cuts):
    """Mean within 5 standard errors; sample variance within 5 of its own standard errors,
    sqrt((m4 - s^4) / n) from the sample fourth central moment (plus 1e-12). "cut": the
    sampler truncates each step with probability 0.25 and at a time limit of 3 < h = 4 (the
    estimators bootstrap from the final observation there), the exact moments likewise."""
    from offpolicy import mdp as mdp_mod
    from offpolicy import policies, sampler

    m = mdp_mod.garnet(5, 2, 3, gamma=0.9, seed=11, reward_std=0.5, num_terminal=1)
    mu = policies.random_policy(m, seed=1)
    pi = policies.random_policy(m, seed=2)
    v = exact.v_pi(m, mu) + np.linspace(-0.5, 0.5, 5)  # a stale, wrong critic
    q = exact.q_pi(m, pi) + 0.3
    h, n, s0 = 4, 40_000, 0
    mom = moments.exact_moments(m, est, behaviour=mu, target=pi, horizon=h, values=v, q=q,
                                output=out, **params, **CUTS[cuts])
    init = np.eye(5)[s0]
    seg = sampler.sample_segments(m, mu, h, n, seed=1234, initial=init, **CUTS[cuts])
    if cuts == "cut":  # truncations inside, and the bootstrap from the final observation
        assert seg.truncated[:-1].any()
        assert np.any(seg.truncated[:-1] & (seg.next_states[:-1] != seg.states[1:]))
    x = seg.inputs(behaviour=mu, target=pi, values=v, q=q)
    y = np.asarray(registry.call_estimator(ref, est, x, gamma=m.gamma, output=out,
                                          **params))[0]
    mean, var = y.mean(), y.var(ddof=1)
    m4 = np.mean((y - mean) ** 4)
    assert abs(mean - mom.mean_s[s0]) <= 5 * np.sqrt(var / n) + 1e-12
    assert abs(var - mom.var_s[s0]) <= 5 * np.sqrt(max(m4 - var**2, 0.0) / n) + 1e-12
