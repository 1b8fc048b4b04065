"""offpolicy.moments: API behaviour and hand-computed cases (the theorems are in
tests/test_property_*.py)."""

import numpy as np
import pytest

from offpolicy import exact, moments
from offpolicy import mdp as mdp_mod


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
    q = exact.q_pi(m, pi)
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


# ---- time-limit truncations inside the segment -----------------------------------------------

ALL_OUTPUTS = [("gae", "advantage"), ("gae", "value"), ("vtrace", "value"),
               ("vtrace", "advantage"), ("vtrace", "pg_advantage"), ("per_decision_is", "value"),
               ("nstep", "value"), ("retrace", "target"), ("tree_backup", "target"),
               ("q_lambda", "target"), ("importance_sampling_q", "target"), ("p3o", "advantage")]


def _off_policy_problem():
    m = mdp_mod.garnet(4, 2, 3, gamma=0.9, seed=3, reward_std=0.4, num_terminal=1)
    rng = np.random.default_rng(0)
    mu, pi = rng.dirichlet(np.ones(2), size=4), rng.dirichlet(np.ones(2), size=4)
    return m, mu, pi, rng.normal(size=4), rng.normal(size=(4, 2))


def _mom(est, out, h, **kw):
    m, mu, pi, v, q = _off_policy_problem()
    params = {"n": 3} if est == "nstep" else {"lam": 0.8}
    if est == "p3o":
        params = {"p3o_horizon": 3}
    return moments.exact_moments(m, est, output=out, behaviour=mu, target=pi, horizon=h,
                                 values=v, q=q, **params, **kw)


@pytest.mark.parametrize("est,out", ALL_OUTPUTS)
def test_a_time_limit_is_a_shorter_segment(est, out):
    """A time limit of k inside a longer segment cuts and bootstraps after step k-1, exactly as
    the end of a segment of length k does (the output at t = 0 sees nothing after the cut)."""
    for k in (1, 2, 3):
        a = _mom(est, out, 5, time_limit=k)
        b = _mom(est, out, k)
        np.testing.assert_allclose(a.mean_sa, b.mean_sa, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(a.var_sa, b.var_sa, rtol=1e-12, atol=1e-12)
    one = _mom(est, out, 1)
    cut = _mom(est, out, 4, truncation_prob=1.0)
    np.testing.assert_allclose(cut.mean_sa, one.mean_sa, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("est,out", ALL_OUTPUTS)
def test_truncation_probability_mixes_the_two_outcomes(est, out):
    """With two steps the only cut is after step 0: the output is the one-step output with
    probability p and the two-step one otherwise (mean: the mixture; variance: the mixture's
    law of total variance)."""
    p = 0.3
    two, one = _mom(est, out, 2), _mom(est, out, 1)
    mixed = _mom(est, out, 2, truncation_prob=p)
    mean = (1 - p) * two.mean_sa + p * one.mean_sa
    second = (1 - p) * (two.var_sa + two.mean_sa**2) + p * (one.var_sa + one.mean_sa**2)
    np.testing.assert_allclose(mixed.mean_sa, mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mixed.var_sa, second - mean**2, rtol=1e-9, atol=1e-12)
    assert mixed.params["truncation_prob"] == p


def test_truncation_options_are_validated():
    m = mdp_mod.garnet(3, 2, 2, seed=0)
    mu = np.full((3, 2), 0.5)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="^truncation_prob"):
            moments.exact_moments(m, "gae", behaviour=mu, target=mu, horizon=2,
                                  truncation_prob=bad)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="^time_limit"):
            moments.exact_moments(m, "gae", behaviour=mu, target=mu, horizon=2,
                                  time_limit=bad)
        with pytest.raises(ValueError, match="^time_limit"):
            moments.enumerate_segments(m, mu, 2, start_state=0, time_limit=bad)


def test_enumerated_segments_with_truncations():
    m = mdp_mod.garnet(4, 2, 2, seed=2, reward_std=0.5, num_terminal=1)
    mu = np.full((4, 2), 0.5)
    v = np.arange(4.0) + 10.0
    seg = moments.enumerate_segments(m, mu, 3, start_state=1, truncation_prob=0.25)
    assert seg.weight.sum() == pytest.approx(1.0)
    term, trunc = seg.terminated, seg.truncated
    assert trunc[:-1].any() and (term & trunc).any()  # inside, and with a termination
    # P(truncated after step 0) = 0.25; after step 1 given none before and no termination
    assert seg.weight[trunc[0]].sum() == pytest.approx(0.25)
    # nothing after a cut: filler steps carry no flags and no reward
    after = np.cumsum(term | trunc, axis=0)[:-1] > 0
    assert not (term[1:] | trunc[1:])[after].any() and np.all(seg.rewards[1:][after] == 0)
    # the bootstrap at a truncation is the final observation, not the next step's state
    x = seg.inputs(behaviour=mu, target=mu, values=v)
    cut = trunc[:-1] & ~term[:-1]
    np.testing.assert_array_equal(x["next_values"][:-1][cut], v[seg.next_states[:-1][cut]])
    assert np.any(x["next_values"][:-1][cut] != x["values"][1:][cut])
    limited = moments.enumerate_segments(m, mu, 3, start_state=1, time_limit=2)
    alive = ~np.cumsum(limited.terminated | limited.truncated, axis=0).astype(bool)
    assert np.all(limited.truncated[1] | limited.terminated[1] | ~alive[0])
    assert not limited.truncated[0].any()
