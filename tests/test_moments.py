"""offpolicy.moments: API behaviour and hand-computed cases (the theorems are in
tests/test_property_*.py)."""

import numpy as np
import pytest

from offpolicy import mdp as mdp_mod
from offpolicy import moments


def _two_state():
    P = np.zeros((2, 1, 2))
    P[0, 0, 1] = 1.0
    P[1, 0, 1] = 1.0
    return mdp_mod.TabularMDP(P, np.array([[1.0], [0.0]]), 0.5, terminal=[1],
                              reward_std=np.array([[2.0], [0.0]]))


def test_hand_computed_one_step_with_noise():
    m = _two_state()
    pol = np.ones((2, 1))
    mom = moments.exact_moments(m, "gae", behaviour=pol, target=pol, horizon=3,
                                values=np.array([0.25, 9.0]), lam=1.0)
    # s0 = 0: terminates at once; A = r - V(0), r ~ 1 +- 2; V(1) = 9 is never bootstrapped
    assert mom.mean_s[0] == pytest.approx(0.75)
    assert mom.var_s[0] == pytest.approx(4.0)
    assert mom.output == "advantage" and mom.horizon == 3


def test_aliases_and_outputs():
    m = mdp_mod.garnet(3, 2, 2, seed=0)
    mu = np.full((3, 2), 0.5)
    a = moments.exact_moments(m, "puff_advantage", behaviour=mu, target=mu, horizon=3)
    b = moments.exact_moments(m, "vtrace", output="advantage", behaviour=mu, target=mu,
                              horizon=3)
    np.testing.assert_array_equal(a.mean_sa, b.mean_sa)
    with pytest.raises(ValueError, match="estimator"):
        moments.exact_moments(m, "nope", behaviour=mu, target=mu, horizon=2)
    with pytest.raises(ValueError, match="output"):
        moments.exact_moments(m, "gae", output="target", behaviour=mu, target=mu, horizon=2)
    with pytest.raises(ValueError, match="horizon"):
        moments.exact_moments(m, "gae", behaviour=mu, target=mu, horizon=0)


def test_estimator_target_on_policy_kinds():
    m = mdp_mod.garnet(4, 2, 2, seed=1, num_terminal=1)
    pi = np.random.default_rng(0).dirichlet(np.ones(2), size=4)
    q = moments.q_pi(m, pi)
    v = (pi * q).sum(axis=1)
    t = moments.estimator_target(m, "gae", behaviour=pi, target=pi)
    np.testing.assert_allclose(t.mean_sa, q - v[:, None])
    t = moments.estimator_target(m, "vtrace", behaviour=pi, target=pi, rho_clip=1.0)
    np.testing.assert_allclose(t.mean_s, v)
    t = moments.estimator_target(m, "retrace", behaviour=pi, target=pi)
    np.testing.assert_allclose(t.mean_sa, q)
    # long segment, exact values: the exact moments reach the fixed point
    mom = moments.exact_moments(m, "gae", behaviour=pi, target=pi, horizon=5, lam=0.9)
    np.testing.assert_allclose(mom.mean_sa, q - v[:, None], atol=1e-9)


def test_enumerated_probabilities_sum_to_one():
    m = mdp_mod.garnet(3, 2, 3, seed=2, reward_std=0.5, num_terminal=1)
    mu = np.full((3, 2), 0.5)
    seg = moments.enumerate_segments(m, mu, 3, start_state=0)
    assert seg.weight.sum() == pytest.approx(1.0)
    assert seg.rewards.shape == seg.weight.shape[:0] + (3, seg.weight.size)
