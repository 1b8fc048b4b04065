"""Mutation-guided tests of the numerics group (issue 20, group ``numerics`` of
.ci/mutation_score): exact closed forms checked against an independent computation.

The independent side is always a different route to the same number: a forward enumeration
of the state distribution step by step (instead of the closed form's matrix inverse), the
documented construction of a random policy redone with numpy's generator, or a figure worked
out by hand in a comment. No expected value is copied from the code's output.
"""

import numpy as np
import pytest

from offpolicy import exact, moments, policies
from offpolicy.mdp import TabularMDP, garnet


def _mdp(gamma=0.9):
    """A garnet with one absorbing terminal state (state 3) and rewards per transition."""
    g = garnet(4, 2, 2, gamma=gamma, seed=3)
    P = np.array(g.P)
    P[3] = 0.0
    P[3, :, 3] = 1.0
    P[0, 0] = [0.1, 0.2, 0.3, 0.4]  # a way into the terminal state
    R = np.arange(4 * 2 * 4, dtype=float).reshape(4, 2, 4) / 10.0 - 1.0
    R[3] = 0.0  # the terminal state pays nothing
    return TabularMDP(P, R, gamma, terminal=[3], initial=[0.5, 0.5, 0.0, 0.0])


PI = np.array([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5], [0.5, 0.5]])
MU = np.array([[0.4, 0.6], [0.5, 0.5], [0.9, 0.1], [0.5, 0.5]])


def _forward_gae(m, pol, v, lam, steps):
    """E[sum_{k<steps} (gamma lam)^k delta_k | s_0 = s, a_0 = a] by pushing the alive-state
    distribution forward one step at a time; delta_k = r + gamma [s' live] v(s') - v(s_k),
    and delta = 0 once the episode has ended."""
    S, A = PI.shape
    P, R, g = np.asarray(m.P), np.asarray(m.R_sas), m.gamma
    live = ~np.asarray(m.terminal)
    boot = np.where(live, v, 0.0)
    step_sa = np.einsum("sat,sat->sa", P, R + g * boot[None, None, :]) - v[:, None]
    step_s = (pol * step_sa).sum(1)
    out = step_sa.copy()
    d = P * live[None, None, :]  # [s, a, s1]: alive at step 1
    for k in range(1, steps):
        out += (g * lam) ** k * (d @ step_s)
        d = np.einsum("sat,tb,tbu->sau", d, pol, P * live[None, None, :])
    return out


@pytest.mark.parametrize("lam", [0.0, 0.5, 0.8])
@pytest.mark.parametrize("horizon", [None, 1, 3])
def test_gae_bias_is_the_mean_gae_error_enumerated_forward(lam, horizon):
    """proofs/T15: with the critic V = V^pi + e, E[A_0 | s, a] - A^pi(s, a) equals
    exact.gae_bias; the infinite horizon summed forward to 400 steps ((0.9*0.8)^400 ~ 1e-57)."""
    m = _mdp()
    e = np.array([0.3, -0.5, 1.2, 0.0])
    v = exact.v_pi(m, PI)
    mean = _forward_gae(m, PI, v + e, lam, 400 if horizon is None else horizon)
    want = mean - (exact.q_pi(m, PI) - v[:, None])
    got = exact.gae_bias(m, PI, e, lam, horizon=horizon)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


def test_gae_bias_of_an_exact_critic_is_zero():
    m = _mdp()
    np.testing.assert_allclose(exact.gae_bias(m, PI, np.zeros(4), 0.7), 0.0, atol=1e-12)


def _clipped(pi, mu, c):
    w = np.minimum(pi, c * mu)
    return w / w.sum(1, keepdims=True)


@pytest.mark.parametrize("c", [0.5, 1.0, 1.5])
def test_vtrace_bias_bound_is_the_discounted_sum_of_the_truncation_gaps(c):
    """(I - gamma P_{pi_rhobar})^{-1} [(1 - Z) span_a Q^pi], summed as the series
    sum_k gamma^k P^k gap (600 terms, 0.9^600 ~ 1e-28), with 1 - Z = sum_a (pi - c mu)^+ and
    pi_rhobar proportional to min(pi, c mu); the terminal state's gap is 0."""
    m = _mdp()
    q = exact.q_pi(m, PI)
    gap = np.maximum(PI - c * MU, 0.0).sum(1) * (q.max(1) - q.min(1))
    gap[3] = 0.0
    Pc = np.einsum("sa,sat->st", _clipped(PI, MU, c), np.asarray(m.P_continue))
    want, term = np.zeros(4), gap
    for _ in range(600):
        want += term
        term = m.gamma * Pc @ term
    got = exact.vtrace_bias_bound(m, PI, MU, c)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # and it bounds the fixed point's bias (proofs/T17)
    bias = np.abs(exact.vtrace_fixed_point(m, PI, MU, rho_clip=c) - exact.v_pi(m, PI))
    assert (bias <= got + 1e-12).all()


def test_vtrace_truncation_mass_by_hand():
    """sum_a (pi - c mu)^+: pi = (0.7, 0.3), mu = (0.5, 0.5): c = 1 -> 0.2; c = 0.5 ->
    0.45 + 0.05 = 0.5; c = 1.4 = max pi/mu -> 0; c = 0.2 -> 0.6 + 0.2 = 0.8."""
    pi, mu = np.array([[0.7, 0.3]]), np.array([[0.5, 0.5]])
    for c, want in [(1.0, 0.2), (0.5, 0.5), (1.4, 0.0), (0.2, 0.8)]:
        np.testing.assert_allclose(exact.vtrace_truncation_mass(pi, mu, c), [want], atol=1e-15)


def test_vtrace_truncation_mass_names_the_bad_argument():
    good = np.array([[0.7, 0.3]])
    with pytest.raises(ValueError, match="^target"):
        exact.vtrace_truncation_mass([[0.7, 0.7]], good, 1.0)
    with pytest.raises(ValueError, match="^behaviour"):
        exact.vtrace_truncation_mass(good, [[0.7, 0.7]], 1.0)
    with pytest.raises(ValueError, match="^rho_clip"):
        exact.vtrace_truncation_mass(good, good, 0.0)


@pytest.mark.parametrize("discount", [None, 0.5, 1.0])
def test_state_distribution_is_the_normalised_discounted_visit_count(discount):
    """d ∝ sum_k discount^k initial P_pi^k (alive states only), enumerated forward; discount 1
    is the expected visit count of this proper MDP (every policy reaches the terminal state
    with positive probability from state 0, and state 0 is reachable)."""
    m = _mdp()
    g = m.gamma if discount is None else discount
    Pc = np.einsum("sa,sat->st", PI, np.asarray(m.P_continue))
    x, tot = np.asarray(m.initial, float), np.zeros(4)
    for _ in range(20000 if g == 1.0 else 800):
        tot += x
        x = g * x @ Pc
    np.testing.assert_allclose(exact.state_distribution(m, PI, discount=discount),
                               tot / tot.sum(), rtol=1e-9, atol=1e-12)


def test_state_distribution_names_itself_when_the_system_is_singular(monkeypatch):
    """The guarded path (no valid MDP reaches it: I - g P_pi is singular only when the series
    diverges, which discount 1 checks first): a LinAlgError from the solver becomes a
    ValueError naming the function."""
    def singular(*a, **k):
        raise np.linalg.LinAlgError("Singular matrix")

    monkeypatch.setattr(exact.np.linalg, "solve", singular)
    with pytest.raises(ValueError, match=r"^state_distribution: singular system$"):
        exact.state_distribution(_mdp(), PI)


# ---- policies.random_policy: the documented construction -----------------------------------------


def test_random_policy_default_rows_are_dirichlet_of_ones():
    """Default concentration 1: each row a Dirichlet(1, ..., 1) draw of numpy's generator
    seeded with ``seed``."""
    want = np.random.default_rng(7).dirichlet(np.ones(3), size=5)
    np.testing.assert_allclose(policies.random_policy(5, 3, seed=7), want, rtol=1e-15)
    want = np.random.default_rng(7).dirichlet(np.full(3, 0.3), size=5)
    np.testing.assert_allclose(policies.random_policy(5, 3, seed=7, concentration=0.3), want,
                               rtol=1e-15)


def test_random_policy_min_prob_mixes_with_the_uniform_policy():
    """p -> (1 - A f) p + f: with A = 4 and f = 0.2, every entry is 0.2 + 0.2 p >= 0.2."""
    p = np.random.default_rng(1).dirichlet(np.ones(4), size=3)
    got = policies.random_policy(3, 4, seed=1, min_prob=0.2)
    np.testing.assert_allclose(got, 0.2 * p + 0.2, rtol=1e-14)
    assert (got >= 0.2).all()


def test_random_policy_default_is_uniform_over_the_simplex_in_distribution():
    """Dirichlet(1, 1): the first probability is Uniform(0, 1), variance 1/12 (Dirichlet(2, 2)
    would give 1/20). 4000 rows: the sample variance's standard error is about
    sqrt((1/80 - 1/144) / 4000) ~ 1.2e-3, so 1/12 and 1/20 are ~27 SEs apart; 5 SEs allowed."""
    x = policies.random_policy(4000, 2, seed=0)[:, 0]
    se = np.sqrt((1 / 80 - 1 / 144) / 4000)
    assert abs(x.var() - 1 / 12) < 5 * se


# ---- moments.estimator_target: V-trace's fixed-point advantages ---------------------------


@pytest.mark.parametrize("rho_clip,pg_rho_clip", [(1.0, None), (0.6, 2.0), (1.5, 0.4)])
def test_vtrace_fixed_point_advantages_are_the_clipped_ratio_times_the_clipped_advantage(
        rho_clip, pg_rho_clip):
    """min(clip, pi/mu) (Q^{pi_rhobar} - V^{pi_rhobar}) with clip = rho_clip for the
    advantage and pg_rho_clip for the pg_advantage (proofs/T21): exact.vtrace_pg_fixed_point
    computes the same quantity through another module's path; the state value is the
    behaviour-weighted sum."""
    m = _mdp()
    params = {"rho_clip": rho_clip} | ({} if pg_rho_clip is None else
                                        {"pg_rho_clip": pg_rho_clip})
    for output, clip in (("advantage", rho_clip),
                         ("pg_advantage", rho_clip if pg_rho_clip is None else pg_rho_clip)):
        t = moments.estimator_target(m, "vtrace", behaviour=MU, target=PI, output=output,
                                     **params)
        want = exact.vtrace_pg_fixed_point(m, PI, MU, rho_clip=rho_clip, pg_rho_clip=clip)
        np.testing.assert_allclose(t.mean_sa, want, rtol=1e-12, atol=1e-12)
        # independently: Q of the clipped policy, its state value, the clipped ratio
        pol = _clipped(PI, MU, rho_clip)
        q = exact.q_pi(m, pol)
        adv = q - (pol * q).sum(1, keepdims=True)
        np.testing.assert_allclose(t.mean_sa, np.minimum(clip, PI / MU) * adv, atol=1e-12)
        np.testing.assert_allclose(t.mean_s, (MU * t.mean_sa).sum(1), atol=1e-12)


# ---- seed-21 sample: the remaining paths -------------------------------------------------------


def test_gae_variance_on_policy_is_the_enumerated_variance_over_two_steps():
    """proofs/T16 at horizon 2, enumerated branch by branch: A_0 = delta_0 + gamma lam
    delta_1 (delta_1 = 0 after a terminal s_1) with the exact critic V^pi; the reward noise
    (std 0.3 on live states, independent) adds 0.09 (1 + (gamma lam)^2 P(s_1 live))."""
    base = _mdp()
    std = np.where(np.asarray(base.terminal)[:, None], 0.0, 0.3) * np.ones((4, 2))
    m = TabularMDP(base.P, base.R_sas, base.gamma, terminal=[3], reward_std=std)
    v = exact.v_pi(m, PI)
    P, R, g, lam = np.asarray(m.P), np.asarray(m.R_sas), m.gamma, 0.6
    live = ~np.asarray(m.terminal)
    want = np.zeros((4, 2))
    for s in range(4):
        for a in range(2):
            m1 = m2 = alive = 0.0
            for s1 in range(4):
                d0 = R[s, a, s1] + g * live[s1] * v[s1] - v[s]
                if not live[s1]:
                    m1 += P[s, a, s1] * d0
                    m2 += P[s, a, s1] * d0 ** 2
                    continue
                alive += P[s, a, s1]
                for a1 in range(2):
                    for s2 in range(4):
                        p = P[s, a, s1] * PI[s1, a1] * P[s1, a1, s2]
                        d1 = R[s1, a1, s2] + g * live[s2] * v[s2] - v[s1]
                        x = d0 + g * lam * d1
                        m1 += p * x
                        m2 += p * x ** 2
            want[s, a] = m2 - m1 ** 2 + std[s, a] ** 2 + (g * lam) ** 2 * alive * 0.09
    got = exact.gae_variance_on_policy(m, PI, lam, 2)
    np.testing.assert_allclose(got[:3], want[:3], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("which,pol", [("fixed_point", MU), ("target", PI)])
@pytest.mark.parametrize("H", [1, 3])
def test_p3o_target_is_the_h_truncated_advantage_enumerated_forward(which, pol, H):
    """p3o: Q_H(s, a) = E[sum_{k<H} gamma^k r_k | s, a] (no bootstrap, 0 after the terminal
    state) minus its pol-average, pol = mu (fixed point) or pi (target); enumerated with the
    alive-state distribution."""
    m = _mdp()
    P, R, g = np.asarray(m.P), np.asarray(m.R_sas), m.gamma
    live = ~np.asarray(m.terminal)
    r_sa = np.einsum("sat,sat->sa", P, R)
    r_s = (pol * r_sa).sum(1)
    q = r_sa.copy()
    d = P * live[None, None, :]
    for k in range(1, H):
        q += g ** k * (d @ r_s)
        d = np.einsum("sat,tb,tbu->sau", d, pol, P * live[None, None, :])
    want = q - (pol * q).sum(1, keepdims=True)
    t = moments.estimator_target(m, "p3o", behaviour=MU, target=PI, which=which, horizon=H)
    np.testing.assert_allclose(t.mean_sa, want, rtol=1e-12, atol=1e-12)


def test_vtrace_pg_fixed_point_with_a_zero_behaviour_probability_is_quiet():
    """pi = mu = 0 on one action: the ratio there is defined as 0 without a 0/0 warning."""
    m = _mdp()
    pi = PI.copy()
    mu = MU.copy()
    pi[2], mu[2] = [1.0, 0.0], [1.0, 0.0]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = exact.vtrace_pg_fixed_point(m, pi, mu)
    assert out[2, 1] == 0.0 and np.isfinite(out).all()


@pytest.mark.parametrize("call,message", [
    (lambda: exact.gae_bias(_mdp(), PI, np.zeros(3), 0.5), "^value_error"),
    (lambda: exact.gae_variance_on_policy(_mdp(), PI[:3], 0.5, 2), "^policy"),
    (lambda: exact.is_traces([[0.7, 0.7]], [[0.5, 0.5]]), "^target"),
    (lambda: exact.is_traces([[0.5, 0.5]], [[0.7, 0.7]]), "^behaviour"),
    (lambda: exact.state_transition(_mdp(), PI[:3]), "^policy"),
    (lambda: policies.max_ratio(PI, MU[:3]), "^behaviour"),
    (lambda: policies.max_ratio(np.ones((4, 1)), np.ones((4, 1))), None),
])
def test_numerics_errors_name_the_argument(call, message):
    if message is None:  # a valid call (one action: every ratio is 1)
        assert call() == 1.0
        return
    with pytest.raises(ValueError, match=message):
        call()


def test_chain_needs_two_states():
    from offpolicy import mdp

    with pytest.raises(ValueError, match="^num_states"):
        mdp.chain(1)
    assert mdp.chain(2).num_states == 2


def test_gridworld_names_a_bad_start():
    from offpolicy import mdp

    with pytest.raises(ValueError, match=r"^start: expected an \(x, y\) cell or 'uniform', "
                       r"got 'corner'$"):
        mdp.gridworld(3, 3, start="corner")


def test_garnet_is_named_by_its_parameters():
    assert garnet(3, 2, 2, seed=5).name == "garnet(3,2,2,seed=5)"


def test_sampler_throughput_uses_the_seeded_garnet_and_policies(monkeypatch):
    """The benchmark's MDP and policies come from ``seed`` (garnet seed, then seed + 1 and
    seed + 2 for the two policies); the sampling itself is stubbed (no timing is asserted)."""
    from offpolicy import mdp as mdp_mod
    from offpolicy import sampler

    seen = {}
    real_garnet, real_policy = mdp_mod.garnet, policies.random_policy

    def garnet_spy(*a, **k):
        seen["garnet"] = (a, k)
        return real_garnet(*a, **k)

    def policy_spy(*a, **k):
        seen.setdefault("policies", []).append(k["seed"])
        return real_policy(*a, **k)

    monkeypatch.setattr(mdp_mod, "garnet", garnet_spy)
    monkeypatch.setattr(policies, "random_policy", policy_spy)
    monkeypatch.setattr(sampler, "sample", lambda *a, **k: None)
    assert sampler.throughput(6, 2, B=2, T=2, branching=3, repeats=1, seed=7) > 0
    assert seen["garnet"] == ((6, 2, 3), {"seed": 7, "reward_std": 0.1})
    assert seen["policies"] == [8, 9]
