"""``--check``: compare a fresh computation with a committed baseline.

Tolerances, per metric:

* exact figures (``EXACT_METRICS``: from ``moments``/``exact``, no sampling): ``|now - base| <=
  RTOL * max(|now|, |base|) + ATOL`` with RTOL = 1e-9, ATOL = 1e-12;
* Monte Carlo figures (``mc_mse``, ``mc_bias_mean``): ``|now - base| <= Z_BASE * sqrt(se_now^2
  + se_base^2)``, their standard errors combined (Z_BASE = 4);
* and, in the fresh run alone, every Monte Carlo figure must agree with its exact counterpart:
  ``|z_mse|, |z_bias| <= Z_EXACT`` (5). This is what catches a broken estimator: the Monte
  Carlo column runs ``estimators.numpy``, the exact columns never do.

Non-finite figures: an exact figure passes only if it is the same non-finite value on both
sides (``nan`` for ``nan``: some moduli are undefined); a Monte Carlo figure, its standard
error or z-score that is not finite fails; ``mc_n`` (the sample count) must match exactly.

A cell missing on either side is a regression too, unless the run was restricted with
``--mdps`` / ``--estimators`` (then only the baseline cells of the restricted grid count).

:func:`load_baseline` validates the whole baseline (``results.json``: its structure, every
column of every cell; ``results.csv``: its header, one complete row per cell, each equal to
the JSON's figure as rendered) before anything is computed, and raises
:class:`BaselineError` with a one-line message naming the file.
"""

from __future__ import annotations

import csv
import json
import math
import numbers
import os

from .render import AXIS_COLUMNS, EXACT_METRICS, METRICS, axis_row, num, short
from .store import decode_float

RTOL = 1e-9
ATOL = 1e-12
Z_BASE = 4.0
Z_EXACT = 5.0
MC_PAIRS = (("mc_mse", "mc_mse_se"), ("mc_bias_mean", "mc_bias_mean_se"))
Z_PAIRS = (("z_mse", "mc_mse", "mse"), ("z_bias", "mc_bias_mean", "bias_mean"))
MC_COLUMNS = ("mc_n", "mc_mse", "mc_mse_se", "mc_bias_mean", "mc_bias_mean_se", "z_mse",
              "z_bias")


class BaselineError(ValueError):
    """A baseline that cannot be used; the message is one line and starts with the file."""


def _figure(x) -> bool:
    """A number as stored: int/float, or the strings "nan", "inf", "-inf"."""
    if isinstance(x, str):
        return x in ("nan", "inf", "-inf")
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _validate_json(path: str, doc) -> None:
    from . import grid

    def bad(msg):
        raise BaselineError(f"{path}: {msg}")

    if not isinstance(doc, dict):
        bad(f"expected a JSON object with 'meta' and 'cells', got {type(doc).__name__}")
    meta, cells = doc.get("meta"), doc.get("cells")
    if not isinstance(meta, dict):
        bad("no 'meta' object")
    if meta.get("profile") not in grid.PROFILES:
        bad(f"meta.profile: expected one of {sorted(grid.PROFILES)}, got "
            f"{meta.get('profile')!r}")
    seed = meta.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        bad(f"meta.seed: expected an integer, got {seed!r}")
    if not isinstance(cells, list) or not cells:
        bad("no 'cells' list (or it is empty)")
    seen = set()
    for i, c in enumerate(cells):
        if not (isinstance(c, dict) and isinstance(c.get("id"), str)
                and isinstance(c.get("cell"), dict) and isinstance(c.get("metrics"), dict)):
            bad(f"cells[{i}]: expected an object with 'id' (text), 'cell' and 'metrics'")
        if c["id"] in seen:
            bad(f"cells[{i}]: duplicate id {c['id']!r}")
        seen.add(c["id"])
        mc = c["cell"].get("mc")
        if not isinstance(mc, bool):
            bad(f"cells[{i}] ({c['id']}): cell.mc: expected true or false, got {mc!r}")
        for m in EXACT_METRICS + (MC_COLUMNS if mc else ()):
            if m not in c["metrics"]:
                bad(f"cells[{i}] ({c['id']}): missing column {m!r}")
            if not _figure(c["metrics"][m]):
                bad(f"cells[{i}] ({c['id']}): column {m!r}: expected a number, got "
                    f"{c['metrics'][m]!r}")


def _validate_csv(path: str, cells: list) -> None:
    """results.csv must be the JSON's cells as rendered: the header, one complete row per
    cell in order, every field equal (so a truncated or stale CSV is caught)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise BaselineError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") \
            from None
    header = list(AXIS_COLUMNS + METRICS)
    if not rows or rows[0] != header:
        have = rows[0] if rows else []
        missing = [h for h in header if h not in have]
        raise BaselineError(f"{path}: header is not the expected {len(header)} columns"
                            + (f" (missing {', '.join(missing)})" if missing else ""))
    if len(rows) - 1 != len(cells):
        raise BaselineError(f"{path}: {len(rows) - 1} rows for {len(cells)} cells in "
                            "results.json (truncated?)")
    for i, (row, c) in enumerate(zip(rows[1:], cells, strict=True)):
        if len(row) != len(header):
            raise BaselineError(f"{path}: row {i + 2} has {len(row)} fields, expected "
                                f"{len(header)} (truncated?)")
        want = dict(axis_row(c["cell"]))
        for m in METRICS:
            x = c["metrics"].get(m)
            want[m] = num(None if x is None else float(decode_float(x)))
        for k, got in zip(header, row, strict=True):
            if got != want[k]:
                raise BaselineError(f"{path}: row {i + 2} column {k} holds {got!r}, "
                                    f"results.json says {want[k]!r}")


def load_baseline(directory: str) -> dict:
    """The validated baseline: ``{"meta": ..., "cells": {id: cell}}`` with decoded floats.
    Raises :class:`BaselineError` (one line, naming the file) for anything unusable."""
    path = os.path.join(directory, "results.json")
    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError as e:
        raise BaselineError(f"{path}: cannot read ({e.strerror or e})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BaselineError(f"{path}: not valid JSON ({e})") from None
    _validate_json(path, doc)
    _validate_csv(os.path.join(directory, "results.csv"), doc["cells"])
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
        a, b = _f(now.get("mc_n")), _f(base.get("mc_n"))
        if not a == b:
            regs.append(dict(cell=cid, metric="mc_n", baseline=b, now=a, tolerance=0.0,
                             why="Monte Carlo sample count changed"))
        for m, se in MC_PAIRS:
            a, b = _f(now.get(m)), _f(base.get(m))
            tol = Z_BASE * math.hypot(_f(now.get(se)), _f(base.get(se)))
            if not (math.isfinite(a) and math.isfinite(tol) and abs(a - b) <= tol):
                regs.append(dict(cell=cid, metric=m, baseline=b, now=a, tolerance=tol,
                                 why=f"Monte Carlo figure moved by more than {Z_BASE:g} s.e."
                                 if math.isfinite(tol) else "standard error not finite"))
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
