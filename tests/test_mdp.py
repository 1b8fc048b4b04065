"""TabularMDP validation and the generators (offpolicy.mdp)."""

import numpy as np
import pytest

from offpolicy import exact, mdp, policies


def _two_state(**kw):
    P = np.zeros((2, 2, 2))
    P[:, :, 0] = 0.5
    P[:, :, 1] = 0.5
    args = dict(P=P, R=np.zeros((2, 2)), gamma=0.9)
    args.update(kw)
    return args


def _make(**kw):
    a = _two_state(**kw)
    return mdp.TabularMDP(a.pop("P"), a.pop("R"), a.pop("gamma"), **a)


def test_valid_construction_and_readonly():
    m = _make()
    assert m.shape == (2, 2) and m.num_states == 2 and m.num_actions == 2
    np.testing.assert_allclose(m.initial, [0.5, 0.5])
    for arr in (m.P, m.R, m.R_sas, m.reward_std, m.initial, m.terminal, m.P_continue):
        assert not arr.flags.writeable
        with pytest.raises(ValueError):
            arr[...] = 0


@pytest.mark.parametrize(
    "kw, name",
    [
        (dict(P=np.full((2, 2, 2), 0.4)), "P"),  # rows sum to 0.8
        (dict(P=np.array([[[1.5, -0.5]] * 2] * 2)), "P"),  # negative probability
        (dict(P=np.full((2, 2, 3), 1 / 3)), "P"),  # not square
        (dict(P=np.full((2, 2), 0.5)), "P"),  # wrong ndim
        (dict(P=np.full((2, 2, 2), np.nan)), "P"),
        (dict(R=np.zeros((2, 3))), "R"),
        (dict(R=np.array([[0.0, np.inf], [0.0, 0.0]])), "R"),
        (dict(R=np.array([[0.0, np.nan], [0.0, 0.0]])), "R"),
        (dict(gamma=1.0), "gamma"),  # improper under every policy
        (dict(gamma=1.5), "gamma"),
        (dict(gamma=-0.1), "gamma"),
        (dict(gamma=float("nan")), "gamma"),
        (dict(initial=[0.5, 0.6]), "initial"),
        (dict(initial=[1.0, 0.0, 0.0]), "initial"),
        (dict(initial=[-0.5, 1.5]), "initial"),
        (dict(reward_std=-1.0), "reward_std"),
        (dict(reward_std=np.zeros(3)), "reward_std"),
        (dict(terminal=[1]), "terminal"),  # state 1 is not absorbing
        (dict(terminal=[5]), "terminal"),
        (dict(terminal=np.ones(3, bool)), "terminal"),
    ],
)
def test_bad_inputs_name_the_argument(kw, name):
    with pytest.raises((ValueError, TypeError), match=rf"^{name}\b"):
        _make(**kw)


def test_terminal_rules():
    P = np.zeros((2, 2, 2))
    P[0, :, 1] = 1.0
    P[1, :, 1] = 1.0
    m = mdp.TabularMDP(P, np.ones((2, 2)) * [[1], [0]], 1.0, terminal=[1])
    assert m.terminal.tolist() == [False, True]
    np.testing.assert_allclose(m.initial, [1.0, 0.0])
    with pytest.raises(ValueError, match="^initial"):
        mdp.TabularMDP(P, np.zeros((2, 2)), 0.9, terminal=[1], initial=[0.5, 0.5])
    with pytest.raises(ValueError, match="^R"):
        mdp.TabularMDP(P, np.ones((2, 2)), 0.9, terminal=[1])
    with pytest.raises(ValueError, match="^reward_std"):
        mdp.TabularMDP(P, np.zeros((2, 2)), 0.9, terminal=[1], reward_std=1.0)


def test_gamma_one_needs_properness():
    # proper: every action eventually terminates
    assert mdp.is_proper(mdp.sutton_barto_loop().P, mdp.sutton_barto_loop().terminal)
    mdp.chain(5, gamma=1.0, slip=0.1)
    with pytest.raises(ValueError, match="^gamma"):
        mdp.chain(5, gamma=1.0, slip=0.0)  # always-left never terminates
    # a state where only one of two actions loops forever is improper too
    P = np.zeros((2, 2, 2))
    P[0, 0, 0] = 1.0
    P[0, 1, 1] = 1.0
    P[1, :, 1] = 1.0
    assert not mdp.is_proper(P, [False, True])
    with pytest.raises(ValueError, match="^gamma"):
        mdp.TabularMDP(P, np.zeros((2, 2)), 1.0, terminal=[1])


def test_transition_rewards():
    m = mdp.sutton_barto_loop()
    assert m.R_sas.shape == (2, 2, 2)
    np.testing.assert_allclose(m.R, [[0.1, 0.0], [0.0, 0.0]])


def test_replace_revalidates():
    m = mdp.garnet(5, 2, 2, seed=0)
    m2 = m.replace(gamma=0.5)
    assert m2.gamma == 0.5 and np.array_equal(m2.P, m.P)
    with pytest.raises(ValueError, match="^gamma"):
        m.replace(gamma=2.0)


@pytest.mark.parametrize("num_terminal", [0, 2])
def test_garnet(num_terminal):
    m = mdp.garnet(10, 3, 4, gamma=0.8, seed=3, reward_std=0.5, num_terminal=num_terminal)
    m_again = mdp.garnet(10, 3, 4, gamma=0.8, seed=3, reward_std=0.5, num_terminal=num_terminal)
    assert np.array_equal(m.P, m_again.P) and np.array_equal(m.R, m_again.R)
    assert not np.array_equal(m.P, mdp.garnet(10, 3, 4, seed=4, num_terminal=num_terminal).P)
    live = ~m.terminal
    assert m.terminal.sum() == num_terminal
    assert np.all((m.P[live] > 0).sum(axis=-1) == 4)
    assert np.all(m.reward_std[live] == 0.5) and np.all(m.reward_std[~live] == 0)
    with pytest.raises(ValueError, match="^branching"):
        mdp.garnet(5, 2, 6)
    with pytest.raises(ValueError, match="^num_terminal"):
        mdp.garnet(5, 2, 2, num_terminal=5)


def test_chain_optimum_walks_right():
    m = mdp.chain(8, gamma=0.95, slip=0.1, step_reward=-0.01)
    right = np.zeros((8, 2))
    right[:, mdp.RIGHT] = 1.0
    q = exact.q_pi(m, right)
    q_star = exact.fixed_point_iteration(
        lambda x: m.R + m.gamma * m.P_continue @ x.max(axis=1), np.zeros(m.shape)
    )
    np.testing.assert_allclose(q, q_star, atol=1e-8)
    assert np.all(q_star[:-1].argmax(axis=1) == mdp.RIGHT)
    assert m.terminal[-1] and m.initial[0] == 1.0
    u = mdp.chain(8, start="uniform")
    assert np.allclose(u.initial[:-1], 1 / 7)


def test_gridworld():
    m = mdp.gridworld(4, 3, slip=0.2)
    assert m.shape == (12, 4) and m.terminal.sum() == 1 and m.terminal[11]
    v = exact.v_pi(m, policies.uniform_policy(m))
    assert np.all(v[:-1] > 0) and v[-1] == 0
    # the cell next to the goal is worth more than the start
    assert v[10] > v[0]
    with pytest.raises(ValueError, match="^goal"):
        mdp.gridworld(3, 3, goal=(3, 0))
    with pytest.raises(ValueError, match="^start"):
        mdp.gridworld(3, 3, start=(2, 2))


def test_q_lambda_counterexample_numbers():
    m, pi, mu, lam = mdp.q_lambda_counterexample()
    eps = np.abs(pi - mu).sum(axis=1).max()
    assert eps == pytest.approx(1.6)
    assert lam > (1 - m.gamma) / (m.gamma * eps)
    np.testing.assert_allclose(exact.q_pi(m, pi), [[9.0, 10.0], [9.0, 10.0]])
