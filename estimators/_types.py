"""Named result tuples shared by every backend (plain tuples: they unpack like ``a, b = ...``)."""

from __future__ import annotations

from typing import Any, NamedTuple


class GAEOutput(NamedTuple):
    """``gae`` result: ``advantages`` A_t and ``returns`` V(s_t) + A_t (the TD(lambda) returns)."""

    advantages: Any
    returns: Any


class VTraceOutput(NamedTuple):
    """``vtrace`` result.

    ``advantages``: A_t = v_t - V(s_t) (PufferLib's "puff advantage");
    ``value_targets``: v_t = V(s_t) + A_t;
    ``pg_advantages``: min(pg_rho_clip, rho_t) (q_t - V(s_t)).
    """

    advantages: Any
    value_targets: Any
    pg_advantages: Any


class PDISOutput(NamedTuple):
    """``per_decision_is`` result: ``advantages`` A_t and ``value_targets`` V(s_t) + A_t."""

    advantages: Any
    value_targets: Any
