"""The report's gradient section: how far the update each policy loss takes on stale data is
from the exact policy gradient (issue 25; docs/DESIGN.md section 6).

One row per (MDP, behaviour, loss, estimator): the target is the report's
(``compute.policies_for``); the behaviour is ``lag k`` (``k`` softmax-improvement steps behind
the target, the report's staleness), ``eps e`` (``(1 - e) pi + e uniform``) or ``temp T``
(``pi^(1/T)`` renormalised: the target's logits divided by T); the critic is the exact
``V^pi``; the figures are exact (:func:`offpolicy.gradients.exact_gradient_moments`,
enumeration, no sampling), so the gate compares them to round-off.

Columns: ``cos_grad_j`` = cos(E g_hat, grad J); ``cos_reference`` = cos(E g_hat, the on-policy
update of T23); ``rel_bias`` = ||E g_hat - reference|| / ||reference||; ``total_var`` =
E||g_hat - E g_hat||^2; ``weight`` = how often the behaviour correction enters the update
(``once``, ``twice``: PPO's ratio on an advantage that already carries a clipped ratio).

Value rows (``loss`` = ``value`` or ``td``,
:func:`offpolicy.gradients.exact_value_gradient_moments`; not at lag 0, where there is nothing
to learn): the critic is the behaviour's own ``V^mu`` / ``Q^mu`` (fitted to the stale data); the
reference (and ``cos_grad_j``'s direction) is the regression onto the exact ``V^pi`` /
``Q^pi`` on the same states, so ``rel_bias`` = 1 means the update does not move the critic
towards the target's values at all. A cosine is NaN where the expected update is zero up to
round-off (its direction would be the machine's).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass

import numpy as np

# (loss, estimator, how often the importance weight enters)
FORMS = (
    ("ppo_clip", "gae", "once"),
    ("prox_clip", "gae", "once"),
    ("impala", "gae", "once"),
    ("impala", "vtrace", "once"),
    ("ppo_clip", "vtrace", "twice"),
)
LOSS_NAMES = tuple(dict.fromkeys(f[0] for f in FORMS))
# value and TD updates (the squared loss on the estimator's value target, the critic the
# behaviour's own V^mu / Q^mu: a critic fitted to the stale data): (loss, estimator)
VALUE_FORMS = (
    ("value", "gae"),
    ("value", "vtrace"),
    ("td", "retrace"),
    ("td", "tree_backup"),
    ("td", "q_lambda"),
)
COLUMNS = ("mdp", "behaviour", "k", "H", "loss", "estimator", "weight", "kl", "cos_grad_j",
           "cos_reference", "rel_bias", "total_var")
FIGURES = ("kl", "cos_grad_j", "cos_reference", "rel_bias", "total_var")
LAM = 0.95
CSV = "gradients.csv"
MD = "gradients.md"


@dataclass(frozen=True)
class GradientGrid:
    mdps: tuple  # (name, horizon): the horizon keeps the enumeration small
    stales: tuple
    others: tuple = (("eps", 0.2), ("temp", 2.0))  # (behaviour, level) beside the lags


GRIDS = {
    "quick": GradientGrid(mdps=(("chain", 4), ("garnet_small", 3)), stales=(0, 1, 4)),
    "full": GradientGrid(mdps=(("chain", 4), ("garnet_small", 3), ("gridworld", 3),
                               ("garnet_medium", 2)), stales=(0, 1, 2, 4, 8, 16)),
}


def behaviour(m, pi, eta: float, kind: str, level: float):
    """The behaviour policy of a row (module docstring)."""
    from offpolicy import policies

    if kind == "lag":
        return policies.stale_policy(m, pi, int(level), step_size=eta)
    if kind == "eps":
        return policies.mixture(pi, policies.uniform_policy(m), level)
    if kind == "temp":
        with np.errstate(divide="ignore"):
            return policies.softmax(np.log(pi), temperature=level)
    raise ValueError(f"behaviour: unknown {kind!r}")


def compute(profile: str) -> list[dict]:
    """Every row of the profile's gradient grid, in grid order."""
    from offpolicy import exact, gradients, policies

    from .compute import build_mdp, policies_for

    g = GRIDS[profile]
    rows = []
    for name, horizon in g.mdps:
        m = build_mdp(name)
        pi, eta = policies_for(m)
        for kind, k in [("lag", k) for k in g.stales] + list(g.others):
            mu = behaviour(m, pi, eta, kind, k)
            kl = float(policies.kl_divergence(pi, mu, weights=exact.state_distribution(m, mu)))
            for loss, est, weight in FORMS:
                mom = gradients.exact_gradient_moments(m, loss, est, target=pi, behaviour=mu,
                                                       horizon=horizon, lam=LAM)
                rows.append({"mdp": name, "behaviour": kind, "k": k, "H": horizon,
                             "loss": loss, "estimator": est,
                             "weight": weight, "kl": kl, "cos_grad_j": mom.cosine,
                             "cos_reference": mom.cosine_reference,
                             "rel_bias": mom.relative_bias, "total_var": mom.total_variance})
            for loss, est in VALUE_FORMS if (kind, k) != ("lag", 0) else ():
                mom = gradients.exact_value_gradient_moments(
                    m, est, target=pi, behaviour=mu, horizon=horizon, lam=LAM,
                    values=exact.v_pi(m, mu), q=exact.q_pi(m, mu))
                rows.append({"mdp": name, "behaviour": kind, "k": k, "H": horizon,
                             "loss": loss, "estimator": est, "weight": "-", "kl": kl,
                             "cos_grad_j": mom.cosine, "cos_reference": mom.cosine_reference,
                             "rel_bias": mom.relative_bias, "total_var": mom.total_variance})
    return rows


def _fmt(x) -> str:
    return f"{x:.12g}" if isinstance(x, float) else str(x)


def _key(r: dict) -> tuple:
    return (r["mdp"], r["behaviour"], float(r["k"]), r["loss"], r["estimator"])


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
            out.append({c: (float(r[c]) if c in FIGURES or c == "k" else int(r[c])
                            if c == "H" else r[c]) for c in COLUMNS})
    return out


def findings(rows: list[dict]) -> list[str]:
    """Sentences derived from the rows (each quotes the figures it rests on)."""
    out: list[str] = []
    by = {(r["mdp"], int(r["k"]), r["loss"], r["estimator"]): r for r in rows
          if r["behaviour"] == "lag"}
    mdps = list(dict.fromkeys(r["mdp"] for r in rows))
    lags = sorted({int(r["k"]) for r in rows if r["behaviour"] == "lag" and r["k"] > 0
                   and r["loss"] in LOSS_NAMES})
    for name in mdps if lags else ():
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
    stale = [r for r in rows if r["loss"] in ("value", "td")
             and not (r["behaviour"] == "lag" and r["k"] == 0)]
    for loss, est in VALUE_FORMS:
        rb = [r["rel_bias"] for r in stale if (r["loss"], r["estimator"]) == (loss, est)]
        if not rb:
            continue
        if all(abs(x - 1.0) < 1e-9 for x in rb):
            out.append(f"{est} ({loss} loss) with a critic fitted to the behaviour: the expected "
                       f"update is zero up to round-off in every one of the {len(rb)} stale rows "
                       f"(relative bias 1): its target is the behaviour's value, so the critic "
                       f"never moves towards the target policy's.")
        else:
            out.append(f"{est} ({loss} loss) with a critic fitted to the behaviour: relative "
                       f"bias {min(rb):.3f}-{max(rb):.3f} over the {len(rb)} stale rows "
                       f"(1 = no movement towards the target policy's values).")
    return out


def render(rows: list[dict]) -> str:
    lines = ["# Gradients: the exact expected update of each policy loss against grad J", "",
             "Generated by `python -m offpolicy.report` (offpolicy/report/gradients.py); exact "
             "figures (enumeration of every segment, no sampling). Columns: see the module "
             "docstring.", "", "## Findings (computed from the table)", ""]
    lines += [f"- {s}" for s in findings(rows)] or ["- (no stale rows)"]
    lines += ["", "## Table", "",
              "| mdp | behaviour | H | loss | estimator | weight | KL | cos(Eg, grad J) | "
              "cos(Eg, on-policy) | rel. bias | total var |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mdp']} | {r['behaviour']} {r['k']:g} | {r['H']} | {r['loss']} | "
                     f"{r['estimator']} | "
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
    base = {_key(r): r for r in read(path)}
    got = {_key(r): r for r in rows}
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
