"""tianshou adapters: one stream per call held in a real ``ReplayBuffer`` that stores the
step's own ``terminated`` and ``truncated`` flags as the collector does (both may be set on one
step); the buffer's ``unfinished_index`` marks the segment's open end."""

from __future__ import annotations

import numpy as np

from .base import as_numpy, as_torch

__all__ = ["episodic_return", "nstep_return"]


def _buffer(rewards, terminated, truncated):
    from tianshou.data import Batch, ReplayBuffer

    T = len(rewards)
    buffer = ReplayBuffer(T)
    for t in range(T):
        buffer.add(Batch(obs=np.zeros(1), act=0, rew=float(rewards[t]),
                         terminated=bool(terminated[t]), truncated=bool(truncated[t]),
                         obs_next=np.zeros(1), info={}))
    indices = np.arange(T)
    return buffer, buffer[indices], indices


def episodic_return(fn):
    """tianshou's ``Algorithm.compute_episodic_return(batch, buffer, indices, v_s_, v_s, gamma,
    gae_lambda)``; returns ``(returns, advantage)``."""

    def tianshou_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
        buffer, batch, indices = _buffer(rewards, terminated, truncated)
        returns, advantages = fn(batch, buffer, indices, v_s_=next_values, v_s=values,
                                 gamma=gamma, gae_lambda=lam)
        return {"advantages": advantages, "returns": returns}

    return tianshou_gae


def nstep_return(fn):
    """tianshou's ``Algorithm.compute_nstep_return(batch, buffer, indices, target_q_fn, gamma,
    n_step)``; ``target_q_fn(buffer, idx)`` returns the bootstrap value of the window's last
    step (``next_values[idx]``, the value of that step's ``obs_next``)."""

    def tianshou_nstep(rewards, next_values, terminated, truncated, gamma, n):
        buffer, batch, indices = _buffer(rewards, terminated, truncated)
        bootstrap = np.array(next_values, dtype=np.float64)

        def target_q_fn(_buffer, idx):
            return as_torch(bootstrap[idx])

        out = fn(batch, buffer, indices, target_q_fn, gamma=gamma, n_step=int(n))
        return as_numpy(out.returns).reshape(-1)

    return tianshou_nstep
