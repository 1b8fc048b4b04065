"""The bias-variance frontier of each estimator, with a tie rule that does not depend on round-off.

A setting (one cell of an estimator's own λ / n / clip grid, for one MDP and staleness k) is on
the frontier when no other setting of the same (MDP, estimator, k) *dominates* it: has a
bias_target² and a variance both no larger, and at least one smaller.

The comparison is made on **keys**, not on the raw floats, because settings that are equal in
exact arithmetic (GAE's bias with a stale critic does not depend on λ; every on-policy bias is
0) come out of the float64 computation differing in their last bits, and ordering them by those
bits made the frontier change from one machine to the next. The rule:

1. each of bias² and variance is rounded to ``SIGNIFICANT_DIGITS`` (6) significant digits;
   a value whose magnitude is below ``ZERO_FLOOR`` (1e-20: a bias of 1e-10 squared, far above
   float64 round-off of O(1) quantities and far below any bias the report discusses) counts
   as 0;
2. dominance is decided on these keys; two settings with equal keys on both axes are both
   kept (neither dominates the other);
3. rows are ordered by MDP (profile order), estimator (registry order), k, then bias² key,
   variance key, and finally the setting's name, so equal keys are ordered by name.

A perturbation of the inputs by round-off moves no key (unless a value lies within round-off of
a rounding boundary, a measure-zero event), so the frontier is the same in every run.
"""

from __future__ import annotations

import math

SIGNIFICANT_DIGITS = 6
ZERO_FLOOR = 1e-20


def key(x: float) -> float:
    """The value a frontier comparison uses: ``x`` rounded to :data:`SIGNIFICANT_DIGITS`
    significant digits, 0 below :data:`ZERO_FLOOR`."""
    if abs(x) < ZERO_FLOOR:
        return 0.0
    return float(f"{x:.{SIGNIFICANT_DIGITS - 1}e}")


def pareto(points: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """The non-dominated ``(name, bias2, var)`` points, ordered by (bias² key, var key, name).

    A point is dropped when another has both keys ``<=`` and at least one ``<``.
    """
    keyed = sorted(((key(b2), key(v), name, b2, v) for name, b2, v in points),
                   key=lambda p: (p[0], p[1], p[2]))
    out = []
    best_var = math.inf  # lowest var key among points with a strictly smaller bias² key
    i = 0
    while i < len(keyed):
        # the block of points sharing this bias² key: only its lowest var key can survive
        j = i
        while j < len(keyed) and keyed[j][0] == keyed[i][0]:
            j += 1
        block_min = keyed[i][1]
        if block_min < best_var:
            out += [(p[2], p[3], p[4]) for p in keyed[i:j] if p[1] == block_min]
            best_var = block_min
        i = j
    return out
