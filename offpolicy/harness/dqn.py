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
and the age of sampled transitions in learner updates (``min_age``/``max_age``, or
``age_window`` for ``max_age = min_age + age_window``: sample only sequences whose first
transition is at least/at most that many updates old; while nothing in the buffer is old
enough, e.g. during the first ``min_age`` updates, the filter is relaxed to the whole buffer,
since the update clock only advances by updating; such updates are counted in
``age_relaxed`` and never measured).

Behaviour policy mu: epsilon-greedy in the online network at collection time, with epsilon
decaying linearly (``eps_start`` -> ``eps_end``) when ``epsilon`` is None, or held at
``epsilon`` for the whole run.  Age and behaviour are two knobs: at a fixed ``epsilon`` an
old sample differs from a fresh one only through the greedy policy the network had then;
under the schedule it also comes from a more random policy.  The probability of the action
taken, ``mu(a|s) = eps/|A| + (1 - eps) [a = greedy]``, is recorded with the epsilon that drew
the action.

Measurements (tabular envs, every ``measure_every`` updates from ``measure_from`` on, on the
batch of the update, before its gradient step).  With pi the target policy of the update
(``target_epsilon``-greedy in the online network), Q^pi its exact action value, and
``G[Q]`` the estimator's target for the first transition of a sampled sequence when every
Q value it reads (bootstrap ``sum_a pi(a|s') Q(s', a)`` and, for the traces, ``Q(s_t, a_t)``)
comes from the Q-function ``Q`` -- same rewards, actions, flags, mu and pi -- the error of the
target used, ``G[Q_target] - Q^pi(s_0, a_0)`` (``qtarget_bias``, ``qtarget_rmse``), is the
exact sum of three per-sample terms:

    qtarget_lag    G[Q_target] - G[Q_online]   target-network lag: bootstrapping on the
                                               target network instead of the online one;
    qtarget_value  G[Q_online] - G[Q^pi]       the online network's own error Q_online - Q^pi,
                                               as the estimator propagates it;
    qtarget_corr   G[Q^pi] - Q^pi(s_0, a_0)    the correction's bias: the target's error when
                                               every value it reads is exact.

Given (s_0, a_0) and a fixed behaviour, E[qtarget_corr] is the exact bias
``exact_moments(estimator, q=Q^pi).mean_sa - Q^pi`` of :mod:`offpolicy.moments`: 0 for every
Q-trace estimator (Retrace, Tree-backup, Q(lambda): Q^pi is the fixed point of each of their
n-step operators, whatever the trace), nonzero for uncorrected n-step returns off-policy.
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

from offpolicy import registry
from offpolicy.harness import measure
from offpolicy.harness.envs import env_names, is_tabular, make_env

# the arrays a replayed sequence gives an estimator (sequence_targets)
_SEQUENCE_INPUTS = {"rewards", "terminated", "truncated", "next_values", "q_taken",
                    "next_expected_q", "log_rhos", "target_probs_taken"}
#: the targets DQN learns from, by short registry name (``nstep`` keys the committed results):
#: n-step returns on the expected next Q, then every registry action-value estimator whose
#: inputs a replayed sequence provides (not the general ``q_trace``, whose traces are an input)
ESTIMATORS = (registry.lookup("nstep_returns").short_name,
              *(e.short_name for e in registry.ESTIMATORS.values()
                if e.kind == "action" and set(e.inputs) <= _SEQUENCE_INPUTS))
TRUNCATION = ("bootstrap", "terminate")


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
    age_window: int | None = None  # set: max_age = min_age + age_window (overrides max_age)
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
    # exploration (behaviour policy mu: epsilon-greedy, linear decay unless epsilon is set)
    epsilon: float | None = None  # None: the eps_start -> eps_end schedule; a number: fixed
    eps_start: float = 1.0
    eps_end: float = 0.05
    eps_fraction: float = 0.5
    # "bootstrap" (correct): a time-limit truncation bootstraps from the final observation;
    # "terminate": it is stored as a termination (the common bug: no bootstrap)
    truncation: str = "bootstrap"
    # measurement
    measure_exact: bool = True
    measure_every: int = 10  # learner updates between exact target-error measurements
    measure_from: int = 0  # no measurement (errors, sample age) before this many updates
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


class TableQ(nn.Module):
    """A fixed Q table [S, A] as a network on one-hot observations: ``obs @ table``.  Stands in
    for a network wherever an exact Q (e.g. Q^pi) is bootstrapped from."""

    def __init__(self, table):
        super().__init__()
        self.register_buffer("table", torch.as_tensor(np.asarray(table), dtype=torch.float32))

    def forward(self, obs):
        return obs @ self.table


def sequence_targets(cfg: DQNConfig, seq: dict, pi: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Targets G_t [n, B] of ``cfg.estimator`` for the sampled sequences: one call into
    ``estimators.torch`` through the registry.  ``pi`` and ``q`` [2n, B, A]: the target
    policy's probabilities and the Q values read by the target, at ``seq["obs"]`` (rows :n)
    and ``seq["next_obs"]`` (rows n:; after a truncation the final observation, so the
    bootstrap is Q(final obs))."""
    from estimators import torch as E

    n = seq["obs"].shape[0]
    next_expected_q = (pi[n:] * q[n:]).sum(-1)
    a = seq["action"].unsqueeze(-1)
    q_taken = q[:n].gather(-1, a).squeeze(-1)
    pi_taken = pi[:n].gather(-1, a).squeeze(-1)
    log_rhos = torch.log(pi_taken.clamp_min(1e-30)) - torch.log(seq["mu"])
    if cfg.estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {cfg.estimator!r}; choose from {ESTIMATORS}")
    inputs = dict(rewards=seq["reward"], terminated=seq["terminated"],
                  truncated=seq["truncated"], next_values=next_expected_q, q_taken=q_taken,
                  next_expected_q=next_expected_q, log_rhos=log_rhos,
                  target_probs_taken=pi_taken)
    return registry.call_estimator(E, cfg.estimator, inputs, gamma=cfg.gamma, lam=cfg.lam,
                                   n=cfg.n)


def q_targets(cfg: DQNConfig, seq: dict, q_net: nn.Module, target_net: nn.Module) -> torch.Tensor:
    """Targets G_t [n, B] used for learning: pi from the online network, Q values from the
    target network."""
    with torch.no_grad():
        both = torch.cat([seq["obs"], seq["next_obs"]])  # one forward per network
        pi = target_policy_probs(q_net(both), cfg.target_epsilon)
        return sequence_targets(cfg, seq, pi, target_net(both))


def target_parts(cfg: DQNConfig, seq: dict, q_net: nn.Module, target_net: nn.Module,
                 q_exact: nn.Module) -> dict:
    """The first transition's target [B] with its Q values read from each of three
    Q-functions, the target policy pi (from the online network) held fixed:
    ``{"target": G[Q_target], "online": G[Q_online], "exact": G[q_exact]}``."""
    with torch.no_grad():
        both = torch.cat([seq["obs"], seq["next_obs"]])
        q_online = q_net(both)
        pi = target_policy_probs(q_online, cfg.target_epsilon)
        return {name: sequence_targets(cfg, seq, pi, q)[0] for name, q in
                (("target", target_net(both)), ("online", q_online), ("exact", q_exact(both)))}


def target_error_stats(parts: dict, states, actions, q_pi: np.ndarray) -> dict:
    """Bias (batch mean) of the target used and of its three parts (module docstring):
    ``qtarget_bias = qtarget_lag + qtarget_value + qtarget_corr`` sample by sample; RMS error
    of the target used (``qtarget_rmse``) and of the correction alone (``qtarget_corr_rmse``).
    ``q_pi`` [S, A]: the exact Q of the target policy; ``states``/``actions`` [B]: (s_0, a_0)."""
    g = {k: torch.as_tensor(v).double().numpy().reshape(-1) for k, v in parts.items()}
    truth = q_pi[np.asarray(states).reshape(-1), np.asarray(actions).reshape(-1)]
    total, corr = g["target"] - truth, g["exact"] - truth
    return {"qtarget_bias": float(total.mean()),
            "qtarget_rmse": float(np.sqrt((total ** 2).mean())),
            "qtarget_lag": float((g["target"] - g["online"]).mean()),
            "qtarget_value": float((g["online"] - g["exact"]).mean()),
            "qtarget_corr": float(corr.mean()),
            "qtarget_corr_rmse": float(np.sqrt((corr ** 2).mean()))}


def behaviour_epsilon(cfg: DQNConfig, vstep: int, vector_steps: int) -> float:
    """The epsilon of the behaviour policy at vector step ``vstep``: ``cfg.epsilon`` if set,
    else the linear decay from eps_start to eps_end over eps_fraction of the run."""
    if cfg.epsilon is not None:
        return float(cfg.epsilon)
    return cfg.eps_start + (cfg.eps_end - cfg.eps_start) * min(
        1.0, vstep / max(1, cfg.eps_fraction * vector_steps))


def behaviour_action(q_obs: torch.Tensor, eps: float, rng: np.random.Generator):
    """epsilon-greedy actions [N] in ``q_obs`` [N, A] and the probability mu(a|s) [N] of each
    action taken under that same epsilon (the value the buffer records)."""
    N, A = q_obs.shape
    greedy = q_obs.argmax(-1)
    explore = torch.as_tensor(rng.random(N) < eps)
    action = torch.where(explore, torch.as_tensor(rng.integers(A, size=N)), greedy)
    mu = torch.where(action == greedy, torch.tensor(1.0 - eps + eps / A), torch.tensor(eps / A))
    return action, mu


def age_bounds(cfg: DQNConfig) -> tuple[int, int | None]:
    """(min_age, max_age) of the replay's age filter (``age_window`` overrides max_age)."""
    if cfg.age_window is not None:
        return cfg.min_age, cfg.min_age + cfg.age_window
    return cfg.min_age, cfg.max_age


def stream_seeds(seed: int) -> tuple[np.random.Generator, int]:
    """Independent random streams of one run: the learner's generator (exploration, replay
    sampling) and the environment's integer seed, both spawned from ``seed`` (never the same
    stream twice: ``default_rng(seed)`` in both would draw the same uniforms)."""
    agent, env = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(agent), int(env.generate_state(1)[0])


Q_ERRORS = ("qtarget_bias", "qtarget_rmse", "qtarget_lag", "qtarget_value", "qtarget_corr",
            "qtarget_corr_rmse")


def _mean_or_nan(xs) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")


def check_config(cfg: DQNConfig) -> None:
    """Raise :class:`~offpolicy.harness.measure.ConfigError` naming the first bad field."""
    measure.check_fields(
        cfg,
        choices=(("estimator", ESTIMATORS), ("env", env_names()), ("truncation", TRUNCATION)),
        at_least=(("seed", 0), ("total_steps", 1), ("num_envs", 1), ("buffer_capacity", 1),
                  ("batch_size", 1), ("n", 1), ("min_age", 0), ("learning_starts", 0),
                  ("target_update_period", 1), ("hidden", 1), ("measure_every", 1),
                  ("measure_from", 0), ("log_points", 1)),
        optional_at_least=(("max_episode_steps", 1), ("max_age", cfg.min_age)
                           if isinstance(cfg.min_age, int) else ("max_age", 0),
                           ("age_window", 0)),
        unit=("lam", "target_epsilon", "eps_start", "eps_end", "eps_fraction"),
        positive=("replay_ratio", "learning_rate", "max_grad_norm"))
    measure.check_gamma(cfg)
    if cfg.epsilon is not None:
        measure.check_fields(cfg, unit=("epsilon",))


def train(cfg: DQNConfig, progress=None) -> dict:
    check_config(cfg)
    torch.manual_seed(cfg.seed)
    rng, env_seed = stream_seeds(cfg.seed)
    env = make_env(cfg.env, cfg.num_envs, seed=env_seed, max_steps=cfg.max_episode_steps,
                   env_kwargs=cfg.env_kwargs)
    tabular = is_tabular(env) and cfg.measure_exact
    if cfg.gamma is None:  # discount the learner uses; exact J/V/Q use the MDP's own
        cfg = replace(cfg, gamma=env.gamma if is_tabular(env) else 0.99)
    q_net = QNetwork(env.obs_dim, env.n_actions, cfg.hidden)
    target_net = copy.deepcopy(q_net)
    optimizer = torch.optim.Adam(q_net.parameters(), lr=cfg.learning_rate)
    buf = SequenceReplay(cfg.buffer_capacity, cfg.num_envs, env.obs_dim)
    N = cfg.num_envs
    vector_steps = max(1, cfg.total_steps // N)
    log_every = max(1, vector_steps // cfg.log_points)

    opt_J = env.optimal_J() if tabular else None
    curve, recent_returns, window = [], deque(maxlen=100), []
    update_log = []  # per measured update: sample age, exact bias / RMS error of the targets
    obs = env.reset(seed=env_seed)
    min_age, max_age = age_bounds(cfg)
    updates, update_credit, global_step = 0, 0.0, 0
    t0, env_time = time.perf_counter(), 0.0

    for vstep in range(vector_steps):
        # ---- act: epsilon-greedy in the online network ------------------------------
        eps = behaviour_epsilon(cfg, vstep, vector_steps)
        with torch.no_grad():
            action, mu = behaviour_action(q_net(obs), eps, rng)
        state = env.state.copy() if tabular else None
        t_env = time.perf_counter()
        step = env.step(action)
        env_time += time.perf_counter() - t_env
        terminated, truncated = step.terminated, step.truncated
        if cfg.truncation == "terminate":  # the bug, on purpose: a time limit ends the return
            terminated, truncated = terminated | truncated, torch.zeros_like(truncated)
        buf.add(obs, action, step.reward, terminated, truncated, step.final_obs, mu,
                updates, state)
        recent_returns.extend(step.episode_returns)
        obs = step.obs
        global_step += N

        # ---- learn: replay_ratio updates per environment step -----------------------
        if global_step >= cfg.learning_starts:
            update_credit += cfg.replay_ratio * N
        while update_credit >= 1.0:
            update_credit -= 1.0
            starts = buf.valid_starts(cfg.n, updates, min_age, max_age)
            relaxed = len(starts) == 0
            if relaxed:  # nothing old enough yet: relax the age filter (the update
                # clock only advances by updating, so waiting would never end)
                starts = buf.valid_starts(cfg.n, updates, 0, None)
            if len(starts) == 0:
                break
            seq = buf.sample(cfg.n, cfg.batch_size, starts, rng)
            G = q_targets(cfg, seq, q_net, target_net)[0]  # target of the first transition
            stat: dict = {}
            if updates >= cfg.measure_from:
                stat["age_relaxed"] = float(relaxed)
                if not relaxed:
                    stat["sample_age"] = float(np.mean(updates - seq["version"]))
            if (tabular and updates >= cfg.measure_from and not relaxed
                    and updates % cfg.measure_every == 0):  # errors against the true Q^pi of
                with torch.no_grad():  # the target policy that defined G (before the step)
                    q_all = q_net(env.all_obs()).double().numpy()
                ex = env.exact(measure.greedy_policy(q_all, cfg.target_epsilon))
                parts = target_parts(cfg, seq, q_net, target_net, TableQ(ex["Q"]))
                stat.update(target_error_stats(parts, seq["state"][0], seq["action"][0].numpy(),
                                               ex["Q"]))
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
            for key in ("sample_age", "age_relaxed", "loss", *Q_ERRORS):
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

    summary = measure.summarize(curve, tabular)
    for key in ("age_relaxed", *Q_ERRORS):  # run means of the columns summarize() does not know
        vals = [row[key] for row in curve if key in row]
        if vals and key not in summary:
            summary[key] = float(np.mean(vals))
    return {"algo": "dqn", "config": asdict(cfg), "curve": curve, "update_log": update_log,
            "summary": summary}
