"""The report's grid: axes, profiles and cell identities.

A *cell* is one point of the grid, a plain dict with the keys of :data:`AXES` (``None`` where an
axis does not apply to the estimator, shown as ``-``) plus ``mc`` (whether the cell carries a
Monte Carlo column). Its identity :func:`cell_id` is a canonical string, stable across runs, used
as the key of the resumable store, of the baseline comparison and of the per-cell random seed.
Cells are always emitted and written in grid order, whatever order they were computed in.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass

from offpolicy import registry

# axis name -> column label
AXES = ("mdp", "estimator", "lam", "n", "rho_clip", "c_clip", "stale", "T", "values")
LABELS = {
    "mdp": "mdp",
    "estimator": "estimator",
    "lam": "lam",
    "n": "n",
    "rho_clip": "rho",
    "c_clip": "c",
    "stale": "k",
    "T": "T",
    "values": "V",
}


_QUANTITY = {"advantage": "A", "pg_advantage": "A", "value": "V", "target": "Q"}


@dataclass(frozen=True)
class EstimatorSpec:
    """How the report treats one estimator; everything is read from :mod:`offpolicy.registry`.

    ``name``: the report's name, a registry name (contract name, alias or output alias: the
    committed reports key their cells by it). ``quantity``: what one sample estimates at the
    start (s_0, a_0) of a segment: ``"A"`` an advantage (target A^pi(s,a)), ``"V"`` a
    state-value target (target V^pi(s), conditioned on s only), ``"Q"`` an action-value
    target (target Q^pi(s,a)).
    """

    name: str

    @property
    def info(self) -> registry.EstimatorInfo:
        return registry.lookup(self.name)

    @property
    def output(self) -> str:
        """The contract output the report measures (the name's default output)."""
        return registry.resolve(self.name)[1]

    @property
    def quantity(self) -> str:
        return _QUANTITY[self.info.quantities[self.output]]

    @property
    def uses_lam(self) -> bool:
        return "lam" in self.info.params

    @property
    def uses_clip(self) -> bool:
        """rho_clip / c_clip axes."""
        return "rho_clip" in self.info.params

    @property
    def uses_n(self) -> bool:
        return "n" in self.info.params


ESTIMATORS: dict[str, EstimatorSpec] = {
    name: EstimatorSpec(name)
    for name in ("gae", "td_lambda", "nstep", "vtrace", "puff_advantage", "per_decision_is",
                 "retrace", "tree_backup", "q_lambda", "importance_sampling_q", "p3o")
}

#: other registry names of the report's estimators (``--estimators nstep_returns``), each
#: mapped to the report's name when that is unambiguous
ALIASES: dict[str, str] = {
    other: name for name, spec in ESTIMATORS.items()
    if sum(registry.canonical(n) == spec.info.name for n in ESTIMATORS) == 1
    for other in spec.info.all_names if other not in ESTIMATORS
}

MDPS = ("garnet_small", "garnet_medium", "chain", "gridworld", "sb_loop")
VALUE_QUALITIES = ("exact", "stale", "noisy")
INF = float("inf")


@dataclass(frozen=True)
class Profile:
    name: str
    mdps: tuple
    estimators: tuple
    lams: tuple
    ns: tuple
    clips: tuple  # (rho_clip, c_clip) pairs
    stales: tuple
    Ts: tuple
    values: tuple
    # Monte Carlo subset: the cells whose (mdp, staleness, lam|n, clip, T, values) match these
    mc_mdps: tuple
    mc_lams: tuple
    mc_ns: tuple
    mc_clips: tuple
    mc_Ts: tuple
    mc_values: tuple
    mc_stales: tuple  # heavy-tailed (very stale, unclipped) cells make standard errors useless
    mc_samples: int
    # defaults a reader looks at first (terminal table, plots)
    show_lam: float
    show_n: int
    show_clip: tuple
    show_T: int
    show_values: str


PROFILES = {
    "quick": Profile(
        name="quick",
        mdps=MDPS,
        estimators=tuple(ESTIMATORS),
        lams=(0.5, 0.95),
        ns=(1, 8),
        clips=((1.0, 1.0), (INF, INF)),
        stales=(0, 2, 8),
        Ts=(16,),
        values=("exact", "stale"),
        mc_mdps=("garnet_small", "chain", "sb_loop"),
        mc_lams=(0.95,),
        mc_ns=(8,),
        mc_clips=((1.0, 1.0),),
        mc_Ts=(16,),
        mc_values=("stale",),
        mc_stales=(0, 2),
        mc_samples=20000,
        show_lam=0.95,
        show_n=8,
        show_clip=(1.0, 1.0),
        show_T=16,
        show_values="stale",
    ),
    "full": Profile(
        name="full",
        mdps=MDPS,
        estimators=tuple(ESTIMATORS),
        lams=(0.0, 0.5, 0.8, 0.9, 0.95, 1.0),
        ns=(1, 3, 8, 32),
        clips=((0.5, 0.5), (1.0, 1.0), (2.0, 1.0), (INF, 1.0), (INF, INF)),
        stales=(0, 1, 2, 4, 8, 16),
        Ts=(4, 16, 64),
        values=VALUE_QUALITIES,
        mc_mdps=("garnet_small", "chain", "gridworld", "sb_loop"),
        mc_lams=(0.95,),
        mc_ns=(8,),
        mc_clips=((1.0, 1.0),),
        mc_Ts=(16,),
        mc_values=("stale",),
        mc_stales=(0, 2, 4),
        mc_samples=20000,
        show_lam=0.95,
        show_n=8,
        show_clip=(1.0, 1.0),
        show_T=16,
        show_values="stale",
    ),
}


def fmt_param(x) -> str:
    """Canonical text of an axis value (used in cell ids, tables and CSV)."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, float):
        if x == INF:
            return "inf"
        if x == int(x):
            return str(int(x))
        return repr(x)
    return str(x)


def parse_param(axis: str, text: str):
    """Inverse of :func:`fmt_param` for one axis."""
    if text == "-":
        return None
    if axis in ("mdp", "estimator", "values"):
        return text
    if axis in ("n", "stale", "T"):
        return int(text)
    return float(text)


def cell_id(cell: dict) -> str:
    return " ".join(f"{LABELS[a]}={fmt_param(cell[a])}" for a in AXES)


def cell_seed(seed: int, *parts) -> int:
    """A 63-bit seed derived from the run seed and any labels (order-independent of the run)."""
    h = hashlib.sha256(json.dumps([seed, *map(str, parts)]).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def _is_mc(p: Profile, cell: dict) -> bool:
    est = ESTIMATORS[cell["estimator"]]
    return (
        cell["mdp"] in p.mc_mdps
        and cell["stale"] in p.mc_stales
        and cell["T"] in p.mc_Ts
        and cell["values"] in p.mc_values
        and (not est.uses_lam or cell["lam"] in p.mc_lams)
        and (not est.uses_n or cell["n"] in p.mc_ns)
        and (not est.uses_clip or (cell["rho_clip"], cell["c_clip"]) in p.mc_clips)
    )


def cells(profile: Profile, mdps=None, estimators=None) -> list[dict]:
    """Every cell of ``profile`` (optionally restricted), in grid order."""
    mdps = [m for m in profile.mdps if mdps is None or m in mdps]
    ests = [e for e in profile.estimators if estimators is None or e in estimators]
    out = []
    for mdp, name, k, T, vq in itertools.product(
        mdps, ests, profile.stales, profile.Ts, profile.values
    ):
        est = ESTIMATORS[name]
        lams = profile.lams if est.uses_lam else (None,)
        ns = profile.ns if est.uses_n else (None,)
        clips = profile.clips if est.uses_clip else ((None, None),)
        for lam, n, (rc, cc) in itertools.product(lams, ns, clips):
            cell = dict(
                mdp=mdp, estimator=name, lam=lam, n=n, rho_clip=rc, c_clip=cc,
                stale=k, T=T, values=vq,
            )
            cell["mc"] = _is_mc(profile, cell)
            out.append(cell)
    return out


def setup_key(cell: dict) -> tuple:
    """Cells sharing this key share their MDP, policies and value estimates."""
    return (cell["mdp"], cell["stale"], cell["values"])


def is_shown(profile: Profile, cell: dict) -> bool:
    """The 'default' slice a reader sees first: the profile's show_* settings."""
    est = ESTIMATORS[cell["estimator"]]
    return (
        cell["T"] == profile.show_T
        and cell["values"] == profile.show_values
        and (not est.uses_lam or cell["lam"] == profile.show_lam)
        and (not est.uses_n or cell["n"] == profile.show_n)
        and (not est.uses_clip or (cell["rho_clip"], cell["c_clip"]) == profile.show_clip)
    )


def fingerprint(profile: Profile, seed: int, mdps, estimators) -> str:
    """Names the run directory: same grid and seed -> same directory -> resume."""
    ids = [cell_id(c) + f" mc={c['mc']}" for c in cells(profile, mdps, estimators)]
    blob = json.dumps([profile.name, seed, profile.mc_samples, ids])
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
