"""TorchRL adapters: its functionals are called as they are in the ``torchrl`` layout
(batch-major ``[B, T, 1]``, ``done = terminated | truncated`` and ``terminated``, as TorchRL's
environments write them); the only adapters pass ``gamma`` as a float64 tensor or pick the pg
advantage out of the V-trace pair."""

from __future__ import annotations

from .base import gamma_tensor, pick_field

__all__ = ["MODULE", "gamma_as_tensor", "vtrace_pg_advantage"]

MODULE = "torchrl.objectives.value.functional"

gamma_as_tensor = gamma_tensor

# vtrace_advantage_estimate returns (pg advantage, value targets)
vtrace_pg_advantage = pick_field(lambda out: out[0], "pg_advantages")
