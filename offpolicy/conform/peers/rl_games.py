"""rl-games adapter: ``A2CBase.discount_values(self, fdones, last_extrinsic_values, mb_fdones,
mb_extrinsic_values, mb_rewards)`` in the ``done_next`` layout. It reads
``self.horizon_length``, ``self.gamma`` and ``self.tau``: a stand-in ``self`` holds them;
values and rewards get rl-games' trailing value dimension ``[T, B, 1]``.

Its pipeline, which the table's layout restates as a fold: ``play_steps`` stores ``self.dones``
of the previous step before each step (``mb_fdones``: episode-start flags; the environment's
done is terminated or timed out), and with ``value_bootstrap`` (its default) adds
``gamma * res_dict['values'] * infos['time_outs']`` to the reward: γ·V(s_t), the value of the
observation *before* the step, on every step whose time-out flag is set, terminated or not
(``Fold("gamma_current_value", "every_timeout")``)."""

from __future__ import annotations

from types import SimpleNamespace

__all__ = ["discount_values", "FOLD"]


def discount_values(fn):
    """The stand-in ``self`` and rl-games' shapes around ``discount_values``."""

    def rl_games_gae(rewards, values, dones, last_values, last_dones, gamma, lam):
        agent = SimpleNamespace(horizon_length=rewards.shape[0], gamma=gamma, tau=lam)
        advantages = fn(agent, last_dones, last_values[:, None], dones, values[..., None],
                        rewards[..., None])
        return advantages[..., 0]

    return rl_games_gae


# what play_steps does with a time-out with value_bootstrap, its default (Fold's fields)
FOLD = dict(add="gamma_current_value", on="every_timeout")
