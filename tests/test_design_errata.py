"""The errata of docs/DESIGN.md §5 (issue 13): each test checks the corrected statement and
fails on the old one, with numbers from offpolicy.exact / offpolicy.moments / the reference
estimators (never copied from the code under test: closed forms are derived in the docstrings).
"""

import numpy as np
import pytest

from estimators import numpy as ref
from offpolicy import exact, mdp, moments, policies


def _garnet_t05():
    """The T05 counterexample: garnet(3, 2, 2, gamma=0.9, seed=0), mu and pi from default_rng(0)."""
    m = mdp.garnet(3, 2, 2, gamma=0.9, seed=0)
    rng = np.random.default_rng(0)
    mu, pi = rng.dirichlet(np.ones(2), size=3), rng.dirichlet(np.ones(2), size=3)
    return m, pi, mu


# ---- §4.5: the V-trace modulus bound needs c_clip <= rho_clip ------------------------------


def test_vtrace_sup_norm_modulus_exceeds_bound_when_c_clip_above_rho_clip():
    m, pi, mu = _garnet_t05()
    bound = exact.vtrace_modulus_bound(m, pi, mu, rho_clip=0.3)
    assert bound == pytest.approx(0.992, abs=5e-4)
    # old statement (unconditional bound) fails at c_clip = 5 > rho_clip = 0.3 ...
    wide = exact.vtrace_modulus(m, pi, mu, rho_clip=0.3, c_clip=5.0).max()
    assert wide == pytest.approx(2.57, abs=5e-3) and wide > 1.0 > bound
    # ... and the corrected one holds at c_clip <= rho_clip
    for c_clip in (0.3, 0.1):
        assert exact.vtrace_modulus(m, pi, mu, rho_clip=0.3, c_clip=c_clip).max() <= bound + 1e-12


# ---- proofs/T05: the bracket of V-trace's linear part ----------------------------------------


@pytest.mark.parametrize("rho_clip, c_clip, lam", [(1.0, 1.0, 1.0), (0.3, 0.3, 0.7),
                                                   (0.3, 5.0, 1.0)])
def test_vtrace_linear_part_bracket(rho_clip, c_clip, lam):
    """L = (I - g P_c)^{-1} (I - D_rho + g P_rho - g P_c); the old text had
    (I - g P_c)^{-1}(g P_rho - g P_c) + I - (I - g P_c)^{-1} D_rho, off by -(I - g P_c)^{-1} g P_c.
    Checked against V V1 - V V2 from the operator itself (exact.vtrace_operator)."""
    m, pi, mu = _garnet_t05()
    g, eye = m.gamma, np.eye(3)
    rho = pi / mu
    Pc = g * exact.state_transition(m, mu, lam * np.minimum(c_clip, rho))
    Prho = g * exact.state_transition(m, mu, np.minimum(rho_clip, rho))
    D = np.diag((mu * np.minimum(rho_clip, rho)).sum(axis=1))
    inv = np.linalg.inv(eye - Pc)
    corrected = inv @ (eye - D + Prho - Pc)
    old = inv @ (Prho - Pc) + eye - inv @ D
    kw = dict(rho_clip=rho_clip, c_clip=c_clip, lam=lam)
    zero = exact.vtrace_operator(m, pi, mu, np.zeros(3), **kw)
    columns = np.stack([exact.vtrace_operator(m, pi, mu, e, **kw) - zero for e in eye], axis=1)
    np.testing.assert_allclose(corrected, columns, atol=1e-12)
    assert np.abs(old - columns).max() > 0.1  # 0.99, 0.17, 4.49 on these three settings
    if c_clip <= rho_clip:  # non-negative; row sums 1 - (1 - g) (I - g P_c)^{-1} d_rho
        assert corrected.min() >= -1e-15
        np.testing.assert_allclose(corrected.sum(axis=1), 1 - (1 - g) * inv @ np.diag(D),
                                   atol=1e-12)


# ---- Q^pi(lambda): the safety bound is sufficient, not necessary ------------------------------


def _q_lambda_linear_part(lam):
    m, pi, mu, _ = mdp.q_lambda_counterexample()
    return exact.retrace_linear_part(m, pi, mu, exact.q_lambda_traces(pi, lam))


def test_q_lambda_bound_is_sufficient_not_necessary():
    m, pi, mu, _ = mdp.q_lambda_counterexample()
    eps = np.abs(pi - mu).sum(axis=1).max()
    bound = (1 - m.gamma) / (m.gamma * eps)
    assert bound == pytest.approx(0.0694, abs=1e-4)
    lam = 0.08  # beyond the bound: "safe only if" says unsafe
    assert lam > bound
    B = _q_lambda_linear_part(lam)
    radius = np.abs(np.linalg.eigvals(B)).max()
    assert radius < 0.99 and np.abs(B).sum(axis=1).max() > 1.0  # converges, no sup contraction
    c = exact.q_lambda_traces(pi, lam)
    q_pi = exact.q_pi(m, pi)
    start = q_pi + np.array([[1.0, -1.0], [-1.0, 1.0]])  # on the slowest (antisymmetric) mode
    fp = exact.fixed_point_iteration(lambda q: exact.retrace_operator(m, pi, mu, q, c), start,
                                     tol=1e-11, max_iter=20000)
    np.testing.assert_allclose(fp, q_pi, atol=1e-8)
    # the exact threshold: the spectral radius crosses 1 at lam = 5/54 = 0.0926
    assert np.abs(np.linalg.eigvals(_q_lambda_linear_part(5 / 54))).max() == pytest.approx(
        1.0, abs=1e-9)
    assert np.abs(np.linalg.eigvals(_q_lambda_linear_part(0.092))).max() < 1.0
    assert np.abs(np.linalg.eigvals(_q_lambda_linear_part(0.093))).max() > 1.0


# ---- eta is the exact Retrace modulus only without terminal states ---------------------------


def test_eta_is_exact_only_without_terminal_states():
    sb = mdp.sutton_barto_loop()
    pi, mu = np.array([[0.9, 0.1], [0.5, 0.5]]), np.full((2, 2), 0.5)
    c = exact.retrace_traces(pi, mu, 1.0)
    eta = exact.retrace_eta(sb, mu, c)
    modulus = exact.retrace_modulus(sb, pi, mu, c)
    # (0, LEFT): x = 0.1 + 0.45 x + 0.09 (x_RIGHT = 1) -> modulus 1 - 0.19 / 0.55
    assert eta[0, 0] == pytest.approx(1.0) and modulus[0, 0] == pytest.approx(1 - 0.19 / 0.55)
    # the exact modulus with terminals: 1 - (I - g P^{c mu})^{-1} (1 - g P^pi 1)
    g = sb.gamma
    K = g * exact.sa_transition(sb, mu, c)
    lost = 1 - g * exact.sa_transition(sb, pi).sum(axis=1)
    exact_form = 1 - np.linalg.solve(np.eye(4) - K, lost)
    np.testing.assert_allclose(modulus.ravel(), exact_form, atol=1e-12)
    # without terminal states eta is exact
    m = mdp.garnet(4, 2, 2, gamma=0.9, seed=1)
    pi, mu = policies.random_policy(m, seed=5), policies.random_policy(m, seed=6)
    for c in (exact.retrace_traces(pi, mu, 0.8), exact.tree_backup_traces(pi, 1.0)):
        np.testing.assert_allclose(exact.retrace_modulus(m, pi, mu, c),
                                   exact.retrace_eta(m, mu, c), atol=1e-12)


# ---- Sutton & Barto Example 5.5: per-transition rewards and gamma = 1 ------------------------


def _pdis_second(m, K):
    pi, mu = mdp.sutton_barto_policies()
    return moments.exact_moments(m, "per_decision_is", behaviour=mu, target=pi, horizon=K,
                                 values=np.zeros(2), lam=1.0).second_s[0]


def test_sutton_barto_needs_per_transition_reward_and_gamma_one():
    sb = mdp.sutton_barto_loop()
    assert sb.gamma == 1.0
    assert sb.R_sas[0, mdp.LEFT, 1] == 1.0 and sb.R_sas[0, mdp.LEFT, 0] == 0.0
    assert _pdis_second(sb, 5) == pytest.approx(0.25 * (1.8**5 - 1), rel=1e-12)
    # the same expected rewards R[S,A] paid on every LEFT step: another second moment
    flat = mdp.TabularMDP(np.asarray(sb.P), np.asarray(sb.R), 1.0, initial=[1.0, 0.0],
                          terminal=[1])
    assert abs(_pdis_second(flat, 5) - _pdis_second(sb, 5)) > 1.0
    # gamma^2 * 1.8 < 1: the partial sums stay bounded (sum 0.2 g^(2j) 1.8^j)
    g = 0.7
    damped = sb.replace(gamma=g)
    limit = 0.2 / (1 - 1.8 * g**2)
    assert _pdis_second(damped, 40) < limit + 1e-12 and _pdis_second(damped, 40) > 0.9 * limit


# ---- T13: the partial sums and the clipped estimator's bias ----------------------------------


def test_sutton_barto_partial_sums_and_clipped_bias():
    sb = mdp.sutton_barto_loop()
    pi, mu = mdp.sutton_barto_policies()
    second5 = _pdis_second(sb, 5)
    assert round(second5, 3) == 4.474 and abs(second5 - 4.5) > 0.02  # not 4.5
    assert round(_pdis_second(sb, 10), 2) == 89.01 and round(_pdis_second(sb, 20), 1) == 31870.3
    for K in (1, 5, 10, 20, 100):
        clipped = moments.exact_moments(sb, "vtrace", behaviour=mu, target=pi, horizon=K,
                                        values=np.zeros(2), rho_clip=1.0, c_clip=1.0)
        pdis = moments.exact_moments(sb, "per_decision_is", behaviour=mu, target=pi, horizon=K,
                                     values=np.zeros(2), lam=1.0)
        # the clipped target is 1{all LEFT, terminated within K}: P = 0.05 sum_{j<K} 0.45^j
        mean = (1 - 0.45**K) / 11
        assert clipped.mean_s[0] == pytest.approx(mean, rel=1e-12)
        assert clipped.second_s[0] == pytest.approx(mean, rel=1e-12)  # a 0/1 variable
        assert pdis.mean_s[0] == pytest.approx(1 - 0.9**K, rel=1e-12)  # unbiased (truncated)
        bias = clipped.mean_s[0] - pdis.mean_s[0]
        assert bias == pytest.approx(mean - (1 - 0.9**K), rel=1e-12)
    assert bias == pytest.approx(-10 / 11, abs=1e-4)
    assert clipped.mean_s[0] == pytest.approx(exact.v_pi(sb, mu)[0], abs=1e-12)  # V^mu(0)


# ---- §4.10: the n-step contraction is on-policy with exponent min(n, h) ----------------------


def test_nstep_contraction_exponent_is_min_n_h_and_on_policy():
    m = mdp.garnet(4, 2, 2, gamma=0.9, seed=3)
    assert not m.terminal.any()
    pi, mu = policies.random_policy(m, seed=0), policies.random_policy(m, seed=1)
    v_pi = exact.v_pi(m, pi)
    # V = V^pi + 1: E G^{(n)} - V^pi = gamma^k P_pi^k 1 = gamma^k exactly, k = min(n, h)
    for n, h in [(5, 1), (5, 2), (5, 5), (2, 6)]:
        mom = moments.exact_moments(m, "nstep", behaviour=pi, target=pi, horizon=h,
                                    values=v_pi + 1.0, n=n)
        err = np.abs(mom.mean_s - v_pi).max()
        assert err == pytest.approx(m.gamma ** min(n, h), rel=1e-12)
    assert 0.9 > 0.9**5 + 0.3  # h = 1, n = 5: the old gamma^n bound (0.59) is violated
    # off-policy, uncorrected: V = V^pi and still an error
    mom = moments.exact_moments(m, "nstep", behaviour=mu, target=pi, horizon=5, values=v_pi,
                                n=5)
    assert np.abs(mom.mean_s - v_pi).max() > 0.1


# ---- GAE lambda = 1 and the V-trace pg identity need next_values[t] = values[t+1] -----------


def _tiny_batch(next_values):
    r = np.array([1.0, 0.0, 2.0])
    v = np.array([0.5, 1.0, -1.0])
    no = np.zeros(3, bool)
    return r, v, np.asarray(next_values, float), no, no


def test_gae_lambda1_and_vtrace_pg_identities_need_consistent_next_values():
    g = 0.9
    consistent = _tiny_batch([1.0, -1.0, 3.0])  # next_values[t] = values[t+1] for t < 2
    inconsistent = _tiny_batch([7.0, -1.0, 3.0])
    r, v, nv = consistent[0], consistent[1], consistent[2]
    ret = r[0] + g * r[1] + g**2 * r[2] + g**3 * nv[2] - v[0]
    adv, _ = ref.gae(*consistent, gamma=g, lam=1.0)
    assert adv[0] == pytest.approx(ret, rel=1e-12) and ret == pytest.approx(4.307)
    adv_bad, _ = ref.gae(*inconsistent, gamma=g, lam=1.0)
    assert adv_bad[0] - ret == pytest.approx(g * (7.0 - 1.0), rel=1e-12)  # 5.4, not 0
    for batch, same in ((consistent, True), (inconsistent, False)):
        gae, _ = ref.gae(*batch, gamma=g, lam=0.5)
        pg = ref.vtrace(*batch, np.zeros(3), gamma=g, lam=0.5).pg_advantages
        assert np.allclose(pg, gae, rtol=1e-12, atol=1e-12) == same


# ---- rlax: discount_t with lambda_t = 0 is a cut for the errors, not for pg_advantage ---------


def _rlax_style_vtrace(values, next_values, rewards, discount, lam, rho):
    """V-trace as rlax writes it (our derivation of its formulas, not its code): errors from the
    separate bootstrap array ``next_values`` with trace discount_t lam_t min(1, rho_t);
    pg from q_t = r_t + discount_t (lam_t target_{t+1} + (1 - lam_t) values[t+1]) for t < T-1,
    i.e. the (1 - lam) part bootstraps from the *next step's* value slot."""
    T = len(rewards)
    td = np.minimum(1.0, rho) * (rewards + discount * next_values - values)
    errors, acc = np.zeros(T), 0.0
    for t in reversed(range(T)):
        acc = td[t] + discount[t] * lam[t] * np.minimum(1.0, rho[t]) * acc
        errors[t] = acc
    targets = values + errors
    boot = np.append(lam[:-1] * targets[1:] + (1 - lam[:-1]) * values[1:], next_values[-1])
    pg = np.minimum(1.0, rho) * (rewards + discount * boot - values)
    return errors, pg


def test_rlax_lambda_zero_cut_is_exact_for_errors_not_for_pg():
    g = 0.9
    r = np.array([1.0, 0.5, 2.0])
    v = np.array([0.5, 1.0, -1.0])  # values[1] is the reset state after the truncation at t=0
    nv = np.array([4.0, -1.0, 3.0])  # next_values[0]: the final observation's value
    rho = np.array([0.8, 1.5, 0.6])
    term = np.zeros(3, bool)
    trunc = np.array([True, False, False])
    ours = ref.vtrace(r, v, nv, term, trunc, np.log(rho), gamma=g, lam=1.0)
    errors, pg = _rlax_style_vtrace(v, nv, r, np.full(3, g), np.array([0.0, 1.0, 1.0]), rho)
    np.testing.assert_allclose(errors, ours.advantages, rtol=1e-12)  # the cut is exact here
    np.testing.assert_allclose(pg[1:], ours.pg_advantages[1:], rtol=1e-12)
    # at the truncation rlax's pg bootstraps from values[1] (reset state), ours from V(s'_0)
    assert ours.pg_advantages[0] == pytest.approx(0.8 * (r[0] + g * nv[0] - v[0]))
    assert pg[0] == pytest.approx(0.8 * (r[0] + g * v[1] - v[0]))
    assert abs(pg[0] - ours.pg_advantages[0]) > 1.0


# ---- §1: per-step lam_t = 0 is a cut with bootstrap, as truncated[t] -------------------------


def test_per_step_lambda_zero_is_a_truncation():
    """docs/DESIGN.md §1: lam_t multiplies the trace from t into t+1 only, so lam_t = 0 with
    truncated = False gives every output of truncated[t] = True (V-trace pg included)."""
    rng = np.random.default_rng(0)
    T, B = 6, 3
    r, v, nv, q, nq = rng.normal(size=(5, T, B))
    log_rhos = rng.normal(size=(T, B)) * 0.5
    term = np.zeros((T, B), bool)
    term[4, 0] = True
    trunc = np.zeros((T, B), bool)
    trunc[2, 1] = True
    lam = np.full((T, B), 0.7)
    lam[2, 1] = 0.0
    gamma = np.linspace(0.5, 1.0, T)[:, None]  # per-step, shape (T, 1)
    no_trunc = np.zeros_like(trunc)
    cut = ref.vtrace(r, v, nv, term, trunc, log_rhos, gamma=gamma, lam=0.7)
    lam0 = ref.vtrace(r, v, nv, term, no_trunc, log_rhos, gamma=gamma, lam=lam)
    for a, b in zip(cut, lam0, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        ref.retrace(r, q, nq, term, trunc, log_rhos, gamma=gamma, lam=0.7),
        ref.retrace(r, q, nq, term, no_trunc, log_rhos, gamma=gamma, lam=lam), rtol=1e-12)
    # gamma_t multiplies the bootstrap of step t: one step, gamma_0 = 0.5
    adv, _ = ref.gae(r[:1], v[:1], nv[:1], term[:1], trunc[:1], gamma=gamma[:1], lam=1.0)
    np.testing.assert_allclose(adv, r[:1] + 0.5 * nv[:1] - v[:1], rtol=1e-12)
