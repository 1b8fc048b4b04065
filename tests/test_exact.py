"""Exact tabular quantities (offpolicy.exact), each checked two independent ways:
linear solve vs iterating the operator, and operator output vs the Monte Carlo mean of the
sampler's trajectories (within 5 standard errors, fixed seeds)."""

import numpy as np
import pytest

from offpolicy import exact, mdp, policies, sampler


def _garnet():
    return mdp.garnet(5, 2, 3, gamma=0.85, seed=2, reward_std=0.5, num_terminal=1)


def _setups():
    """(mdp, target, behaviour) triples: stochastic Garnet with a terminal state, a gridworld,
    and the gamma = 1 Sutton & Barto loop."""
    g = _garnet()
    yield "garnet", g, policies.random_policy(g, seed=0), policies.random_policy(g, seed=1)
    w = mdp.gridworld(3, 2, slip=0.2, gamma=0.9, step_reward=-0.1)
    pi_w = policies.softmax(exact.q_pi(w, policies.uniform_policy(w)), 0.3)
    yield "grid", w, pi_w, policies.uniform_policy(w)
    sb = mdp.sutton_barto_loop()
    t, b = mdp.sutton_barto_policies()
    yield "sutton_barto", sb, np.array([[0.9, 0.1], [0.5, 0.5]]), b


SETUPS = list(_setups())
IDS = [s[0] for s in SETUPS]


def _iterate(op, x0):
    return exact.fixed_point_iteration(op, x0, tol=1e-11, max_iter=20000)


# ---- values ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name, m, pi, mu", SETUPS, ids=IDS)
def test_values_solve_vs_iteration(name, m, pi, mu):
    q = exact.q_pi(m, pi)
    v = exact.v_pi(m, pi)
    q_it = _iterate(lambda x: exact.bellman_q(m, pi, x), np.zeros(m.shape))
    v_it = _iterate(lambda x: exact.bellman_v(m, pi, x), np.zeros(m.num_states))
    np.testing.assert_allclose(q, q_it, atol=1e-8)
    np.testing.assert_allclose(v, v_it, atol=1e-8)
    # the state-action linear system of docs/DESIGN.md §3
    S, A = m.shape
    q_sa = np.linalg.solve(np.eye(S * A) - m.gamma * exact.sa_transition(m, pi), m.R.ravel())
    np.testing.assert_allclose(q, q_sa.reshape(S, A), atol=1e-10)
    np.testing.assert_allclose(v, (pi * q).sum(1), atol=1e-10)
    np.testing.assert_allclose((pi * exact.a_pi(m, pi)).sum(1), 0.0, atol=1e-10)
    assert np.all(v[m.terminal] == 0) and np.all(q[m.terminal] == 0)


def test_sutton_barto_values():
    m = mdp.sutton_barto_loop()
    target, behaviour = mdp.sutton_barto_policies()
    np.testing.assert_allclose(exact.q_pi(m, target), [[1.0, 0.0], [0.0, 0.0]], atol=1e-12)
    # uniform: V = 0.5 * (0.1 + 0.9 V) -> V = 0.05 / 0.55
    np.testing.assert_allclose(exact.v_pi(m, behaviour)[0], 0.05 / 0.55)


def _ordinary_is_second_moments(m, target, behaviour, K):
    """E_mu[(rho_{0:L} G)^2 1{L <= k}] for k = 1..K (undiscounted episode of length L), by a
    backward recursion on the moments (rho^2, rho^2 G, rho^2 G^2) of the remaining episode."""
    w = (target**2 / np.where(behaviour > 0, behaviour, 1.0))[:, :, None] * m.P  # mu rho^2 P
    r = m.R_sas
    term = m.terminal[None, None, :]
    f0 = f1 = f2 = np.zeros(m.num_states)
    out = []
    for _ in range(K):
        f0, f1, f2 = (
            (w * np.where(term, 1.0, f0[None, None, :])).sum((1, 2)),
            (w * np.where(term, r, r * f0 + f1)).sum((1, 2)),
            (w * np.where(term, r**2, r**2 * f0 + 2 * r * f1 + f2)).sum((1, 2)),
        )
        out.append(m.initial @ f2)
    return np.array(out)


def test_sutton_barto_ordinary_is_second_moment():
    """docs/DESIGN.md §4.13: partial sums 0.25 (1.8^K - 1): 4.47, 89.0, 31 870 at K = 5, 10, 20."""
    m = mdp.sutton_barto_loop()
    target, behaviour = mdp.sutton_barto_policies()
    sums = _ordinary_is_second_moments(m, target, behaviour, 20)
    K = np.arange(1, 21)
    np.testing.assert_allclose(sums, 0.25 * (1.8**K - 1), rtol=1e-12)
    assert round(sums[4], 2) == 4.47 and round(sums[9], 1) == 89.0 and round(sums[19]) == 31870
    # Monte Carlo: episodes from the sampler, (rho G)^2 over those of length <= 5
    T, B = 5, 200_000
    b = sampler.sample(m, behaviour, T=T, B=B, seed=0, target=target)
    first_done = np.argmax(b.terminated, axis=0)
    ended = b.terminated.any(axis=0)
    t = np.arange(T)[:, None]
    in_ep = t <= first_done[None, :]
    rho = np.exp(np.where(in_ep, b.log_rhos, 0.0).sum(0))
    G = np.where(in_ep, b.rewards, 0.0).sum(0)
    x = np.where(ended, (rho * G) ** 2, 0.0)
    assert abs(x.mean() - sums[4]) < 5 * x.std() / np.sqrt(B)
    # first moment: V^pi(0) = 1 restricted to episodes of length <= 5 is 1 - 0.9^5
    y = np.where(ended, rho * G, 0.0)
    assert abs(y.mean() - (1 - 0.9**5)) < 5 * y.std() / np.sqrt(B)


@pytest.mark.parametrize("name, m, pi, mu", SETUPS, ids=IDS)
def test_state_distribution(name, m, pi, mu):
    d = exact.state_distribution(m, mu)
    assert np.isclose(d.sum(), 1.0) and np.all(d[m.terminal] == 0) and np.all(d >= 0)
    # iterate the flow equation x = initial + gamma P_mu^T x, then normalise
    Pmu = exact.state_transition(m, mu)
    x = _iterate(lambda x: m.initial + m.gamma * Pmu.T @ x, np.zeros(m.num_states))
    np.testing.assert_allclose(d, x / x.sum(), atol=1e-9)


def test_state_distribution_monte_carlo():
    m = _garnet()
    mu = policies.random_policy(m, seed=1)
    T, B = 80, 20000
    b = sampler.sample(m, mu, T=T, B=B, seed=5)
    alive = np.cumprod(np.vstack([np.ones((1, B), bool), ~b.terminated[:-1]]), axis=0)
    w = (m.gamma ** np.arange(T))[:, None] * alive
    counts = np.zeros((B, m.num_states))
    np.add.at(counts, (np.broadcast_to(np.arange(B), (T, B)), b.states), w)
    mean = counts.mean(0)
    se = counts.std(0) / np.sqrt(B)
    expected = exact.state_distribution(m, mu) * mean.sum()  # unnormalised visit mass
    z = np.abs(mean - expected) / np.maximum(se, 1e-12)
    assert z.max() < 5


# ---- lambda operator ------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("name, m, pi, mu", SETUPS, ids=IDS)
def test_lambda_operator(name, m, pi, mu, lam):
    rng = np.random.default_rng(0)
    v0 = rng.normal(size=m.num_states)
    out = exact.lambda_operator(m, pi, v0, lam)
    # (1 - lam) sum_n lam^n (T^pi)^{n+1} V, summed until the tail is negligible
    acc, tv, weight = np.zeros_like(v0), v0, 1.0
    if lam == 1.0:
        acc = exact.v_pi(m, pi)
    while lam < 1.0 and weight > 1e-15:
        tv = exact.bellman_v(m, pi, tv)
        acc += (1 - lam) * weight * tv
        weight *= lam
    np.testing.assert_allclose(out, acc, atol=1e-8)
    # fixed point V^pi, and contraction within the modulus
    v_fp = _iterate(lambda v: exact.lambda_operator(m, pi, v, lam), np.zeros(m.num_states))
    np.testing.assert_allclose(v_fp, exact.v_pi(m, pi), atol=1e-8)
    v1 = rng.normal(size=m.num_states)
    ratio = np.abs(exact.lambda_operator(m, pi, v1, lam) - out).max() / np.abs(v1 - v0).max()
    assert ratio <= exact.lambda_modulus(m, lam) + 1e-12


# ---- Retrace family ------------------------------------------------------------------------


def _traces(pi, mu):
    return {
        "retrace": exact.retrace_traces(pi, mu, 0.9),
        "tree_backup": exact.tree_backup_traces(pi, 1.0),
        "importance_sampling": exact.is_traces(pi, mu, 0.7),
        "q_lambda_safe": exact.q_lambda_traces(pi, 0.05),
    }


@pytest.mark.parametrize("name, m, pi, mu", SETUPS, ids=IDS)
def test_retrace_family_fixed_point_is_q_pi(name, m, pi, mu):
    q_pi = exact.q_pi(m, pi)
    rng = np.random.default_rng(1)
    for label, c in _traces(pi, mu).items():
        if label == "q_lambda_safe" and not (
            0.05 < (1 - m.gamma) / (m.gamma * np.abs(pi - mu).sum(1).max())
        ):
            continue
        q0 = rng.normal(size=m.shape)
        full = exact.retrace_operator(m, pi, mu, q0, c)
        np.testing.assert_allclose(full, exact.retrace_operator(m, pi, mu, q0, c, n=3000),
                                   atol=1e-8, err_msg=label)
        fp = _iterate(lambda q, c=c: exact.retrace_operator(m, pi, mu, q, c), q0)
        np.testing.assert_allclose(fp, q_pi, atol=1e-8, err_msg=label)
        np.testing.assert_allclose(exact.retrace_operator(m, pi, mu, q_pi, c), q_pi, atol=1e-10)


@pytest.mark.parametrize("name, m, pi, mu", SETUPS, ids=IDS)
def test_retrace_family_modulus(name, m, pi, mu):
    rng = np.random.default_rng(2)
    for label, c in _traces(pi, mu).items():
        eta = exact.retrace_modulus(m, pi, mu, c)
        if label != "q_lambda_safe":  # 0 <= c <= pi / mu
            bound = exact.retrace_eta(m, mu, c)
            assert np.all(eta <= bound + 1e-12), label
            assert np.all(bound <= m.gamma + 1e-12), label
        B = exact.retrace_linear_part(m, pi, mu, c)
        for _ in range(20):
            q1, q2 = rng.normal(size=m.shape), rng.normal(size=m.shape)
            diff = exact.retrace_operator(m, pi, mu, q1, c) - exact.retrace_operator(
                m, pi, mu, q2, c)
            assert np.all(np.abs(diff) <= eta * np.abs(q1 - q2).max() + 1e-10), label
        # tight: the worst direction attains eta exactly
        i = int(np.argmax(eta))
        delta = np.sign(B[i]).reshape(m.shape)
        q1 = rng.normal(size=m.shape)
        diff = exact.retrace_operator(m, pi, mu, q1 + delta, c) - exact.retrace_operator(
            m, pi, mu, q1, c)
        assert abs(np.abs(diff).ravel()[i] - eta.ravel()[i]) < 1e-10, label
        # n-step modulus
        eta_n = exact.retrace_modulus(m, pi, mu, c, n=3)
        q1, q2 = rng.normal(size=m.shape), rng.normal(size=m.shape)
        diff = exact.retrace_operator(m, pi, mu, q1, c, n=3) - exact.retrace_operator(
            m, pi, mu, q2, c, n=3)
        assert np.all(np.abs(diff) <= eta_n * np.abs(q1 - q2).max() + 1e-10)


def _sampled_q_trace(m, b, q, c):
    """G_0 - ... of docs/DESIGN.md §2's action-value trace over the whole batch (T = n, no cuts but
    terminations): Q(s_0, a_0) + sum_t gamma^t prod_{i=1..t} c(s_i, a_i) delta_t."""
    T, B = b.states.shape
    delta = b.rewards + m.gamma * np.where(b.terminated, 0.0, b.next_expected_q) - b.q_taken
    c_t = c[b.states, b.actions]
    coef = np.ones(B)
    alive = np.ones(B, bool)
    out = b.q_taken[0].copy()
    for t in range(T):
        if t > 0:
            coef = coef * m.gamma * c_t[t]
        out += np.where(alive, coef * delta[t], 0.0)
        alive &= ~b.terminated[t]
    return out


def _grouped_z(x, groups, expected_flat):
    z = []
    for g in np.unique(groups):
        sel = x[groups == g]
        z.append(abs(sel.mean() - expected_flat[g]) / (sel.std() / np.sqrt(sel.size) + 1e-12))
    return max(z)


@pytest.mark.parametrize("label", ["retrace", "tree_backup", "importance_sampling",
                                   "q_lambda_safe"])
def test_retrace_family_n_step_matches_monte_carlo(label):
    """docs/DESIGN.md §4.7: the sampled Q-trace target's mean is the n-step truncated operator."""
    m = _garnet()
    pi, mu = policies.random_policy(m, seed=0), policies.random_policy(m, seed=1, min_prob=0.1)
    c = _traces(pi, mu)[label]
    q = np.random.default_rng(3).normal(size=m.shape)
    n = 6
    b = sampler.sample(m, mu, T=n, B=40000, seed=4, target=pi, q=q)
    x = _sampled_q_trace(m, b, q, c)
    expected = exact.retrace_operator(m, pi, mu, q, c, n=n)
    groups = b.states[0] * m.num_actions + b.actions[0]
    assert _grouped_z(x, groups, expected.ravel()) < 5


def test_q_pi_monte_carlo():
    """On-policy n-step sums of rewards from (s_0, a_0) against the exact truncated Q^pi and,
    as n grows, Q^pi itself."""
    m = _garnet()
    pi = policies.random_policy(m, seed=0)
    n = 40
    b = sampler.sample(m, pi, T=n, B=30000, seed=6, q=np.zeros(m.shape))
    x = _sampled_q_trace(m, b, np.zeros(m.shape), np.ones(m.shape))
    groups = b.states[0] * m.num_actions + b.actions[0]
    assert _grouped_z(x, groups, exact.q_pi(m, pi).ravel()) < 5  # gamma^40 ~ 1.5e-3 bias


# the unstable mode of the counterexample's Q^pi(lambda) operator (lam = 0.5): B v = -117/73 v
# for v = [[1, -1], [-1, 1]] and u^T B = -117/73 u^T for u = [[4, -9], [-4, 9]] (exact
# rationals; rows are states, columns STAY/SWITCH)
_UNSTABLE = -117 / 73
_V_UNSTABLE = np.array([[1.0, -1.0], [-1.0, 1.0]])
_U_UNSTABLE = np.array([[4.0, -9.0], [-4.0, 9.0]])


def test_q_lambda_counterexample_diverges():
    """Divergence is driven by a known component on the unstable eigenvector, never by round-off.

    Q^pi = [[9, 10], [9, 10]] is the same in both states, so Q = 0 has *no* component on the
    unstable (antisymmetric) mode: iterating from 0 diverges only through round-off, and on
    some CPUs (AVX-512) it converged. Here the start is Q^pi + 0.5 v + w with w on the stable
    modes, and the component u.(Q_k - Q^pi) / u.v is compared with 0.5 (-117/73)^k."""
    m, pi, mu, lam = mdp.q_lambda_counterexample()
    c = exact.q_lambda_traces(pi, lam)
    q_pi = exact.q_pi(m, pi)
    np.testing.assert_allclose(q_pi, [[9.0, 10.0], [9.0, 10.0]], rtol=1e-12)
    np.testing.assert_allclose(exact.retrace_operator(m, pi, mu, q_pi, c), q_pi, atol=1e-12)
    B = exact.retrace_linear_part(m, pi, mu, c)
    v, u = _V_UNSTABLE.ravel(), _U_UNSTABLE.ravel()
    np.testing.assert_allclose(B @ v, _UNSTABLE * v, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(u @ B, _UNSTABLE * u, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.abs(np.linalg.eigvals(B)).max(), 117 / 73, rtol=1e-12)
    # why the old start was fragile: 0 - Q^pi is orthogonal to the unstable left eigenvector
    assert abs(u @ (0 - q_pi).ravel()) < 1e-9
    # a start with a known unstable component (0.5) plus a stable part (u.w = 0)
    w = np.array([[1.0, 1.0], [1.0, 1.0]])
    assert u @ w.ravel() == 0.0
    q = q_pi + 0.5 * _V_UNSTABLE + w
    scale = u @ v
    for k in range(1, 31):
        q = exact.retrace_operator(m, pi, mu, q, c)
        component = u @ (q - q_pi).ravel() / scale
        # exact arithmetic gives 0.5 (-117/73)^k; float error is ~1e-15 relative per step
        assert component == pytest.approx(0.5 * _UNSTABLE**k, rel=1e-9), k
    assert np.abs(q - q_pi).max() >= 0.5 * (117 / 73) ** 30 * (1 - 1e-6) > 1e5
    # the whole error is on v by now (the stable part decays like 0.82^k)
    np.testing.assert_allclose(q - q_pi, 0.5 * _UNSTABLE**30 * _V_UNSTABLE, rtol=1e-6)
    with pytest.raises(RuntimeError, match="overflow|no convergence"):
        exact.fixed_point_iteration(lambda x: exact.retrace_operator(m, pi, mu, x, c),
                                    q_pi + 1e-3 * _V_UNSTABLE, max_iter=300)
    # below the safety bound (1 - gamma) / (gamma eps) = 0.069 it converges; Retrace always does
    for c_safe in (exact.q_lambda_traces(pi, 0.06), exact.retrace_traces(pi, mu, 1.0)):
        fp = _iterate(lambda x, c=c_safe: exact.retrace_operator(m, pi, mu, x, c),
                      q_pi + _V_UNSTABLE)
        np.testing.assert_allclose(fp, q_pi, atol=1e-8)


# ---- V-trace --------------------------------------------------------------------------------


@pytest.mark.parametrize("name, m, pi, mu", SETUPS, ids=IDS)
def test_vtrace_fixed_point_and_modulus(name, m, pi, mu):
    rng = np.random.default_rng(7)
    rho_max = float(np.max(np.where(pi > 0, pi / mu, 0)))
    for rho_clip in (0.5, 1.0, rho_max + 1.0):
        v_star = exact.vtrace_fixed_point(m, pi, mu, rho_clip)
        bound = exact.vtrace_modulus_bound(m, pi, mu, rho_clip=rho_clip)
        for c_clip in (0.3, 1.0, rho_clip):
            for lam in (0.5, 1.0):
                kw = dict(rho_clip=rho_clip, c_clip=c_clip, lam=lam)
                v0 = rng.normal(size=m.num_states)
                fp = _iterate(lambda v, kw=kw: exact.vtrace_operator(m, pi, mu, v, **kw), v0)
                np.testing.assert_allclose(fp, v_star, atol=1e-8, err_msg=str(kw))
                full = exact.vtrace_operator(m, pi, mu, v0, **kw)
                np.testing.assert_allclose(
                    full, exact.vtrace_operator(m, pi, mu, v0, n=3000, **kw), atol=1e-8)
                mod = exact.vtrace_modulus(m, pi, mu, **kw)
                if c_clip <= rho_clip:
                    assert mod.max() <= bound + 1e-12, kw
                v1 = rng.normal(size=m.num_states)
                diff = np.abs(exact.vtrace_operator(m, pi, mu, v1, **kw) - full)
                assert np.all(diff <= mod * np.abs(v1 - v0).max() + 1e-10), kw
    # rho_clip >= max pi/mu gives V^pi exactly
    np.testing.assert_allclose(exact.vtrace_fixed_point(m, pi, mu, rho_max), exact.v_pi(m, pi),
                               atol=1e-12)


def test_vtrace_bound_needs_c_clip_at_most_rho_clip():
    """IMPALA's modulus bound assumes c_clip <= rho_clip; beyond it the sup-norm modulus can
    exceed 1, though here the spectral radius stays below 1 and the fixed point is unchanged."""
    m = mdp.garnet(4, 2, 2, seed=0, gamma=0.9)
    pi = policies.random_policy(m, seed=1000, concentration=0.3)
    mu = policies.random_policy(m, seed=2000, min_prob=0.05)
    kw = dict(rho_clip=0.2, c_clip=20.0)
    assert exact.vtrace_modulus(m, pi, mu, **kw).max() > 1.0 > exact.vtrace_modulus_bound(
        m, pi, mu, rho_clip=0.2)
    L = exact.vtrace_linear_part(m, pi, mu, **kw)
    assert np.abs(np.linalg.eigvals(L)).max() < 1.0
    fp = _iterate(lambda v: exact.vtrace_operator(m, pi, mu, v, **kw), np.zeros(4))
    np.testing.assert_allclose(fp, exact.vtrace_fixed_point(m, pi, mu, 0.2), atol=1e-8)


def test_vtrace_small_rho_clip_gives_v_mu():
    m = _garnet()
    pi, mu = policies.random_policy(m, seed=0), policies.random_policy(m, seed=1)
    np.testing.assert_allclose(exact.vtrace_fixed_point(m, pi, mu, 1e-9), exact.v_pi(m, mu),
                               atol=1e-6)


@pytest.mark.parametrize("rho_clip, c_clip, lam", [(1.0, 1.0, 1.0), (2.0, 0.5, 0.8),
                                                   (0.7, 0.7, 0.95)])
def test_vtrace_n_step_matches_monte_carlo(rho_clip, c_clip, lam):
    m = _garnet()
    pi, mu = policies.random_policy(m, seed=0), policies.random_policy(m, seed=1, min_prob=0.1)
    v = np.random.default_rng(8).normal(size=m.num_states)
    n = 6
    b = sampler.sample(m, mu, T=n, B=40000, seed=9, target=pi, values=v)
    rho = np.exp(b.log_rhos)
    rho_hat, c_hat = np.minimum(rho_clip, rho), lam * np.minimum(c_clip, rho)
    delta = rho_hat * (b.rewards + m.gamma * np.where(b.terminated, 0.0, b.next_values)
                       - b.values)
    x = b.values[0].copy()
    coef = np.ones(b.states.shape[1])
    alive = np.ones_like(coef, bool)
    for t in range(n):
        x += np.where(alive, coef * delta[t], 0.0)
        coef = coef * m.gamma * c_hat[t]
        alive &= ~b.terminated[t]
    expected = exact.vtrace_operator(m, pi, mu, v, rho_clip=rho_clip, c_clip=c_clip, lam=lam,
                                     n=n)
    assert _grouped_z(x, b.states[0], expected) < 5


def _report_linear_part(m, pi, mu, rho_hat, c_hat, T):
    """The n-step V-trace-family linear part as the report built it before
    ``vtrace_linear_part(n=)`` existed (offpolicy/report/compute.py, 0.1): its own loop."""
    g = m.gamma
    Pc = g * exact.state_transition(m, mu, c_hat)
    B = g * exact.state_transition(m, mu, rho_hat) - np.diag((mu * rho_hat).sum(axis=1))
    L = np.eye(m.num_states)
    term = B
    for _ in range(T):
        L = L + term
        term = Pc @ term
    L[m.terminal] = 0.0
    return L


@pytest.mark.parametrize("name, m, pi, mu", SETUPS, ids=IDS)
@pytest.mark.parametrize("rho_clip, c_clip, lam", [(1.0, 1.0, 0.9), (2.0, 0.5, 1.0),
                                                   (np.inf, np.inf, 0.8)])
def test_vtrace_linear_part_n_step(name, m, pi, mu, rho_clip, c_clip, lam):
    """``vtrace_linear_part(n=)``: the report's former construction; n = 1 is the one-step
    operator ``I + gamma P_rho - D_rho``, built here from P, pi and mu; it is the exact linear
    part of ``vtrace_operator(n=)`` (an identity of affine maps); and it tends to the
    lambda-return limit ``n = None`` as n grows."""
    kw = dict(rho_clip=rho_clip, c_clip=c_clip, lam=lam)
    rho = np.where(mu > 0, pi / np.where(mu > 0, mu, 1.0), 0.0)
    rho_hat, c_hat = np.minimum(rho_clip, rho), lam * np.minimum(c_clip, rho)
    for n in (1, 2, 7):
        np.testing.assert_allclose(exact.vtrace_linear_part(m, pi, mu, n=n, **kw),
                                   _report_linear_part(m, pi, mu, rho_hat, c_hat, n),
                                   rtol=1e-12, atol=1e-13)
    S = m.num_states
    one_step = np.eye(S) - np.diag((mu * rho_hat).sum(axis=1))
    for s in range(S):
        for a in range(m.num_actions):
            one_step[s] += m.gamma * mu[s, a] * rho_hat[s, a] * m.P_continue[s, a]
    one_step[m.terminal] = 0.0
    np.testing.assert_allclose(exact.vtrace_linear_part(m, pi, mu, n=1, **kw), one_step,
                               atol=1e-14)
    rng = np.random.default_rng(3)
    v1, v2 = rng.normal(size=(2, S))
    for n in (1, 4):
        diff = (exact.vtrace_operator(m, pi, mu, v1, n=n, **kw)
                - exact.vtrace_operator(m, pi, mu, v2, n=n, **kw))
        np.testing.assert_allclose(diff, exact.vtrace_linear_part(m, pi, mu, n=n, **kw)
                                   @ (v1 - v2), atol=1e-10)
    Pc = m.gamma * exact.state_transition(m, mu, c_hat)
    if exact.spectral_radius(Pc) < 0.99:
        limit = exact.vtrace_linear_part(m, pi, mu, **kw)
        far = exact.vtrace_linear_part(m, pi, mu, n=3000, **kw)
        np.testing.assert_allclose(far, limit, atol=1e-9)
        near = exact.vtrace_linear_part(m, pi, mu, n=2, **kw)
        assert np.abs(near - limit).max() > 1e-6  # the truncation is not the limit already
    np.testing.assert_allclose(exact.vtrace_modulus(m, pi, mu, n=3, **kw),
                               np.abs(exact.vtrace_linear_part(m, pi, mu, n=3, **kw)).sum(1))


def test_vtrace_infinite_clip_levels_mean_no_clipping():
    m = _garnet()
    pi, mu = policies.random_policy(m, seed=0), policies.random_policy(m, seed=1, min_prob=0.1)
    big = float((pi / mu).max()) + 1.0
    for fn in (lambda rc, cc: exact.vtrace_linear_part(m, pi, mu, rho_clip=rc, c_clip=cc),
               lambda rc, cc: exact.vtrace_linear_part(m, pi, mu, rho_clip=rc, c_clip=cc, n=3),
               lambda rc, cc: exact.vtrace_policy(pi, mu, rc)):
        np.testing.assert_allclose(fn(np.inf, np.inf), fn(big, big), rtol=1e-13, atol=1e-15)
    with pytest.raises(ValueError, match="^rho_clip"):
        exact.vtrace_linear_part(m, pi, mu, rho_clip=np.nan)
    with pytest.raises(ValueError, match="^c_clip"):
        exact.vtrace_linear_part(m, pi, mu, c_clip=-np.inf)


# ---- bad inputs ------------------------------------------------------------------------------


def _bad_calls():
    m = _garnet()
    pi, mu = policies.random_policy(m, seed=0), policies.random_policy(m, seed=1)
    q, v = np.zeros(m.shape), np.zeros(m.num_states)
    c = np.ones(m.shape)
    zero_mu = mu.copy()
    zero_mu[0] = [1.0, 0.0]
    unnorm = pi * 1.1
    return [
        (lambda: exact.v_pi("mdp", pi), "mdp"),
        (lambda: exact.q_pi(m, unnorm), "policy"),
        (lambda: exact.q_pi(m, pi[:, :1]), "policy"),
        (lambda: exact.bellman_q(m, pi, v), "q"),
        (lambda: exact.bellman_v(m, pi, q), "v"),
        (lambda: exact.bellman_v(m, pi, v + np.nan), "v"),
        (lambda: exact.lambda_operator(m, pi, v, 1.5), "lam"),
        (lambda: exact.lambda_modulus(1.5, 0.5), "gamma"),
        (lambda: exact.retrace_traces(pi, unnorm), "behaviour"),
        (lambda: exact.retrace_traces(pi, mu, -0.1), "lam"),
        (lambda: exact.is_traces(pi, zero_mu), "behaviour"),
        (lambda: exact.tree_backup_traces(unnorm), "target"),
        (lambda: exact.retrace_operator(m, unnorm, mu, q, c), "target"),
        (lambda: exact.retrace_operator(m, pi, unnorm, q, c), "behaviour"),
        (lambda: exact.retrace_operator(m, pi, mu, q, -c), "c"),
        (lambda: exact.retrace_operator(m, pi, mu, q, c[:1]), "c"),
        (lambda: exact.retrace_operator(m, pi, mu, q, c, n=-1), "n"),
        (lambda: exact.retrace_operator(m, pi, mu, q, c * 50), "c"),  # divergent series
        (lambda: exact.vtrace_operator(m, pi, zero_mu, v), "behaviour"),
        (lambda: exact.vtrace_operator(m, pi, mu, v, rho_clip=0.0), "rho_clip"),
        (lambda: exact.vtrace_operator(m, pi, mu, v, c_clip=-1.0), "c_clip"),
        (lambda: exact.vtrace_operator(m, pi, mu, v, lam=2.0), "lam"),
        (lambda: exact.vtrace_policy(np.eye(2), np.eye(2)[::-1], 1.0), "behaviour"),
        (lambda: exact.state_distribution(m, pi, discount=1.5), "discount"),
        (lambda: exact.fixed_point_iteration(lambda x: x, v, tol=0.0), "tol"),
    ]


@pytest.mark.parametrize("k", range(len(_bad_calls())))
def test_bad_inputs_name_the_argument(k):
    call, name = _bad_calls()[k]
    with pytest.raises((ValueError, TypeError), match=rf"^{name}\b"):
        call()
