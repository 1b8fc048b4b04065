"""Theorems 1, 3-11 and 13 of docs/DESIGN.md section 4 (one proofs/Tnn_*.md file each).

Naming rule (enforced by tests/test_proofs_index.py): every property test is called
``test_Tnn_...`` after the proofs/ file it checks. "moments" tests check offpolicy.moments
(the exact recursion); "reference" tests check estimators.numpy, exactly, by enumerating
every trajectory of a short segment (offpolicy.moments.enumerate_segments).
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from estimators import numpy as ref
from offpolicy import exact, moments, strategies
from offpolicy import mdp as mdp_mod

pytestmark = pytest.mark.property

LAMS = st.sampled_from([0.0, 0.3, 0.9, 1.0])
small_mdps = strategies.mdps(max_states=4, max_actions=3)


def close(a, b, tol=1e-9):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def enum_mean(m, mu, pi, est, out, h, s, a=None, values=None, q=None, **params):
    seg = moments.enumerate_segments(m, mu, h, start_state=s, start_action=a)
    x = seg.inputs(behaviour=mu, target=pi, values=values, q=q)
    x["states"] = seg.states
    y = moments.call_estimator(ref, est, x, gamma=m.gamma, output=out, **params)
    return seg.moments(np.asarray(y)[0])[0]


def cut_windows(term, trunc):
    """m_t: steps from t to the cut (first done at or after t, or the segment end), [T,B]."""
    T = term.shape[0]
    done = term | trunc
    m = np.zeros(term.shape, int)
    m[T - 1] = 1
    for t in range(T - 2, -1, -1):
        m[t] = np.where(done[t], 1, 1 + m[t + 1])
    return m


def td_errors(x, gamma):
    boot = np.where(x["terminated"], 0.0, x["next_values"])
    return x["rewards"] + gamma * boot - x["values"]


# ---- Theorem 1: GAE identities --------------------------------------------------------------


@given(strategies.trajectory_batches())
def test_T01_gae_lambda0_is_td_error(x):
    g = x["gamma"]
    adv = ref.gae(x["rewards"], x["values"], x["next_values"], x["terminated"], x["truncated"],
                  gamma=g, lam=0.0).advantages
    close(adv, td_errors(x, g))


@given(strategies.trajectory_batches(), LAMS)
def test_T01_gae_is_discounted_sum_of_td_errors_and_lambda1_is_return_to_cut(x, lam):
    g = x["gamma"]
    adv = ref.gae(x["rewards"], x["values"], x["next_values"], x["terminated"], x["truncated"],
                  gamma=g, lam=lam).advantages
    delta = td_errors(x, g)
    m = cut_windows(x["terminated"], x["truncated"])
    T, B = delta.shape
    for t in range(T):
        for b in range(B):
            k = np.arange(m[t, b])
            close(adv[t, b], np.sum((g * lam) ** k * delta[t + k, b]))
            if lam == 1.0:  # the discounted return to the cut, bootstrapped, minus V(s_t)
                last = t + m[t, b] - 1
                boot = 0.0 if x["terminated"][last, b] else x["next_values"][last, b]
                ret = np.sum(g**k * x["rewards"][t + k, b]) + g ** m[t, b] * boot
                close(adv[t, b], ret - x["values"][t, b])


@given(strategies.trajectory_batches(), LAMS)
def test_T01_gae_is_lambda_mixture_of_kstep_advantages(x, lam):
    g = x["gamma"]
    args = (x["terminated"], x["truncated"])
    adv = ref.gae(x["rewards"], x["values"], x["next_values"], *args, gamma=g,
                  lam=lam).advantages
    T = adv.shape[0]
    m = cut_windows(*args)
    ks = [ref.nstep_returns(x["rewards"], x["next_values"], *args, gamma=g, n=k) - x["values"]
          for k in range(1, T + 1)]
    for t in range(T):
        for b in range(adv.shape[1]):
            M = m[t, b]
            mix = sum((1 - lam) * lam ** (k - 1) * ks[k - 1][t, b] for k in range(1, M))
            close(adv[t, b], mix + lam ** (M - 1) * ks[M - 1][t, b])


@given(small_mdps, st.data(), st.integers(1, 6))
def test_T01_moments_gae_lambda1_is_nstep_and_lambda0_is_one_step(m, data, h):
    S, A = m.shape
    mu, pi = data.draw(strategies.policy_pairs(S, A))
    v = data.draw(strategies.value_estimates(m, mu))
    kw = dict(behaviour=mu, target=pi, horizon=h, values=v)
    g1 = moments.exact_moments(m, "gae", output="value", lam=1.0, **kw)
    n = moments.exact_moments(m, "nstep", n=h, **kw)
    close(g1.mean_sa, n.mean_sa)
    close(g1.var_sa, n.var_sa)
    g0 = moments.exact_moments(m, "gae", lam=0.0, **kw)
    one = moments.exact_moments(m, "gae", lam=0.7, **dict(kw, horizon=1))
    close(g0.mean_sa, one.mean_sa)
    close(g0.var_sa, one.var_sa)


# ---- Theorem 3: on-policy GAE with V^pi is unbiased for A^pi ---------------------------------


@given(small_mdps, st.data(), LAMS, st.integers(1, 8))
def test_T03_moments_gae_unbiased_for_a_pi(m, data, lam, h):
    S, A = m.shape
    pi = data.draw(strategies.policies(S, A))
    mom = moments.exact_moments(m, "gae", behaviour=pi, target=pi, horizon=h,
                                values=exact.v_pi(m, pi), lam=lam)
    close(mom.mean_sa, exact.a_pi(m, pi), 1e-8)


@given(small_mdps, st.data(), LAMS, st.integers(1, 3))
def test_T03_reference_gae_unbiased_for_a_pi(m, data, lam, h):
    S, A = m.shape
    pi = data.draw(strategies.policies(S, A))
    a_pi = exact.a_pi(m, pi)
    for s in range(S):
        for a in range(A):
            got = enum_mean(m, pi, pi, "gae", "advantage", h, s, a, values=exact.v_pi(m, pi),
                            lam=lam)
            assert abs(got - a_pi[s, a]) < 1e-8 * (1 + abs(a_pi[s, a]))


# ---- Theorem 4: V-trace on-policy is GAE; lambda = 1 gives the return to the cut -------------


@given(strategies.trajectory_batches(divergence="equal"), LAMS,
       st.sampled_from([1.0, 1.5, np.inf]), st.sampled_from([1.0, 2.0, np.inf]))
def test_T04_vtrace_on_policy_equals_gae(x, lam, rho_clip, c_clip):
    g = x["gamma"]
    base = (x["rewards"], x["values"], x["next_values"], x["terminated"], x["truncated"])
    vt = ref.vtrace(*base, x["log_rhos"], gamma=g, lam=lam, rho_clip=rho_clip, c_clip=c_clip)
    ga = ref.gae(*base, gamma=g, lam=lam)
    close(vt.advantages, ga.advantages)
    close(vt.value_targets, ga.returns)
    if lam == 1.0:
        T = x["rewards"].shape[0]
        n = ref.nstep_returns(x["rewards"], x["next_values"], x["terminated"], x["truncated"],
                              gamma=g, n=T)
        close(vt.value_targets, n)


@given(small_mdps, st.data(), LAMS, st.integers(1, 6))
def test_T04_moments_vtrace_on_policy_equals_gae(m, data, lam, h):
    S, A = m.shape
    pi = data.draw(strategies.policies(S, A))
    v = data.draw(strategies.value_estimates(m, pi))
    kw = dict(behaviour=pi, target=pi, horizon=h, values=v, lam=lam)
    vt = moments.exact_moments(m, "vtrace", output="advantage", rho_clip=1.0, c_clip=1.5, **kw)
    ga = moments.exact_moments(m, "gae", **kw)
    close(vt.mean_sa, ga.mean_sa)
    close(vt.var_sa, ga.var_sa)


# ---- Theorem 5: V-trace fixed point and modulus ---------------------------------------------


def _vtrace_pair(data, m):
    S, A = m.shape
    mu, pi = data.draw(strategies.policy_pairs(S, A, full_support_target=True))
    return mu, pi, data.draw(st.sampled_from([0.5, 1.0, 3.0])), \
        data.draw(st.sampled_from([0.0, 0.5, 1.0, 5.0]))


@given(small_mdps, st.data(), LAMS, st.integers(1, 6))
def test_T05_moments_vtrace_mean_is_truncated_operator(m, data, lam, h):
    mu, pi, rc, cc = _vtrace_pair(data, m)
    v = data.draw(strategies.value_estimates(m, mu))
    mom = moments.exact_moments(m, "vtrace", behaviour=mu, target=pi, horizon=h, values=v,
                                lam=lam, rho_clip=rc, c_clip=cc)
    op = exact.vtrace_operator(m, pi, mu, v, rho_clip=rc, c_clip=cc, lam=lam, n=h)
    live = ~m.terminal
    close(mom.mean_s[live], op[live], 1e-8)


@given(small_mdps, st.data(), LAMS, st.integers(1, 4))
def test_T05_vtrace_fixed_point_for_every_c_clip(m, data, lam, h):
    mu, pi, rc, cc = _vtrace_pair(data, m)
    fixed = exact.v_pi(m, exact.vtrace_policy(pi, mu, rc))
    mom = moments.exact_moments(m, "vtrace", behaviour=mu, target=pi, horizon=h,
                                values=fixed, lam=lam, rho_clip=rc, c_clip=cc)
    close(mom.mean_s, fixed, 1e-8)
    s = data.draw(st.integers(0, m.shape[0] - 1))
    got = enum_mean(m, mu, pi, "vtrace", "value", min(h, 3), s, values=fixed, lam=lam,
                    rho_clip=rc, c_clip=cc)
    assert abs(got - fixed[s]) < 1e-8 * (1 + abs(fixed[s]))


@given(small_mdps, st.data())
def test_T05_vtrace_modulus_bound(m, data):
    mu, pi, rc, cc = _vtrace_pair(data, m)
    S = m.shape[0]
    rho = pi / mu
    d_rho = (mu * np.minimum(rc, rho)).sum(axis=1)
    bound = 1 - (1 - m.gamma) * d_rho.min()
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    for _ in range(3):
        v1, v2 = rng.normal(size=(2, S)) * 3
        o1 = exact.vtrace_operator(m, pi, mu, v1, rho_clip=rc, c_clip=min(cc, rc))
        o2 = exact.vtrace_operator(m, pi, mu, v2, rho_clip=rc, c_clip=min(cc, rc))
        assert np.abs(o1 - o2).max() <= bound * np.abs(v1 - v2).max() + 1e-9


def test_T05_modulus_bound_needs_c_clip_at_most_rho_clip():
    """Counterexample (proofs/T05): with c_clip > rho_clip the bound, and contraction, fail."""
    m = mdp_mod.garnet(3, 2, 2, gamma=0.9, seed=0)
    rng = np.random.default_rng(0)
    mu, pi = rng.dirichlet(np.ones(2), size=3), rng.dirichlet(np.ones(2), size=3)
    rc, cc = 0.3, 5.0
    B = np.stack([exact.vtrace_operator(m, pi, mu, e, rho_clip=rc, c_clip=cc)
                  - exact.vtrace_operator(m, pi, mu, 0 * e, rho_clip=rc, c_clip=cc)
                  for e in np.eye(3)], axis=1)
    d_rho = (mu * np.minimum(rc, pi / mu)).sum(axis=1)
    assert 1 - (1 - m.gamma) * d_rho.min() < 1 < np.abs(B).sum(axis=1).max()
    # the fixed point is still V^{pi_rhobar}
    fixed = exact.vtrace_fixed_point(m, pi, mu, rc)
    close(exact.vtrace_operator(m, pi, mu, fixed, rho_clip=rc, c_clip=cc), fixed, 1e-8)


# ---- Theorem 6: Retrace / TB / IS fixed point Q^pi, modulus eta <= gamma; Q(lambda) fails ---


def _traces(kind, pi, mu, lam):
    if kind == "retrace":
        return exact.retrace_traces(pi, mu, lam)
    if kind == "tree_backup":
        return exact.tree_backup_traces(pi, lam)
    return exact.is_traces(pi, mu, lam)


@given(small_mdps, st.data(), LAMS, st.sampled_from(["retrace", "tree_backup",
                                                      "importance_sampling_q"]))
def test_T06_qtrace_fixed_point_and_modulus(m, data, lam, kind):
    S, A = m.shape
    mu, pi = data.draw(strategies.policy_pairs(S, A))
    c = _traces(kind, pi, mu, lam)
    qpi = exact.q_pi(m, pi)
    close(exact.retrace_operator(m, pi, mu, qpi, c), qpi, 1e-7)
    eta = exact.retrace_eta(m, mu, c)
    assert np.all(eta <= m.gamma + 1e-12)
    q = qpi + np.random.default_rng(0).normal(size=(S, A))
    err = np.abs(exact.retrace_operator(m, pi, mu, q, c) - qpi)
    assert np.all(err <= eta * np.abs(q - qpi).max() + 1e-8)
    # the sampled target with Q = Q^pi is unbiased at every horizon
    mom = moments.exact_moments(m, kind, behaviour=mu, target=pi, horizon=4, q=qpi, lam=lam)
    close(mom.mean_sa, qpi, 1e-7)


def test_T06_q_lambda_diverges_beyond_its_bound():
    m, pi, mu, lam = mdp_mod.q_lambda_counterexample()
    gamma = m.gamma
    eps = np.abs(pi - mu).sum(axis=1).max()
    assert lam > (1 - gamma) / (gamma * eps)
    qpi = exact.q_pi(m, pi)
    # iterate the operator through the sampled estimator's exact mean (long segment)
    q = qpi + np.array([[1.0, 1.0], [-1.0, -1.0]])
    for _ in range(12):
        q = moments.exact_moments(m, "q_lambda", behaviour=mu, target=pi, horizon=300, q=q,
                                  lam=lam).mean_sa
    assert np.abs(q - qpi).max() > 100  # |error| grows like 1.6^k
    # Retrace on the same problem contracts
    q = qpi + np.array([[1.0, 1.0], [-1.0, -1.0]])
    for _ in range(12):
        q = moments.exact_moments(m, "retrace", behaviour=mu, target=pi, horizon=300, q=q,
                                  lam=lam).mean_sa
    assert np.abs(q - qpi).max() < gamma**12
    # below the bound Q(lambda) contracts
    small = 0.9 * (1 - gamma) / (gamma * eps)
    B = exact.retrace_linear_part(m, pi, mu, exact.q_lambda_traces(pi, small))
    assert np.abs(B).sum(axis=1).max() < 1


# ---- Theorem 7: the sampled Q-trace mean is the truncated operator --------------------------


QTRACES = st.sampled_from(["retrace", "tree_backup", "q_lambda", "importance_sampling_q"])


@given(small_mdps, st.data(), LAMS, QTRACES, st.integers(1, 6))
def test_T07_moments_qtrace_mean_is_truncated_operator(m, data, lam, kind, h):
    S, A = m.shape
    mu, pi = data.draw(strategies.policy_pairs(S, A))
    q = data.draw(strategies.q_estimates(m, pi))
    c = exact.q_lambda_traces(pi, lam) if kind == "q_lambda" else _traces(kind, pi, mu, lam)
    mom = moments.exact_moments(m, kind, behaviour=mu, target=pi, horizon=h, q=q, lam=lam)
    close(mom.mean_sa, exact.retrace_operator(m, pi, mu, q, c, n=h), 1e-8)


@given(small_mdps, st.data(), LAMS, QTRACES, st.integers(1, 3))
def test_T07_reference_qtrace_mean_is_truncated_operator(m, data, lam, kind, h):
    S, A = m.shape
    mu, pi = data.draw(strategies.policy_pairs(S, A))
    q = data.draw(strategies.q_estimates(m, pi))
    c = exact.q_lambda_traces(pi, lam) if kind == "q_lambda" else _traces(kind, pi, mu, lam)
    op = exact.retrace_operator(m, pi, mu, q, c, n=h)
    for s in range(S):
        for a in range(A):
            got = enum_mean(m, mu, pi, kind, "target", h, s, a, q=q, lam=lam)
            assert abs(got - op[s, a]) < 1e-8 * (1 + abs(op[s, a]))


# ---- Theorem 8: per-decision IS is unbiased --------------------------------------------------


@given(small_mdps, st.data(), LAMS, st.integers(1, 6))
def test_T08_moments_pdis_unbiased_for_on_policy_return(m, data, lam, h):
    S, A = m.shape
    mu, pi = data.draw(strategies.policy_pairs(S, A))
    v = data.draw(strategies.value_estimates(m, mu))
    off = moments.exact_moments(m, "per_decision_is", behaviour=mu, target=pi, horizon=h,
                                values=v, lam=lam)
    on = moments.exact_moments(m, "gae", output="value", behaviour=pi, target=pi, horizon=h,
                               values=v, lam=lam)
    close(off.mean_s, on.mean_s, 1e-8)


@given(small_mdps, st.data(), LAMS, st.integers(1, 3))
def test_T08_reference_pdis_unbiased_for_on_policy_return(m, data, lam, h):
    S, A = m.shape
    mu, pi = data.draw(strategies.policy_pairs(S, A))
    v = data.draw(strategies.value_estimates(m, mu))
    on = moments.exact_moments(m, "gae", output="value", behaviour=pi, target=pi, horizon=h,
                               values=v, lam=lam)
    for s in range(S):
        got = enum_mean(m, mu, pi, "per_decision_is", "value", h, s, values=v, lam=lam)
        assert abs(got - on.mean_s[s]) < 1e-8 * (1 + abs(on.mean_s[s]))


# ---- Theorem 9: V-trace's clip level interpolates between V^mu and V^pi -----------------------


def _vtrace_fixed_point_of_mean(m, mu, pi, rc, h, lam):
    """Fixed point of V -> E[v_0 | s; V] (affine in V), from the exact moments."""
    S = m.shape[0]
    f = lambda v: moments.exact_moments(m, "vtrace", behaviour=mu, target=pi, horizon=h,
                                        values=v, lam=lam, rho_clip=rc, c_clip=1.0).mean_s
    c = f(np.zeros(S))
    M = np.stack([f(e) - c for e in np.eye(S)], axis=1)
    live = ~m.terminal
    sol = np.zeros(S)
    idx = np.flatnonzero(live)
    sol[idx] = np.linalg.solve(np.eye(len(idx)) - M[np.ix_(idx, idx)], c[idx])
    return sol


@given(small_mdps, st.data(), st.integers(1, 3), LAMS)
def test_T09_vtrace_clip_limits_are_v_pi_and_v_mu(m, data, h, lam):
    S, A = m.shape
    mu, pi = data.draw(strategies.policy_pairs(S, A, full_support_target=True))
    rho = pi / mu
    live = ~m.terminal
    high = _vtrace_fixed_point_of_mean(m, mu, pi, rho.max() * 1.01, h, lam)
    close(high[live], exact.v_pi(m, pi)[live], 1e-6)
    low = _vtrace_fixed_point_of_mean(m, mu, pi, rho.min() * 0.99, h, lam)
    close(low[live], exact.v_pi(m, mu)[live], 1e-6)


# ---- Theorem 10: n-step contraction ----------------------------------------------------------


@given(small_mdps, st.data(), st.integers(1, 5), st.integers(1, 6))
def test_T10_nstep_error_contracts_by_gamma_n(m, data, n, h):
    S, A = m.shape
    pi = data.draw(strategies.policies(S, A))
    v = data.draw(strategies.value_estimates(m, pi, kind="noisy"))
    vpi = exact.v_pi(m, pi)
    mom = moments.exact_moments(m, "nstep", behaviour=pi, target=pi, horizon=h, values=v, n=n)
    k = min(n, h)
    assert np.abs(mom.mean_s - vpi).max() <= m.gamma**k * np.abs(v - vpi).max() + 1e-9
    if h <= 3:
        s = data.draw(st.integers(0, S - 1))
        assert abs(enum_mean(m, pi, pi, "nstep", "value", h, s, values=v, n=n)
                   - mom.mean_s[s]) < 1e-9 * (1 + abs(mom.mean_s[s]))


# ---- Theorem 11: P3O with w_k = gamma^k and exact means is the truncated advantage -----------


def _truncated_advantage(m, pi, H):
    q = np.zeros(m.shape)
    for _ in range(H):
        q = m.R + m.gamma * np.einsum("ijk,k->ij", m.P_continue, (pi * q).sum(axis=1))
    return q - (pi * q).sum(axis=1, keepdims=True)


@given(strategies.mdps(max_states=4, max_actions=3, terminal=False), st.data(),
       st.integers(1, 4), st.integers(1, 6))
def test_T11_p3o_is_truncated_advantage(m, data, H, h):
    S, A = m.shape
    pi = data.draw(strategies.policies(S, A))
    means = moments.p3o_exact_means(m, pi, H)
    mom = moments.exact_moments(m, "p3o", behaviour=pi, target=pi, horizon=h, p3o_horizon=H,
                                means=means)
    close(mom.mean_sa, _truncated_advantage(m, pi, min(H, h)), 1e-8)
    if h <= 3:
        w = m.gamma ** np.arange(H)
        for s in range(S):
            got = enum_mean(m, pi, pi, "p3o", "advantage", h, s, 0, weights=w, means=means)
            assert abs(got - mom.mean_sa[s, 0]) < 1e-8


def test_T11_terminations_break_the_identity():
    """Counterexample (proofs/T11): the window stops at a termination, so mu_{t,k} is no longer
    subtracted there; with a terminal state inside H the identity fails."""
    P = np.zeros((2, 2, 2))
    P[0, 0, 1] = 1.0  # action 0 terminates
    P[0, 1, 0] = 1.0  # action 1 stays
    P[1, :, 1] = 1.0
    R = np.array([[1.0, 1.0], [0.0, 0.0]])
    m = mdp_mod.TabularMDP(P, R, 0.99, terminal=[1])
    pi = np.full((2, 2), 0.5)
    means = moments.p3o_exact_means(m, pi, 2)
    mom = moments.exact_moments(m, "p3o", behaviour=pi, target=pi, horizon=2, p3o_horizon=2,
                                means=means)
    truth = _truncated_advantage(m, pi, 2)
    close(truth[0], [-0.495, 0.495])
    close(mom.mean_sa[0], [0.0, 0.495])  # the terminating action's advantage is 0, not -0.495


# ---- Theorem 13: ordinary IS on Sutton & Barto's loop has unbounded variance -----------------


def test_T13_sutton_barto_second_moment_partial_sums():
    m = mdp_mod.sutton_barto_loop()
    pi, mu = mdp_mod.sutton_barto_policies()
    zero = np.zeros(2)
    for K, want in [(5, 4.47), (10, 89.0), (20, 31870)]:
        mom = moments.exact_moments(m, "per_decision_is", behaviour=mu, target=pi, horizon=K,
                                    values=zero, lam=1.0)
        close(mom.second_s[0], 0.25 * (1.8**K - 1), 1e-10)
        assert abs(mom.second_s[0] - want) <= 0.005 * want
    # the reference estimator, every trajectory of length 5
    seg = moments.enumerate_segments(m, mu, 5, start_state=0)
    x = seg.inputs(behaviour=mu, target=pi, values=zero)
    out = ref.per_decision_is(x["rewards"], x["values"], x["next_values"], x["terminated"],
                              x["truncated"], x["log_rhos"], gamma=1.0, lam=1.0).value_targets
    assert abs(seg.weight @ out[0] ** 2 - 0.25 * (1.8**5 - 1)) < 1e-10


def test_T13_clipping_bounds_the_second_moment():
    m = mdp_mod.sutton_barto_loop()
    pi, mu = mdp_mod.sutton_barto_policies()
    seconds = [moments.exact_moments(m, "vtrace", behaviour=mu, target=pi, horizon=K,
                                     values=np.zeros(2), rho_clip=1.0, c_clip=1.0).second_s[0]
               for K in (5, 10, 20, 100)]
    assert max(seconds) <= 1.0
    assert np.all(np.diff(seconds) >= -1e-12)
