"""rsl_rl adapter: ``PPO.compute_returns(self, obs)`` (rsl-rl-lib 5.x) reads the rollout from
``self.storage`` (``rewards``, ``values``, ``dones`` ``[T, B, 1]``, the step's own done) and
the bootstrap ``self.critic(obs)``; a stand-in ``self`` holds a storage namespace and a critic
that returns ``last_values``. ``normalize_advantage_per_mini_batch=True`` keeps the advantages
unnormalised (they are returns - values).

Its pipeline, which the table's layout restates as a fold: ``process_env_step`` adds
``gamma * transition.values * extras['time_outs']`` to the reward: γ·V(s_t), the value of the
observation before the step, on every step whose time-out flag is set, terminated or not
(``Fold("gamma_current_value", "every_timeout")``); the environment's ``dones`` are terminated
or timed out."""

from __future__ import annotations

from types import SimpleNamespace

__all__ = ["compute_returns", "FOLD"]

FOLD = dict(add="gamma_current_value", on="every_timeout")


def compute_returns(fn):
    """The stand-in ``self`` around ``PPO.compute_returns``."""

    def rsl_rl_gae(rewards, values, dones, last_values, gamma, lam):
        import torch

        T = rewards.shape[0]
        storage = SimpleNamespace(num_transitions_per_env=T, rewards=rewards[..., None],
                                  values=values[..., None], dones=dones[..., None],
                                  returns=torch.zeros_like(values[..., None]))
        critic = SimpleNamespace(get_hidden_state=lambda: None,
                                 reset=lambda hidden_state=None: None)
        agent = SimpleNamespace(storage=storage, gamma=gamma, lam=lam,
                                normalize_advantage_per_mini_batch=True)
        agent.critic = _Critic(last_values[..., None], critic)
        fn(agent, obs=None)
        return {"advantages": storage.advantages[..., 0], "returns": storage.returns[..., 0]}

    return rsl_rl_gae


class _Critic:
    """Returns the segment's bootstrap values; the hidden-state calls do nothing."""

    def __init__(self, last_values, hooks):
        self._last = last_values
        self.get_hidden_state = hooks.get_hidden_state
        self.reset = hooks.reset

    def __call__(self, obs):
        return self._last
