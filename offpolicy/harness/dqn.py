"""DQN with sequence replay and multi-step corrections, in one file (CleanRL style).

Read top to bottom: the config, the Q-network, the sequence replay buffer, then ``train``.

The buffer keeps, per environment stream, the transitions in the order they were collected,
each with the behaviour probability mu(a_t|s_t) of the action taken and the learner update
index at which it was collected.  A sample is a length-``n`` sequence (time-major
``[n, B]``); its target for the first transition is one call into ``estimators.torch``:

    nstep        uncorrected n-step return (no importance correction);
    retrace      Retrace(lambda), trace c = lambda min(1, pi/mu);
    tree_backup  Tree-backup(lambda), trace c = lambda pi;
    q_lambda     Q(lambda) with c = 1 (Peng's / Harutyunyan's uncorrected trace).

All four bootstrap with ``next_expected_q = sum_a pi(a|s') Q_target(s', a)``, where the target
policy pi is epsilon_target-greedy in the *online* network (double-DQN style; with
target_epsilon=0 this is Q_target(s', argmax_a Q_online(s', a))), so that the estimators
differ only in their traces.  Episode boundaries inside a sequence are handled by the
estimators' terminated/truncated flags (traces cut; truncation bootstraps from the final obs).

Staleness knobs: buffer_capacity, replay_ratio (gradient updates per environment step), n,
and the age of sampled transitions in learner updates (``min_age``/``max_age``: sample only
sequences whose first transition is at least/at most that many updates old; while nothing in
the buffer is old enough, e.g. during the first ``min_age`` updates, the filter is relaxed to
the whole buffer, since the update clock only advances by updating).
"""
from __future__ import annotations

import copy
import time
from collections import deque
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from offpolicy.harness import measure
from offpolicy.harness.envs import env_names, is_tabular, make_env

ESTIMATORS = ("nstep", "retrace", "tree_backup", "q_lambda")


@dataclass
class DQNConfig:
    # experiment
    env: str = "chain"
    seed: int = 0
    total_steps: int = 20_000  # environment steps, all envs together
    env_kwargs: dict | None = None
    max_episode_steps: int | None = None
    num_envs: int = 4
    # replay and staleness
    buffer_capacity: int = 10_000  # transitions, all envs together
    replay_ratio: float = 0.25  # gradient updates per environment step
    batch_size: int = 64  # sequences per update
    n: int = 3  # sequence length (the n of n-step)
    min_age: int = 0  # sample only sequences at least this many learner updates old
    max_age: int | None = None  # ... and at most this many (None: no bound)
    learning_starts: int = 500  # environment steps before the first update
    # correction
    estimator: str = "nstep"
    gamma: float | None = None  # None: the tabular MDP's own discount, else 0.99
    lam: float = 1.0
    target_epsilon: float = 0.0  # the target policy pi: epsilon-greedy in the online network
    # optimisation
    learning_rate: float = 1e-3
    target_update_period: int = 100  # learner updates between target-network copies
    max_grad_norm: float = 10.0
    hidden: int = 64
    # exploration (behaviour policy mu: epsilon-greedy, linear decay)
    eps_start: float = 1.0
    eps_end: float = 0.05
    eps_fraction: float = 0.5
    # measurement
    measure_exact: bool = True
    measure_every: int = 10  # learner updates between exact target-error measurements
    log_points: int = 100  # rows in the learning curve


class QNetwork(nn.Module):
    def __init__(self, obs_dim: int, n_actions: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, n_actions))

    def forward(self, obs):
        return self.net(obs)


class SequenceReplay:
    """Circular buffer [C, N] (C = capacity // N slots per stream), time-ordered per stream.
    All streams are written together, so slot order = collection order for every stream."""

    def __init__(self, capacity: int, num_envs: int, obs_dim: int):
        self.C, self.N = max(2, capacity // num_envs), num_envs
        self.obs = torch.zeros(self.C, self.N, obs_dim)
        self.next_obs = torch.zeros(self.C, self.N, obs_dim)
        self.action = torch.zeros(self.C, self.N, dtype=torch.long)
        self.reward = torch.zeros(self.C, self.N)
        self.terminated = torch.zeros(self.C, self.N, dtype=torch.bool)
        self.truncated = torch.zeros(self.C, self.N, dtype=torch.bool)
        self.mu = torch.zeros(self.C, self.N)  # behaviour probability of the action taken
        self.version = np.zeros(self.C, dtype=np.int64)  # learner updates at collection
        self.state = np.zeros((self.C, self.N), dtype=np.int64)  # tabular only (measurement)
        self.ptr, self.size = 0, 0

    def add(self, obs, action, reward, terminated, truncated, next_obs, mu, version, state=None):
        i = self.ptr
        self.obs[i], self.action[i], self.reward[i] = obs, action, reward
        self.terminated[i], self.truncated[i], self.next_obs[i] = terminated, truncated, next_obs
        self.mu[i], self.version[i] = mu, version
        if state is not None:
            self.state[i] = state
        self.ptr = (self.ptr + 1) % self.C
        self.size = min(self.size + 1, self.C)

    def valid_starts(self, n: int, now: int, min_age: int, max_age: int | None) -> np.ndarray:
        """Chronological indices j (0 = oldest) of sequence starts inside the buffer whose age
        (now - version) lies in [min_age, max_age]."""
        j = np.arange(max(0, self.size - n + 1))
        slots = (self.ptr - self.size + j) % self.C
        age = now - self.version[slots]
        ok = age >= min_age
        if max_age is not None:
            ok &= age <= max_age
        return j[ok]

    def sample(self, n: int, batch: int, starts: np.ndarray, rng: np.random.Generator):
        j = starts[rng.integers(len(starts), size=batch)]
        b = rng.integers(self.N, size=batch)
        slots = (self.ptr - self.size + j[None, :] + np.arange(n)[:, None]) % self.C  # [n, B]
        s_t, b_t = torch.as_tensor(slots), torch.as_tensor(np.broadcast_to(b, slots.shape).copy())
        seq = {k: getattr(self, k)[s_t, b_t] for k in
               ("obs", "next_obs", "action", "reward", "terminated", "truncated", "mu")}
        seq["state"] = self.state[slots, np.broadcast_to(b, slots.shape)]
        seq["version"] = self.version[slots[0]]
        return seq


def target_policy_probs(q_online: torch.Tensor, epsilon: float) -> torch.Tensor:
    """epsilon-greedy probabilities [..., A] in the online network's Q values."""
    A = q_online.shape[-1]
    probs = torch.full_like(q_online, epsilon / A)
    return probs.scatter_add_(-1, q_online.argmax(-1, keepdim=True),
                              torch.full_like(q_online[..., :1], 1.0 - epsilon))


def q_targets(cfg: DQNConfig, seq: dict, q_net: nn.Module, target_net: nn.Module) -> torch.Tensor:
    """Targets G_t [n, B] for the sampled sequences: one call into estimators.torch."""
    from estimators import torch as E

    with torch.no_grad():
        n = seq["obs"].shape[0]
        both = torch.cat([seq["obs"], seq["next_obs"]])  # one forward per network
        q_online, q_target = q_net(both), target_net(both)
        pi = target_policy_probs(q_online, cfg.target_epsilon)
        next_expected_q = (pi[n:] * q_target[n:]).sum(-1)
        a = seq["action"].unsqueeze(-1)
        q_taken = q_target[:n].gather(-1, a).squeeze(-1)
        pi_taken = pi[:n].gather(-1, a).squeeze(-1)
        log_rhos = torch.log(pi_taken.clamp_min(1e-30)) - torch.log(seq["mu"])
        common = dict(rewards=seq["reward"], terminated=seq["terminated"],
                      truncated=seq["truncated"], gamma=cfg.gamma)
        if cfg.estimator == "nstep":
            return E.nstep_returns(**common, next_values=next_expected_q, n=cfg.n)
        trace = dict(common, q_taken=q_taken, next_expected_q=next_expected_q, lam=cfg.lam)
        if cfg.estimator == "retrace":
            return E.retrace(**trace, log_rhos=log_rhos)
        if cfg.estimator == "tree_backup":
            return E.tree_backup(**trace, target_probs_taken=pi_taken)
        if cfg.estimator == "q_lambda":
            return E.q_lambda(**trace)
    raise ValueError(f"unknown estimator {cfg.estimator!r}; choose from {ESTIMATORS}")


def _mean_or_nan(xs) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")


def check_config(cfg: DQNConfig) -> None:
    """Raise :class:`~offpolicy.harness.measure.ConfigError` naming the first bad field."""
    measure.check_fields(
        cfg, choices=(("estimator", ESTIMATORS), ("env", env_names())),
        at_least=(("seed", 0), ("total_steps", 1), ("num_envs", 1), ("buffer_capacity", 1),
                  ("batch_size", 1), ("n", 1), ("min_age", 0), ("learning_starts", 0),
                  ("target_update_period", 1), ("hidden", 1), ("measure_every", 1),
                  ("log_points", 1)),
        optional_at_least=(("max_episode_steps", 1), ("max_age", cfg.min_age)
                           if isinstance(cfg.min_age, int) else ("max_age", 0)),
        unit=("lam", "target_epsilon", "eps_start", "eps_end", "eps_fraction"),
        positive=("replay_ratio", "learning_rate", "max_grad_norm"))
    measure.check_gamma(cfg)


def train(cfg: DQNConfig, progress=None) -> dict:
    check_config(cfg)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    env = make_env(cfg.env, cfg.num_envs, seed=cfg.seed, max_steps=cfg.max_episode_steps,
                   env_kwargs=cfg.env_kwargs)
    tabular = is_tabular(env) and cfg.measure_exact
    if cfg.gamma is None:  # discount the learner uses; exact J/V/Q use the MDP's own
        cfg = replace(cfg, gamma=env.gamma if is_tabular(env) else 0.99)
    q_net = QNetwork(env.obs_dim, env.n_actions, cfg.hidden)
    target_net = copy.deepcopy(q_net)
    optimizer = torch.optim.Adam(q_net.parameters(), lr=cfg.learning_rate)
    buf = SequenceReplay(cfg.buffer_capacity, cfg.num_envs, env.obs_dim)
    N, A = cfg.num_envs, env.n_actions
    vector_steps = max(1, cfg.total_steps // N)
    log_every = max(1, vector_steps // cfg.log_points)

    opt_J = env.optimal_J() if tabular else None
    curve, recent_returns, window = [], deque(maxlen=100), []
    update_log = []  # per measured update: sample age, exact bias / RMS error of the targets
    obs = env.reset(seed=cfg.seed)
    updates, update_credit, global_step = 0, 0.0, 0
    t0, env_time = time.perf_counter(), 0.0

    for vstep in range(vector_steps):
        # ---- act: epsilon-greedy in the online network ------------------------------
        eps = cfg.eps_start + (cfg.eps_end - cfg.eps_start) * min(
            1.0, vstep / max(1, cfg.eps_fraction * vector_steps))
        with torch.no_grad():
            greedy = q_net(obs).argmax(-1)
        explore = torch.as_tensor(rng.random(N) < eps)
        action = torch.where(explore, torch.as_tensor(rng.integers(A, size=N)), greedy)
        mu = torch.where(action == greedy, torch.tensor(1.0 - eps + eps / A), torch.tensor(eps / A))
        state = env.state.copy() if tabular else None
        t_env = time.perf_counter()
        step = env.step(action)
        env_time += time.perf_counter() - t_env
        buf.add(obs, action, step.reward, step.terminated, step.truncated, step.final_obs, mu,
                updates, state)
        recent_returns.extend(step.episode_returns)
        obs = step.obs
        global_step += N

        # ---- learn: replay_ratio updates per environment step -----------------------
        if global_step >= cfg.learning_starts:
            update_credit += cfg.replay_ratio * N
        while update_credit >= 1.0:
            update_credit -= 1.0
            starts = buf.valid_starts(cfg.n, updates, cfg.min_age, cfg.max_age)
            if len(starts) == 0:  # nothing old enough yet: relax the age filter (the update
                # clock only advances by updating, so waiting would never end)
                starts = buf.valid_starts(cfg.n, updates, 0, None)
            if len(starts) == 0:
                break
            seq = buf.sample(cfg.n, cfg.batch_size, starts, rng)
            G = q_targets(cfg, seq, q_net, target_net)[0]  # target of the first transition
            stat = {"sample_age": float(np.mean(updates - seq["version"]))}
            if tabular and updates % cfg.measure_every == 0:  # error against the true Q^pi of
                with torch.no_grad():  # the target policy that defined G (before the step)
                    q_all = q_net(env.all_obs()).double().numpy()
                ex = env.exact(measure.greedy_policy(q_all, cfg.target_epsilon))
                stat.update(measure.q_error_stats(G, seq["state"][0], seq["action"][0].numpy(), ex))
                update_log.append({"update": updates, "env_steps": global_step, **stat})
            q = q_net(seq["obs"][0]).gather(-1, seq["action"][0].unsqueeze(-1)).squeeze(-1)
            loss = F.smooth_l1_loss(q, G)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(q_net.parameters(), cfg.max_grad_norm)
            optimizer.step()
            stat["loss"] = float(loss.detach())
            window.append(stat)
            updates += 1
            if updates % cfg.target_update_period == 0:
                target_net.load_state_dict(q_net.state_dict())

        # ---- log ---------------------------------------------------------------------
        if (vstep + 1) % log_every == 0 or vstep == vector_steps - 1:
            elapsed = time.perf_counter() - t0
            row = {"env_steps": global_step, "updates": updates, "epsilon": eps,
                   "wall_time": elapsed, "sps": global_step / elapsed,
                   "env_sps": global_step / max(env_time, 1e-9),
                   "episodic_return": _mean_or_nan(recent_returns)}
            for key in ("sample_age", "loss", "qtarget_bias", "qtarget_rmse"):
                vals = [w[key] for w in window if key in w]
                if vals:
                    row[key] = float(np.mean(vals))
            window = []
            if tabular:
                with torch.no_grad():
                    q_all = q_net(env.all_obs()).double().numpy()
                row["J"] = env.exact(measure.greedy_policy(q_all))["J"]
                row["J_opt"] = opt_J
            curve.append(row)
            if progress is not None:
                progress(global_step)

    return {"algo": "dqn", "config": asdict(cfg), "curve": curve, "update_log": update_log,
            "summary": measure.summarize(curve, tabular)}
