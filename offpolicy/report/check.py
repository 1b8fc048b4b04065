"""``--check``: compare a fresh computation with a committed baseline.

Tolerances, per metric:

* exact figures (``EXACT_METRICS``: from ``moments``/``exact``, no sampling): ``|now - base| <=
  RTOL * max(|now|, |base|) + ATOL`` with RTOL = 1e-9, ATOL = 1e-12;
* Monte Carlo figures (``mc_mse``, ``mc_bias_mean``): ``|now - base| <= Z_BASE * sqrt(se_now^2
  + se_base^2)``, their standard errors combined (Z_BASE = 4);
* and, in the fresh run alone, every Monte Carlo figure must agree with its exact counterpart:
  ``|z_mse|, |z_bias| <= Z_EXACT`` (5). This is what catches a broken estimator: the Monte
  Carlo column runs ``estimators.numpy``, the exact columns never do.

A cell missing on either side is a regression too, unless the run was restricted with
``--mdps`` / ``--estimators`` (then only the baseline cells of the restricted grid count).
"""

from __future__ import annotations

import json
import math
import os

from .render import EXACT_METRICS, short
from .store import decode_float

RTOL = 1e-9
ATOL = 1e-12
Z_BASE = 4.0
Z_EXACT = 5.0
MC_PAIRS = (("mc_mse", "mc_mse_se"), ("mc_bias_mean", "mc_bias_mean_se"))
Z_PAIRS = (("z_mse", "mc_mse", "mse"), ("z_bias", "mc_bias_mean", "bias_mean"))


def load_baseline(directory: str) -> dict:
    path = os.path.join(directory, "results.json")
    with open(path) as f:
        doc = json.load(f)
    out = {}
    for c in doc["cells"]:
        c["metrics"] = {k: decode_float(v) for k, v in c["metrics"].items()}
        out[c["id"]] = c
    return {"meta": doc["meta"], "cells": out}


def _f(x):
    return float("nan") if x is None else float(decode_float(x))


def _same(a, b, tol) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= tol


def compare(records: list[dict], baseline: dict, expected_ids: set[str]) -> list[dict]:
    """Every regression as ``{cell, metric, baseline, now, tolerance, why}``."""
    regs = []
    base_cells = baseline["cells"]
    now_ids = {r["id"] for r in records}
    for cid in sorted(expected_ids - now_ids):
        regs.append(dict(cell=cid, metric="*", baseline="present", now="missing", tolerance="",
                         why="cell not recomputed"))
    for rec in records:
        cid, now = rec["id"], rec["metrics"]
        if cid not in base_cells:
            regs.append(dict(cell=cid, metric="*", baseline="missing", now="present",
                             tolerance="", why="cell not in the baseline (--update-baseline?)"))
            continue
        base = base_cells[cid]["metrics"]
        for m in EXACT_METRICS:
            a, b = _f(now.get(m)), _f(base.get(m))
            tol = RTOL * max(abs(a), abs(b)) + ATOL if not (math.isnan(a) or math.isnan(b)) else 0
            if not _same(a, b, tol):
                regs.append(dict(cell=cid, metric=m, baseline=b, now=a, tolerance=tol,
                                 why="exact figure changed"))
        if not rec["cell"].get("mc"):
            continue
        for m, se in MC_PAIRS:
            a, b = _f(now.get(m)), _f(base.get(m))
            tol = Z_BASE * math.hypot(_f(now.get(se)), _f(base.get(se)))
            if not _same(a, b, tol):
                regs.append(dict(cell=cid, metric=m, baseline=b, now=a, tolerance=tol,
                                 why=f"Monte Carlo figure moved by more than {Z_BASE:g} s.e."))
    return regs + self_consistency(records)


def self_consistency(records: list[dict]) -> list[dict]:
    """Monte Carlo cells whose figures are more than Z_EXACT standard errors off the exact
    ones (the baseline column then holds the exact figure)."""
    regs = []
    for rec in records:
        if not rec["cell"].get("mc"):
            continue
        now = rec["metrics"]
        for z, mc, ex in Z_PAIRS:
            zv = _f(now.get(z))
            if not abs(zv) <= Z_EXACT:
                regs.append(dict(
                    cell=rec["id"], metric=f"{mc} vs exact {ex}", baseline=_f(now.get(ex)),
                    now=_f(now.get(mc)), labels=("exact", "MC"),
                    tolerance=f"|z| <= {Z_EXACT:g} (z = {short(zv, 3)})",
                    why="the estimator's Monte Carlo output disagrees with its exact moments"))
    return regs


def format_regressions(regs: list[dict], baseline_dir: str, n_cells: int) -> str:
    if not regs:
        return (f"check passed: {n_cells} cells match the baseline in {baseline_dir} "
                f"(exact figures within {RTOL:g} relative, Monte Carlo within {Z_BASE:g} s.e., "
                f"Monte Carlo vs exact within {Z_EXACT:g} s.e.)\n")
    lines = [f"check FAILED: {len(regs)} regression(s) against {baseline_dir} "
             f"({len({r['cell'] for r in regs})} of {n_cells} cells)", ""]
    by_cell: dict = {}
    for r in regs:
        by_cell.setdefault(r["cell"], []).append(r)
    for cid, rs in by_cell.items():
        lines.append(f"cell {cid}")
        w = max(len(r["metric"]) for r in rs)
        for r in rs:
            tol = r["tolerance"]
            tol = f"tolerance {short(tol, 2)}" if isinstance(tol, float) else str(tol)
            b, n = r["baseline"], r["now"]
            lb, ln = r.get("labels", ("baseline", "now"))
            fmt = lambda x: format(x, ".10g") if isinstance(x, float) else str(x)
            lines.append(f"  {r['metric'].ljust(w)}  {lb:>8} {fmt(b):>16}  {ln:>3} {fmt(n):>16}"
                         f"  {tol}  [{r['why']}]")
        lines.append("")
    return "\n".join(lines)
