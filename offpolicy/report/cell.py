"""What one cell of the report hands to the exact moments and to the estimator alike: its
scalar parameters and, for P3O, the value head's reward means. Shared by :mod:`.compute` (the
exact columns) and :mod:`.montecarlo` (the Monte Carlo column), so neither imports the other's
internals."""

from __future__ import annotations

import numpy as np

from offpolicy import moments

from . import grid


def params(cell: dict) -> dict:
    """The cell's estimator parameters (``lam``, ``n``, ``rho_clip``, ``c_clip``: those that
    apply, the others are None in the cell)."""
    return {k: cell[k] for k in ("lam", "n", "rho_clip", "c_clip") if cell[k] is not None}


def p3o_means(cell: dict, su: dict) -> np.ndarray:
    """The value head's reward means for P3O [S, T]: the target's exact ones (values "exact"),
    the behaviour's ("stale"), or the target's plus the value noise ("noisy")."""
    m, T = su["mdp"], cell["T"]
    pol = su["mu"] if cell["values"] == "stale" else su["pi"]
    means = moments.p3o_exact_means(m, pol, T)
    if cell["values"] == "noisy":
        rng = np.random.default_rng(grid.cell_seed(su["seed"], "p3o-noisy", cell["mdp"], T))
        means = means + 0.1 * np.abs(means).max() * rng.standard_normal(means.shape)
    return means
