"""The report's gradient section: how far the update each policy loss takes on stale data is
from the exact policy gradient (issue 25; docs/DESIGN.md section 6).

One row per (MDP, staleness k, loss, estimator): the target is the report's
(``compute.policies_for``), the behaviour ``k`` softmax-improvement steps behind it, the critic
the exact ``V^pi``; the figures are exact (:func:`offpolicy.gradients.exact_gradient_moments`,
enumeration, no sampling), so the gate compares them to round-off.

Columns: ``cos_grad_j`` = cos(E g_hat, grad J); ``cos_reference`` = cos(E g_hat, the on-policy
update of T23); ``rel_bias`` = ||E g_hat - reference|| / ||reference||; ``total_var`` =
E||g_hat - E g_hat||^2; ``weight`` = how often the behaviour correction enters the update
(``once``, ``twice``: PPO's ratio on an advantage that already carries a clipped ratio).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass

# (loss, estimator, how often the importance weight enters)
FORMS = (
    ("ppo_clip", "gae", "once"),
    ("prox_clip", "gae", "once"),
    ("impala", "gae", "once"),
    ("impala", "vtrace", "once"),
    ("ppo_clip", "vtrace", "twice"),
)
COLUMNS = ("mdp", "k", "H", "loss", "estimator", "weight", "kl", "cos_grad_j", "cos_reference",
           "rel_bias", "total_var")
FIGURES = ("kl", "cos_grad_j", "cos_reference", "rel_bias", "total_var")
LAM = 0.95
CSV = "gradients.csv"
MD = "gradients.md"


@dataclass(frozen=True)
class GradientGrid:
    mdps: tuple  # (name, horizon): the horizon keeps the enumeration small
    stales: tuple


GRIDS = {
    "quick": GradientGrid(mdps=(("chain", 4), ("garnet_small", 3)), stales=(0, 1, 4)),
    "full": GradientGrid(mdps=(("chain", 4), ("garnet_small", 3), ("gridworld", 3),
                               ("garnet_medium", 2)), stales=(0, 1, 2, 4, 8, 16)),
}


def compute(profile: str) -> list[dict]:
    """Every row of the profile's gradient grid, in grid order."""
    from offpolicy import gradients, policies

    from .compute import build_mdp, policies_for

    g = GRIDS[profile]
    rows = []
    for name, horizon in g.mdps:
        m = build_mdp(name)
        pi, eta = policies_for(m)
        for k in g.stales:
            mu = policies.stale_policy(m, pi, k, step_size=eta)
            from offpolicy import exact

            kl = float(policies.kl_divergence(pi, mu, weights=exact.state_distribution(m, mu)))
            for loss, est, weight in FORMS:
                mom = gradients.exact_gradient_moments(m, loss, est, target=pi, behaviour=mu,
                                                       horizon=horizon, lam=LAM)
                rows.append({"mdp": name, "k": k, "H": horizon, "loss": loss, "estimator": est,
                             "weight": weight, "kl": kl, "cos_grad_j": mom.cosine,
                             "cos_reference": mom.cosine_reference,
                             "rel_bias": mom.relative_bias, "total_var": mom.total_variance})
    return rows


def _fmt(x) -> str:
    return f"{x:.12g}" if isinstance(x, float) else str(x)


def write(out_dir: str, rows: list[dict]) -> list[str]:
    """gradients.csv (every figure, 12 significant digits) and gradients.md (the table and
    the findings computed from it); returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    path_csv = os.path.join(out_dir, CSV)
    with open(path_csv, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([_fmt(r[c]) for c in COLUMNS])
    path_md = os.path.join(out_dir, MD)
    with open(path_md, "w") as f:
        f.write(render(rows))
    return [path_csv, path_md]


def read(path: str) -> list[dict]:
    with open(path, newline="") as f:
        out = []
        for r in csv.DictReader(f):
            out.append({c: (float(r[c]) if c in FIGURES else int(r[c]) if c in ("k", "H")
                            else r[c]) for c in COLUMNS})
    return out


def findings(rows: list[dict]) -> list[str]:
    """Sentences derived from the rows (each quotes the figures it rests on)."""
    out = []
    by = {(r["mdp"], r["k"], r["loss"], r["estimator"]): r for r in rows}
    mdps = list(dict.fromkeys(r["mdp"] for r in rows))
    lags = sorted({r["k"] for r in rows if r["k"] > 0})
    if not lags:
        return out
    for name in mdps:
        once = [by[(name, k, "impala", "vtrace")]["cos_grad_j"] for k in lags]
        twice = [by[(name, k, "ppo_clip", "vtrace")]["cos_grad_j"] for k in lags]
        flips = [k for k, a, b in zip(lags, once, twice, strict=True) if a <= b]
        pairs = ", ".join(f"k = {k}: {a:.3f} vs {b:.3f}"
                          for k, a, b in zip(lags, once, twice, strict=True))
        if flips:
            out.append(f"{name}: the once-counted V-trace update (IMPALA) stops pointing closer "
                       f"to grad J than the twice-counted one (PPO-clip on the V-trace pg "
                       f"advantage) at k = {flips[0]} (cosines {pairs}).")
        else:
            out.append(f"{name}: at every lag of the grid (k = {', '.join(map(str, lags))}) the "
                       f"once-counted V-trace update points closer to grad J than the "
                       f"twice-counted one (cosines {pairs}).")
        neg = [k for k in lags if by[(name, k, "ppo_clip", "gae")]["cos_grad_j"] < 0]
        if neg:
            c = by[(name, neg[0], "ppo_clip", "gae")]["cos_grad_j"]
            out.append(f"{name}: PPO-clip with r = pi/mu on GAE points away from grad J "
                       f"(cosine {c:.3f} < 0) from k = {neg[0]} on the grid's lags "
                       f"({', '.join(map(str, lags))})" + (
                           "." if all(by[(name, k, 'ppo_clip', 'gae')]['cos_grad_j'] < 0
                                      for k in lags if k >= neg[0])
                           else ", though not at every larger lag."))
    return out


def render(rows: list[dict]) -> str:
    lines = ["# Gradients: the exact expected update of each policy loss against grad J", "",
             "Generated by `python -m offpolicy.report` (offpolicy/report/gradients.py); exact "
             "figures (enumeration of every segment, no sampling). Columns: see the module "
             "docstring.", "", "## Findings (computed from the table)", ""]
    lines += [f"- {s}" for s in findings(rows)] or ["- (no stale rows)"]
    lines += ["", "## Table", "",
              "| mdp | k | H | loss | estimator | weight | KL | cos(Eg, grad J) | "
              "cos(Eg, on-policy) | rel. bias | total var |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mdp']} | {r['k']} | {r['H']} | {r['loss']} | {r['estimator']} | "
                     f"{r['weight']} | {r['kl']:.3g} | {r['cos_grad_j']:.4f} | "
                     f"{r['cos_reference']:.4f} | {r['rel_bias']:.4f} | "
                     f"{r['total_var']:.3g} |")
    return "\n".join(lines) + "\n"


def compare(rows: list[dict], baseline_dir: str, *, rtol: float = 1e-7,
            atol: float = 1e-12) -> list[str]:
    """One line per regression against ``baseline_dir/gradients.csv``: a figure that moved
    beyond round-off, a row the grid no longer produces, a row the baseline lacks."""
    path = os.path.join(baseline_dir, CSV)
    if not os.path.exists(path):
        return [f"{path}: missing (the gradient rows have no baseline)"]
    base = {(r["mdp"], r["k"], r["loss"], r["estimator"]): r for r in read(path)}
    got = {(r["mdp"], r["k"], r["loss"], r["estimator"]): r for r in rows}
    problems = [f"gradients {key}: in the baseline, not produced" for key in base
                if key not in got]
    problems += [f"gradients {key}: produced, not in the baseline" for key in got
                 if key not in base]
    for key in got.keys() & base.keys():
        for c in FIGURES:
            a, b = got[key][c], base[key][c]
            if not (math.isclose(a, b, rel_tol=rtol, abs_tol=atol)
                    or (math.isnan(a) and math.isnan(b))):
                problems.append(f"gradients {key} {c}: {a!r} != baseline {b!r}")
    return sorted(problems)
