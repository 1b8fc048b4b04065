"""Lightning Bolts adapter: ``pl_bolts.models.rl.ppo_model.PPO.calc_advantage(self, rewards,
values, last_value)`` is called once per finished trajectory (Python float lists) with the
value to bootstrap from; it reads ``self.gamma``, ``self.lam`` and ``self.discount_rewards``.
A stand-in ``self`` holds them.

Its pipeline (``generate_trajectory_samples``): the environment's ``done`` (gym's: terminated
or cut by a ``TimeLimit`` wrapper) ends a trajectory with ``last_value = 0``; its own episode
limit ``max_episode_len`` and the epoch's end bootstrap from V(next state) when not done."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

__all__ = ["calc_advantage", "GYM_TIME_LIMIT_FOLD", "MAX_EPISODE_LEN_FOLD"]

# a gym TimeLimit time-out is a done: last_value 0, nothing added (Fold's fields)
GYM_TIME_LIMIT_FOLD = dict(add="nothing")
# its own max_episode_len: the trajectory's last value is V(next state) unless done
MAX_EPISODE_LEN_FOLD = dict(add="last_value")


def calc_advantage(method):
    """``method`` = ``PPO.calc_advantage``; the stand-in's ``discount_rewards`` is
    ``PPO.discount_rewards``."""

    def bolts_gae(rewards, values, last_value, gamma, lam):
        from pl_bolts.models.rl.ppo_model import PPO

        discount_rewards = PPO.discount_rewards
        agent = SimpleNamespace(gamma=float(gamma), lam=float(lam))
        agent.discount_rewards = lambda r, d: discount_rewards(agent, r, d)
        out = method(agent, [float(r) for r in rewards], [float(v) for v in values],
                     float(last_value))
        return np.asarray(out, dtype=np.float64)

    return bolts_gae
