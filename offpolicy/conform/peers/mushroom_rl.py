"""MushroomRL adapter: ``mushroom_rl.utils.value_functions.compute_gae(V, s, ss, r, absorbing,
last, gamma, lam)`` as its PPO/TRPO call it on a parsed dataset: one flat stream, the step's
own ``absorbing`` (terminated) and ``last`` (the episode ended: terminated or time limit
reached, as ``Core`` writes it) flags, and ``V`` the critic evaluated on the states ``s`` and
the next states ``ss``. A stand-in critic looks values up by index (``s`` indexes
``values``, ``ss`` indexes ``next_values``); returns ``(v_target, advantages)``."""

from __future__ import annotations

import numpy as np

__all__ = ["gae"]


def gae(fn):
    """``compute_gae`` on one stream, with an index-lookup critic."""

    def mushroom_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
        T = len(rewards)
        table = np.concatenate([np.asarray(values, dtype=np.float64),
                                np.asarray(next_values, dtype=np.float64)])

        def critic(states):
            return table[np.asarray(states)]

        v_target, advantages = fn(critic, np.arange(T), T + np.arange(T), rewards,
                                  np.asarray(terminated), np.asarray(terminated | truncated),
                                  gamma, lam)
        return {"advantages": np.asarray(advantages).reshape(T),
                "returns": np.asarray(v_target).reshape(T)}

    return mushroom_gae
