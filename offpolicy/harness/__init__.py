"""Staleness harness: PPO and DQN learners whose data can be made stale on purpose, the
project's estimators as corrections, and exact measurements on tabular MDPs.

    python -m offpolicy.harness --algo ppo --env chain --lag 0,2,8 --estimator gae,vtrace --seeds 5

Modules: ``envs`` (tabular vectorised env with exact J/V/Q/A; Gymnasium vector wrapper),
``ppo`` and ``dqn`` (single-file learners, one config dataclass each), ``measure``,
``grid`` (resumable grids over a process pool or Ray), ``report`` (tables and plots).
"""
from offpolicy._extras import require

require("offpolicy.harness", "harness", "torch", "gymnasium", "pandas", "scipy", "matplotlib",
        "tqdm")

__all__ = ["PPOConfig", "DQNConfig"]


def __getattr__(name: str):
    # imported on first use: they import torch, which a usage error of
    # `python -m offpolicy.harness` (this package is imported first) should not wait for
    if name == "PPOConfig":
        from offpolicy.harness.ppo import PPOConfig

        return PPOConfig
    if name == "DQNConfig":
        from offpolicy.harness.dqn import DQNConfig

        return DQNConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
