"""Stable-Baselines3 adapter: the ``done_next`` layout with the fold of SB3's
``OnPolicyAlgorithm.collect_rollouts`` (γ·V(terminal_observation) added to the reward where the
VecEnv's ``TimeLimit.truncated`` is set, which SB3's VecEnvs write as ``truncated and not
terminated``), then SB3's own ``RolloutBuffer`` filled through its ``add``."""

from __future__ import annotations

import numpy as np

from .base import as_numpy

__all__ = ["rollout_buffer", "FOLD"]


def rollout_buffer(compute_returns_and_advantage):
    """SB3's ``RolloutBuffer.compute_returns_and_advantage(self, last_values, dones)``: fill a
    real ``RolloutBuffer`` through its own ``add`` (episode_start flags, float32 arrays, as the
    rollout loop does), call the method on it and read ``advantages``/``returns`` back."""
    import torch
    from gymnasium import spaces

    box = spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)

    def sb3_gae(rewards, values, dones, last_values, last_dones, gamma, lam):
        from stable_baselines3.common.buffers import RolloutBuffer

        T, B = rewards.shape
        buffer = RolloutBuffer(T, box, box, device="cpu", gae_lambda=lam, gamma=gamma,
                               n_envs=B)
        for t in range(T):
            buffer.add(np.zeros((B, 1), np.float32), np.zeros((B, 1), np.float32),
                       as_numpy(rewards[t]), as_numpy(dones[t]), torch.as_tensor(values[t]),
                       torch.zeros(B))
        compute_returns_and_advantage(buffer, last_values=torch.as_tensor(last_values),
                                      dones=as_numpy(last_dones))
        return {"advantages": buffer.advantages, "returns": buffer.returns}

    return sb3_gae


# what collect_rollouts does with a time-out (Fold's fields): gamma V(terminal_observation)
# where TimeLimit.truncated, i.e. truncated and not terminated
FOLD = dict(add="gamma_final_value", on="timeout_not_terminated")
