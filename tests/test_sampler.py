"""The vectorized sampler (offpolicy.sampler)."""

import numpy as np
import pytest

from offpolicy import exact, mdp, policies, sampler


def _z(mean, expected, se):
    return np.abs(mean - expected) / np.maximum(se, 1e-12)


def test_shapes_dtypes_and_seeding():
    m = mdp.garnet(6, 3, 3, seed=0, reward_std=0.3, num_terminal=1)
    mu = policies.random_policy(m, seed=1, min_prob=0.05)
    pi = policies.random_policy(m, seed=2)
    kw = dict(T=7, B=5, target=pi, values=np.arange(6.0), q=np.ones((6, 3)), time_limit=4)
    b = sampler.sample(m, mu, seed=3, **kw)
    for name in ("states", "actions", "next_states"):
        assert getattr(b, name).shape == (7, 5) and getattr(b, name).dtype == np.int64
    for name in ("rewards", "log_rhos", "behaviour_probs_taken", "target_probs_taken", "values",
                 "next_values", "q_taken", "next_expected_q"):
        assert getattr(b, name).shape == (7, 5) and getattr(b, name).dtype == np.float64
    assert b.terminated.dtype == bool and b.truncated.dtype == bool
    again = sampler.sample(m, mu, seed=3, **kw)
    other = sampler.sample(m, mu, seed=4, **kw)
    assert np.array_equal(b.states, again.states) and np.array_equal(b.rewards, again.rewards)
    assert not np.array_equal(b.rewards, other.rewards)
    ratio = pi[b.states, b.actions] / mu[b.states, b.actions]
    np.testing.assert_allclose(b.log_rhos, np.log(ratio))
    np.testing.assert_array_equal(b.values, np.arange(6.0)[b.states])
    np.testing.assert_array_equal(b.next_values, np.arange(6.0)[b.next_states])
    assert set(b.inputs()) == {"rewards", "values", "next_values", "terminated", "truncated",
                               "log_rhos", "q_taken", "next_expected_q"}


def test_optional_fields():
    m = mdp.garnet(4, 2, 2, seed=0)
    mu = policies.random_policy(m, seed=1)
    b = sampler.sample(m, mu, T=3, B=2, seed=0)
    assert b.values is None and b.next_values is None
    assert b.q_taken is None and b.next_expected_q is None
    assert np.all(b.log_rhos == 0) and np.array_equal(b.target_probs_taken,
                                                      b.behaviour_probs_taken)
    q = np.arange(8.0).reshape(4, 2)
    pi = policies.random_policy(m, seed=5)
    b = sampler.sample(m, mu, T=3, B=2, seed=0, q=q, target=pi)
    np.testing.assert_allclose(b.next_expected_q, (pi * q).sum(1)[b.next_states])
    b = sampler.sample(m, mu, T=3, B=2, seed=0, q=q, next_q="max")
    np.testing.assert_allclose(b.next_expected_q, q.max(1)[b.next_states])
    np.testing.assert_allclose(b.q_taken, q[b.states, b.actions])


def test_frequencies_match_the_mdp():
    m = mdp.garnet(5, 3, 3, seed=7, reward_std=0.5)
    mu = policies.random_policy(m, seed=8)
    b = sampler.sample(m, mu, T=200, B=500, seed=11)
    s, a, s2 = b.states.ravel(), b.actions.ravel(), b.next_states.ravel()
    n_sa = np.zeros((5, 3))
    np.add.at(n_sa, (s, a), 1)
    n_s = n_sa.sum(1, keepdims=True)
    p_hat = n_sa / n_s
    assert _z(p_hat, mu, np.sqrt(mu * (1 - mu) / n_s)).max() < 5
    n_sas = np.zeros((5, 3, 5))
    np.add.at(n_sas, (s, a, s2), 1)
    P_hat = n_sas / n_sa[:, :, None]
    assert _z(P_hat, m.P, np.sqrt(m.P * (1 - m.P) / n_sa[:, :, None])).max() < 5
    assert np.all(n_sas[m.P == 0] == 0)  # zero-probability outcomes never drawn
    r_sum = np.zeros((5, 3))
    np.add.at(r_sum, (s, a), b.rewards.ravel())
    assert _z(r_sum / n_sa, m.R, 0.5 / np.sqrt(n_sa)).max() < 5
    resid = b.rewards.ravel() - m.R[s, a]
    assert abs(resid.std() - 0.5) < 0.01


def test_supports_of_different_sizes():
    """Next-state draws over each (s, a)'s support: interior zeros, padding, single outcomes."""
    P = np.zeros((3, 2, 3))
    P[0, 0] = [0.3, 0.0, 0.7]
    P[0, 1] = [0.0, 1.0, 0.0]
    P[1, 0] = [0.2, 0.3, 0.5]
    P[1, 1] = [0.0, 0.0, 1.0]
    P[2, :, 2] = 1.0
    m = mdp.TabularMDP(P, np.zeros((3, 2)), 0.9, terminal=[2])
    env = sampler.VecEnv(m, 100_000, seed=0)
    for s in (0, 1):
        for a in (0, 1):
            env.states[:] = s
            out = env.step(np.full(100_000, a))
            freq = np.bincount(out.next_states, minlength=3) / 100_000
            p = P[s, a]
            assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / 100_000) + 1e-12)


def test_terminations_time_limits_and_resets():
    m = mdp.chain(5, gamma=0.9, slip=0.2, start="left")
    mu = policies.uniform_policy(m)
    b = sampler.sample(m, mu, T=300, B=64, seed=2, time_limit=6)
    np.testing.assert_array_equal(b.terminated, m.terminal[b.next_states])
    assert not np.any(b.terminated & b.truncated)
    done = b.terminated | b.truncated
    # after a done the stream restarts from the initial state (0); otherwise it continues
    assert np.all(b.states[1:][done[:-1]] == 0)
    np.testing.assert_array_equal(b.states[1:][~done[:-1]], b.next_states[:-1][~done[:-1]])
    # episode lengths never exceed the limit, and truncation happens exactly at it
    steps = np.zeros(64, int)
    for t in range(300):
        steps += 1
        assert np.all(b.truncated[t] == ((steps == 6) & ~b.terminated[t]))
        assert np.all(steps <= 6)
        steps[done[t]] = 0
    assert b.truncated.any() and b.terminated.any()
    # truncation keeps the final observation, never the reset state
    t, i = np.argwhere(b.truncated & (b.next_states != 0))[0]
    assert b.next_states[t, i] != b.states[t + 1, i] == 0


def test_env_continues_streams_exactly():
    m = mdp.garnet(6, 2, 3, seed=1, reward_std=1.0, num_terminal=1)
    mu = policies.random_policy(m, seed=3)
    whole = sampler.sample(m, mu, T=20, B=8, seed=9, time_limit=5)
    env = sampler.VecEnv(m, 8, seed=9, time_limit=5)
    first = sampler.sample(m, mu, T=12, env=env)
    second = sampler.sample(m, mu, T=8, env=env)
    for name in ("states", "actions", "rewards", "next_states", "terminated", "truncated"):
        joined = np.concatenate([getattr(first, name), getattr(second, name)])
        np.testing.assert_array_equal(joined, getattr(whole, name))
    np.testing.assert_array_equal(first.final_states, second.states[0])


def test_initial_override_and_segments():
    m = mdp.garnet(5, 2, 2, seed=0)
    mu = policies.uniform_policy(m)
    d = np.array([0, 0, 1.0, 0, 0])
    b = sampler.sample(m, mu, T=2, B=50, seed=0, initial=d)
    assert np.all(b.states[0] == 2)
    seg = sampler.sample_segments(m, mu, 4, 30, rng=np.random.default_rng(0), initial=d)
    assert seg.states.shape == (4, 30) and np.isclose(seg.weight.sum(), 1.0)
    assert not seg.truncated.any()


def test_on_policy_returns_match_v_pi():
    """Discounted T-step returns from the initial distribution: MC mean vs the exact value."""
    m = mdp.garnet(6, 3, 3, gamma=0.8, seed=4, reward_std=0.5, num_terminal=1)
    pi = policies.random_policy(m, seed=0)
    T, B = 60, 20000
    b = sampler.sample(m, pi, T=T, B=B, seed=1)
    alive = np.cumprod(np.vstack([np.ones((1, B), bool), ~b.terminated[:-1]]), axis=0)
    g = ((m.gamma ** np.arange(T))[:, None] * b.rewards * alive).sum(0)
    v = exact.v_pi(m, pi)
    # truncation at T changes the mean by at most gamma^T max|R| / (1 - gamma) ~ 8e-6
    expected = v[b.states[0]]
    assert _z((g - expected).mean(), 0.0, g.std() / np.sqrt(B)) < 5


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda m, mu: sampler.sample(m, mu[:, :1], T=2, B=2), "behaviour"),
        (lambda m, mu: sampler.sample(m, mu, T=0, B=2), "T"),
        (lambda m, mu: sampler.sample(m, mu, T=2, B=0), "num_envs"),
        (lambda m, mu: sampler.sample(m, mu, T=2), "B"),
        (lambda m, mu: sampler.sample(m, mu, T=2, B=2, target=mu * 2), "target"),
        (lambda m, mu: sampler.sample(m, mu, T=2, B=2, values=np.zeros(3)), "values"),
        (lambda m, mu: sampler.sample(m, mu, T=2, B=2, q=np.full((4, 2), np.nan)), "q"),
        (lambda m, mu: sampler.sample(m, mu, T=2, B=2, time_limit=0), "time_limit"),
        (lambda m, mu: sampler.sample(m, mu, T=2, B=2, truncation_prob=1.5), "truncation_prob"),
        (lambda m, mu: sampler.sample(m, mu, T=2, B=2, truncation_prob=-0.1),
         "truncation_prob"),
        (lambda m, mu: sampler.sample(m, mu, T=2, B=2, truncation_prob="0.1"),
         "truncation_prob"),
        (lambda m, mu: sampler.sample(m, mu, T=2, env=sampler.VecEnv(m, 2),
                                      truncation_prob=0.1), "truncation_prob"),
        (lambda m, mu: sampler.sample(m, mu, T=2, B=2, initial=[1, 0, 0]), "initial"),
        (lambda m, mu: sampler.sample(m, mu, T=2, B=2, next_q="min"), "next_q"),
        (lambda m, mu: sampler.sample(m, mu, T=2, B=2, seed=0, rng=np.random.default_rng()),
         "seed"),
        (lambda m, mu: sampler.sample(m, mu, T=2, env=sampler.VecEnv(m, 2), seed=1), "seed"),
        (lambda m, mu: sampler.sample("m", mu, T=2, B=2), "mdp"),
        (lambda m, mu: sampler.VecEnv(m, 2).step(np.array([0, 5])), "actions"),
        (lambda m, mu: sampler.VecEnv(m, 2).step(np.array([0.0, 1.0])), "actions"),
    ],
)
def test_bad_inputs_name_the_argument(call, name):
    m = mdp.garnet(4, 2, 2, seed=0)
    mu = policies.uniform_policy(m)
    with pytest.raises((ValueError, TypeError), match=rf"^{name}\b"):
        call(m, mu)


def test_throughput_function_runs():
    assert sampler.throughput(S=5, A=2, B=16, T=8, repeats=1) > 0


def test_random_truncations():
    """truncation_prob cuts each non-terminating step independently, bootstrapping from the
    final observation; at 0 the seeded stream is exactly the one without the option."""
    m = mdp.garnet(5, 2, 3, seed=3, num_terminal=1)
    mu = policies.random_policy(m, seed=1)
    plain = sampler.sample(m, mu, T=50, B=400, seed=5, time_limit=7)
    zero = sampler.sample(m, mu, T=50, B=400, seed=5, time_limit=7, truncation_prob=0.0)
    for name in ("states", "actions", "rewards", "next_states", "terminated", "truncated"):
        np.testing.assert_array_equal(getattr(plain, name), getattr(zero, name))
    p = 0.2
    b = sampler.sample(m, mu, T=50, B=400, seed=5, truncation_prob=p)
    assert not np.any(b.terminated & b.truncated)
    n = (~b.terminated).sum()
    freq = b.truncated.sum() / n
    assert abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n)
    done = b.terminated | b.truncated
    np.testing.assert_array_equal(b.states[1:][~done[:-1]], b.next_states[:-1][~done[:-1]])
    cut = b.truncated[:-1]
    assert np.any(b.next_states[:-1][cut] != b.states[1:][cut])  # reset, not the observation


def test_segments_with_a_time_limit_shorter_than_the_segment():
    m = mdp.garnet(5, 2, 3, seed=4, num_terminal=1)
    mu = policies.random_policy(m, seed=2)
    seg = sampler.sample_segments(m, mu, 6, 500, seed=0, time_limit=2, truncation_prob=0.1)
    first_done = np.argmax(seg.terminated | seg.truncated, axis=0)
    assert np.all(first_done <= 1)  # every stream's first episode ends by step 1
    assert seg.truncated[1].any() and seg.truncated[0].any() and seg.terminated.any()
    again = sampler.sample_segments(m, mu, 6, 500, seed=0, time_limit=2, truncation_prob=0.1)
    np.testing.assert_array_equal(seg.truncated, again.truncated)
