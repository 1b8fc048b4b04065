"""Theorems 23-25 of docs/DESIGN.md section 4 (proofs/T23-T25): the expected updates of the
policy losses (offpolicy.gradients, exact by enumeration; itself checked against a brute-force
autograd enumeration in tests/test_gradients.py)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offpolicy import exact, gradients, policies, strategies
from offpolicy import mdp as mdp_mod

pytestmark = pytest.mark.property

# small enough that every segment can be enumerated (branching^horizon stays in the
# thousands), with A >= 2 so that policies differ
small_mdps = strategies.mdps(min_states=2, max_states=4, min_actions=2, max_actions=3,
                             min_gamma=0.5, noise=0.0)


def _per_state_parallel(x, y):
    """x[s] = c_s y[s] with c_s >= 0 for every state."""
    for xs, ys in zip(x, y, strict=True):
        n = np.linalg.norm(ys)
        if n < 1e-12:
            assert np.linalg.norm(xs) < 1e-10
            continue
        c = xs @ ys / n**2
        assert c >= -1e-12
        np.testing.assert_allclose(xs, c * ys, atol=1e-10)


@settings(max_examples=15)
@given(data=st.data(), m=small_mdps, lam=st.sampled_from([0.0, 0.5, 1.0]),
       horizon=st.integers(1, 3), loss=st.sampled_from(gradients.LOSSES),
       estimator=st.sampled_from(sorted(gradients.ADVANTAGE_OUTPUT)))
def test_T23_on_policy_update_is_the_segment_weighted_policy_gradient(data, m, lam, horizon,
                                                                       loss, estimator):
    pi = data.draw(strategies.policies(m.num_states, m.num_actions))
    g = gradients.exact_gradient_moments(m, loss, estimator, target=pi, behaviour=pi,
                                         horizon=horizon, lam=lam)
    # E[g_hat][s, b] = w(s) pi(b|s) A^pi(s, b), w the segment's state frequencies
    w = gradients.segment_visits(m, pi, horizon)
    np.testing.assert_allclose(g.mean, w[:, None] * pi * exact.a_pi(m, pi), atol=1e-12)
    # ... so per state it points along grad J (only the state weighting differs)
    _per_state_parallel(g.mean, gradients.policy_gradient(m, pi))


def test_T23_broken_normalised_advantages_are_unbiased_is_caught():
    # "advantage normalisation keeps the on-policy update unbiased": per segment, it does not
    m = mdp_mod.garnet(4, 2, 2, gamma=0.9, seed=0)
    pi = policies.random_policy(m, seed=1)
    g = gradients.exact_gradient_moments(m, "ppo_clip", "gae", target=pi, behaviour=pi,
                                         horizon=4, lam=0.9, normalize=True)
    assert g.relative_bias > 0.05


@settings(max_examples=15)
@given(data=st.data(), m=small_mdps, rho_clip=st.sampled_from([0.5, 1.0, 2.0]))
def test_T24_clipped_weight_bias_once_and_twice(data, m, rho_clip):
    mu, pi = data.draw(strategies.policy_pairs(m.num_states, m.num_actions,
                                               full_support_target=True))
    adv = exact.a_pi(m, pi)
    init = np.asarray(m.initial)[:, None]
    # a one-step segment: V-trace's pg advantage has mean min(rho_clip, rho) A^pi(s, a)
    once = gradients.exact_gradient_moments(m, "impala", "vtrace", target=pi, behaviour=mu,
                                            horizon=1, rho_clip=rho_clip)
    np.testing.assert_allclose(once.mean - once.reference,
                               init * gradients.clipped_pg_bias(pi, mu, adv, rho_clip),
                               atol=1e-12)
    # PPO's ratio on top of it, with a clip range no ratio leaves: the weight counted twice
    twice = gradients.exact_gradient_moments(m, "ppo_clip", "vtrace", target=pi, behaviour=mu,
                                             horizon=1, rho_clip=rho_clip, clip_coef=1e9)
    np.testing.assert_allclose(
        twice.mean - twice.reference,
        init * gradients.clipped_pg_bias(pi, mu, adv, rho_clip, counted="twice"), atol=1e-12)


@settings(max_examples=25)
@given(data=st.data(), S=st.integers(1, 4), A=st.integers(2, 4),
       rho_clip=st.sampled_from([0.3, 1.0, 3.0]))
def test_T24_once_counted_bias_bound_and_zero_beyond_max_ratio(data, S, A, rho_clip):
    mu, pi = data.draw(strategies.policy_pairs(S, A))  # (behaviour, target)
    adv = np.asarray(data.draw(st.lists(st.floats(-5, 5), min_size=S * A, max_size=S * A)))
    adv = adv.reshape(S, A)
    bias = gradients.clipped_pg_bias(pi, mu, adv, rho_clip)
    mass = np.clip(pi - rho_clip * mu, 0.0, None).sum(axis=1)
    bound = 2 * np.abs(adv).max(axis=1) * mass
    assert (np.abs(bias).sum(axis=1) <= bound + 1e-12).all()
    big = (pi / mu).max() * 1.0001
    assert np.abs(gradients.clipped_pg_bias(pi, mu, adv, big)).max() < 1e-15


def test_T24_broken_twice_counted_is_unbiased_on_policy_only():
    # twice-counted is unbiased when mu = pi, and not when they differ
    m = mdp_mod.garnet(3, 3, 2, gamma=0.9, seed=4)
    pi = policies.random_policy(m, seed=5)
    adv = exact.a_pi(m, pi)
    assert np.abs(gradients.clipped_pg_bias(pi, pi, adv, 1.0, counted="twice")).max() < 1e-15
    mu = policies.stale_policy(m, pi, 3)
    assert np.abs(gradients.clipped_pg_bias(pi, mu, adv, 1.0, counted="twice")).max() > 1e-3


def layered(K, *, fixed_length=False):
    """States 0..K-1 in a line, K terminal; action 0 stops (to the terminal, reward 1 + s/2),
    action 1 goes on (reward 0.2; from the last state into the terminal with reward 3). With
    ``fixed_length`` both actions go on: every episode has length K."""
    S, A = K + 1, 2
    P, R = np.zeros((S, A, S)), np.zeros((S, A))
    for s in range(K):
        nxt = s + 1
        P[s, 1, nxt] = 1.0
        R[s, 1] = 0.2 if nxt < K else 3.0
        P[s, 0, nxt if fixed_length else K] = 1.0
        R[s, 0] = 1.0 + 0.5 * s
    P[K, :, K] = 1.0
    init = np.zeros(S)
    init[0] = 1.0
    return mdp_mod.TabularMDP(P, R, 1.0, initial=init, terminal=[K])


@pytest.mark.parametrize("batch_size", [1, 2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_T25_constant_aggregation_is_unbiased_for_the_sequence_objective(batch_size, seed):
    m = layered(3)
    pi = policies.random_policy(m, seed=seed)
    g = gradients.sequence_gradient_moments(m, pi, horizon=3, aggregation="constant",
                                            batch_size=batch_size, constant=5.0)
    np.testing.assert_allclose(g.mean, gradients.policy_gradient(m, pi) / 5.0, atol=1e-13)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_T25_per_token_means_are_biased_with_variable_lengths(seed):
    m = layered(3)
    pi = policies.random_policy(m, seed=seed)
    for agg in ("seq_mean", "token_mean"):
        g = gradients.sequence_gradient_moments(m, pi, horizon=3, aggregation=agg)
        # no rescaling of grad J gives it: the direction itself is off
        assert g.cosine < 1 - 1e-4
    one = gradients.sequence_gradient_moments(m, pi, horizon=3, aggregation="token_mean")
    two = gradients.sequence_gradient_moments(m, pi, horizon=3, aggregation="token_mean",
                                              batch_size=2)
    assert np.abs(one.mean - two.mean).max() > 1e-4  # token_mean's target depends on B


@pytest.mark.parametrize("agg", ["seq_mean", "token_mean"])
def test_T25_with_one_length_every_mode_is_unbiased(agg):
    m = layered(3, fixed_length=True)
    pi = policies.random_policy(m, seed=3)
    g = gradients.sequence_gradient_moments(m, pi, horizon=3, aggregation=agg, batch_size=2)
    np.testing.assert_allclose(g.mean, gradients.policy_gradient(m, pi) / 3.0, atol=1e-13)
