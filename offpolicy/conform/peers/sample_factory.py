"""Sample Factory (1.x) adapters: ``sample_factory.algorithms.utils.algo_utils.calculate_gae(
rewards, dones, values, gamma, gae_lambda)`` takes ``[T, E]`` arrays, the step's own ``dones``
and one ``values[T+1]`` array (the last row the bootstrap); returns ``(advantages,
discounted_returns)`` as float32.

Its APPO learner (``APPOLearner._calculate_gae``, with ``--with_vtrace False``) does not pass a
bootstrap value: it appends the fake value ``(V(s_{T-1}) - r_{T-1}) / gamma`` so that "the
advantage of the very last action is always zero". The environment's done is gym's (a
time-limit wrapper's time-out is a done; nothing is folded)."""

from __future__ import annotations

import numpy as np

__all__ = ["calculate_gae", "learner_gae", "FOLD"]

# the rollout: gym's done (terminated or timed out), nothing added to the reward
FOLD = dict(add="nothing")


def calculate_gae(fn):
    """The function alone, given the real bootstrap as ``values``' last row."""

    def sample_factory_gae(rewards, values, dones, gamma, lam):
        advantages, _returns = fn(np.asarray(rewards), np.asarray(dones, dtype=np.float64),
                                  np.asarray(values), gamma, lam)
        return {"advantages": advantages}

    return sample_factory_gae


def learner_gae(fn):
    """As the APPO learner calls it: the last row of ``values`` replaced by its fake value."""

    def sample_factory_learner_gae(rewards, values, dones, gamma, lam):
        values = np.array(values, dtype=np.float64)
        rewards = np.asarray(rewards)
        values[-1] = (values[-2] - rewards[-1]) / gamma
        advantages, _returns = fn(rewards, np.asarray(dones, dtype=np.float64), values, gamma,
                                  lam)
        return {"advantages": advantages}

    return sample_factory_learner_gae
