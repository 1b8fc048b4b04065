"""rl-games adapters: ``A2CBase.discount_values(self, fdones, last_extrinsic_values, mb_fdones,
mb_extrinsic_values, mb_rewards)`` reads ``self.horizon_length``, ``self.gamma`` and
``self.tau``: a stand-in ``self`` holds them; values and rewards get rl-games' trailing value
dimension ``[T, B, 1]``.

``play_steps`` stores ``self.dones`` of the previous step before each step (``mb_fdones``:
episode-start flags; the environment's done is terminated or timed out), and with
``value_bootstrap`` (its default) adds ``gamma * res_dict['values'] * infos['time_outs']`` to
the reward: γ·V(s_t), the value of the observation *before* the step, on every step whose
time-out flag is set, terminated or not."""

from __future__ import annotations

from types import SimpleNamespace

from .base import timeout_fold

__all__ = ["discount_values", "play_steps_gae", "FOLD"]

# what play_steps folds into the reward with value_bootstrap (its default)
FOLD = dict(add="gamma_current_value", on="every_timeout")


def discount_values(fn):
    """The GAE alone, in the ``done_next`` layout (whatever fold the layout applies)."""

    def rl_games_gae(rewards, values, dones, last_values, last_dones, gamma, lam):
        agent = SimpleNamespace(horizon_length=rewards.shape[0], gamma=gamma, tau=lam)
        advantages = fn(agent, last_dones, last_values[:, None], dones, values[..., None],
                        rewards[..., None])
        return advantages[..., 0]

    return rl_games_gae


def play_steps_gae(fn):
    """rl-games' whole pipeline in the contract layout: the rewards, dones and values as
    ``play_steps`` stores them, then ``discount_values``."""
    import torch

    def rl_games_rollout_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
        T = rewards.shape[0]
        shaped = timeout_fold(rewards, values, next_values, terminated, truncated, gamma,
                              **FOLD)
        done = (terminated | truncated).to(rewards.dtype)
        starts = torch.cat([torch.zeros_like(done[:1]), done[:-1]])
        agent = SimpleNamespace(horizon_length=T, gamma=gamma, tau=lam)
        advantages = fn(agent, done[-1], next_values[-1][:, None], starts, values[..., None],
                        shaped[..., None])
        return advantages[..., 0]

    return rl_games_rollout_gae
