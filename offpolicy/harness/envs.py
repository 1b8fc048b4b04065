"""Vectorised environments for the harness.

Both environments present the same small interface to the learners::

    obs = env.reset(seed)                      # float32 tensor [N, obs_dim]
    step = env.step(actions)                   # actions: int64 tensor [N]
    step.obs          # [N, obs_dim] the observation to act from next (reset state after a done)
    step.final_obs    # [N, obs_dim] the observation that *followed* the action: equal to
                      #   step.obs except where the episode ended, where it is the last
                      #   observation of the episode (bootstrap from it after a truncation)
    step.reward       # [N] float32
    step.terminated   # [N] bool: the next state is terminal (no bootstrap)
    step.truncated    # [N] bool: time limit; bootstrap from final_obs
    step.episode_returns  # list of undiscounted returns of the episodes that ended here

``TabularVecEnv`` runs a :class:`offpolicy.mdp.TabularMDP` for N streams at once in numpy
with one-hot observations and exposes ``exact(pi)``: the true ``J(pi)``, ``V^pi``, ``Q^pi``,
``A^pi`` of any tabular policy, computed by :mod:`offpolicy.exact`.

``GymVecEnv`` wraps ``gymnasium.vector.SyncVectorEnv``.  Gymnasium 1.x autoresets on the
*next* step by default (the step after a done ignores its action and returns the reset
observation with reward 0); that dummy transition would have to be masked out of every
estimator.  We build the vector env with ``autoreset_mode=SAME_STEP`` instead: the step
that ends an episode returns the reset observation in ``obs`` and the true last
observation in ``info["final_obs"]``, which we return as ``final_obs`` so that
``next_values`` after a time-limit cut is V(last observation), never V(reset state).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from offpolicy.mdp import TabularMDP

__all__ = ["Step", "TabularVecEnv", "GymVecEnv", "make_env", "TABULAR_ENVS", "GYM_ENVS"]


@dataclass
class Step:
    obs: torch.Tensor
    final_obs: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    episode_returns: list = field(default_factory=list)
    episode_lengths: list = field(default_factory=list)


# --------------------------------------------------------------------------------------
# Tabular MDPs
# --------------------------------------------------------------------------------------


class TabularVecEnv:
    """N copies of a tabular MDP, stepped together in numpy.

    Observations are one-hot rows of length S.  An episode *terminates* when it enters
    an absorbing terminal state of the MDP (terminated=True, no bootstrap), and is
    *truncated* after ``max_steps`` steps (truncated=True; final_obs holds the state
    reached, so the learner bootstraps from it).  The two flags are never merged.
    Rewards are the per-transition ``R_sas[s, a, s']`` plus Gaussian noise of std
    ``mdp.reward_std[s, a]`` (the exact values use their mean ``R[s, a]``).
    """

    def __init__(self, mdp: TabularMDP, num_envs: int, max_steps: int = 100, seed: int = 0):
        if not isinstance(mdp, TabularMDP):  # one attribute per quantity: nothing to guess
            raise TypeError(f"mdp: expected an offpolicy.mdp.TabularMDP, got {type(mdp).__name__}")
        self.mdp = mdp
        self.P, self.R, self.R_sas = mdp.P, mdp.R, mdp.R_sas
        self.S, self.A = mdp.shape
        self.gamma = mdp.gamma
        self.init = mdp.initial
        self.terminal = mdp.terminal
        self.reward_std = mdp.reward_std if np.any(mdp.reward_std > 0) else None
        self.num_envs = int(num_envs)
        self.max_steps = int(max_steps)
        self.obs_dim = self.S
        self.n_actions = self.A
        self._cumP = np.cumsum(self.P, axis=-1)
        self._cumP[..., -1] = 1.0
        self._cum_init = np.cumsum(self.init)
        self._cum_init[-1] = 1.0
        self._eye = torch.eye(self.S, dtype=torch.float32)
        self.rng = np.random.default_rng(seed)
        self.state = np.zeros(self.num_envs, dtype=np.int64)
        self.t = np.zeros(self.num_envs, dtype=np.int64)
        self.ep_ret = np.zeros(self.num_envs)

    # --- sampling -----------------------------------------------------------------
    def _sample_init(self, n: int) -> np.ndarray:
        return np.searchsorted(self._cum_init, self.rng.random(n), side="right").clip(0, self.S - 1)

    def one_hot(self, states) -> torch.Tensor:
        return self._eye[torch.as_tensor(states, dtype=torch.long)]

    def all_obs(self) -> torch.Tensor:
        """Observations of every state, row s = one_hot(s): feed to a network to read off
        its tabular policy / values."""
        return self._eye.clone()

    def reset(self, seed: int | None = None) -> torch.Tensor:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.state = self._sample_init(self.num_envs)
        self.t[:] = 0
        self.ep_ret[:] = 0.0
        return self.one_hot(self.state)

    def step(self, actions) -> Step:
        a = np.asarray(torch.as_tensor(actions).cpu().numpy(), dtype=np.int64)
        s = self.state
        u = self.rng.random(self.num_envs)
        s2 = (self._cumP[s, a] < u[:, None]).sum(axis=1).clip(0, self.S - 1)
        r = self.R_sas[s, a, s2]  # the per-transition reward; its mean over s' is R[s, a]
        if self.reward_std is not None:
            r = r + self.reward_std[s, a] * self.rng.standard_normal(self.num_envs)
        self.t += 1
        self.ep_ret += r
        terminated = self.terminal[s2]
        truncated = (self.t >= self.max_steps) & ~terminated
        done = terminated | truncated
        final_obs = self.one_hot(s2)
        ep_returns = self.ep_ret[done].tolist()
        ep_lengths = self.t[done].tolist()
        nxt = s2.copy()
        if done.any():
            nxt[done] = self._sample_init(int(done.sum()))
            self.t[done] = 0
            self.ep_ret[done] = 0.0
        self.state = nxt
        return Step(
            obs=self.one_hot(nxt),
            final_obs=final_obs,
            reward=torch.as_tensor(r, dtype=torch.float32),
            terminated=torch.as_tensor(terminated),
            truncated=torch.as_tensor(truncated),
            episode_returns=ep_returns,
            episode_lengths=ep_lengths,
        )

    # --- exact quantities ---------------------------------------------------------
    def exact(self, pi) -> dict:
        """True J(pi) = initial . V^pi, V^pi [S], Q^pi [S,A], A^pi [S,A] of a tabular policy
        pi [S,A] (infinite-horizon discounted values: the learners bootstrap through
        time-limit cuts, so this is what they estimate)."""
        pi = np.asarray(pi, dtype=np.float64)
        q = np.asarray(_q_pi(self.mdp, pi), dtype=np.float64)
        v = (pi * q).sum(axis=1)
        return {"J": float(self.init @ v), "V": v, "Q": q, "A": q - v[:, None]}

    def optimal_J(self) -> float:
        """J of an optimal policy, by value iteration on (P_continue, R, gamma)."""
        Pc = self.P * (~self.terminal)[None, None, :]
        q = np.zeros((self.S, self.A))
        for _ in range(1_000_000):
            q_new = self.R + self.gamma * Pc @ q.max(axis=1)
            if np.max(np.abs(q_new - q)) < 1e-12:
                break
            q = q_new
        return float(self.init @ q_new.max(axis=1))


def _q_pi(mdp, pi):
    from offpolicy.exact import q_pi

    return q_pi(mdp, pi)


# --------------------------------------------------------------------------------------
# Gymnasium classic control
# --------------------------------------------------------------------------------------


class GymVecEnv:
    """``gymnasium.vector.SyncVectorEnv`` in same-step autoreset mode (see module doc)."""

    mdp = None

    def __init__(self, env_id: str, num_envs: int, seed: int = 0, max_steps: int | None = None):
        import gymnasium as gym
        from gymnasium.vector import AutoresetMode, SyncVectorEnv

        kwargs = {} if max_steps is None else {"max_episode_steps": max_steps}
        self.env_id = env_id
        self.envs = SyncVectorEnv(
            [lambda: gym.make(env_id, **kwargs) for _ in range(num_envs)],
            autoreset_mode=AutoresetMode.SAME_STEP,
        )
        self.num_envs = num_envs
        self.obs_dim = int(np.prod(self.envs.single_observation_space.shape))
        self.n_actions = int(self.envs.single_action_space.n)
        self.seed = seed
        self.ep_ret = np.zeros(num_envs)
        self.ep_len = np.zeros(num_envs, dtype=np.int64)

    def reset(self, seed: int | None = None) -> torch.Tensor:
        obs, _ = self.envs.reset(seed=self.seed if seed is None else seed)
        self.envs.action_space.seed(self.seed if seed is None else seed)
        self.ep_ret[:] = 0.0
        self.ep_len[:] = 0
        return torch.as_tensor(obs, dtype=torch.float32).reshape(self.num_envs, -1)

    def step(self, actions) -> Step:
        a = torch.as_tensor(actions).cpu().numpy()
        obs, r, term, trunc, info = self.envs.step(a)
        obs = np.asarray(obs, dtype=np.float32).reshape(self.num_envs, -1)
        final = obs.copy()
        if "final_obs" in info:
            for i in np.nonzero(info["_final_obs"])[0]:
                final[i] = np.asarray(info["final_obs"][i], dtype=np.float32).reshape(-1)
        self.ep_ret += r
        self.ep_len += 1
        done = np.logical_or(term, trunc)
        ep_returns = self.ep_ret[done].tolist()
        ep_lengths = self.ep_len[done].tolist()
        self.ep_ret[done] = 0.0
        self.ep_len[done] = 0
        return Step(
            obs=torch.as_tensor(obs),
            final_obs=torch.as_tensor(final),
            reward=torch.as_tensor(r, dtype=torch.float32),
            terminated=torch.as_tensor(np.asarray(term, dtype=bool)),
            truncated=torch.as_tensor(np.asarray(trunc, dtype=bool) & ~np.asarray(term, bool)),
            episode_returns=ep_returns,
            episode_lengths=ep_lengths,
        )

    def close(self):
        self.envs.close()


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------

GYM_ENVS = {"cartpole": "CartPole-v1", "acrobot": "Acrobot-v1"}


def _tabular_factories():
    from offpolicy import mdp as M

    return {name: getattr(M, name) for name in TABULAR_ENVS if hasattr(M, name)}


# Generators in offpolicy.mdp usable as --env (called with their defaults plus any
# env_kwargs; garnet needs num_states, num_actions, branching).
TABULAR_ENVS = ("chain", "gridworld", "garnet")


def env_names() -> tuple[str, ...]:
    """Every name ``make_env`` accepts."""
    return (*TABULAR_ENVS, *GYM_ENVS, *GYM_ENVS.values())


def make_env(name: str, num_envs: int, seed: int, max_steps: int | None = None,
             env_kwargs: dict | None = None):
    env_kwargs = dict(env_kwargs or {})
    if name in GYM_ENVS or name in GYM_ENVS.values():
        return GymVecEnv(GYM_ENVS.get(name, name), num_envs, seed=seed, max_steps=max_steps)
    factories = _tabular_factories()
    if name not in factories:
        raise ValueError(f"unknown env {name!r}: tabular {sorted(factories)} "
                         f"or gym {sorted(GYM_ENVS)}")
    mdp = factories[name](**env_kwargs)
    return TabularVecEnv(mdp, num_envs, max_steps=max_steps or 100, seed=seed)


def is_tabular(env) -> bool:
    return isinstance(env, TabularVecEnv)
