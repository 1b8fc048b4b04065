"""skrl adapter: its PPO pipeline as ``record_transition`` and ``update`` run it (skrl 2.x), in
the contract layout (flags of the step itself).

With ``time_limit_bootstrap``, ``record_transition`` evaluates the value of the *next*
observations and stores ``rewards + discount_factor * next_values * truncated``: γ·V(final
observation) on every step whose ``truncated`` flag is set, terminated or not. The memory keeps
``terminated`` and ``truncated`` as the environment gave them; ``compute_gae(rewards=,
terminated=, truncated=, values=, last_values=, discount_factor=, lambda_coefficient=,
time_limit_bootstrap=)`` reads V(s_{t+1}) from ``values[t+1]`` and ``last_values`` (the value
of the last step's next observations) at the end, and cuts at ``terminated | truncated``
(``terminated`` alone without time_limit_bootstrap). Its advantages come back normalised, so
the check reads ``returns`` (= advantages + values before the normalisation)."""

from __future__ import annotations

from .base import timeout_fold

__all__ = ["ppo_gae", "FOLD"]

# what record_transition folds into the reward with time_limit_bootstrap=True
FOLD = dict(add="gamma_final_value", on="every_timeout")


def ppo_gae(time_limit_bootstrap: bool):
    """skrl's ``compute_gae`` as its PPO agent feeds it, ``time_limit_bootstrap`` as set in the
    agent's config (default False: nothing folded, ``not_done = ~terminated``)."""

    def adapter(fn):
        def skrl_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
            stored = rewards
            if time_limit_bootstrap:
                stored = timeout_fold(rewards, values, next_values, terminated, truncated,
                                      gamma, **FOLD)
            returns, _normalised = fn(
                rewards=stored, terminated=terminated, truncated=truncated, values=values,
                last_values=next_values[-1], discount_factor=gamma, lambda_coefficient=lam,
                time_limit_bootstrap=time_limit_bootstrap)
            return {"returns": returns}

        return skrl_gae

    return adapter
