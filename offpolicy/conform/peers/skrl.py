"""skrl adapter: ``compute_gae`` as skrl's PPO agent (skrl 2.x) feeds it, in the
``stored_values`` layout with separate ``terminated``/``truncated`` flags and ``last_values``.

Its pipeline, which the table's layouts restate as folds: with ``time_limit_bootstrap``,
``record_transition`` evaluates the value of the *next* observations and stores ``rewards +
discount_factor * next_values * truncated``: γ·V(final observation) on every step whose
``truncated`` flag is set, terminated or not (``Fold("gamma_final_value", "every_timeout")``);
without it, nothing is added and the memory's ``terminated`` holds terminations only
(``Fold("nothing", done=False)``). The memory keeps ``truncated`` as the environment gave it.
``compute_gae(rewards=, terminated=, truncated=, values=, last_values=, discount_factor=,
lambda_coefficient=, time_limit_bootstrap=)`` reads V(s_{t+1}) from ``values[t+1]`` and
``last_values`` (the value of the last step's next observations) at the end, and cuts at
``terminated | truncated`` (``terminated`` alone without time_limit_bootstrap). Its advantages
come back normalised, so the check reads ``returns`` (advantages + values before that)."""

from __future__ import annotations

__all__ = ["ppo_gae", "FOLDS"]


def ppo_gae(time_limit_bootstrap: bool):
    """skrl's ``compute_gae`` with ``time_limit_bootstrap`` as set in the agent's config
    (default False)."""

    def adapter(fn):
        def skrl_gae(rewards, values, terminated, truncated, last_values, gamma, lam):
            returns, _normalised = fn(
                rewards=rewards, terminated=terminated, truncated=truncated, values=values,
                last_values=last_values, discount_factor=gamma, lambda_coefficient=lam,
                time_limit_bootstrap=time_limit_bootstrap)
            return {"returns": returns}

        return skrl_gae

    return adapter


# what record_transition does with a time-out (offpolicy.conform.layouts.Fold's fields), by
# the config's time_limit_bootstrap
FOLDS = {True: dict(add="gamma_final_value", on="every_timeout"),
         False: dict(add="nothing", done=False)}
