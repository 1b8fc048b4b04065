"""The estimator registry: one entry per contract estimator, one name per thing.

Every part of the project that needs to know "which arrays does estimator X take" reads it
here: the exact moments (:mod:`offpolicy.moments`), the report, the mutation catalogue, the
benchmark, the harness and the conformance runner. One entry (:class:`EstimatorInfo`) holds,
for an estimator of docs/DESIGN.md section 2 (the functions of ``estimators.numpy``):

- ``name``: the contract name, the reference function's name (``nstep_returns``);
- ``kind``: ``"state"`` (state values ``V``), ``"action"`` (action values ``Q``) or
  ``"reward"`` (per-offset reward predictions: P3O);
- ``inputs``: the array inputs in the reference's positional order (docs/DESIGN.md section 1
  names; ``target_probs_taken`` is ``pi(a_t|s_t)``, ``traces`` the general Q-trace's ``c_t``);
- ``outputs``: the output names in the order the reference returns them (a single output is
  returned as a bare array);
- ``params``: the keyword parameters, in the reference's signature order;
- ``aliases``: other names that mean this estimator (the short CLI values, ``puff``,
  ``nstep``, ``pdis``, ...); each alias names one estimator only;
- ``quantities``: per output, the quantity it estimates at the first step of a segment, which
  is the ``output`` name :func:`offpolicy.moments.exact_moments` uses (``"advantage"``,
  ``"value"``, ``"pg_advantage"``, ``"target"``);
- ``moments_name``: the recursion of :mod:`offpolicy.moments` that gives its exact moments
  (``puff_advantage`` is an output of ``vtrace``'s; None: no exact moments, the general
  ``q_trace`` takes arbitrary traces);
- ``default_output``: the output meant when only the estimator is named (V-trace and
  per-decision IS: the value target);
- ``theorems``: the ``proofs/`` theorems about it (``"T03"`` is ``proofs/T03_*.md``);
- ``exact``: its exact counterparts (the quantity it estimates, its operator, fixed point,
  modulus, bias or variance in closed form), as ``exact.NAME`` (:mod:`offpolicy.exact`) or
  ``moments.NAME`` (:mod:`offpolicy.moments`); with ``moments_name``, its passport to the
  ground truth;
- ``param_defaults``: defaults of its parameters that differ from :data:`PARAM_DEFAULTS`
  (``importance_sampling_q``: ``c_clip = inf``, its trace unclipped; the exact moments take a
  finite ``c_clip`` for clipped importance sampling); :func:`with_defaults` applies both;
- ``docs_page``: its page of the documentation site (``docs/estimators/<name>.md``), whose
  header ``docs/hooks.py`` writes from this entry.

:data:`OUTPUT_ALIASES` names single outputs (``td_lambda`` is GAE's ``returns``).
:func:`lookup` and :func:`resolve` accept a contract name, an alias or an output alias, and
:func:`call_estimator` calls any backend module (``estimators.numpy``, ``estimators.torch``,
a mutant) on a dict of named inputs.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = [
    "EstimatorInfo",
    "ESTIMATORS",
    "KINDS",
    "STATE_INPUTS",
    "ACTION_INPUTS",
    "OUTPUT_ALIASES",
    "ALIASES",
    "PARAM_DEFAULTS",
    "names",
    "with_defaults",
    "lookup",
    "canonical",
    "resolve",
    "call_outputs",
    "call_estimator",
]

KINDS = ("state", "action", "reward")

#: the state-value estimators' leading inputs (docs/DESIGN.md section 1)
STATE_INPUTS = ("rewards", "values", "next_values", "terminated", "truncated")
#: the action-value (Q-trace) estimators' leading inputs
ACTION_INPUTS = ("rewards", "q_taken", "next_expected_q", "terminated", "truncated")


@dataclasses.dataclass(frozen=True)
class EstimatorInfo:
    """One contract estimator (see the module docstring for the fields)."""

    name: str
    kind: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: tuple[str, ...]
    quantities: Mapping[str, str]
    moments_name: str | None
    default_output: str
    aliases: tuple[str, ...] = ()
    theorems: tuple[str, ...] = ()
    exact: tuple[str, ...] = ()
    param_defaults: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: types.MappingProxyType({}))

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind: one of {KINDS}, got {self.kind!r}")
        if set(self.quantities) != set(self.outputs) or self.default_output not in self.outputs:
            raise ValueError(f"{self.name}: quantities/default_output must name its outputs")

    @property
    def takes_ratios(self) -> bool:
        """Whether it reads ``log_rhos`` (an off-policy correction by importance ratios)."""
        return "log_rhos" in self.inputs

    @property
    def docs_page(self) -> str:
        """Its documentation page, relative to the repository root."""
        return f"docs/estimators/{self.name}.md"

    @property
    def short_name(self) -> str:
        """Its first alias (``puff``, ``pdis``, ``nstep``), else its contract name: the value the
        harness's learners take and key their results by."""
        return self.aliases[0] if self.aliases else self.name

    @property
    def all_names(self) -> tuple[str, ...]:
        """The contract name, then the aliases."""
        return (self.name, *self.aliases)

    def output_for(self, quantity: str) -> str:
        """The output estimating ``quantity`` (an output name is returned as is);
        ``ValueError`` naming ``output`` if there is none."""
        if quantity in self.outputs:
            return quantity
        for out, q in self.quantities.items():
            if q == quantity:
                return out
        known = ", ".join(f"{o} ({self.quantities[o]})" for o in self.outputs)
        raise ValueError(f"output: {self.name} has outputs {known}; got {quantity!r}")

    def reference(self) -> Callable[..., Any]:
        """The float64 reference function (``estimators.numpy``)."""
        from estimators import numpy as reference

        return getattr(reference, self.name)


def _info(name, kind, inputs, outputs, params, quantities, moments_name, default_output=None,
          aliases=(), theorems=(), exact=(), param_defaults=None):
    return EstimatorInfo(name, kind, tuple(inputs), tuple(outputs), tuple(params),
                         types.MappingProxyType(dict(zip(outputs, quantities, strict=True))),
                         moments_name, default_output or outputs[0], tuple(aliases),
                         tuple(theorems), tuple(exact),
                         types.MappingProxyType(dict(param_defaults or {})))


_S, _A = STATE_INPUTS, ACTION_INPUTS
_Q_PARAMS = ("gamma", "lam")
# every estimator: T02 (splitting at dones), T12 (backends agree); with exact moments, T14
_ALL, _MOM = ("T02", "T12"), ("T14",)


def _exact(*names: str) -> tuple[str, ...]:
    return tuple(f"exact.{n}" for n in names)


_VTRACE_EXACT = _exact("vtrace_operator", "vtrace_fixed_point", "vtrace_policy",
                       "vtrace_linear_part", "vtrace_modulus", "vtrace_modulus_bound",
                       "vtrace_truncation_mass", "vtrace_bias_bound")
# the Q-trace operator with traces c (Retrace's, Tree-backup's, IS's: T06, T07, T19)
_Q_TRACE_EXACT = _exact("q_pi", "retrace_operator", "retrace_linear_part", "retrace_modulus",
                        "retrace_eta")

#: every contract estimator, in the order of ``estimators.numpy.__all__``
ESTIMATORS: Mapping[str, EstimatorInfo] = types.MappingProxyType({
    e.name: e for e in (
        _info("gae", "state", _S, ("advantages", "returns"), ("gamma", "lam"),
              ("advantage", "value"), "gae",
              theorems=("T01", *_ALL, "T03", *_MOM, "T15", "T16", "T23", "T25"),
              exact=_exact("a_pi", "v_pi", "lambda_operator", "lambda_modulus", "gae_bias",
                           "gae_variance_on_policy")),
        _info("vtrace", "state", _S + ("log_rhos",),
              ("advantages", "value_targets", "pg_advantages"),
              ("gamma", "lam", "rho_clip", "c_clip", "pg_rho_clip"),
              ("advantage", "value", "pg_advantage"), "vtrace", "value_targets",
              theorems=(*_ALL, "T04", "T05", "T09", "T13", *_MOM, "T17", "T20", "T21",
                        "T23", "T24"),
              exact=(*_VTRACE_EXACT, *_exact("vtrace_pg_fixed_point"))),
        _info("puff_advantage", "state", _S + ("log_rhos",), ("advantages",),
              ("gamma", "lam", "rho_clip", "c_clip"), ("advantage",), "vtrace",
              aliases=("puff",),
              theorems=(*_ALL, "T04", "T05", "T09", *_MOM, "T17", "T20", "T23", "T24"),
              exact=_VTRACE_EXACT),
        _info("per_decision_is", "state", _S + ("log_rhos",), ("advantages", "value_targets"),
              ("gamma", "lam"), ("advantage", "value"), "per_decision_is", "value_targets",
              aliases=("pdis",), theorems=(*_ALL, "T08", "T13", *_MOM, "T23"),
              exact=_exact("v_pi", "a_pi")),
        _info("nstep_returns", "state", ("rewards", "next_values", "terminated", "truncated"),
              ("returns",), ("gamma", "n"), ("value",), "nstep", aliases=("nstep",),
              theorems=(*_ALL, "T10", *_MOM, "T16"), exact=_exact("v_pi", "bellman_v")),
        _info("q_trace", "action", _A + ("traces",), ("targets",), _Q_PARAMS, ("target",),
              None, aliases=("qtrace",), theorems=(*_ALL, "T06", "T07"), exact=_Q_TRACE_EXACT),
        _info("retrace", "action", _A + ("log_rhos",), ("targets",), _Q_PARAMS, ("target",),
              "retrace", theorems=(*_ALL, "T06", "T07", *_MOM, "T19", "T22"),
              exact=(*_Q_TRACE_EXACT, *_exact("retrace_traces", "optimal_q"))),
        _info("tree_backup", "action", _A + ("target_probs_taken",), ("targets",), _Q_PARAMS,
              ("target",), "tree_backup", theorems=(*_ALL, "T06", "T07", *_MOM, "T19"),
              exact=(*_Q_TRACE_EXACT, *_exact("tree_backup_traces"))),
        _info("q_lambda", "action", _A, ("targets",), _Q_PARAMS, ("target",), "q_lambda",
              theorems=(*_ALL, "T06", "T07", *_MOM, "T18"),
              exact=(*_Q_TRACE_EXACT, *_exact("q_lambda_traces", "q_lambda_threshold",
                                             "spectral_radius"))),
        _info("importance_sampling_q", "action", _A + ("log_rhos",), ("targets",), _Q_PARAMS,
              ("target",), "importance_sampling_q",
              theorems=(*_ALL, "T06", "T07", *_MOM, "T19"), param_defaults={"c_clip": np.inf},
              exact=(*_Q_TRACE_EXACT, *_exact("is_traces"))),
        _info("p3o_advantage", "reward",
              ("rewards", "reward_mean", "reward_std", "terminated", "truncated"),
              ("advantages",), ("batch_reward_std", "normalize"), ("advantage",), "p3o",
              aliases=("p3o",), theorems=(*_ALL, "T11", *_MOM),
              exact=("moments.p3o_exact_means",)),
    )
})

#: names of a single output: name -> (estimator, output)
OUTPUT_ALIASES: Mapping[str, tuple[str, str]] = types.MappingProxyType({
    "td_lambda": ("gae", "returns"),
    "pg_advantages": ("vtrace", "pg_advantages"),
})

#: alias -> contract name
ALIASES: Mapping[str, str] = types.MappingProxyType(
    {a: e.name for e in ESTIMATORS.values() for a in e.aliases})

_taken = [n for e in ESTIMATORS.values() for n in e.all_names] + list(OUTPUT_ALIASES)
if len(_taken) != len(set(_taken)):  # pragma: no cover - a registry edit gone wrong
    raise RuntimeError("a name of offpolicy.registry means two things")


#: the defaults of the keyword parameters shared by :func:`call_estimator` and
#: :func:`offpolicy.moments.exact_moments` (``pg_rho_clip`` defaults to ``rho_clip``)
PARAM_DEFAULTS: Mapping[str, float] = types.MappingProxyType(
    {"lam": 1.0, "rho_clip": 1.0, "c_clip": 1.0})


def with_defaults(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` with the defaults of estimator ``name`` filled in: the entry's
    ``param_defaults``, then :data:`PARAM_DEFAULTS`, then ``pg_rho_clip = rho_clip``."""
    p = dict(params)
    for k, v in {**PARAM_DEFAULTS, **lookup(name).param_defaults}.items():
        p.setdefault(k, v)
    p.setdefault("pg_rho_clip", p["rho_clip"])
    return p


def names(kind: str | None = None, *, takes_ratios: bool | None = None) -> tuple[str, ...]:
    """Contract names, in registry order, optionally of one ``kind`` and/or only those that
    do (``takes_ratios=True``) or do not read ``log_rhos``."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind: one of {KINDS}, got {kind!r}")
    return tuple(e.name for e in ESTIMATORS.values()
                 if (kind is None or e.kind == kind)
                 and (takes_ratios is None or e.takes_ratios == takes_ratios))


def _known() -> str:
    return ", ".join([*ESTIMATORS, *ALIASES, *OUTPUT_ALIASES])


def lookup(name: str) -> EstimatorInfo:
    """The entry named ``name``: a contract name, an alias (``puff``) or an output alias
    (``td_lambda``: GAE's entry). ``ValueError`` naming ``estimator`` otherwise."""
    if isinstance(name, str):
        if name in ESTIMATORS:
            return ESTIMATORS[name]
        if name in ALIASES:
            return ESTIMATORS[ALIASES[name]]
        if name in OUTPUT_ALIASES:
            return ESTIMATORS[OUTPUT_ALIASES[name][0]]
    raise ValueError(f"estimator: unknown {name!r}; known: {_known()}")


def canonical(name: str) -> str:
    """The contract name ``name`` stands for (``"puff"`` -> ``"puff_advantage"``)."""
    return lookup(name).name


def resolve(name: str, output: str | None = None) -> tuple[EstimatorInfo, str]:
    """``(entry, output name)`` for ``name`` and ``output``. ``output`` may be an output name
    (``"value_targets"``) or the quantity it estimates (``"value"``); None: the output alias's
    output, else the entry's ``default_output``."""
    info = lookup(name)
    if output is None:
        alias = OUTPUT_ALIASES.get(name)
        return info, alias[1] if alias else info.default_output
    if not isinstance(output, str):
        raise TypeError(f"output: expected a str, got {type(output).__name__}")
    return info, info.output_for(output)


def _select(info: EstimatorInfo, result: Any, output: str) -> Any:
    """The named output of a backend's result (a namedtuple, a tuple or a single array)."""
    if len(info.outputs) == 1:
        return result
    if hasattr(result, output):
        return getattr(result, output)
    return result[info.outputs.index(output)]


def call_estimator(backend: types.ModuleType | Any, estimator: str, inputs: Mapping[str, Any], *,
                   gamma: Any, output: str | None = None, **params: Any) -> Any:
    """Run ``estimator`` of ``backend`` (``estimators.numpy``, ``estimators.torch``, a mutant:
    any object with the contract functions) on ``inputs`` and return one output.

    ``inputs``: a dict of named arrays (docs/DESIGN.md section 1 names, e.g.
    :meth:`offpolicy.sampler.Segments.inputs` or :func:`offpolicy.strategies.trajectory_batches`);
    the entry's ``inputs`` are taken from it in order (others are ignored). ``estimator``,
    ``output``: as :func:`resolve` (the names :func:`offpolicy.moments.exact_moments` accepts).
    ``params``: the entry's parameters, defaults from :func:`with_defaults`; others are
    ignored, so one ``params`` dict serves ``exact_moments`` and this function alike.

    P3O: ``weights`` [H] or [S,H] (default gamma^k) and ``means`` [S,H] are fed through the
    backend's ``reward_std = weights^-1/2`` with ``normalize="none"`` and no batch-std floor,
    which reproduces the fixed weights exactly; pass ``states`` [T,B] in ``inputs``.
    """
    info, output = resolve(estimator, output)
    return _select(info, _call(backend, info, inputs, gamma, params), output)


def call_outputs(backend: types.ModuleType | Any, estimator: str, inputs: Mapping[str, Any], *,
                 gamma: Any, **params: Any) -> dict[str, Any]:
    """Every output of one call of ``estimator`` (as :func:`call_estimator`), by output name
    (``{"advantages": ..., "value_targets": ...}``)."""
    info = lookup(estimator)
    result = _call(backend, info, inputs, gamma, params)
    return {out: _select(info, result, out) for out in info.outputs}


def _call(backend, info: EstimatorInfo, inputs: Mapping[str, Any], gamma: Any,
          params: Mapping[str, Any]) -> Any:
    fn = getattr(backend, info.name)
    if info.kind == "reward":
        means = np.asarray(params["means"], float)
        w = np.asarray(params.get("weights", gamma ** np.arange(means.shape[1])), float)
        w = np.broadcast_to(w if w.ndim == 2 else w[None, :], means.shape)
        with np.errstate(divide="ignore"):
            std = np.where(w > 0, 1.0 / np.sqrt(np.where(w > 0, w, 1.0)), np.inf)
        st = np.asarray(inputs["states"])
        return fn(inputs["rewards"], means[st], std[st], inputs["terminated"],
                  inputs["truncated"], batch_reward_std=np.inf, normalize="none")
    given = {**with_defaults(info.name, params), "gamma": gamma}
    kwargs = {k: given[k] for k in info.params if k in given}
    return fn(*(inputs[k] for k in info.inputs), **kwargs)
