"""The Monte Carlo column: the actual estimator code on sampled segments.

Segments of length T start at s_0 ~ d, a_0 ~ mu (the weights the exact figures use) and follow
mu; the numpy reference estimator (through ``registry.call_estimator``) gives X_0 per segment.
With ``e = X_0 - target(s_0[, a_0])``: ``mc_mse = mean(e^2)`` estimates the exact ``mse`` and
``mc_bias_mean = mean(e)`` the exact ``bias_mean``; ``z_*`` are the differences in standard
errors. A wrong estimator moves these by many standard errors while the exact columns, computed
by ``moments`` without calling the estimators, stay put.
"""

from __future__ import annotations

import math

import numpy as np

import estimators.numpy as reference
from offpolicy import registry, sampler

from . import grid
from .cell import p3o_means
from .cell import params as _params


def mc_metrics(cell: dict, su: dict, tgt, seed: int, n: int, exact: dict) -> dict:
    rng = np.random.default_rng(grid.cell_seed(seed, "mc", grid.cell_id(cell)))
    m, mu, pi = su["mdp"], su["mu"], su["pi"]
    seg = sampler.sample_segments(m, mu, cell["T"], n, rng=rng, initial=su["d"])
    inputs = seg.inputs(behaviour=mu, target=pi, values=su["V"], q=su["Q"])
    inputs["states"] = seg.states
    params = _params(cell)
    if cell["estimator"] == "p3o":
        params["means"] = p3o_means(cell, su)
    x = registry.call_estimator(reference, cell["estimator"], inputs, gamma=m.gamma, **params)
    x0 = np.asarray(x)[0]
    s0, a0 = seg.states[0], seg.actions[0]
    e = x0 - (tgt[s0] if tgt.ndim == 1 else tgt[s0, a0])
    e2 = e**2
    out = {
        "mc_n": float(n),
        "mc_mse": float(e2.mean()),
        "mc_mse_se": float(e2.std(ddof=1) / math.sqrt(n)),
        "mc_bias_mean": float(e.mean()),
        "mc_bias_mean_se": float(e.std(ddof=1) / math.sqrt(n)),
    }
    out["z_mse"] = _z(out["mc_mse"], exact["mse"], out["mc_mse_se"])
    out["z_bias"] = _z(out["mc_bias_mean"], exact["bias_mean"], out["mc_bias_mean_se"])
    return out


def _z(mc, ex, se):
    if se > 0:
        return (mc - ex) / se
    return 0.0 if abs(mc - ex) <= 1e-9 * max(1.0, abs(ex)) else math.copysign(math.inf, mc - ex)
