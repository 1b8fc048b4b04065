"""The staleness harness (issue 6): environments, learners, determinism, grid CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from offpolicy import mdp as M
from offpolicy.harness import dqn, grid, ppo
from offpolicy.harness.__main__ import main as cli_main
from offpolicy.harness.envs import GymVecEnv, TabularVecEnv

TIMING_KEYS = {"wall_time", "sps", "env_sps"}


# tiny networks: intra-op threads only add contention (the grid workers do the same)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _strip_timing(curve):
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in curve]


# ---- environments -----------------------------------------------------------------------


def test_tabular_env_reads_the_mdps_own_attributes():
    """One attribute per quantity (offpolicy.mdp.TabularMDP): a start distribution that is not
    state 0, terminal states and reward noise come through as given; anything else is refused
    with the argument's name instead of being guessed at."""
    base = M.chain(4, slip=0.0)
    noise = np.array([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.0, 0.0]])  # none once terminal
    m = base.replace(initial=[0.0, 0.25, 0.75, 0.0], reward_std=noise)
    env = TabularVecEnv(m, num_envs=2, seed=0)
    np.testing.assert_array_equal(env.init, [0.0, 0.25, 0.75, 0.0])
    np.testing.assert_array_equal(env.terminal, [False, False, False, True])
    np.testing.assert_array_equal(env.reward_std, noise)
    assert TabularVecEnv(base, num_envs=2).reward_std is None  # noiseless: no draw at all
    with pytest.raises(TypeError, match="^mdp: expected an offpolicy.mdp.TabularMDP"):
        TabularVecEnv(object(), num_envs=2)


def test_tabular_env_separates_termination_and_truncation():
    env = TabularVecEnv(M.chain(4, slip=0.0), num_envs=3, max_steps=5, seed=0)
    obs = env.reset(seed=0)
    assert torch.equal(obs, env.one_hot([0, 0, 0]))
    # stream 0 walks right to the goal (3 steps), 1 walks left (truncated at 5), 2 alternates
    plans = [[1, 1, 1], [0, 0, 0, 0, 0], [1, 0, 1, 0, 1]]
    seen = {0: None, 1: None, 2: None}
    for t in range(5):
        a = torch.tensor([p[t] if t < len(p) else 0 for p in plans])
        step = env.step(a)
        # per-transition rewards: 1 exactly on entering the goal, 0 elsewhere (chain R_sas)
        assert step.reward[0] == (1.0 if t == 2 else 0.0) or t > 2
        assert step.reward[1] == 0.0
        for i in range(3):
            if (step.terminated[i] or step.truncated[i]) and seen[i] is None:
                seen[i] = (t, bool(step.terminated[i]), bool(step.truncated[i]),
                           int(step.final_obs[i].argmax()), int(step.obs[i].argmax()))
    assert seen[0] == (2, True, False, 3, 0)  # entered the goal: terminated, reset to 0
    assert seen[1] == (4, False, True, 0, 0)  # time limit: truncated, final obs = state 0
    assert seen[2] == (4, False, True, 1, 0)  # final obs is the state reached, not the reset


def test_tabular_env_emits_per_transition_rewards():
    env = TabularVecEnv(M.chain(3, slip=0.5), num_envs=200, max_steps=50, seed=0)
    env.reset(seed=0)
    env.state[:] = 1  # next to the goal: RIGHT reaches it with probability 0.5
    step = env.step(torch.ones(200, dtype=torch.long))
    assert set(step.reward.tolist()) == {0.0, 1.0}  # R_sas, never the mean R[1, RIGHT] = 0.5
    assert torch.equal(step.reward == 1.0, step.terminated)


def test_tabular_env_exact_matches_monte_carlo():
    mdp = M.chain(5, gamma=0.9, slip=0.2)
    env = TabularVecEnv(mdp, num_envs=4000, max_steps=400, seed=1)
    pi = np.tile([0.3, 0.7], (5, 1))
    ex = env.exact(pi)
    assert ex["A"].shape == (5, 2) and np.allclose((pi * ex["A"]).sum(1), 0.0)
    env.reset(seed=1)
    rng = np.random.default_rng(0)
    ret, disc, alive = np.zeros(env.num_envs), np.ones(env.num_envs), np.ones(env.num_envs, bool)
    for _ in range(200):
        a = torch.as_tensor((rng.random(env.num_envs) < 0.7).astype(np.int64))
        step = env.step(a)
        ret += alive * disc * step.reward.numpy()
        disc *= mdp.gamma
        alive &= ~(step.terminated.numpy() | step.truncated.numpy())
    se = ret.std() / np.sqrt(len(ret))
    assert abs(ret.mean() - ex["J"]) < 4 * se + 1e-3
    assert ex["J"] < env.optimal_J()


def test_gym_env_final_obs_feeds_bootstrap_after_truncation():
    env = GymVecEnv("CartPole-v1", num_envs=2, seed=0, max_steps=4)
    obs = env.reset(seed=0)
    for t in range(4):
        prev = obs
        step = env.step(torch.tensor([0, 1]))
        if t < 3:
            assert not step.truncated.any()
            assert torch.equal(step.final_obs, step.obs)
        obs = step.obs
    assert step.truncated.all() and not step.terminated.any()
    # the final observation continues the trajectory (cart moved a little from prev) while obs
    # is a fresh reset state
    assert not torch.allclose(step.final_obs, step.obs)
    assert torch.all((step.final_obs[:, 0] - prev[:, 0]).abs() < 0.1)
    assert torch.all(step.obs.abs() <= 0.05)
    env.close()


# ---- learners ---------------------------------------------------------------------------


def test_ppo_lag0_reaches_optimal_J_on_chain():
    r = ppo.train(ppo.PPOConfig(env="chain", total_steps=12_000, seed=0))
    s = r["summary"]
    assert s["final_J"] >= 0.95 * s["J_opt"], s
    # lag 0, no refresh: the ratios at the start of every update are exactly 1
    assert all(row["log_rho_abs"] == 0.0 for row in r["curve"])
    assert all(np.isfinite(row["adv_rmse"]) and np.isfinite(row["adv_bias"]) for row in r["curve"])


def test_dqn_reaches_optimal_J_on_chain():
    r = dqn.train(dqn.DQNConfig(env="chain", total_steps=4_000, seed=0, measure_every=50))
    s = r["summary"]
    assert s["final_J"] >= 0.95 * s["J_opt"], s
    assert np.isfinite(s["qtarget_rmse"])


def test_ppo_lag_makes_behaviour_stale():
    # ppo_clip: a loss centred on pi_prox (vtrace's default prox_clip) or with no trust region
    # (impala) can make the policy deterministic within a few updates, after which a stale
    # actor's ratios are exactly 1 again
    r = ppo.train(ppo.PPOConfig(total_steps=4_096, lag=3, estimator="vtrace", seed=0,
                                pg_loss="ppo_clip"))
    rows = r["curve"]
    # update 1: actor and learner both hold the initial parameters (ratios measured before
    # the first gradient step); afterwards the actor acts with parameters up to 3 versions old
    assert rows[0]["log_rho_abs"] == 0.0
    assert all(row["log_rho_abs"] > 0.0 for row in rows[1:])


@pytest.mark.parametrize("estimator", ppo.ESTIMATORS)
@pytest.mark.parametrize("refresh", ppo.REFRESH)
def test_ppo_every_correction_and_refresh_runs(estimator, refresh):
    cfg = ppo.PPOConfig(total_steps=1_024, num_envs=8, num_steps=32, lag=2, estimator=estimator,
                        refresh=refresh, update_epochs=2, num_minibatches=2)
    r = ppo.train(cfg)
    assert len(r["curve"]) == 4
    assert np.isfinite(r["summary"]["final_J"])


@pytest.mark.parametrize("estimator", dqn.ESTIMATORS)
def test_dqn_every_correction_runs_and_respects_min_age(estimator):
    cfg = dqn.DQNConfig(total_steps=1_600, estimator=estimator, lam=0.9, min_age=100,
                        learning_starts=200, target_epsilon=0.1, measure_every=20, log_points=8)
    r = dqn.train(cfg)
    ages = [row["sample_age"] for row in r["curve"] if "sample_age" in row]
    assert ages and ages[-1] >= 100  # once old data exists, only old data is sampled
    assert np.isfinite(r["summary"]["final_J"])


def test_gym_envs_run_through_both_learners():
    r = ppo.train(ppo.PPOConfig(env="acrobot", total_steps=512, num_envs=4, num_steps=128))
    assert r["curve"][-1]["env_steps"] == 512 and "J" not in r["curve"][-1]
    r = dqn.train(dqn.DQNConfig(env="cartpole", total_steps=800, learning_starts=200,
                                estimator="retrace", lam=0.9, log_points=4))
    assert np.isfinite(r["summary"]["final_return"])
    assert r["update_log"] == []  # no exact measurements off the tabular MDPs


def test_same_seed_same_curves():
    c = ppo.PPOConfig(total_steps=2_048, lag=2, estimator="puff", refresh="puffer", seed=3)
    a, b = ppo.train(c), ppo.train(c)
    assert _strip_timing(a["curve"]) == _strip_timing(b["curve"])
    other = ppo.train(ppo.PPOConfig(**{**c.__dict__, "seed": 4}))
    assert _strip_timing(other["curve"]) != _strip_timing(a["curve"])
    d = dqn.DQNConfig(total_steps=1_200, estimator="retrace", lam=0.9, learning_starts=200,
                      seed=3, log_points=6)
    x, y = dqn.train(d), dqn.train(d)
    assert _strip_timing(x["curve"]) == _strip_timing(y["curve"])


# ---- grid and CLI -----------------------------------------------------------------------


def test_smoke_grid_cli_writes_table_and_resumes(tmp_path, capsys):
    out = tmp_path / "h"
    argv = ["--algo", "ppo", "--env", "chain", "--lag", "0,2", "--estimator", "gae,vtrace",
            "--seeds", "1", "--total-steps", "1024", "--set", "num_envs=8",
            "--out", str(out), "--no-progress"]
    assert cli_main(argv + ["--jobs", "2"]) == 0
    runs = sorted((out / "runs").glob("*.json"))
    assert len(runs) == 4
    for name in ("ppo_chain_table.csv", "ppo_chain_table.md", "ppo_chain_runs.csv",
                 "ppo_chain_staleness.png", "ppo_chain_curves.png"):
        assert (out / name).stat().st_size > 0, name
    table = (out / "ppo_chain_table.md").read_text()
    assert "vtrace" in table and "adv_rmse" in table
    # resume: delete one run, rerun; only that one is recomputed
    mtimes = {p.name: p.stat().st_mtime_ns for p in runs}
    runs[0].unlink()
    assert cli_main(argv + ["--executor", "serial"]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert set(after) == set(mtimes)
    assert all(after[k] == v for k, v in mtimes.items() if k != runs[0].name)
    assert not list((out / "runs").glob(".tmp-*"))
    with open(runs[1]) as f:
        rec = json.load(f)
    assert rec["algo"] == "ppo" and rec["curve"] and "final_J_frac" in rec["summary"]


def test_dqn_grid_serial(tmp_path):
    specs = grid.expand("dqn", {"total_steps": 600, "learning_starts": 200, "log_points": 3},
                        {"estimator": ["nstep", "tree_backup"]}, seeds=[0])
    results = grid.run_grid(specs, tmp_path, executor="serial", progress=False)
    assert [r["config"]["estimator"] for r in results] == ["nstep", "tree_backup"]


def test_cli_values_parse_by_field_type():
    from offpolicy.harness.__main__ import _field_types, parse_value

    ppo_t, dqn_t = _field_types("ppo"), _field_types("dqn")
    assert parse_value("none", ppo_t["refresh"]) == "none"  # a string choice, not None
    assert parse_value("None", dqn_t["max_age"]) is None  # optional field
    assert parse_value("200", dqn_t["max_age"]) == 200
    assert parse_value("3e5", ppo_t["total_steps"]) == 300_000
    assert parse_value("false", ppo_t["anneal_lr"]) is False
    assert parse_value("0.5", ppo_t["rho_clip"]) == 0.5


def test_unknown_config_field_is_rejected():
    with pytest.raises(ValueError, match="unknown config field"):
        grid.expand("ppo", {"no_such_knob": 1}, {}, seeds=[0])


# the Ray executor: tests/test_ray.py (a two-node cluster, byte-identical to the process pool)


# ---- benchmarks (slow) ------------------------------------------------------------------


@pytest.mark.slow
def test_ppo_cartpole_reaches_400_within_300k_steps():
    cfg = ppo.PPOConfig(env="cartpole", total_steps=300_000, num_envs=8, num_steps=128,
                        learning_rate=1e-3, anneal_lr=True, ent_coef=0.0, seed=0)
    r = ppo.train(cfg)
    best = max(row["episodic_return"] for row in r["curve"] if row["episodic_return"] is not None)
    assert best >= 400, best
