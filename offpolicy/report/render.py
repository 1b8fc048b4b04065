"""Tables: terminal (rich, or plain text), CSV, markdown and JSON, plus the aggregations.

Every number written to a file goes through :func:`num` (12 significant digits), and every file
is written in grid order with sorted keys, so the same seed gives byte-identical files.
"""

from __future__ import annotations

import csv
import io
import math

from . import frontier as _frontier
from . import grid
from .store import encode, write_atomic

EXACT_METRICS = (
    "kl", "tv", "bias_target", "bias_fixed", "fp_gap", "bias_mean", "var", "mse", "modulus",
)
MC_METRICS = ("mc_n", "mc_mse", "mc_mse_se", "mc_bias_mean", "mc_bias_mean_se", "z_mse", "z_bias")
METRICS = EXACT_METRICS + MC_METRICS

AXIS_COLUMNS = ("mdp", "estimator", "quantity", "lam", "n", "rho", "c", "k", "T", "V")

METRIC_HELP = {
    "kl": "KL(pi || mu), averaged over the segment-start state distribution d",
    "tv": "total variation 1/2 sum_a |pi - mu|, averaged over d",
    "bias_target": "RMS over d (x mu for A/Q) of E[X | start] - target (A^pi, V^pi or Q^pi)",
    "bias_fixed": "the same RMS against the estimator's own fixed point (V-trace: V^{pi_rhobar})",
    "fp_gap": "RMS of fixed point - target: the bias left once the operator has converged",
    "bias_mean": "signed mean of E[X | start] - target over d (x mu): what Monte Carlo checks",
    "var": "mean over d (x mu) of Var[X | start]",
    "mse": "bias_target^2 + var = E[(X - target)^2] over starts drawn from d (x mu)",
    "modulus": "contraction modulus of the estimator's expected operator (nan: not a contraction)",
    "mc_mse": "Monte Carlo E[(X - target)^2], the actual estimator on sampled segments",
    "mc_bias_mean": "Monte Carlo mean of X - target",
    "z_mse": "(mc_mse - mse) / mc_mse_se",
    "z_bias": "(mc_bias_mean - bias_mean) / mc_bias_mean_se",
}


def num(x) -> str:
    """Canonical text of a metric: 12 significant digits, '' for missing."""
    if x is None:
        return ""
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    s = format(x, ".12g")
    return "0" if s == "-0" else s


def short(x, digits=3) -> str:
    if x is None:
        return "-"
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf"
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e4:
        return format(x, f".{digits}g")
    return format(x, f".{max(digits - 1, 1)}e")


def axis_row(cell: dict) -> dict:
    p = grid.fmt_param
    return {
        "mdp": cell["mdp"], "estimator": cell["estimator"],
        "quantity": grid.ESTIMATORS[cell["estimator"]].quantity,
        "lam": p(cell["lam"]), "n": p(cell["n"]), "rho": p(cell["rho_clip"]),
        "c": p(cell["c_clip"]), "k": p(cell["stale"]), "T": p(cell["T"]), "V": cell["values"],
    }


def rows(records: list[dict]) -> list[dict]:
    out = []
    for rec in records:
        row = axis_row(rec["cell"])
        for m in METRICS:
            row[m] = num(rec["metrics"].get(m))
        out.append(row)
    return out


def to_csv(records) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=AXIS_COLUMNS + METRICS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows(records))
    return buf.getvalue()


def _rounded(x):
    """Every float through :func:`num` (12 significant digits), recursively."""
    if isinstance(x, float):
        return float(num(x))
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_rounded(v) for v in x]
    return x


def to_json(records, meta: dict, summary: dict) -> str:
    cells = [{"id": r["id"], "cell": r["cell"], "metrics": _rounded(r["metrics"])}
             for r in records]
    doc = {"meta": meta, "metrics_help": METRIC_HELP, "cells": cells,
           "summary": _rounded(summary)}
    return encode(doc).replace('},{"cell"', '},\n{"cell"') + "\n"


# ---------------------------------------------------------------------------------------------
# aggregations


def _m(rec, key):
    v = rec["metrics"].get(key)
    return float("nan") if v is None else float(v)


def best_by_staleness(records, profile) -> list[dict]:
    """For each MDP and staleness level, the lowest-MSE cell of each quantity (A, V, Q), every
    estimator tuned over its own lambda / n / clip grid, at the profile's T and value quality."""
    groups: dict = {}
    for rec in records:
        c = rec["cell"]
        if c["T"] != profile.show_T or c["values"] != profile.show_values:
            continue
        mse = _m(rec, "mse")
        if math.isnan(mse):
            continue
        q = grid.ESTIMATORS[c["estimator"]].quantity
        key = (c["mdp"], c["stale"])
        g = groups.setdefault(key, {"kl": _m(rec, "kl"), "tv": _m(rec, "tv")})
        if q not in g or mse < _m(g[q], "mse"):
            g[q] = rec
    out = []
    for mdp in profile.mdps:
        for k in profile.stales:
            g = groups.get((mdp, k))
            if g is None:
                continue
            row = {"mdp": mdp, "k": k, "kl": g["kl"], "tv": g["tv"]}
            for q in ("A", "V", "Q"):
                if q in g:
                    row[q] = _describe(g[q]["cell"])
                    row[q + "_mse"] = _m(g[q], "mse")
            out.append(row)
    return out


def _describe(cell) -> str:
    """``vtrace lam=0.95 rho=1 c=1``: an estimator with the parameters it uses."""
    est = grid.ESTIMATORS[cell["estimator"]]
    parts = [cell["estimator"]]
    if est.uses_lam:
        parts.append(f"lam={grid.fmt_param(cell['lam'])}")
    if est.uses_n:
        parts.append(f"n={grid.fmt_param(cell['n'])}")
    if est.uses_clip:
        parts.append(f"rho={grid.fmt_param(cell['rho_clip'])} c={grid.fmt_param(cell['c_clip'])}")
    return " ".join(parts)


def frontier(records, profile) -> list[dict]:
    """Bias-variance frontier per (MDP, estimator, staleness): the cells over the estimator's
    own parameter grid that no other such cell dominates on bias_target^2 and var, compared
    after rounding, ties ordered by name (the rule: :mod:`offpolicy.report.frontier`)."""
    groups: dict = {}
    for rec in records:
        c = rec["cell"]
        if c["T"] != profile.show_T or c["values"] != profile.show_values:
            continue
        b2, var = _m(rec, "bias_target") ** 2, _m(rec, "var")
        if math.isnan(b2) or math.isnan(var):
            continue
        groups.setdefault((c["mdp"], c["estimator"], c["stale"]), []).append(
            (_describe(c), b2, var))
    order = {m: i for i, m in enumerate(profile.mdps)}
    eorder = {e: i for i, e in enumerate(grid.ESTIMATORS)}
    out = []
    for mdp, est, k in sorted(groups, key=lambda g: (order.get(g[0], 99), eorder[g[1]], g[2])):
        for setting, b2, var in _frontier.pareto(groups[(mdp, est, k)]):
            out.append({"mdp": mdp, "estimator": est, "k": k, "setting": setting,
                        "bias2": b2, "var": var, "mse": b2 + var})
    return out


def summary(records, profile) -> dict:
    mc = [r for r in records if r["cell"]["mc"]]
    zs = [abs(_m(r, z)) for r in mc for z in ("z_mse", "z_bias") if not math.isnan(_m(r, z))]
    return {
        "best_by_staleness": best_by_staleness(records, profile),
        "frontier": frontier(records, profile),
        "mc_cells": len(mc),
        "mc_max_abs_z": max(zs) if zs else None,
    }


# ---------------------------------------------------------------------------------------------
# human tables


def staleness_table(records, profile, detail=False):
    """Rows (mdp, estimator) at the default slice; columns MSE per staleness level (with
    ``detail``: also bias against the fixed point and the modulus at the largest staleness)."""
    stales = sorted({r["cell"]["stale"] for r in records})
    table: dict = {}
    for rec in records:
        c = rec["cell"]
        if not grid.is_shown(profile, c):
            continue
        row = table.setdefault((c["mdp"], c["estimator"]), {})
        row[c["stale"]] = rec
    header = ["mdp", "estimator"] + [f"MSE k={k}" for k in stales]
    if detail:
        header += [f"bias_target k={stales[-1]}", f"fp_gap k={stales[-1]}",
                   f"modulus k={stales[-1]}"]
    header += ["MC max|z|"]
    body = []
    for (mdp, est), row in table.items():
        last = row.get(stales[-1])
        zs = [abs(_m(r, z)) for r in row.values() for z in ("z_mse", "z_bias")
              if r["cell"]["mc"] and not math.isnan(_m(r, z))]
        line = [mdp, est] + [short(_m(row[k], "mse")) if k in row else "" for k in stales]
        if detail:
            line += [short(_m(last, m)) if last else "" for m in
                     ("bias_target", "fp_gap", "modulus")]
        body.append(line + [short(max(zs), 2) if zs else ""])
    return header, body


def best_table(best_rows, long=False):
    """One row per (MDP, staleness level), the best A, V and Q side by side (``long``: one row
    per quantity, seven columns, for a terminal: the wide form is too wide for 80 columns)."""
    if long:
        header = ["mdp", "k", "KL", "TV", "", "best (tuned over its grid)", "MSE"]
        body = []
        for r in best_rows:
            first = [r["mdp"], str(r["k"]), short(r["kl"]), short(r["tv"])]
            for q in ("A", "V", "Q"):
                if q in r:
                    body.append(first + [q, r[q], short(r[q + "_mse"])])
                    first = ["", "", "", ""]  # the group's MDP, k, KL and TV once
        return header, body
    header = ["mdp", "k", "KL", "TV", "best A", "MSE", "best V", "MSE", "best Q", "MSE"]
    body = []
    for r in best_rows:
        line = [r["mdp"], str(r["k"]), short(r["kl"]), short(r["tv"])]
        for q in ("A", "V", "Q"):
            line += [r[q], short(r[q + "_mse"])] if q in r else ["-", "-"]
        body.append(line)
    return header, body


def plain_table(header, body, title="") -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    line = lambda xs: "  ".join(str(x).ljust(w) for x, w in zip(xs, widths, strict=True)).rstrip()
    out = [title] if title else []
    out += [line(header), line(["-" * w for w in widths])] + [line(r) for r in body]
    return "\n".join(out) + "\n"


def markdown_table(header, body) -> str:
    esc = lambda s: str(s).replace("|", "\\|")
    out = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(map(esc, r)) + " |" for r in body]
    return "\n".join(out) + "\n"


def print_table(header, body, title, console=None) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text fallback
        print(plain_table(header, body, title))
        return
    import sys

    t = Table(title=title, header_style="bold", show_lines=False)
    for i, h in enumerate(header):
        numeric = h.startswith(("MSE", "KL", "TV", "k", "MC", "bias", "fp", "modulus"))
        if numeric:  # a number is never cut: its column keeps its full width
            width = max(len(str(x)) for x in [h, *(r[i] for r in body)])
            t.add_column(h, justify="right", no_wrap=True, min_width=width)
        else:  # names and settings fold onto a second line when the terminal is narrow
            t.add_column(h, justify="left", overflow="fold")
    for r in body:
        t.add_row(*map(str, r))
    if console is None:  # a log file or pipe has no width: do not wrap at 80 columns
        console = Console() if sys.stdout.isatty() else Console(width=200)
    console.print(t)


def to_markdown(records, profile, meta, summ) -> str:
    h1, b1 = staleness_table(records, profile, detail=True)
    h2, b2 = best_table(summ["best_by_staleness"])
    fr = summ["frontier"]
    h3 = ["mdp", "estimator", "k", "setting", "bias^2", "var", "MSE"]
    b3 = [[r["mdp"], r["estimator"], str(r["k"]), r["setting"], short(r["bias2"]),
           short(r["var"]), short(r["mse"])] for r in fr]
    s = profile
    parts = [
        f"# offpolicy bias/variance report: profile `{meta['profile']}`, seed {meta['seed']}\n",
        f"Regenerate: `{meta['command']}`. {meta['cells']} cells; "
        f"{summ['mc_cells']} with a Monte Carlo column "
        f"({s.mc_samples} segments each; max |z| against the exact figures: "
        f"{short(summ['mc_max_abs_z'], 2)}).\n",
        "Metric definitions:\n",
        "\n".join(f"- `{k}`: {v}" for k, v in METRIC_HELP.items()) + "\n",
        f"## MSE by staleness (lam={grid.fmt_param(s.show_lam)}, n={s.show_n}, "
        f"rho/c={grid.fmt_param(s.show_clip[0])}/{grid.fmt_param(s.show_clip[1])}, T={s.show_T}, "
        f"values={s.show_values})\n",
        markdown_table(h1, b1),
        f"## Best estimator per staleness level (tuned over its own grid; T={s.show_T}, "
        f"values={s.show_values})\n",
        markdown_table(h2, b2),
        "## Bias-variance frontier per estimator\n",
        markdown_table(h3, b3),
        "Every cell is in `results.csv` / `results.json`.\n",
    ]
    return "\n".join(parts)


def write_outputs(out_dir, records, profile, meta) -> dict:
    import os

    summ = summary(records, profile)
    write_atomic(os.path.join(out_dir, "results.csv"), to_csv(records))
    write_atomic(os.path.join(out_dir, "results.json"), to_json(records, meta, summ))
    write_atomic(os.path.join(out_dir, "results.md"), to_markdown(records, profile, meta, summ))
    return summ
