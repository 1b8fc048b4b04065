"""Policies and divergences (offpolicy.policies)."""

import numpy as np
import pytest

from offpolicy import exact, mdp, policies


def _rows_ok(p):
    assert np.all(p >= 0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)


def test_constructors():
    m = mdp.garnet(6, 3, 2, seed=0)
    u = policies.uniform_policy(6, 3)
    assert np.array_equal(u, policies.uniform_policy(m))
    r = policies.random_policy(6, 3, seed=1)
    assert np.array_equal(r, policies.random_policy(m, seed=1))
    assert not np.array_equal(r, policies.random_policy(6, 3, seed=2))
    floored = policies.random_policy(6, 3, seed=1, min_prob=0.1, concentration=0.1)
    assert floored.min() >= 0.1 - 1e-12
    q = np.array([[1.0, 2.0, 2.0], [0.0, -1.0, 3.0]])
    np.testing.assert_allclose(policies.greedy(q), [[0, 0.5, 0.5], [0, 0, 1]])
    np.testing.assert_allclose(policies.epsilon_greedy(q, 0.3)[1], [0.1, 0.1, 0.8])
    sm = policies.softmax(q, temperature=0.5)
    np.testing.assert_allclose(sm[1], np.exp(2 * q[1]) / np.exp(2 * q[1]).sum())
    np.testing.assert_allclose(policies.softmax(q * 1000), policies.greedy(q), atol=1e-12)
    for p in (u, r, floored, sm, policies.mixture(u, r, 0.3)):
        _rows_ok(p)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: policies.epsilon_greedy(np.zeros((2, 2)), 1.5), "epsilon"),
        (lambda: policies.softmax(np.zeros((2, 2)), 0.0), "temperature"),
        (lambda: policies.softmax(np.zeros(3)), "q"),
        (lambda: policies.greedy(np.array([[np.nan, 0.0]])), "q"),
        (lambda: policies.random_policy(0, 2), "num_states"),
        (lambda: policies.random_policy(2, 2, concentration=0), "concentration"),
        (lambda: policies.random_policy(2, 2, min_prob=0.6), "min_prob"),
        (lambda: policies.mixture(np.eye(2), np.eye(2), 2.0), "weight"),
        (lambda: policies.kl_divergence(np.eye(2), np.ones((2, 2))), "q"),
        (lambda: policies.kl_divergence(np.eye(2) * 2, np.eye(2)), "p"),
        (lambda: policies.total_variation(np.eye(2), np.eye(3)), "q"),
        (lambda: policies.max_ratio(np.eye(2), np.full((2, 2), 0.5), weights=[1.0]), "weights"),
        (lambda: policies.validate_policy(np.full((2, 2), 0.5), 2, 3, "target"), "target"),
        (lambda: policies.stale_policy(mdp.garnet(3, 2, 2), np.full((3, 2), 0.5), -1), "k"),
        (lambda: policies.stale_policy(mdp.garnet(3, 2, 2), np.full((2, 2), 0.5), 1), "target"),
    ],
)
def test_bad_inputs_name_the_argument(call, name):
    with pytest.raises((ValueError, TypeError), match=rf"^{name}\b"):
        call()


def test_divergences():
    p = np.array([[1.0, 0.0], [0.5, 0.5]])
    q = np.array([[0.5, 0.5], [0.25, 0.75]])
    kl = policies.kl_divergence(p, q, per_state=True)
    np.testing.assert_allclose(kl, [np.log(2), 0.5 * np.log(2) + 0.5 * np.log(0.5 / 0.75)])
    assert policies.kl_divergence(p, q) == pytest.approx(kl.max())
    weighted = policies.kl_divergence(p, q, weights=[3, 1])
    assert weighted == pytest.approx(0.75 * kl[0] + 0.25 * kl[1])
    assert policies.kl_divergence(q, p) == np.inf
    np.testing.assert_allclose(policies.total_variation(p, q, per_state=True), [0.5, 0.25])
    np.testing.assert_allclose(policies.max_ratio(p, q, per_state=True), [2.0, 2.0])
    assert policies.max_ratio(q, p) == np.inf
    assert policies.kl_divergence(p, p) == 0.0 and policies.total_variation(p, p) == 0.0
    # zero-weight states do not count even where infinite
    assert policies.max_ratio(q, p, weights=[0.0, 1.0]) == pytest.approx(1.5)


def test_stale_policy_is_behind_and_worse():
    m = mdp.garnet(8, 3, 3, gamma=0.9, seed=5)
    target = policies.random_policy(m, seed=0, min_prob=0.05)
    assert np.array_equal(policies.stale_policy(m, target, 0), target)
    v_target = exact.v_pi(m, target)
    kls, prev_v = [], v_target
    for k in (1, 2, 4, 8):
        stale = policies.stale_policy(m, target, k, step_size=0.5)
        _rows_ok(stale)
        v = exact.v_pi(m, stale)
        assert np.all(v <= prev_v + 1e-12)  # monotone: staler is never better
        prev_v = v
        d = exact.state_distribution(m, stale)
        kls.append(policies.kl_divergence(target, stale, weights=d))
    assert all(a < b for a, b in zip(kls, kls[1:], strict=False)) and kls[0] > 0
    # one forward softmax-improvement step from the 1-stale policy lands on the target up to
    # O(eta^2), while the stale policy itself is O(eta) away
    for eta in (0.1, 0.01):
        stale = policies.stale_policy(m, target, 1, step_size=eta)
        fwd = stale * np.exp(eta * exact.a_pi(m, stale))
        fwd /= fwd.sum(axis=1, keepdims=True)
        assert np.abs(fwd - target).max() < 0.05 * eta**2
        assert np.abs(stale - target).max() > 0.01 * eta
