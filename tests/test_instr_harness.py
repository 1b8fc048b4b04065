"""The harness's wiring (issue 20): what the train loops record on a fixed tiny run, checked
against figures computed here independently (an exact tabular solve written in this file, the
snapshots the loop published, the arrays it handed to its own units).

Spies wrap the loop's units (they call through, so the run is the real one) to see what the
loop passes between them: which policy each actor acts with, what a refresh leaves at a
truncation, what the value loss regresses onto, what the replay stores, which updates are
measured and against which policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from offpolicy.harness import dqn, grid, measure, ppo
from offpolicy.harness.envs import make_env

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def exact_j_and_q(env, pi):
    """J(pi) = init . V^pi and Q^pi [S,A] by a direct solve of V = r_pi + gamma Pc_pi V
    (Pc: transitions into terminal states cut)."""
    P = env.P * (~env.terminal)[None, None, :]
    r_pi = (pi * env.R).sum(1)
    P_pi = np.einsum("sa,sat->st", pi, P)
    v = np.linalg.solve(np.eye(env.S) - env.gamma * P_pi, r_pi)
    q = env.R + env.gamma * P @ v
    return float(env.init @ v), q


def softmax_policy(agent, env):
    with torch.no_grad():
        z = agent.logits(env.all_obs()).double()
    p = torch.softmax(z, -1).numpy()
    return p / p.sum(1, keepdims=True)


def tiny_ppo(**kw):
    base = dict(env="chain", seed=3, num_envs=4, num_steps=8, total_steps=4 * 8 * 5, hidden=8,
                update_epochs=1, num_minibatches=2, learning_rate=0.05)
    return ppo.PPOConfig(**{**base, **kw})


def run_ppo_recording_snapshots(cfg):
    """Train, keeping J of every published policy version: J[0] the initial network, J[k]
    the network after update k (read from each snapshot this test copies on publication)."""
    versions = []
    real_deepcopy = ppo.copy.deepcopy

    class CopySpy:
        @staticmethod
        def deepcopy(x, *a):
            out = real_deepcopy(x, *a)
            if isinstance(x, dict) and any(k.endswith("weight") for k in x):
                versions.append(out)
            return out

    env = make_env(cfg.env, cfg.num_envs, seed=cfg.seed)
    mp = pytest.MonkeyPatch()
    mp.setattr(ppo, "copy", CopySpy)
    try:
        result = ppo.train(cfg)
    finally:
        mp.undo()
    agent = ppo.Agent(env.obs_dim, env.n_actions, cfg.hidden)
    J = []
    for sd in versions:
        agent.load_state_dict(sd)
        J.append(exact_j_and_q(env, softmax_policy(agent, env))[0])
    return result, J


@pytest.mark.parametrize("lag", [0, 2])
def test_ppo_every_actor_acts_with_the_snapshot_lag_updates_old(lag):
    """J_mu at update i (1-based) is J of version max(0, i-1-lag); the versions differ, so
    an off-by-one in the snapshot index changes the figure."""
    result, J = run_ppo_recording_snapshots(tiny_ppo(lag=lag))
    curve = result["curve"]
    assert len(J) == len(curve) + 1
    assert min(abs(a - b) for a, b in zip(J, J[1:], strict=False)) > 1e-6  # learning moves J
    for i, row in enumerate(curve, start=1):
        assert row["J_mu"] == pytest.approx(J[max(0, i - 1 - lag)], rel=1e-5, abs=1e-7)
        assert row["J"] == pytest.approx(J[i], rel=1e-5, abs=1e-7)


def test_ppo_per_actor_lags_are_weighted_by_their_number_of_envs():
    """lag_spread "0/3": env e lags lag_e drawn by default_rng([seed, 14]).choice; J_mu is the
    mean over the envs (not over the distinct actors) of J of version max(0, i-1-lag_e)."""
    cfg = tiny_ppo(lag_spread="0/3", num_envs=4, seed=0)
    lags = np.random.default_rng([0, 14]).choice(np.array([0, 3]), size=4)
    assert sorted(np.bincount(lags, minlength=4)[[0, 3]]) == [1, 3]  # unequal groups
    result, J = run_ppo_recording_snapshots(cfg)
    for i, row in enumerate(result["curve"], start=1):
        want = np.mean([J[max(0, i - 1 - lag)] for lag in lags])
        assert row["J_mu"] == pytest.approx(want, rel=1e-5, abs=1e-7)


class Spy:
    """Wraps ``module.name``: records (args, kwargs, result) of every call."""

    def __init__(self, monkeypatch, module, name):
        self.calls = []
        real = getattr(module, name)

        def wrapper(*a, **k):
            out = real(*a, **k)
            # copies: the loops reuse their buffers in place
            self.calls.append(([x.clone() if torch.is_tensor(x) else
                                x.copy() if isinstance(x, np.ndarray) else x for x in a], k, out))
            return out

        monkeypatch.setattr(module, name, wrapper)


def test_ppo_puffer_refresh_keeps_the_final_observation_value_at_truncations(monkeypatch):
    """refresh="puffer" rewrites next_values[t] = values[t+1] only where the episode goes on;
    at a time-limit cut it keeps V(final obs) from the update's first evaluation."""
    cfg = tiny_ppo(refresh="puffer", max_episode_steps=3, update_epochs=2, num_minibatches=2)
    spy = Spy(monkeypatch, ppo, "advantages")
    result = ppo.train(cfg)
    per_update = cfg.update_epochs * cfg.num_minibatches  # 1 before, then one per minibatch but 1
    assert len(spy.calls) == per_update * len(result["curve"])
    cut_seen = 0
    for u in range(len(result["curve"])):
        calls = spy.calls[u * per_update:(u + 1) * per_update]
        first_next = calls[0][0][3]
        for args, _, _ in calls[1:]:
            _, _, values, next_values, term, trunc, _ = args
            cont = ~(term[:-1] | trunc[:-1])
            cut = trunc[:-1] & ~term[:-1]
            torch.testing.assert_close(next_values[:-1][cont], values[1:][cont], rtol=0, atol=0)
            torch.testing.assert_close(next_values[:-1][cut], first_next[:-1][cut], rtol=0,
                                       atol=0)
            # the next row there is the reset state's value, which a refresh must not copy
            cut_seen += int((values[1:][cut] != first_next[:-1][cut]).any())
    assert cut_seen > 0


def test_ppo_value_loss_regresses_onto_the_value_targets(monkeypatch):
    """Over one epoch the value loss sees every value target of the batch exactly once (the
    ``targets`` of advantages(), never the advantages)."""
    cfg = tiny_ppo(update_epochs=2, num_minibatches=4)
    adv_spy = Spy(monkeypatch, ppo, "advantages")
    vl_spy = Spy(monkeypatch, ppo, "value_loss")
    result = ppo.train(cfg)
    per = cfg.update_epochs * cfg.num_minibatches
    assert len(vl_spy.calls) == per * len(result["curve"])
    for u in range(len(result["curve"])):
        adv, targets = adv_spy.calls[u][2]
        assert not torch.allclose(adv, targets)
        for e in range(cfg.update_epochs):
            got = torch.cat([c[0][1] for c in vl_spy.calls[u * per + e * cfg.num_minibatches:
                                                           u * per + (e + 1) *
                                                           cfg.num_minibatches]])
            torch.testing.assert_close(got.sort().values, targets.reshape(-1).sort().values,
                                       rtol=0, atol=0)


def test_ppo_advantage_errors_are_measured_before_normalisation(monkeypatch):
    """The recorded adv_bias is the mean of (advantage as estimated - exact A^pi) with pi the
    learner's policy before the update (exact J equal to that version's J, solved here), on
    the advantages as estimated (norm_adv on: normalised ones have mean 0, another figure)."""
    cfg = tiny_ppo(norm_adv=True, update_epochs=1, num_minibatches=1)
    adv_spy = Spy(monkeypatch, ppo, "advantages")
    es_spy = Spy(monkeypatch, measure, "error_stats")
    result, J = run_ppo_recording_snapshots(cfg)
    for u, row in enumerate(result["curve"]):
        adv, targets = adv_spy.calls[u][2]
        args = es_spy.calls[u][0]
        states, actions, exact = args[2], args[3], args[4]
        assert exact["J"] == pytest.approx(J[u], rel=1e-6)  # the policy before update u + 1
        s, a = np.asarray(states).reshape(-1), np.asarray(actions).reshape(-1)
        want = float(np.mean(adv.double().numpy().reshape(-1) - exact["A"][s, a]))
        assert row["adv_bias"] == pytest.approx(want, rel=1e-9, abs=1e-12)
        want_v = float(np.mean(targets.double().numpy().reshape(-1) - exact["V"][s]))
        assert row["vtarget_bias"] == pytest.approx(want_v, rel=1e-9, abs=1e-12)
        assert abs(float(adv.mean())) > 1e-6  # raw advantages: not mean 0


# ---- DQN ---------------------------------------------------------------------------------------


def tiny_dqn(**kw):
    base = dict(env="chain", seed=1, num_envs=2, total_steps=240, learning_starts=20,
                batch_size=4, n=2, hidden=8, buffer_capacity=200, replay_ratio=0.5,
                measure_every=3, measure_from=4, log_points=5, max_episode_steps=4,
                target_update_period=5, estimator="retrace", target_epsilon=0.2)
    return dqn.DQNConfig(**{**base, **kw})


def test_dqn_measures_every_measure_every_th_update_from_measure_from():
    result = dqn.train(tiny_dqn())
    updates = result["curve"][-1]["updates"]
    assert updates > 20
    assert [r["update"] for r in result["update_log"]] == \
        [u for u in range(updates) if u >= 4 and u % 3 == 0]


def test_dqn_target_errors_are_measured_against_the_target_policy_before_the_step(monkeypatch):
    """The exact Q handed to the error split is Q^pi of pi = target_epsilon-greedy in the
    online network as it is when the target is formed (before that update's step)."""
    cfg = tiny_dqn()
    seen = []
    real = dqn.target_parts

    def spy(cfg_, seq, q_net, target_net, q_exact):
        env = make_env(cfg_.env, 1, seed=0)
        with torch.no_grad():
            q_all = q_net(env.all_obs()).double().numpy()
        A = q_all.shape[1]
        pi = np.full(q_all.shape, cfg.target_epsilon / A)
        pi[np.arange(len(q_all)), q_all.argmax(1)] += 1 - cfg.target_epsilon
        seen.append((q_exact.table.double().numpy(), exact_j_and_q(env, pi)[1]))
        return real(cfg_, seq, q_net, target_net, q_exact)

    monkeypatch.setattr(dqn, "target_parts", spy)
    result = dqn.train(cfg)
    assert len(seen) == len(result["update_log"]) > 3
    for got, want in seen:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_dqn_replay_stores_the_reached_state_as_next_observation(monkeypatch):
    """next_obs of a stored transition is obs of the next step inside an episode and the state
    the transition reached at a termination or a time-limit cut (never the reset state)."""
    cfg = tiny_dqn()
    spy = Spy(monkeypatch, dqn.SequenceReplay, "add")
    dqn.train(cfg)
    env = make_env(cfg.env, 1, seed=0)
    calls = [c[0] for c in spy.calls]  # (self, obs, action, reward, term, trunc, next_obs, ...)
    differs_from_reset = 0
    for (_, obs, act, _, term, trunc, nxt, *_), (_, obs2, *_) in zip(calls, calls[1:],
                                                                    strict=False):
        done = term | trunc
        s, a, s2 = obs.argmax(1), act, nxt.argmax(1)
        assert (env.P[s, a, s2] > 0).all()
        torch.testing.assert_close(nxt[~done], obs2[~done], rtol=0, atol=0)
        assert env.terminal[s2[term]].all() and not env.terminal[s2[trunc]].any()
        differs_from_reset += int((nxt[done] != obs2[done]).any())
    assert differs_from_reset > 0


# ---- summaries and run names -------------------------------------------------------------------


def test_summarize_tail_and_means_by_hand():
    curve = [{"env_steps": 10 * (i + 1), "wall_time": float(i), "sps": 1.0 + i,
              "episodic_return": float(i), "J": float(i), "J_opt": 20.0,
              **({"adv_bias": (-1.0) ** i * i} if i % 2 == 0 or i == 9 else {})}
             for i in range(10)]
    curve[3]["episodic_return"] = float("nan")
    s = measure.summarize(curve, tabular=True, tail=0.25)  # round(2.5) = 2 rows
    assert s["env_steps"] == 100 and s["wall_time"] == 9.0 and s["sps"] == 10.0
    assert s["final_J"] == 8.5 and s["final_return"] == 8.5
    assert s["mean_J"] == 4.5
    assert s["mean_return"] == pytest.approx((45 - 3) / 9)
    assert s["final_J_frac"] == 8.5 / 20 and s["mean_J_frac"] == 4.5 / 20
    bias = [0.0, 2.0, 4.0, 6.0, 8.0, -9.0]  # rows 0, 2, 4, 6, 8, 9
    assert s["adv_bias"] == pytest.approx(np.mean(bias))
    assert s["adv_bias_abs"] == pytest.approx(np.mean(np.abs(bias)))
    assert "kl_pi_mu" not in s and "J_mu_abs" not in s
    assert measure.summarize(curve, tabular=False, tail=0.1)["final_return"] == 9.0
    assert "final_J" not in measure.summarize(curve, tabular=False)
    assert measure.summarize([], tabular=True) == {}


def test_run_names_label_the_axes_and_tell_every_config_apart():
    specs = grid.expand("ppo", {"total_steps": 64}, {"lag_spread": ["uniform:0-8", "0/2"],
                                                     "lag": [1]}, seeds=[0, 5])
    names = [s["name"] for s in specs]
    assert len(set(names)) == 4
    assert names[0].startswith("ppo-chain-lag_spread=uniform_0-8-lag=1-seed=0-")
    assert names[3].startswith("ppo-chain-lag_spread=0_2-lag=1-seed=5-")
    other = grid.expand("ppo", {"total_steps": 128}, {"lag_spread": ["uniform:0-8"],
                                                      "lag": [1]}, seeds=[0])
    assert other[0]["name"] != names[0]  # a field outside the axes still changes the name
    assert other[0]["name"][:-10] == names[0][:-10]
