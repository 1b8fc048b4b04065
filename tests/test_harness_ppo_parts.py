"""The PPO side of the staleness harness, part by part (issue 14 §5): each loss term on a tiny
fixed batch against a hand-computed answer, the behaviour/target log-probabilities actually
used (epsilon mix, temperature, lagged actors, search policy against an independent lookahead
with the exact model), the measured KL / rho statistics against exact values, truncation
handling, and seeding."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from offpolicy import mdp as M
from offpolicy.harness import measure, ppo
from offpolicy.harness.__main__ import main as cli_main
from offpolicy.harness.envs import GymVecEnv, TabularVecEnv

# tiny networks: intra-op threads only add contention (the grid workers do the same)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- loss terms on a fixed batch ---------------------------------------------------------

# three samples: ratios 1.5 (A > 0, clipped at 1.2), 0.5 (A < 0, clipped at 0.8), 1.1 (inside)
RATIOS = [1.5, 0.5, 1.1]
ADV = torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64)
LOGMU = torch.log(torch.tensor([0.2, 0.6, 0.5], dtype=torch.float64))


def _new_logp():
    return (LOGMU + torch.log(torch.tensor(RATIOS, dtype=torch.float64))).requires_grad_()


def test_ppo_clip_surrogate_value_ratio_and_gradient_by_hand():
    new_logp = _new_logp()
    loss, ratio = ppo.policy_loss(new_logp, LOGMU, ADV, kind="ppo_clip", estimator="gae",
                                  clip_coef=0.2)
    assert torch.allclose(ratio.detach(), torch.tensor(RATIOS, dtype=torch.float64))
    # min(1.5*1, 1.2*1) = 1.2; min(0.5*-1, 0.8*-1) = -0.8; min(2.2, 2.2) = 2.2
    assert loss.item() == pytest.approx(-(1.2 - 0.8 + 2.2) / 3, abs=1e-12)
    loss.backward()
    # clipped samples carry no gradient; the inside one d/dlogp = -r A / 3
    assert torch.allclose(new_logp.grad, torch.tensor([0.0, 0.0, -1.1 * 2.0 / 3],
                                                      dtype=torch.float64))


def test_impala_pg_weights_once_by_hand():
    # gae: w = min(pg_rho_clip, rho) detached, loss = -mean(w A log pi)
    new_logp = _new_logp()
    loss, _ = ppo.policy_loss(new_logp, LOGMU, ADV, kind="impala", estimator="gae",
                              clip_coef=0.2, pg_rho_clip=1.0)
    w = torch.tensor([1.0, 0.5, 1.0], dtype=torch.float64)
    assert loss.item() == pytest.approx(float(-(w * ADV * new_logp.detach()).mean()), abs=1e-12)
    loss.backward()
    assert torch.allclose(new_logp.grad, -w * ADV / 3)
    # vtrace/puff/pdis: the advantage carries the weight, so none is applied again
    for est in ("vtrace", "puff", "pdis"):
        new_logp = _new_logp()
        loss, _ = ppo.policy_loss(new_logp, LOGMU, ADV, kind="impala", estimator=est,
                                  clip_coef=0.2)
        loss.backward()
        assert torch.allclose(new_logp.grad, -ADV / 3), est


def test_vtrace_gradient_weight_is_rho_times_min_rho_under_ppo_clip_and_rho_under_impala():
    from estimators import torch as E

    # one step, rho = 0.5: V-trace's pg advantage is 0.5 * delta
    rho, delta = 0.5, 1.0
    out = E.vtrace(torch.tensor([[delta]], dtype=torch.float64),
                   torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64),
                   torch.tensor([[True]]), torch.tensor([[False]]),
                   torch.tensor([[math.log(rho)]], dtype=torch.float64), gamma=0.9)
    adv = out.pg_advantages.reshape(1)
    logmu = torch.log(torch.tensor([0.5], dtype=torch.float64))
    grads = {}
    for kind in ("ppo_clip", "impala"):
        new_logp = (logmu + math.log(rho)).requires_grad_()
        loss, _ = ppo.policy_loss(new_logp, logmu, adv, kind=kind, estimator="vtrace",
                                  clip_coef=0.6)  # 0.5 inside [0.4, 1.6]: unclipped
        loss.backward()
        grads[kind] = -new_logp.grad.item()
    assert grads["ppo_clip"] == pytest.approx(0.25 * delta)  # rho * min(1, rho)
    assert grads["impala"] == pytest.approx(0.5 * delta)  # min(1, rho), as IMPALA


def test_decoupled_surrogate_clips_against_prox_and_weights_by_prox_over_mu():
    logprox = torch.log(torch.tensor([0.4, 0.3, 0.5], dtype=torch.float64))
    ratio_prox = torch.tensor([1.1, 1.5, 0.7], dtype=torch.float64)
    new_logp = (logprox + ratio_prox.log()).requires_grad_()
    adv = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    loss, ratio = ppo.policy_loss(new_logp, LOGMU, adv, kind="ppo_clip", estimator="decoupled",
                                  clip_coef=0.2, logprox=logprox, decoupled_weight_clip=1.5)
    assert torch.allclose(ratio.detach(), ratio_prox)
    w = torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64).clamp(max=1.5)  # prox/mu, clipped
    surr = torch.tensor([1.1 * 1.0, 1.2 * 2.0, 0.7 * 1.0], dtype=torch.float64)
    assert loss.item() == pytest.approx(float(-(w * surr).mean()), abs=1e-12)


def test_prox_clip_clips_against_prox_and_weights_once():
    logprox = torch.log(torch.tensor([0.4, 0.3, 0.5], dtype=torch.float64))
    ratio_prox = torch.tensor([1.1, 1.5, 0.7], dtype=torch.float64)
    adv = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    surr = torch.tensor([1.1 * 1.0, 1.2 * 2.0, 0.7 * 1.0], dtype=torch.float64)
    for est, w in (("vtrace", torch.ones(3, dtype=torch.float64)),  # carried by the advantage
                   ("gae", torch.tensor([1.0, 0.5, 1.0], dtype=torch.float64))):  # min(1, prox/mu)
        new_logp = (logprox + ratio_prox.log()).requires_grad_()
        loss, ratio = ppo.policy_loss(new_logp, LOGMU, adv, kind="prox_clip", estimator=est,
                                      clip_coef=0.2, pg_rho_clip=1.0, logprox=logprox)
        assert torch.allclose(ratio.detach(), ratio_prox)
        assert loss.item() == pytest.approx(float(-(w * surr).mean()), abs=1e-12), est


def test_value_loss_and_auto_rule():
    v = torch.tensor([1.0, 2.0, 0.0])
    t = torch.tensor([0.0, 2.0, 3.0])
    assert ppo.value_loss(v, t).item() == pytest.approx(0.5 * (1 + 0 + 9) / 3)
    auto = {e: ppo.resolved_pg_loss(ppo.PPOConfig(estimator=e)) for e in ppo.ESTIMATORS}
    assert auto == {"gae": "ppo_clip", "decoupled": "ppo_clip", "vtrace": "prox_clip",
                    "puff": "prox_clip", "pdis": "prox_clip"}
    assert ppo.resolved_pg_loss(ppo.PPOConfig(estimator="vtrace", pg_loss="ppo_clip")) \
        == "ppo_clip"


# ---- behaviour and target log-probabilities -----------------------------------------------


def test_behaviour_log_probs_epsilon_mix_and_temperature_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    for T, eps in ((1.0, None), (2.0, None), (0.5, 0.3), (1.0, 1.0)):
        z = logits.numpy() / T
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        mu = (1 - (eps or 0)) * p + (eps or 0) / 3
        got = ppo.behaviour_log_probs(logits, temperature=T, epsilon=eps).exp().numpy()
        assert np.allclose(got, mu, atol=1e-12), (T, eps)


def _agent_env(num_envs=4, n_states=6):
    env = TabularVecEnv(M.chain(n_states, slip=0.2), num_envs=num_envs, max_steps=50, seed=0)
    torch.manual_seed(0)
    agent = ppo.Agent(env.obs_dim, env.n_actions, 8)
    return agent, env


def _independent_search(mdp, leaf, gamma, depth):
    """Depth-D lookahead by explicit loops over (s, a, s')."""
    S, A = mdp.R.shape
    v = np.asarray(leaf, dtype=np.float64)
    for _ in range(depth):
        q = np.zeros((S, A))
        for s in range(S):
            for a in range(A):
                q[s, a] = mdp.R[s, a] + gamma * sum(
                    mdp.P[s, a, s2] * (0.0 if mdp.terminal[s2] else v[s2]) for s2 in range(S))
        v = q.max(axis=1)
    return q


def test_search_policy_matches_independent_lookahead_with_exact_model():
    agent, env = _agent_env()
    cfg = ppo.PPOConfig(env="chain", num_envs=4, search_depth=3, search_temperature=0.05,
                        epsilon=0.1, gamma=env.gamma)
    beh = ppo.Behaviour(cfg, agent, env, [agent.state_dict()])
    states = np.arange(env.S)[:4]
    with torch.no_grad():
        net_logits, logmu = beh.logits(env.one_hot(states), states)
        leaf = agent.value(env.all_obs()).double().numpy()
    q = _independent_search(env.mdp, leaf, env.gamma, 3)
    z = q / 0.05
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    mu = 0.9 * p + 0.1 / env.A
    assert np.allclose(logmu.exp().numpy(), mu[states], atol=1e-5)
    # the behaviour comes from the search, not from the network's own policy
    pi_net = torch.softmax(net_logits, -1).numpy()
    assert not np.allclose(pi_net, mu[states], atol=1e-2)
    # a deep search from zero leaves is value iteration: its greedy value is J*
    q_deep = ppo.search_q(env.P, env.R, env.terminal, np.zeros(env.S), env.gamma, 400)
    assert env.init @ q_deep.max(1) == pytest.approx(env.optimal_J(), abs=1e-9)


def test_lagged_actors_use_their_own_snapshots():
    agent, env = _agent_env(num_envs=8)
    snaps = []
    for k in range(3):  # three distinct parameter versions: 2, 1, 0 updates old
        with torch.no_grad():
            agent.actor[-1].bias.fill_(float(k))
            agent.actor[-1].bias[0] += 0.5 * k
        snaps.append({n: t.clone() for n, t in agent.state_dict().items()})
    cfg = ppo.PPOConfig(env="chain", num_envs=8, lag_spread="0/2", seed=3)
    lags = ppo.actor_lags(cfg)
    assert set(lags.tolist()) == {0, 2}
    beh = ppo.Behaviour(cfg, agent, env, snaps)
    obs = env.one_hot(np.zeros(8, dtype=np.int64))
    with torch.no_grad():
        net_logits, _ = beh.logits(obs)
    for i, lag in enumerate(lags):
        agent.load_state_dict(snaps[2 - lag])
        with torch.no_grad():
            assert torch.allclose(net_logits[i], agent.logits(obs[i:i + 1])[0]), (i, lag)


def test_hook_supplies_the_recorded_behaviour_log_probs():
    # chain(2): every visited state is state 0, 2 actions; the hook claims mu = 0.25 for every
    # action, so rho = pi(a|0) / 0.25 and the sample KL(mu||pi) = mean(-log rho)
    seen = []

    def hook(obs, actions, logits):
        seen.append((obs.shape, actions.shape, logits.shape))
        return torch.full(actions.shape, math.log(0.25))

    cfg = ppo.PPOConfig(env="chain", env_kwargs={"num_states": 2}, num_envs=4, num_steps=8,
                        total_steps=32, num_minibatches=1, update_epochs=1)
    row = ppo.train(cfg, behaviour_logprob_fn=hook)["curve"][0]
    assert seen and seen[0] == ((4, 2), (4,), (4, 2))
    torch.manual_seed(cfg.seed)
    pi0 = torch.softmax(ppo.Agent(2, 2, cfg.hidden).logits(torch.eye(2)[:1]), -1)[0].detach()
    ratios = sorted((pi0 / 0.25).tolist())
    assert row["rho_q05"] == pytest.approx(ratios[0], rel=1e-5)
    assert row["rho_q95"] == pytest.approx(ratios[1], rel=1e-5)
    assert -math.log(ratios[1]) <= row["kl_mu_pi"] <= -math.log(ratios[0])


# ---- what the harness measures -----------------------------------------------------------


def test_kl_rho_quantiles_and_clip_fractions_by_hand():
    logpi = torch.log(torch.tensor([[0.7, 0.3], [0.7, 0.3], [0.2, 0.8]], dtype=torch.float64))
    logmu = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]], dtype=torch.float64))
    rho = np.round(np.arange(21) * 0.1, 10)  # 0.0 .. 2.0
    stats = measure.behaviour_stats(torch.log(torch.as_tensor(rho[1:])).double(), 1.0, 1.5,
                                    logpi_full=logpi, logmu_full=logmu)
    kl_a = 0.7 * math.log(0.7 / 0.5) + 0.3 * math.log(0.3 / 0.5)
    kl_b = 0.2 * math.log(0.2 / 0.5) + 0.8 * math.log(0.8 / 0.5)
    rkl_a = 0.5 * math.log(0.5 / 0.7) + 0.5 * math.log(0.5 / 0.3)
    rkl_b = 0.5 * math.log(0.5 / 0.2) + 0.5 * math.log(0.5 / 0.8)
    assert stats["kl_pi_mu"] == pytest.approx((2 * kl_a + kl_b) / 3, abs=1e-12)
    assert stats["kl_mu_pi"] == pytest.approx((2 * rkl_a + rkl_b) / 3, abs=1e-12)
    # rho = 0.1 .. 2.0 (20 values): quantiles with linear interpolation, by hand
    assert stats["rho_q05"] == pytest.approx(0.1 + 0.05 * 19 * 0.1)
    assert stats["rho_q50"] == pytest.approx(1.05)
    assert stats["rho_q95"] == pytest.approx(0.1 + 0.95 * 19 * 0.1)
    assert stats["rho_clipped_frac"] == pytest.approx(10 / 20)  # 1.1 .. 2.0
    assert stats["c_clipped_frac"] == pytest.approx(5 / 20)  # 1.6 .. 2.0


def test_error_stats_against_exact_by_hand():
    exact = {"A": np.array([[0.1, -0.2], [0.3, 0.0]]), "V": np.array([1.0, 2.0])}
    adv = torch.tensor([0.2, -0.2, 0.0])  # at (0,0), (0,1), (1,0): errors 0.1, 0, -0.3
    targets = torch.tensor([1.5, 1.0, 2.0])  # errors 0.5, 0, 0
    out = measure.error_stats(adv, targets, np.array([0, 0, 1]), np.array([0, 1, 0]), exact)
    assert out["adv_bias"] == pytest.approx((0.1 - 0.3) / 3, abs=1e-7)
    assert out["adv_rmse"] == pytest.approx(math.sqrt((0.01 + 0.09) / 3), abs=1e-7)
    assert out["vtarget_bias"] == pytest.approx(0.5 / 3, abs=1e-7)


def test_train_kl_on_a_single_state_chain_matches_exact():
    # chain(2): only state 0 is visited, so the mean KL over visited states is the KL at state
    # 0 between the initial network policy and its behaviour: a depth-2 search policy, sharpened
    # by search_temperature and temperature, mixed with uniform
    cfg = ppo.PPOConfig(env="chain", env_kwargs={"num_states": 2}, num_envs=4, num_steps=8,
                        total_steps=32, epsilon=0.3, temperature=2.0, hidden=8,
                        search_depth=2, search_temperature=0.1)
    row = ppo.train(cfg)["curve"][0]
    torch.manual_seed(cfg.seed)
    agent = ppo.Agent(2, 2, 8)
    with torch.no_grad():
        pi = torch.softmax(agent.logits(torch.eye(2)[:1]).double()[0], -1).numpy()
        leaf = agent.value(torch.eye(2)).double().numpy()
    mdp = M.chain(2)
    z = _independent_search(mdp, leaf, mdp.gamma, 2)[0] / 0.1 / 2.0
    mu = 0.7 * np.exp(z) / np.exp(z).sum() + 0.15
    assert mu.max() > 0.6  # far from the network's near-uniform pi: the KL is not tiny
    assert row["kl_pi_mu"] == pytest.approx(float((pi * np.log(pi / mu)).sum()), rel=1e-4)
    assert row["kl_mu_pi"] == pytest.approx(float((mu * np.log(mu / pi)).sum()), rel=1e-4)
    # on-policy: every rho is 1 up to round-off, none counted as clipped
    row0 = ppo.train(ppo.PPOConfig(env="chain", num_envs=4, num_steps=8, total_steps=32,
                                   hidden=8))["curve"][0]
    assert row0["kl_pi_mu"] == pytest.approx(0.0, abs=1e-6)
    assert row0["rho_q05"] == pytest.approx(1.0, abs=1e-5)
    assert row0["rho_clipped_frac"] == 0.0 and row0["c_clipped_frac"] == 0.0


# ---- truncation ----------------------------------------------------------------------------


def test_truncation_bootstrap_uses_final_value_and_terminate_zeroes_it():
    cfg = ppo.PPOConfig(estimator="gae", gamma=0.9, gae_lambda=1.0)
    r = torch.tensor([[1.0]])
    v, nv = torch.tensor([[0.5]]), torch.tensor([[2.0]])  # V(final obs) = 2
    term, trunc = torch.tensor([[False]]), torch.tensor([[True]])
    for mode, expected in (("bootstrap", 1.0 + 0.9 * 2.0 - 0.5), ("terminate", 1.0 - 0.5)):
        c = ppo.PPOConfig(**{**cfg.__dict__, "truncation": mode})
        t_l, tr_l = ppo.learner_flags(c, term, trunc)
        for est in ("gae", "vtrace", "puff"):
            adv, _ = ppo.advantages(ppo.PPOConfig(**{**c.__dict__, "estimator": est}), r, v, nv,
                                    t_l, tr_l, torch.zeros(1, 1))
            assert adv.item() == pytest.approx(expected), (mode, est)


def test_gym_final_observation_on_truncated_steps_continues_the_episode():
    import gymnasium as gym

    env = GymVecEnv("CartPole-v1", num_envs=2, seed=5, max_steps=3)
    env.reset(seed=5)
    actions = [torch.tensor([1, 0]), torch.tensor([1, 1]), torch.tensor([0, 1])]
    for a in actions:
        step = env.step(a)
    assert step.truncated.all() and not step.terminated.any()
    for i in range(2):  # an independent single env with the same seed and actions
        single = gym.make("CartPole-v1")
        single.reset(seed=5 + i)
        for a in actions:
            o, *_ = single.step(int(a[i]))
        assert np.allclose(step.final_obs[i].numpy(), o, atol=1e-6)
        assert not np.allclose(step.obs[i].numpy(), o)  # obs is the reset state
    env.close()


# ---- seeding --------------------------------------------------------------------------------


def test_seeds_give_different_streams_and_lag_spread_is_deterministic_per_seed():
    a = [ppo.actor_lags(ppo.PPOConfig(num_envs=16, lag_spread="uniform:0-8", seed=s))
         for s in (0, 0, 1)]
    assert np.array_equal(a[0], a[1]) and not np.array_equal(a[0], a[2])
    assert a[0].min() >= 0 and a[0].max() <= 8 and len(set(a[0].tolist())) > 3
    listed = ppo.actor_lags(ppo.PPOConfig(num_envs=32, lag=1, lag_spread="0/2/8", seed=2))
    assert set(listed.tolist()) == {1, 3, 9}  # lag + a draw from the list
    runs = [ppo.train(ppo.PPOConfig(num_envs=4, num_steps=8, total_steps=64, seed=s,
                                    hidden=8, epsilon=0.2))["curve"] for s in (0, 0, 1)]
    key = lambda c: [(r["kl_pi_mu"], r["rho_q50"], r["adv_rmse"]) for r in c]
    assert key(runs[0]) == key(runs[1]) and key(runs[0]) != key(runs[2])
    envs = [TabularVecEnv(M.chain(6, slip=0.5), num_envs=8, seed=0) for _ in range(2)]
    streams = []
    for env, seed in zip(envs, (0, 1), strict=True):
        env.reset(seed=seed)
        streams.append([env.step(torch.ones(8, dtype=torch.long)).obs.argmax(1).tolist()
                        for _ in range(5)])
    assert streams[0] != streams[1]


# ---- config checks and CLI -------------------------------------------------------------------


@pytest.mark.parametrize("over, field", [
    ({"env": "cartpole", "search_depth": 2}, "search_depth"),
    ({"epsilon": 1.5}, "epsilon"), ({"temperature": 0.0}, "temperature"),
    ({"lag_spread": "uniform:5-2"}, "lag_spread"), ({"lag_spread": "a/b"}, "lag_spread"),
    ({"pg_loss": "a2c"}, "pg_loss"), ({"truncation": "drop"}, "truncation"),
    ({"estimator": "decoupled", "pg_loss": "impala"}, "pg_loss"),
])
def test_bad_behaviour_options_name_their_field(over, field):
    with pytest.raises(measure.ConfigError) as e:
        ppo.check_config(ppo.PPOConfig(**over))
    assert e.value.field == field


@pytest.mark.parametrize("argv, needle", [
    (["--algo", "ppo", "--env", "cartpole", "--search-depth", "2"], "--search-depth"),
    (["--algo", "dqn", "--temperature", "2"], "--temperature"),
    (["--algo", "dqn", "--pg-loss", "impala"], "--pg-loss"),
    (["--algo", "ppo", "--lag-spread", "uniform:3"], "--lag-spread"),
])
def test_cli_behaviour_options_exit_2_with_one_line(argv, needle, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        cli_main([*argv, "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
