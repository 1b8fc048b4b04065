"""Theorems 15-22 of docs/DESIGN.md section 4 (one proofs/Tnn_*.md file each).

Same rules as tests/test_property_theorems.py: every test is named ``test_Tnn_...`` after the
proofs/ file it checks (tests/test_proofs_index.py). Ground truth is exact: offpolicy.moments
(the exact mean/variance recursion), offpolicy.exact (matrix forms) or enumeration of every
trajectory of a short segment. Each theorem with a closed form also has a ``..._broken_...``
test: a plausible wrong statement that the same check rejects.
"""

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from estimators import numpy as ref
from offpolicy import exact, moments, registry, strategies
from offpolicy import mdp as mdp_mod
from offpolicy import policies as pol_mod

pytestmark = pytest.mark.property

LAMS = st.sampled_from([0.0, 0.3, 0.9, 1.0])
small_mdps = strategies.mdps(max_states=4, max_actions=3)
SEEDS = st.integers(0, 2**31 - 1)


def close(a, b, tol=1e-10):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def on_policy(m, pi, h, values, est="gae", **params):
    return moments.exact_moments(m, est, behaviour=pi, target=pi, horizon=h, values=values,
                                 **params)


def enum_moments(m, mu, pi, est, out, h, s, a=None, values=None, q=None, **params):
    """(mean, variance) of the reference estimator's output at t = 0, by enumeration."""
    seg = moments.enumerate_segments(m, mu, h, start_state=s, start_action=a)
    x = seg.inputs(behaviour=mu, target=pi, values=values, q=q)
    y = registry.call_estimator(ref, est, x, gamma=m.gamma, output=out, **params)
    return seg.moments(np.asarray(y)[0])


# ---- Theorem 15: GAE bias with an imperfect critic V = V^pi + e -----------------------------


@given(small_mdps, st.data(), LAMS, st.integers(1, 8))
def test_T15_gae_bias_closed_form_matches_moments(m, data, lam, h):
    S, A = m.shape
    pi = data.draw(strategies.policies(S, A))
    e = 2.0 * np.random.default_rng(data.draw(SEEDS)).normal(size=S)
    mom = on_policy(m, pi, h, exact.v_pi(m, pi) + e, lam=lam)
    close(mom.mean_sa - exact.a_pi(m, pi), exact.gae_bias(m, pi, e, lam, horizon=h))


@given(strategies.mdps(max_states=4, max_actions=3, gamma=0.8), st.data(), LAMS)
def test_T15_gae_bias_infinite_horizon_is_the_limit(m, data, lam):
    S, A = m.shape
    pi = data.draw(strategies.policies(S, A))
    e = np.random.default_rng(data.draw(SEEDS)).normal(size=S)
    H = 40
    mom = on_policy(m, pi, H, exact.v_pi(m, pi) + e, lam=lam)
    b_inf = exact.gae_bias(m, pi, e, lam)
    # |b_H - b_inf| <= gamma (gamma lam)^(H-1) (1 + (1-lam)/(1-gamma lam)) ||e|| (proofs/T15)
    tail = 2.0 * m.gamma * (m.gamma * lam) ** (H - 1) * np.abs(e).max()
    assert np.abs(mom.mean_sa - exact.a_pi(m, pi) - b_inf).max() <= tail + 1e-10
    if lam == 1.0:  # gamma-just: the bias is -e(s), the same for every action
        close(b_inf, np.broadcast_to(-e[:, None], (S, A)))


@given(strategies.mdps(max_states=4, max_actions=3, terminal=False), st.data(), LAMS,
       st.integers(1, 8))
def test_T15_constant_error_without_terminals_is_action_independent(m, data, lam, h):
    S, A = m.shape
    pi = data.draw(strategies.policies(S, A))
    c = data.draw(st.sampled_from([-3.0, 0.5, 2.0]))
    mom = on_policy(m, pi, h, exact.v_pi(m, pi) + c, lam=lam)
    bias = mom.mean_sa - exact.a_pi(m, pi)
    g, gl = m.gamma, m.gamma * lam
    geo = sum((1 - lam) * gl**k for k in range(h - 1)) + gl ** (h - 1)
    close(bias, np.full((S, A), -c + g * c * geo))


@given(small_mdps, st.data(), st.integers(1, 8))
def test_T15_lambda_one_bias_is_action_independent_up_to_gamma_h(m, data, h):
    S, A = m.shape
    pi = data.draw(strategies.policies(S, A))
    e = np.random.default_rng(data.draw(SEEDS)).normal(size=S)
    bias = on_policy(m, pi, h, exact.v_pi(m, pi) + e, lam=1.0).mean_sa - exact.a_pi(m, pi)
    spread = bias.max(axis=1) - bias.min(axis=1)
    assert np.all(spread <= 2 * m.gamma**h * np.abs(e).max() + 1e-10)


def _t15_example():
    m = mdp_mod.garnet(3, 2, 2, gamma=0.9, seed=0)
    pi = pol_mod.random_policy(3, 2, seed=0)
    return m, pi, np.array([0.4, -0.4, 1.9])


def test_T15_lambda_below_one_bias_depends_on_the_action():
    m, pi, e = _t15_example()
    bias = on_policy(m, pi, 30, exact.v_pi(m, pi) + e, lam=0.5).mean_sa - exact.a_pi(m, pi)
    spread = bias.max(axis=1) - bias.min(axis=1)
    assert spread.max() > 0.3  # not gamma-just: the error leaks into the policy gradient


def test_T15_broken_closed_forms_are_caught():
    m, pi, e = _t15_example()
    g = m.gamma
    Ppi = exact.state_transition(m, pi)
    for lam, h in [(0.5, 6), (0.9, 3)]:
        got = on_policy(m, pi, h, exact.v_pi(m, pi) + e, lam=lam).mean_sa - exact.a_pi(m, pi)
        # wrong 1: forget the (1 - lam) weights: -e + gamma P_c sum_k (gamma lam)^k P^k e
        acc = sum(np.linalg.matrix_power(g * lam * Ppi, k) @ e for k in range(h))
        wrong1 = g * m.P_continue @ acc - e[:, None]
        # wrong 2: "GAE's bias is always -e(s)" (gamma-just for every lam)
        wrong2 = np.broadcast_to(-e[:, None], got.shape)
        for wrong in (wrong1, wrong2):
            assert np.abs(got - wrong).max() > 1e-2
        close(got, exact.gae_bias(m, pi, e, lam, horizon=h))


# ---- Theorem 16: on-policy variance is monotone in lambda and n with V = V^pi ---------------


LAM_GRID = [0.0, 0.25, 0.5, 0.75, 0.9, 1.0]


def _nondecreasing(xs):
    for a, b in itertools.pairwise(xs):
        assert np.all(b >= a - 1e-12 * (1.0 + np.abs(a))), (a, b)


@given(small_mdps, st.data(), st.integers(1, 8))
def test_T16_gae_variance_closed_form_and_monotone_in_lambda(m, data, h):
    S, A = m.shape
    pi = data.draw(strategies.policies(S, A))
    v = exact.v_pi(m, pi)
    moms = [on_policy(m, pi, h, v, lam=lam) for lam in LAM_GRID]
    for lam, mom in zip(LAM_GRID, moms, strict=True):
        close(mom.var_sa, exact.gae_variance_on_policy(m, pi, lam, h), 1e-9)
    _nondecreasing([mom.var_sa for mom in moms])
    _nondecreasing([mom.var_s for mom in moms])


@given(small_mdps, st.data(), st.integers(1, 8))
def test_T16_nstep_variance_monotone_in_n(m, data, h):
    S, A = m.shape
    pi = data.draw(strategies.policies(S, A))
    v = exact.v_pi(m, pi)
    moms = [on_policy(m, pi, h, v, "nstep", n=n) for n in range(1, h + 2)]
    for n, mom in enumerate(moms, start=1):
        close(mom.var_sa, exact.gae_variance_on_policy(m, pi, 1.0, min(n, h)), 1e-9)
    _nondecreasing([mom.var_sa for mom in moms])
    _nondecreasing([mom.var_s for mom in moms])


def _t16_counterexample():
    """proofs/T16: garnet(3, 2, 2, seed=0), pi = random_policy(3, 2, seed=0), V = (4.5, 3.9, 5.9)
    (V^pi = (4.17, 4.33, 3.95))."""
    m = mdp_mod.garnet(3, 2, 2, gamma=0.9, seed=0)
    return m, pol_mod.random_policy(3, 2, seed=0), np.array([4.5, 3.9, 5.9])


def test_T16_wrong_critic_breaks_monotonicity():
    m, pi, v = _t16_counterexample()
    var0 = on_policy(m, pi, 8, v, lam=0.0).var_s
    var5 = on_policy(m, pi, 8, v, lam=0.5).var_s
    assert np.all(var5 < var0 - 0.05)  # every state: larger lambda, smaller variance
    close(var0, [0.26198049, 0.62837082, 0.26883498], 1e-7)  # recorded in proofs/T16
    close(var5, [0.16373252, 0.15227429, 0.20343117], 1e-7)
    n1, n2, n3 = (on_policy(m, pi, 8, v, "nstep", n=n).var_s for n in (1, 2, 3))
    assert n2[1] < n1[1] - 0.1 and n3[2] < n2[2] - 0.1
    # independently: enumerate every trajectory (h = 3) through the reference estimator
    e0 = enum_moments(m, pi, pi, "gae", "advantage", 3, 1, values=v, lam=0.0)[1]
    e5 = enum_moments(m, pi, pi, "gae", "advantage", 3, 1, values=v, lam=0.5)[1]
    assert e5 < e0 - 0.3
    # and the V^pi closed form does not apply to this critic
    var5_sa = on_policy(m, pi, 8, v, lam=0.5).var_sa
    assert np.abs(exact.gae_variance_on_policy(m, pi, 0.5, 8) - var5_sa).max() > 1e-2


# ---- Theorem 17: V-trace's fixed-point bias in terms of rho_clip ----------------------------

RHO_CLIPS = st.sampled_from([0.1, 0.5, 1.0, 2.0])


@given(small_mdps, st.data(), RHO_CLIPS)
def test_T17_vtrace_fixed_point_bias_bound(m, data, rc):
    S, A = m.shape
    mu, pi = data.draw(strategies.policy_pairs(S, A))
    bias = np.abs(exact.vtrace_fixed_point(m, pi, mu, rc) - exact.v_pi(m, pi))
    bound = exact.vtrace_bias_bound(m, pi, mu, rc)
    assert np.all(bias <= bound + 1e-9 * (1 + bound))
    mass = exact.vtrace_truncation_mass(pi, mu, rc)
    tv = pol_mod.total_variation(exact.vtrace_policy(pi, mu, rc), pi, per_state=True)
    assert np.all(tv <= mass + 1e-12)
    q = exact.q_pi(m, pi)
    span = q.max(axis=1) - q.min(axis=1)
    if m.gamma < 1:
        assert bound.max() <= (mass * span).max() / (1 - m.gamma) + 1e-9 * (1 + bound.max())
    big = pol_mod.max_ratio(pi, mu) * 1.01  # no truncation: no bias
    close(exact.vtrace_truncation_mass(pi, mu, big), np.zeros(S), 0)
    close(exact.vtrace_fixed_point(m, pi, mu, big), exact.v_pi(m, pi), 1e-8)


def _t17_one_state():
    """One state, two actions paying 0 and 1, gamma = 0.9; pi = (1/2, 1/2), mu = (0.99, 0.01)."""
    P = np.ones((1, 2, 1))
    m = mdp_mod.TabularMDP(P, np.array([[0.0, 1.0]]), 0.9)
    return m, np.array([[0.5, 0.5]]), np.array([[0.99, 0.01]])


def test_T17_bound_is_nearly_tight():
    m, pi, mu = _t17_one_state()
    bias = abs(exact.vtrace_fixed_point(m, pi, mu, 1.0)[0] - exact.v_pi(m, pi)[0])
    bound = exact.vtrace_bias_bound(m, pi, mu, 1.0)[0]
    # by hand: pi_rhobar = (0.5, 0.01)/0.51, bias = (0.5 - 0.01/0.51)/0.1, bound = 0.49/0.1
    close(bias, (0.5 - 0.01 / 0.51) / 0.1, 1e-12)
    close(bound, 0.49 / 0.1, 1e-12)
    assert bias >= 0.98 * bound


def test_T17_broken_bound_without_horizon_factor_is_caught():
    m, pi, mu = _t17_one_state()
    bias = abs(exact.vtrace_fixed_point(m, pi, mu, 1.0)[0] - exact.v_pi(m, pi)[0])
    q = exact.q_pi(m, pi)
    wrong = exact.vtrace_truncation_mass(pi, mu, 1.0)[0] * (q.max() - q.min())  # no 1/(1-gamma)
    assert bias > 5 * wrong


# ---- Theorem 18: Q^pi(lambda)'s exact divergence threshold vs Harutyunyan et al.'s bound ----


def _linear_part(m, pi, mu, lam):
    return exact.retrace_linear_part(m, pi, mu, exact.q_lambda_traces(pi, lam))


@given(strategies.mdps(min_states=1, max_states=3, max_actions=3, terminal=False), st.data())
def test_T18_below_the_bound_contracts_and_threshold_is_above_it(m, data):
    S, A = m.shape
    mu, pi = data.draw(strategies.policy_pairs(S, A))
    g = m.gamma
    eps = np.abs(pi - mu).sum(axis=1).max()
    bound = (1 - g) / (g * eps) if g * eps > 1 - g else np.inf  # inf: >= 1 anyway
    lam = 0.999 * min(bound, 1.0)
    modulus = exact.retrace_modulus(m, pi, mu, exact.q_lambda_traces(pi, lam)).max()
    harutyunyan = g * (1 - lam + lam * eps) / (1 - g * lam)
    assert modulus <= harutyunyan + 1e-12 and harutyunyan < 1
    threshold = exact.q_lambda_threshold(m, pi, mu, grid=40, tol=1e-10)
    assert threshold >= min(bound, 1.0)
    if np.isfinite(threshold):
        assert exact.spectral_radius(_linear_part(m, pi, mu, threshold)) >= 1.0
        assert exact.spectral_radius(_linear_part(m, pi, mu, threshold - 1e-9)) < 1.0


def test_T18_counterexample_threshold_strictly_between():
    m, pi, mu, lam = mdp_mod.q_lambda_counterexample()
    g = m.gamma
    eps = np.abs(pi - mu).sum(axis=1).max()
    bound = (1 - g) / (g * eps)
    threshold = exact.q_lambda_threshold(m, pi, mu)
    close(bound, 5 / 72, 1e-15)
    assert abs(threshold - 5 / 54) < 1e-12  # derived by hand in proofs/T18
    assert bound < threshold < lam
    close(exact.spectral_radius(_linear_part(m, pi, mu, 0.5)), 117 / 73, 1e-12)
    # the broken claim "the sufficient bound is the threshold" is off by a third
    assert threshold - bound > 0.02


@pytest.mark.parametrize("lam, grows", [(0.1, True), (0.085, False)])
def test_T18_unstable_component_grows_just_above_the_threshold(lam, grows):
    m, pi, mu, _ = mdp_mod.q_lambda_counterexample()
    B = _linear_part(m, pi, mu, lam)
    w, vecs = np.linalg.eig(B)
    i = int(np.argmax(np.abs(w)))
    assert abs(w[i].imag) == 0.0
    nu, v = float(w[i].real), np.real(vecs[:, i])
    v = (v / np.abs(v).max()).reshape(m.shape)
    qpi = exact.q_pi(m, pi)
    q = qpi + v  # a unit perturbation on the leading eigenvector, not round-off
    c = exact.q_lambda_traces(pi, lam)
    for k in range(1, 201):
        q = exact.retrace_operator(m, pi, mu, q, c)
        err = np.abs(q - qpi).max()
        assert abs(err - abs(nu) ** k) <= 1e-9 * abs(nu) ** k
    assert (err > 5.0) if grows else (err < 0.2)


# ---- Theorem 19: eta_IS <= eta_Retrace <= eta_TB <= gamma -----------------------------------


@given(small_mdps, st.data(), LAMS)
def test_T19_trace_efficiency_ordering(m, data, lam):
    S, A = m.shape
    mu, pi = data.draw(strategies.policy_pairs(S, A))
    c_is = exact.is_traces(pi, mu, lam)
    c_re = exact.retrace_traces(pi, mu, lam)
    c_tb = exact.tree_backup_traces(pi, lam)
    assert np.all(c_is >= c_re - 1e-15) and np.all(c_re >= c_tb - 1e-15)
    e_is, e_re, e_tb = (exact.retrace_eta(m, mu, c) for c in (c_is, c_re, c_tb))
    tol = 1e-12
    assert np.all(e_is <= e_re + tol) and np.all(e_re <= e_tb + tol)
    assert np.all(e_tb <= m.gamma + tol)
    # the exact moduli (absolute row sums of the linear part) are ordered the same way, below eta
    m_is, m_re, m_tb = (exact.retrace_modulus(m, pi, mu, c) for c in (c_is, c_re, c_tb))
    assert np.all(m_is <= m_re + tol) and np.all(m_re <= m_tb + tol)
    for mod, eta in ((m_is, e_is), (m_re, e_re), (m_tb, e_tb)):
        assert np.all(mod <= eta + tol)


@given(small_mdps, st.data())
def test_T19_eta_is_antitone_in_the_trace(m, data):
    S, A = m.shape
    mu, pi = data.draw(strategies.policy_pairs(S, A))
    rng = np.random.default_rng(data.draw(SEEDS))
    c2 = exact.is_traces(pi, mu) * rng.random((S, A))  # 0 <= c1 <= c2 <= pi / mu
    c1 = c2 * rng.random((S, A))
    assert np.all(exact.retrace_eta(m, mu, c2) <= exact.retrace_eta(m, mu, c1) + 1e-12)


def test_T19_broken_reverse_orders_are_caught():
    m = mdp_mod.garnet(4, 3, 2, gamma=0.9, seed=1)
    mu = pol_mod.random_policy(4, 3, seed=1)
    pi = pol_mod.random_policy(4, 3, seed=2)
    e_is, e_re, e_tb = (exact.retrace_eta(m, mu, c) for c in (
        exact.is_traces(pi, mu), exact.retrace_traces(pi, mu), exact.tree_backup_traces(pi)))
    assert (e_re - e_is).max() > 0.05 and (e_tb - e_re).max() > 0.05
    assert e_tb.min() < m.gamma - 0.05
    # with different lambdas no order holds: IS at lam = 0 is the slowest, at lam = 1 the fastest
    e_is0 = exact.retrace_eta(m, mu, exact.is_traces(pi, mu, 0.0))
    close(e_is0, np.full(e_is0.shape, m.gamma), 1e-12)
    assert (e_is0 - e_tb).max() > 0.05  # reversed against TB at lam = 1


# ---- Theorem 20: the bias of truncated importance sampling ----------------------------------


@given(st.integers(1, 5), st.integers(1, 4), st.data(), RHO_CLIPS)
def test_T20_truncated_is_identity_per_state(S, A, data, rc):
    mu, pi = data.draw(strategies.policy_pairs(S, A))
    f = 3.0 * np.random.default_rng(data.draw(SEEDS)).normal(size=(S, A))
    rho = pi / mu
    lhs = (mu * np.minimum(rc, rho) * f).sum(axis=1)
    excess = mu * np.maximum(rho - rc, 0.0)
    close(lhs, (pi * f).sum(axis=1) - (excess * f).sum(axis=1), 1e-12)
    close(excess.sum(axis=1), exact.vtrace_truncation_mass(pi, mu, rc), 1e-12)
    z = 1.0 - excess.sum(axis=1)  # = Z(s) E_{pi_rhobar} f
    close(lhs, z * (exact.vtrace_policy(pi, mu, rc) * f).sum(axis=1), 1e-12)
    bias = np.abs(lhs - (pi * f).sum(axis=1))
    assert np.all(bias <= excess.sum(axis=1) * np.abs(f).max(axis=1) + 1e-12)


@given(small_mdps, st.data(), RHO_CLIPS, LAMS)
def test_T20_vtrace_one_step_target_bias(m, data, rc, lam):
    S, A = m.shape
    mu, pi = data.draw(strategies.policy_pairs(S, A))
    v = data.draw(strategies.value_estimates(m, mu))
    kw = dict(behaviour=mu, target=pi, horizon=1, values=v, lam=lam, rho_clip=rc)
    value = moments.exact_moments(m, "vtrace", **kw)
    adv = moments.exact_moments(m, "vtrace", output="advantage", **kw)
    f = m.R + m.gamma * m.P_continue @ v - v[:, None]  # E[delta_0 | s, a] for this V
    excess = mu * np.maximum(pi / mu - rc, 0.0)
    close(value.mean_s - exact.bellman_v(m, pi, v), -(excess * f).sum(axis=1), 1e-10)
    close(adv.mean_sa, np.minimum(rc, pi / mu) * f, 1e-10)


def test_T20_broken_unbiased_claim_is_caught():
    m = mdp_mod.garnet(3, 2, 2, gamma=0.9, seed=0)
    mu, pi = pol_mod.random_policy(3, 2, seed=3), pol_mod.random_policy(3, 2, seed=4)
    v = np.zeros(3)
    mean = moments.exact_moments(m, "vtrace", behaviour=mu, target=pi, horizon=1, values=v,
                                 rho_clip=0.5).mean_s
    assert np.abs(mean - exact.bellman_v(m, pi, v)).max() > 0.05  # "E_mu[min(c, rho) f] = E_pi f"


# ---- Theorem 21: V-trace's pg advantage at the V-trace fixed point --------------------------


@given(small_mdps, st.data(), LAMS, st.integers(1, 6))
def test_T21_pg_advantage_at_the_fixed_point(m, data, lam, h):
    S, A = m.shape
    mu, pi = data.draw(strategies.policy_pairs(S, A))
    rc = data.draw(st.sampled_from([0.5, 1.0, 3.0]))
    pg = data.draw(st.sampled_from([rc, 0.5, 1.0, 3.0]))
    cc = data.draw(st.sampled_from([0.5, 1.0, 5.0]))
    fixed = exact.vtrace_fixed_point(m, pi, mu, rc)
    mom = moments.exact_moments(m, "vtrace", output="pg_advantage", behaviour=mu, target=pi,
                                horizon=h, values=fixed, lam=lam, rho_clip=rc, c_clip=cc,
                                pg_rho_clip=pg)
    want = exact.vtrace_pg_fixed_point(m, pi, mu, rho_clip=rc, pg_rho_clip=pg)
    close(mom.mean_sa, want, 1e-9)
    clipped = exact.vtrace_policy(pi, mu, rc)
    q = exact.q_pi(m, clipped)
    a_clipped = q - (clipped * q).sum(axis=1, keepdims=True)
    close(mom.mean_s, (np.minimum(pg * mu, pi) * a_clipped).sum(axis=1), 1e-9)
    if pg == rc:  # the same clip: zero mean under mu in every state
        close(mom.mean_s, np.zeros(S), 1e-9)


@given(small_mdps, st.data(), st.integers(1, 3))
def test_T21_reference_pg_advantage_by_enumeration(m, data, h):
    S, A = m.shape
    mu, pi = data.draw(strategies.policy_pairs(S, A))
    s, a = data.draw(st.integers(0, S - 1)), data.draw(st.integers(0, A - 1))
    fixed = exact.vtrace_fixed_point(m, pi, mu, 1.0)
    got = enum_moments(m, mu, pi, "vtrace", "pg_advantage", h, s, a, values=fixed, lam=0.9,
                       rho_clip=1.0, c_clip=1.0, pg_rho_clip=2.0)[0]
    want = exact.vtrace_pg_fixed_point(m, pi, mu, rho_clip=1.0, pg_rho_clip=2.0)[s, a]
    assert abs(got - want) < 1e-9 * (1 + abs(want))


def test_T21_broken_target_advantage_claim_is_caught():
    m = mdp_mod.garnet(3, 2, 2, gamma=0.9, seed=0)
    mu, pi = pol_mod.random_policy(3, 2, seed=3), pol_mod.random_policy(3, 2, seed=4)
    fixed = exact.vtrace_fixed_point(m, pi, mu, 0.5)
    mom = moments.exact_moments(m, "vtrace", output="pg_advantage", behaviour=mu, target=pi,
                                horizon=5, values=fixed, rho_clip=0.5)
    wrong = np.minimum(0.5, pi / mu) * exact.a_pi(m, pi)  # "A^pi" instead of A^{pi_rhobar}
    assert np.abs(mom.mean_sa - wrong).max() > 0.01
    close(mom.mean_sa, exact.vtrace_pg_fixed_point(m, pi, mu, rho_clip=0.5), 1e-9)


# ---- Theorem 22: Retrace control converges to Q* ---------------------------------------------


def retrace_control(m, q0, lam, rng, iters, decay=0.7):
    """Q_{k+1} = R_k Q_k, pi_k = eps_k-greedy(Q_k), eps_k = decay^k / 2, mu_k a fresh random
    full-support policy each step, c_k = lam min(1, pi_k / mu_k). Yields (Q_k, pi_k, eps_k)."""
    S, A = m.shape
    q = q0
    for k in range(iters):
        eps = 0.5 * decay**k
        pi = pol_mod.epsilon_greedy(q, eps)
        mu = rng.dirichlet(np.ones(A), size=S)
        yield q, pi, eps
        q = exact.retrace_operator(m, pi, mu, q, exact.retrace_traces(pi, mu, lam))


def _check_retrace_control(m, lam, rng, iters):
    g = m.gamma
    q_star = exact.optimal_q(m)
    close(m.R + g * m.P_continue @ q_star.max(axis=1), q_star, 1e-10)  # T Q* = Q*
    q0 = np.full(m.shape, min(0.0, m.R.min()) / (1 - g))  # pessimistic: T^pi Q_0 >= Q_0
    prev = None
    tol = 1e-10 * (1 + np.abs(q_star).max())
    for q, pi, eps in retrace_control(m, q0, lam, rng, iters):
        assert np.all(exact.bellman_q(m, pi, q) >= q - tol)  # T^{pi_k} Q_k >= Q_k
        assert np.all(q <= q_star + tol)  # below the limit
        if prev is not None:
            assert np.all(q >= prev - tol)  # monotone
        prev = q
        # a posteriori (proofs/T22): ||Q* - Q|| <= ||T Q - Q|| / (1 - gamma) and
        # ||T Q - Q|| <= ||T^pi Q - Q|| + gamma eps max_s span Q(s, .)
        span = (q.max(axis=1) - q.min(axis=1)).max()
        certificate = (np.abs(exact.bellman_q(m, pi, q) - q).max() + g * eps * span) / (1 - g)
        assert np.abs(q_star - q).max() <= certificate + tol
    return certificate


@pytest.mark.parametrize("seed, lam, terminals", [(0, 1.0, 0), (1, 0.5, 1), (2, 1.0, 2),
                                                  (3, 0.0, 0)])
def test_T22_retrace_control_converges_to_q_star(seed, lam, terminals):
    m = mdp_mod.garnet(6, 3, 3, gamma=0.9, seed=seed, num_terminal=terminals)
    assert _check_retrace_control(m, lam, np.random.default_rng(seed), 250) < 1e-9


@given(strategies.mdps(max_states=4, max_actions=3, gamma=0.8), LAMS, SEEDS)
def test_T22_retrace_control_on_drawn_mdps(m, lam, seed):
    assert _check_retrace_control(m, lam, np.random.default_rng(seed), 150) < 1e-8


def test_T22_broken_fixed_target_does_not_reach_q_star():
    """Without greedification (pi_k = pi_0 for all k) the same iteration stops at Q^{pi_0}."""
    g = 0.9
    m = mdp_mod.garnet(6, 3, 3, gamma=g, seed=0)
    q = np.full(m.shape, min(0.0, m.R.min()) / (1 - g))
    pi0 = pol_mod.epsilon_greedy(q, 0.5)
    mu = pol_mod.random_policy(6, 3, seed=0)
    for _ in range(400):
        q = exact.retrace_operator(m, pi0, mu, q, exact.retrace_traces(pi0, mu, 1.0))
    assert np.abs(q - exact.optimal_q(m)).max() > 0.1
    close(q, exact.q_pi(m, pi0), 1e-9)
