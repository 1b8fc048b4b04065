"""The DQN side of the harness, part by part (issue 14 §5): the replay's age filter, the
behaviour probabilities recorded, each target on a tiny fixed batch, the measured bias
decomposition against exact values, and the random streams."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from offpolicy import mdp as M
from offpolicy.exact import q_pi
from offpolicy.harness import dqn
from offpolicy.moments import exact_moments

# tiny networks: intra-op threads only add contention (the grid workers do the same)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- replay: the age filter ---------------------------------------------------------------


def _filled_replay(capacity, num_envs, versions):
    """A replay whose k-th written row has learner version versions[k]; obs[k] = k (so a
    sampled slot tells which write it came from)."""
    buf = dqn.SequenceReplay(capacity, num_envs, obs_dim=1)
    for k, v in enumerate(versions):
        row = torch.full((num_envs, 1), float(k))
        buf.add(row, torch.zeros(num_envs, dtype=torch.long), torch.zeros(num_envs),
                torch.zeros(num_envs, dtype=torch.bool), torch.zeros(num_envs, dtype=torch.bool),
                row, torch.full((num_envs,), 0.5), v)
    return buf


@pytest.mark.parametrize("writes", [7, 23])  # 23 > 12 slots: the circular buffer has wrapped
def test_valid_starts_are_exactly_the_sequences_of_the_right_age(writes):
    versions = [k // 2 for k in range(writes)]  # two writes per learner update
    buf = _filled_replay(capacity=24, num_envs=2, versions=versions)  # 12 slots per stream
    n, now = 3, versions[-1] + 4
    held = list(range(max(0, writes - buf.C), writes))  # the writes still in the buffer
    for min_age, max_age in [(0, None), (4, 5), (5, 5), (6, 100), (50, None), (0, 3)]:
        starts = buf.valid_starts(n, now, min_age, max_age)
        # brute force: write k starts a sequence if k..k+n-1 are all held and its age fits
        want = [i for i, k in enumerate(held) if i + n <= len(held)
                and now - versions[k] >= min_age
                and (max_age is None or now - versions[k] <= max_age)]
        assert starts.tolist() == want, (min_age, max_age)
        if len(starts):
            seq = buf.sample(n, 64, starts, np.random.default_rng(0))
            first = seq["obs"][0, :, 0].long().numpy()  # the write each sequence starts at
            ages = now - np.array(versions)[first]
            assert ages.min() >= min_age and (max_age is None or ages.max() <= max_age)
            assert np.array_equal(seq["version"], np.array(versions)[first])
            # the sequence is n consecutive writes of one stream
            assert torch.equal(seq["obs"][:, :, 0] - seq["obs"][0, :, 0],
                               torch.arange(n, dtype=torch.float32)[:, None].expand(n, 64))


def test_age_window_sets_max_age():
    cfg = dqn.DQNConfig(min_age=30, age_window=10, max_age=1000)
    assert dqn.age_bounds(cfg) == (30, 40)
    assert dqn.age_bounds(replace(cfg, age_window=None)) == (30, 1000)
    with pytest.raises(ValueError, match="age_window"):
        dqn.check_config(replace(cfg, age_window=-1))


def test_training_samples_only_the_age_window_once_it_exists():
    cfg = dqn.DQNConfig(total_steps=640, learning_starts=100, min_age=40, age_window=5,
                        measure_from=60, measure_every=10, buffer_capacity=4_000, n=3,
                        estimator="retrace", lam=0.9, log_points=200, seed=1)
    r = dqn.train(cfg)
    rows = [row for row in r["curve"] if "sample_age" in row]
    assert rows and all(40 <= row["sample_age"] <= 45 for row in rows)
    assert r["summary"]["age_relaxed"] == 0.0  # from update 60 on, data 40 old always exists
    assert all(row["update"] >= 60 for row in r["update_log"])


# ---- behaviour probabilities ---------------------------------------------------------------


def test_behaviour_action_records_the_probability_of_the_action_drawn():
    q = torch.tensor([[0.0, 1.0, 0.5]]).repeat(20_000, 1)  # greedy action 1, |A| = 3
    eps = 0.3
    action, mu = dqn.behaviour_action(q, eps, np.random.default_rng(0))
    want = torch.where(action == 1, torch.tensor(1 - eps + eps / 3), torch.tensor(eps / 3))
    assert torch.equal(mu, want)
    # and mu is the frequency with which each action is actually drawn (4 standard errors)
    for a, p in [(0, eps / 3), (1, 1 - eps + eps / 3), (2, eps / 3)]:
        freq = float((action == a).double().mean())
        assert abs(freq - p) < 4 * np.sqrt(p * (1 - p) / len(action)), (a, freq, p)


_ADD = dqn.SequenceReplay.add


def _recorded(cfg, monkeypatch):
    """Every buffer write of a training run: (obs, action, terminated, truncated, mu, version)."""
    rows = []
    original = _ADD

    def spy(self, obs, action, reward, terminated, truncated, next_obs, mu, version, state=None):
        rows.append((obs.clone(), action.clone(), terminated.clone(), truncated.clone(),
                     mu.clone(), version))
        return original(self, obs, action, reward, terminated, truncated, next_obs, mu, version,
                        state)

    monkeypatch.setattr(dqn.SequenceReplay, "add", spy)
    dqn.train(cfg)
    return rows


@pytest.mark.parametrize("epsilon", [None, 0.25])
def test_buffer_records_mu_of_the_epsilon_that_drew_the_action(monkeypatch, epsilon):
    # the schedule moves epsilon at every vector step: a mu recorded with the next step's
    # epsilon (after the update) would not match
    cfg = dqn.DQNConfig(total_steps=160, num_envs=4, learning_starts=10_000, epsilon=epsilon,
                        eps_start=1.0, eps_end=0.0, eps_fraction=1.0, log_points=1)
    rows = _recorded(cfg, monkeypatch)
    vector_steps = cfg.total_steps // cfg.num_envs
    A = 2
    seen = set()
    for v, (_, _, _, _, mu, _) in enumerate(rows):
        eps = epsilon if epsilon is not None else 1.0 - v / vector_steps
        assert dqn.behaviour_epsilon(cfg, v, vector_steps) == pytest.approx(eps)
        allowed = {np.float32(eps / A), np.float32(1 - eps + eps / A)}
        assert set(mu.numpy().tolist()) <= {float(x) for x in allowed}, (v, mu, eps)
        seen.update(mu.numpy().round(6).tolist())
    if epsilon is not None:  # fixed: exactly the two values for the whole run
        assert seen == {round(0.125, 6), round(0.875, 6)}


def test_truncation_mode_decides_the_stored_flags(monkeypatch):
    base = dqn.DQNConfig(total_steps=200, num_envs=4, learning_starts=10_000,
                         max_episode_steps=5, epsilon=1.0, log_points=1)
    good = _recorded(base, monkeypatch)
    assert any(row[3].any() for row in good)  # time limits are stored as truncations
    bug = _recorded(replace(base, truncation="terminate"), monkeypatch)
    assert not any(row[3].any() for row in bug)
    # same seed, same stream: exactly the truncated steps became terminations
    for g, b in zip(good, bug, strict=True):
        assert torch.equal(b[2], g[2] | g[3])
    with pytest.raises(ValueError, match="truncation"):
        dqn.check_config(replace(base, truncation="drop"))


# ---- targets on a tiny fixed batch -----------------------------------------------------------

GAMMA, LAM = 0.9, 0.8


def _tiny_batch():
    """n = 3, B = 3 sequences over 4 one-hot states, 2 actions.

    column 0: no episode boundary; column 1: truncated after step 0 (final obs = state 3,
    bootstrap from it; the next rows belong to another episode); column 2: terminated after
    step 1."""
    eye = torch.eye(4)
    s = [[0, 1, 2], [1, 0, 0], [2, 3, 1]]  # [column][t]: state at step t
    s_next = [[1, 2, 3], [3, 0, 1], [3, 0, 2]]  # state that followed (final obs where done)
    a = [[1, 0, 1], [0, 1, 1], [1, 1, 0]]
    r = [[0.5, -1.0, 2.0], [1.0, 3.0, -2.0], [0.25, 1.5, 4.0]]
    mu = [[0.5, 0.25, 0.75], [0.4, 0.9, 0.5], [0.6, 0.3, 0.2]]
    T = lambda x, **k: torch.tensor(x, **k).T.contiguous()  # noqa: E731  [t, column]
    term = torch.zeros(3, 3, dtype=torch.bool)
    trunc = torch.zeros(3, 3, dtype=torch.bool)
    trunc[0, 1] = True
    term[1, 2] = True
    seq = {"obs": eye[T(s)], "next_obs": eye[T(s_next)], "action": T(a),
           "reward": T(r, dtype=torch.float32), "terminated": term, "truncated": trunc,
           "mu": T(mu, dtype=torch.float32)}
    return seq, np.array(s).T, np.array(s_next).T, np.array(a).T


Q_ONLINE = np.array([[1.0, 2.0], [0.5, -0.5], [3.0, 1.0], [-1.0, 0.25]])
Q_TARGET = np.array([[0.0, 1.5], [2.0, 1.0], [-0.5, 0.5], [4.0, 1.0]])  # greedy differs at 2, 3


def _pi_table(q, eps):
    pi = np.full(q.shape, eps / q.shape[1])
    pi[np.arange(len(q)), q.argmax(1)] += 1 - eps
    return pi


def _hand_target(est, seq, s, s_next, a, pi, q, n):
    """G_0 of each column by the recurrences written out by hand (numpy, float64)."""
    r = seq["reward"].double().numpy()
    term = seq["terminated"].numpy()
    trunc = seq["truncated"].numpy()
    mu = seq["mu"].double().numpy()
    out = []
    for b in range(r.shape[1]):
        eq = lambda t, b=b: (pi[s_next[t, b]] * q[s_next[t, b]]).sum()  # noqa: E731
        if est == "nstep":
            g, disc = 0.0, 1.0
            for t in range(n):
                g += disc * r[t, b]
                disc *= GAMMA
                if term[t, b]:
                    break
                if trunc[t, b] or t == n - 1:
                    g += disc * eq(t)
                    break
            out.append(g)
            continue
        g = None
        for t in reversed(range(n)):  # G_t = r + g beta EQ + g lam kappa c' (G' - Q')
            boot = 0.0 if term[t, b] else GAMMA * eq(t)
            g_t = r[t, b] + boot
            if t < n - 1 and not (term[t, b] or trunc[t, b]):
                s1, a1 = s[t + 1, b], a[t + 1, b]
                c = {"retrace": min(1.0, pi[s1, a1] / mu[t + 1, b]), "tree_backup": pi[s1, a1],
                     "q_lambda": 1.0, "importance_sampling_q": pi[s1, a1] / mu[t + 1, b]}[est]
                g_t += GAMMA * LAM * c * (g - q[s1, a1])
            g = g_t
        out.append(g)
    return np.array(out)


@pytest.mark.parametrize("est", dqn.ESTIMATORS)
def test_each_target_on_a_tiny_batch_matches_the_hand_recurrence(est):
    seq, s, s_next, a = _tiny_batch()
    cfg = dqn.DQNConfig(estimator=est, n=3, gamma=GAMMA, lam=LAM, target_epsilon=0.2)
    online, target = dqn.TableQ(Q_ONLINE), dqn.TableQ(Q_TARGET)
    pi = _pi_table(Q_ONLINE, 0.2)  # the target policy comes from the online network
    got = dqn.q_targets(cfg, seq, online, target)[0].double().numpy()
    want = _hand_target(est, seq, s, s_next, a, pi, Q_TARGET, 3)  # values from the target net
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # the truncated column bootstraps from its final observation (state 3), not the next row
    if est == "nstep":
        assert got[1] == pytest.approx(1.0 + GAMMA * (pi[3] * Q_TARGET[3]).sum(), abs=1e-5)
    # swapping the networks' roles changes the answer (pi and bootstrap are not interchangeable)
    swapped = dqn.q_targets(cfg, seq, target, online)[0].double().numpy()
    assert not np.allclose(swapped, got, atol=1e-3)
    parts = dqn.target_parts(cfg, seq, online, target, dqn.TableQ(Q_ONLINE))
    np.testing.assert_allclose(parts["target"].numpy(), got, rtol=1e-6)
    np.testing.assert_allclose(parts["online"].double().numpy(),
                               _hand_target(est, seq, s, s_next, a, pi, Q_ONLINE, 3),
                               rtol=1e-5, atol=1e-5)


# ---- the measured decomposition against exact values ---------------------------------------


def _sample_sequences(mdp, s0, a0, behaviour, n, B, rng):
    """B sequences of length n from (s0, a0) under ``behaviour`` (no time limit); after a
    termination the stream restarts in state 0, as the env's reset does."""
    S, A = behaviour.shape
    terminal = np.asarray(mdp.terminal)
    cumP = np.cumsum(mdp.P, axis=-1)
    s = np.full(B, s0)
    a = np.full(B, a0)
    rows = {k: [] for k in ("s", "a", "s2", "r", "term", "mu")}
    for t in range(n):
        if t > 0:
            a = (rng.random(B)[:, None] > np.cumsum(behaviour[s], axis=1)).sum(1).clip(0, A - 1)
        s2 = (cumP[s, a] < rng.random(B)[:, None]).sum(1).clip(0, S - 1)
        rows["s"].append(s), rows["a"].append(a), rows["s2"].append(s2)
        rows["r"].append(mdp.R_sas[s, a, s2] if hasattr(mdp, "R_sas") else mdp.R[s, a])
        rows["term"].append(terminal[s2])
        rows["mu"].append(behaviour[s, a])
        s = np.where(terminal[s2], 0, s2)
    eye = torch.eye(S)
    arr = {k: np.stack(v) for k, v in rows.items()}
    seq = {"obs": eye[torch.as_tensor(arr["s"])], "next_obs": eye[torch.as_tensor(arr["s2"])],
           "action": torch.as_tensor(arr["a"]), "reward": torch.as_tensor(arr["r"]).float(),
           "terminated": torch.as_tensor(arr["term"]),
           "truncated": torch.zeros(n, B, dtype=torch.bool),
           "mu": torch.as_tensor(arr["mu"]).float(), "state": arr["s"]}
    return seq


@pytest.mark.parametrize("est", ["nstep", "retrace", "tree_backup"])
def test_bias_decomposition_matches_exact_moments_on_a_fixed_table(est):
    mdp = M.chain(4, gamma=0.9, slip=0.2, step_reward=-0.1)
    q_online = np.array([[0.2, 0.1], [-0.3, 0.4], [0.5, 0.9], [0.0, 0.0]])  # greedy: R, R, R
    q_target = q_online + np.array([[0.3, -0.2], [0.1, 0.2], [-0.4, 0.1], [0.0, 0.0]])
    eps_target, eps_behaviour, n = 0.1, 0.6, 4
    pi = _pi_table(q_online, eps_target)
    mu = _pi_table(np.array([[1.0, 0.0]] * 4), eps_behaviour)  # a stale behaviour: greedy LEFT
    qp = q_pi(mdp, pi)
    cfg = dqn.DQNConfig(estimator=est, n=n, gamma=mdp.gamma, lam=0.9, target_epsilon=eps_target)
    s0, a0, B = 1, 1, 40_000
    seq = _sample_sequences(mdp, s0, a0, mu, n, B, np.random.default_rng(0))
    parts = dqn.target_parts(cfg, seq, dqn.TableQ(q_online), dqn.TableQ(q_target),
                             dqn.TableQ(qp))
    got = dqn.target_error_stats(parts, seq["state"][0], seq["action"][0].numpy(), qp)
    # exact mean of the estimator's target given (s0, a0) with its Q values read from q
    kw = dict(behaviour=mu, target=pi, horizon=n, lam=0.9, n=n)

    def mean_target(q):
        extra = {"values": (pi * q).sum(1)} if est == "nstep" else {"q": q}
        return exact_moments(mdp, est, **kw, **extra).mean_sa[s0, a0]

    exact = {"qtarget_corr": mean_target(qp) - qp[s0, a0],
             "qtarget_lag": mean_target(q_target) - mean_target(q_online),
             "qtarget_value": mean_target(q_online) - mean_target(qp)}
    g = {k: v.double().numpy() for k, v in parts.items()}
    samples = {"qtarget_corr": g["exact"] - qp[s0, a0], "qtarget_lag": g["target"] - g["online"],
               "qtarget_value": g["online"] - g["exact"]}
    for key, want in exact.items():
        se = samples[key].std() / np.sqrt(B)
        assert abs(got[key] - want) < 4 * se + 1e-5, (key, got[key], want, se)
    # the three parts add up to the error of the target used, sample by sample
    assert got["qtarget_bias"] == pytest.approx(
        got["qtarget_lag"] + got["qtarget_value"] + got["qtarget_corr"], abs=1e-6)
    if est == "nstep":  # uncorrected off-policy: a real bias, far outside the noise
        assert abs(exact["qtarget_corr"]) > 20 * samples["qtarget_corr"].std() / np.sqrt(B)
    else:  # Q^pi is the fixed point of every Q-trace operator: no correction bias
        assert abs(exact["qtarget_corr"]) < 1e-12


# ---- random streams -------------------------------------------------------------------------


def test_seeds_give_different_and_independent_streams(monkeypatch):
    (r0, e0), (r1, e1) = dqn.stream_seeds(0), dqn.stream_seeds(1)
    assert e0 != e1
    u0, u1 = r0.random(8), r1.random(8)
    assert not np.allclose(u0, u1)
    # the learner's and the environment's streams are not the same sequence
    assert not np.allclose(u0, np.random.default_rng(e0).random(8))
    assert not np.allclose(u0, np.random.default_rng(0).random(8))
    cfg = dqn.DQNConfig(total_steps=120, learning_starts=10_000, epsilon=1.0, log_points=1)
    a = _recorded(cfg, monkeypatch)
    b = _recorded(replace(cfg, seed=1), monkeypatch)
    c = _recorded(cfg, monkeypatch)
    actions = lambda rows: torch.stack([row[1] for row in rows])  # noqa: E731
    states = lambda rows: torch.stack([row[0].argmax(-1) for row in rows])  # noqa: E731
    assert torch.equal(actions(a), actions(c)) and torch.equal(states(a), states(c))
    assert not torch.equal(actions(a), actions(b))
    assert not torch.equal(states(a), states(b))


# ---- report: intervals over seeds -----------------------------------------------------------


def test_t_interval_and_separation():
    from offpolicy.harness import report

    # t_{0.975, 4} = 2.7764451 (tables); n = 1 has no interval
    assert report.t_halfwidth(1.0, 5) == pytest.approx(2.7764451 / np.sqrt(5), rel=1e-6)
    assert np.isnan(report.t_halfwidth(1.0, 1))
    assert report.intervals_separate((0.0, 1.0), (1.5, 2.0))
    assert not report.intervals_separate((0.0, 1.0), (1.0, 2.0))  # touching is not separate
    assert not report.intervals_separate((0.0, float("nan")), (5.0, 6.0))


def test_compare_reads_cells_of_an_aggregated_table():
    import pandas as pd

    from offpolicy.harness import report

    runs = pd.DataFrame({"algo": "dqn", "env": "chain", "estimator": ["a"] * 5 + ["b"] * 5,
                         "epsilon": [1.0] * 10, "seed": list(range(5)) * 2,
                         "qtarget_bias": [0.0, 0.1, -0.1, 0.05, -0.05, 1.0, 1.1, 0.9, 1.0, 1.0]})
    agg = report.aggregate(runs, ["estimator", "epsilon"])
    sd = np.std([0.0, 0.1, -0.1, 0.05, -0.05], ddof=1)
    assert agg["qtarget_bias_ci"][0] == pytest.approx(2.7764451 * sd / np.sqrt(5), rel=1e-6)
    c = report.compare(agg, "qtarget_bias", {"estimator": "a", "epsilon": 1},
                       {"estimator": "b", "epsilon": 1.0})
    assert c.separated and c.mean_b == pytest.approx(1.0) and c.seeds_a == 5
    assert "separate" in c.describe()
    same = report.compare(agg, "qtarget_bias", {"estimator": "a"}, {"estimator": "a"})
    assert not same.separated
    with pytest.raises(ValueError, match="matches 0 rows"):
        report.compare(agg, "qtarget_bias", {"estimator": "c"}, {"estimator": "a"})
    md = report.to_markdown(report.summary_table(agg, "dqn", ["estimator", "epsilon"], True))
    assert f"± {agg['qtarget_bias_ci'][0]:.3f}" in md
