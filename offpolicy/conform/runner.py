"""``check``: run a function through every case family, shrink a failure, name the bug."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import random
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from hypothesis import HealthCheck, Phase, find, settings
from hypothesis.errors import NoSuchExample, Unsatisfiable

from . import diagnosis as _diagnosis
from . import exact_check
from .cases import FAMILIES, Case, family_not_applicable, family_strategy
from .layouts import (
    Arrays,
    ConformUsageError,
    Contract,
    LayoutProtocol,
    ModifiedInput,
    OutputPick,
    WrongReturn,
    accepted_names,
    get_layout,
)
from .registry import PARAM_CHOICES, EstimatorSpec, select_reference_output, spec_for
from .report import CaseResult, Counterexample, Report

__all__ = ["check", "assert_conforms", "ConformUsageError"]

RTOL = {"float64": 1e-9, "float32": 1e-4}  # relative to the case's scale
_NAN_WARNINGS = ("nonfinite", "raised")  # in nan_under_terminated, unless strict_nan
DEFAULT_EXAMPLES = 40
_RECORDS_PER_FAMILY = 12


class _Hung(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float | None):
    """Raise _Hung in the main thread after ``seconds`` (no limit elsewhere or when None)."""
    if (not seconds or threading.current_thread() is not threading.main_thread()
            or not hasattr(signal, "setitimer")):
        yield
        return

    def on_alarm(signum, frame):
        raise _Hung()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclasses.dataclass
class Outcome:
    ok: bool
    expected: np.ndarray
    got: np.ndarray | None
    error: str | None = None
    kind: str = "match"  # match | mismatch | raised | shape | nonfinite | hung


def _validate_params(spec: EstimatorSpec, params: dict) -> dict:
    out: dict[str, float] = {}
    for name, value in params.items():
        if name not in spec.params:
            raise ConformUsageError(f"{name}: {spec.name} takes no parameter {name!r} "
                                    f"(its parameters: {', '.join(spec.params)})")
        if name == "n":
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConformUsageError(f"n: expected an integer >= 1, got {value!r}")
            out[name] = int(value)
            continue
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ConformUsageError(f"{name}: expected a number, got {value!r}") from None
        if name in ("gamma", "lam") and not 0.0 <= value <= 1.0:
            raise ConformUsageError(f"{name}: must lie in [0, 1], got {value}")
        if name.endswith("clip") and not value > 0.0:
            raise ConformUsageError(f"{name}: must be > 0 (inf: no clipping), got {value}")
        out[name] = value
    return out


def _dtype_name(dtype) -> str | None:
    if dtype is None:
        return None
    name = getattr(dtype, "__name__", None) or str(dtype)
    name = name.replace("torch.", "").replace("numpy.", "")
    if name in ("float64", "double"):
        return "float64"
    if name in ("float32", "float"):
        return "float32"
    raise ConformUsageError(f"dtype: expected float64 or float32, got {dtype!r}")


def describe_exception(e: BaseException) -> str:
    """One line for what the function raised (``SystemExit`` too: a verdict, not an exit)."""
    if isinstance(e, SystemExit):
        return f"called sys.exit({e.code!r})"
    first = str(e).splitlines()[0] if str(e) else ""
    return f"raised {type(e).__name__}: {first}".strip().rstrip(":")


def _function_name(fn) -> str:
    module = getattr(fn, "__module__", None) or "?"
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return f"{module}:{name}"


class _Runner:
    """One check: the function, the spec, the layout, and what was seen."""

    def __init__(self, fn, spec: EstimatorSpec, layout: LayoutProtocol, output: str,
                 arrays: Arrays, fixed: dict, passed: tuple[str, ...], timeout,
                 strict_nan: bool, examples: int, seed: int, *, per_step: bool = False,
                 pick: str | int | None = None):
        self.fn, self.spec, self.layout, self.output = fn, spec, layout, output
        self.selector = OutputPick(output, pick)  # where the output is in what fn returns
        self.arrays, self.fixed, self.passed = arrays, fixed, passed
        self.timeout, self.strict_nan = timeout, strict_nan
        self.examples, self.seed = examples, seed
        self.per_step = bool(per_step)
        self.constraints = layout.constraints_for(spec, fn)
        self.records: dict[str, list] = {}
        self.hung_case: Case | None = None
        self.dtypes_seen: set[str] = set()

    # -- one example ---------------------------------------------------------------------
    def expected(self, case: Case) -> np.ndarray:
        result = self.spec.reference()(*case.contract_args(self.spec), **case.params)
        return select_reference_output(self.spec, result, self.output)

    def round_inputs(self, case: Case) -> Case:
        """float32 checks: the reference sees the same rounded inputs as the function."""
        if self.arrays.dtype != "float32":
            return case
        f32 = lambda a: a.astype(np.float32).astype(np.float64) if a.dtype.kind == "f" else a  # noqa: E731
        return dataclasses.replace(case, inputs={k: f32(v) for k, v in case.inputs.items()},
                                   world={k: f32(v) for k, v in case.world.items()})

    def call(self, case: Case) -> np.ndarray:
        """The function's output on ``case`` through the layout (its exceptions propagate;
        ``timeout`` applies)."""
        params = {self.layout.keyword_for(p): self.arrays.floats(case.params[p])
                  if isinstance(case.params[p], np.ndarray) else case.params[p]
                  for p in self.passed}
        with _time_limit(self.timeout):
            return self.layout.run(self.fn, case, self.spec, params, self.arrays,
                                   self.selector)

    def evaluate(self, case: Case) -> Outcome:
        if self.hung_case is not None:
            raise _Hung()
        case = self.round_inputs(case)
        expected = self.expected(case)
        try:
            got = self.call(case)
        except _Hung:
            self.hung_case = case
            raise
        except ModifiedInput as e:
            return Outcome(False, expected, None, str(e), "inplace")
        except WrongReturn as e:
            return Outcome(False, expected, None, str(e), "shape")
        except (Exception, SystemExit) as e:  # the function's own error is a verdict
            return Outcome(False, expected, None, describe_exception(e), "raised")
        try:
            got_float = np.asarray(got, dtype=np.float64)
        except (TypeError, ValueError):
            kind = getattr(np.asarray(got), "dtype", None)
            return Outcome(False, expected, None, f"returned {type(got).__name__} of "
                           f"{kind}, not numbers", "shape")
        if got_float.shape != expected.shape:
            return Outcome(False, expected, None,
                           f"returned shape {got_float.shape}, expected {expected.shape}", "shape")
        dtype = "float32" if np.asarray(got).dtype in (np.float32, np.float16) else "float64"
        self.dtypes_seen.add(dtype)
        finite_expected = np.isfinite(expected)
        if (~np.isfinite(got_float) & finite_expected).any():
            return Outcome(False, expected, got_float, None, "nonfinite")
        tol = RTOL[dtype] * self.scale(case, expected)
        close = np.abs(got_float - expected) <= tol
        if not close[finite_expected].all():
            return Outcome(False, expected, got_float, None, "mismatch")
        return Outcome(True, expected, got_float)

    def scale(self, case: Case, expected: np.ndarray) -> float:
        read = [np.abs(v[np.isfinite(v)]).max(initial=0.0) for k, v in case.inputs.items()
                if v.dtype.kind == "f" and k != "log_rhos"]
        return max(1.0, float(np.abs(expected[np.isfinite(expected)]).max(initial=0.0)), *read)

    def is_failure(self, family: str, outcome: Outcome) -> bool:
        """A failed example; in ``nan_under_terminated`` a NaN reaching the output or a raise
        is a warning instead, unless ``strict_nan``."""
        if family == "nan_under_terminated" and outcome.kind in _NAN_WARNINGS \
                and not self.strict_nan:
            return False
        return not outcome.ok

    # -- one family ----------------------------------------------------------------------
    def _record(self, family: str, case: Case, outcome: Outcome):
        kept = self.records.setdefault(family, [])
        fails = sum(1 for _, o in kept if not o.ok)
        if len(kept) < _RECORDS_PER_FAMILY or (not outcome.ok and fails < _RECORDS_PER_FAMILY):
            kept.append((case, outcome))

    def run_family(self, index: int, family: str):
        """(CaseResult, the shrunk failing Case or None)."""
        reason = family_not_applicable(family, self.spec, self.fixed, self.constraints)
        if family == "per_step_gamma_lambda" and not reason:
            if self.layout.name not in ("contract", "rlax"):
                reason = f"the {self.layout.name} layout passes gamma and lam as scalars"
            elif not self.per_step:
                reason = "not asked: pass per_step=True if the function takes gamma/lam arrays"
        if reason:
            return CaseResult(family, "n/a", reason), None
        if self.hung_case is not None:
            return CaseResult(family, "n/a", "not run: the function hung on an earlier "
                                             "family"), None
        count, failing = [0], []

        def record(case: Case) -> bool:
            # every example runs (no early stop): the failing ones all feed the diagnosis
            count[0] += 1
            outcome = self.evaluate(case)
            self._record(family, case, outcome)
            if self.is_failure(family, outcome):
                failing.append((case, outcome))
            return False

        try:
            self._find(index, family, record)
        except (NoSuchExample, Unsatisfiable):
            pass
        except _Hung:
            return CaseResult(family, "fail", f"the function did not return within "
                                              f"{self.timeout} s", count[0]), self.hung_case
        if not failing:
            return self._pass_result(family, count[0]), None
        case, outcome = failing[0]
        return CaseResult(family, "fail", f"{len(failing)} of {count[0]} examples fail; first: "
                          f"{self._fail_reason(outcome)}", count[0]), case

    def _find(self, index: int, family: str, fails) -> Case:
        """Run ``fails`` on the examples hypothesis generates for ``family`` (seeded); the
        first for which it is True (``NoSuchExample`` if none)."""
        strategy = family_strategy(family, self.spec, self.fixed, self.constraints)
        phases = [Phase.generate]
        config = settings(max_examples=self.examples, database=None, deadline=None,
                          phases=phases, derandomize=False,
                          suppress_health_check=list(HealthCheck), print_blob=False)
        return find(strategy, fails, settings=config,
                    random=random.Random(self.seed * 1009 + index))

    def shrink(self, family: str, case: Case, diagnosis=None) -> Case:
        """A smaller failing case: one column, the shortest failing window of steps, flags
        cleared, numbers moved to 0 or rounded, parameters moved to their simplest values,
        each step kept only while the case still fails (greedy, deterministic, bounded: a few
        hundred calls; hypothesis found the case, and its own shrinker can take minutes).

        With a ``diagnosis`` whose class reproduces the case, every step also keeps the
        evidence: the class still reproduces it, and the classes the case told apart from it
        (e.g. "bootstraps from V(s_t)" against "no bootstrap", which V(s_t) = 0 would merge)
        still give something else."""
        explained = diagnosis is not None and diagnosis.run is not None and \
            diagnosis.reproduces(self, case, self.evaluate(case))

        def fails_held(c: Case, ruled_out=None) -> bool:
            if not self.holds(c):
                return False
            outcome = self.evaluate(c)
            if not self.is_failure(family, outcome):
                return False
            if not explained:
                return True
            return diagnosis.reproduces(self, c, outcome) and (
                ruled_out is None or diagnosis.tells_apart(self, c, outcome, ruled_out))

        # narrowing keeps every number; the classes the narrowed case tells apart from the
        # named one stay told apart while numbers move to 0 (the evidence)
        case = self._narrow(case, fails_held)
        ruled_out = None
        if explained:
            outcome = self.evaluate(case)
            ruled_out = tuple(r for r in diagnosis.rivals
                              if diagnosis.tells_apart(self, case, outcome, (r,)))
        return self._simplify(case, lambda c: fails_held(c, ruled_out))

    def holds(self, case: Case) -> bool:
        """Whether the layout can hold ``case`` (a shrink step must not leave the layout: a
        window or a cleared flag can make a step continue where ``next_values[t]`` is not
        ``values[t+1]``, which e.g. ``done_next`` cannot say)."""
        x, k = case.inputs, self.constraints
        done = x["terminated"] | x["truncated"]
        inside = np.zeros_like(done)
        inside[:-1] = True
        if not k.flags_inside and (done & inside).any():
            return False
        if not k.truncations_inside and (x["truncated"] & ~x["terminated"] & inside).any():
            return False
        if k.terminal_last and not x["terminated"][-1].all():
            return False
        if k.inconsistent_next_values and case.family != "inconsistent_next_values":
            goes_on = ~done & inside
            if self.spec.kind == "state":
                after = np.vstack([x["values"][1:], x["values"][:1]])
                return bool((x["next_values"][goes_on] == after[goes_on]).all())
            w = case.world
            after = np.concatenate([w["q_values"][1:], w["q_values"][:1]])
            return bool((w["next_q_values"][goes_on] == after[goes_on]).all())
        return True

    def _simplify(self, case: Case, fails) -> Case:
        protected = _protected_cells(case)
        world_read = self.spec.kind == "action" and self.layout.name != "contract"
        # flags: clear each one that is not what the family is about
        for name in ("terminated", "truncated"):
            for idx in zip(*np.nonzero(case.inputs[name]), strict=True):
                if (name, idx) in protected:
                    continue
                flags = case.inputs[name].copy()
                flags[idx] = False
                candidate = case.replace_inputs(**{name: flags})
                if fails(candidate):
                    case = candidate
        # parameters: the first (simplest) drawn choice
        for name, value in case.params.items():
            if name in self.fixed or isinstance(value, np.ndarray):
                continue
            choices = PARAM_CHOICES.get(name, ())
            simpler = choices[:choices.index(value)] if value in choices else choices[:2]
            for simple in simpler:
                if fails(candidate := dataclasses.replace(
                        case, params={**case.params, name: simple})):
                    case = candidate
                    break
        # numbers: 0, then one decimal, cell by cell (not where the function reads tables
        # the contract inputs were derived from)
        for name in [] if world_read else list(case.inputs):
            values = case.inputs[name]
            if values.dtype.kind != "f" or name in ("log_rhos", "target_probs_taken"):
                continue  # derived from the world's policies
            for idx in zip(*np.nonzero(np.isfinite(values) & (values != 0)), strict=True):
                for simple in (0.0, float(np.round(values[idx], 1))):
                    if simple == case.inputs[name][idx]:
                        continue
                    changed = case.inputs[name].copy()
                    changed[idx] = simple
                    if fails(candidate := case.replace_inputs(**{name: changed})):
                        case = candidate
                        break
        return case

    @staticmethod
    def _narrow(case: Case, fails) -> Case:
        """Keep one column and the shortest window of steps that still fails (a window of a
        segment is itself a valid segment)."""
        def sliced(c: Case, rows: slice, cols: slice) -> Case:
            cut = lambda a: a[rows, cols]  # noqa: E731
            params = {k: cut(v) if isinstance(v, np.ndarray) else v
                      for k, v in c.params.items()}  # per-step gamma/lam arrays
            return dataclasses.replace(c, inputs={k: cut(v) for k, v in c.inputs.items()},
                                       world={k: cut(v) for k, v in c.world.items()},
                                       params=params)

        for b in range(case.B):
            if case.B > 1 and fails(candidate := sliced(case, slice(None), slice(b, b + 1))):
                case = candidate
                break
        for length in range(1, case.T):
            for start in range(case.T - length + 1):
                candidate = sliced(case, slice(start, start + length), slice(None))
                if fails(candidate):
                    return candidate
        return case

    def _pass_result(self, family, n) -> CaseResult:
        if family == "nan_under_terminated":
            kept = self.records.get(family, [])
            # a kind of failure the function shows without NaN too is no NaN warning: the
            # other families fail with it already
            elsewhere = {o.kind for f, k in self.records.items() if f != family
                         for _, o in k if not o.ok}
            leaked = [o for _, o in kept if o.kind == "nonfinite" and "nonfinite" not in elsewhere]
            raised = [o for _, o in kept if o.kind == "raised" and "raised" not in elsewhere]
            if leaked:
                return CaseResult(family, "pass", f"warning: NaN in the value after a "
                                  f"termination reached the output in {len(leaked)} examples "
                                  f"(a failure with strict_nan=True)", n)
            if raised:
                return CaseResult(family, "pass", f"warning: NaN in the value after a "
                                  f"termination (never read) made the function raise in "
                                  f"{len(raised)} examples: {raised[0].error} (a failure with "
                                  f"strict_nan=True)", n)
            return CaseResult(family, "pass", f"{n} examples: NaN after a termination never "
                                              f"reaches the output", n)
        return CaseResult(family, "pass", f"{n} examples agree with the reference", n)

    @staticmethod
    def _fail_reason(outcome: Outcome) -> str:
        if outcome.error:
            return outcome.error
        if outcome.kind == "nonfinite":
            return "returned NaN/inf where the contract's output is finite"
        diff = np.abs(outcome.got - outcome.expected)
        where = np.unravel_index(np.nanargmax(np.where(np.isfinite(diff), diff, np.inf)),
                                 diff.shape)
        return (f"differs from the contract at [t={where[0]}, b={where[1]}]: expected "
                f"{outcome.expected[where]:.10g}, got {outcome.got[where]:.10g}")  # type: ignore[index]


def _protected_cells(case: Case) -> set:
    """Flags a family is about (clearing them would leave the family)."""
    x = case.inputs
    keep = set()
    if case.family in ("terminations_inside", "nan_under_terminated",
                       "terminated_at_last_step"):
        keep |= {("terminated", i) for i in zip(*np.nonzero(x["terminated"]), strict=True)}
    if case.family in ("truncations_inside", "truncated_at_last_step"):
        keep |= {("truncated", i) for i in zip(*np.nonzero(x["truncated"]), strict=True)}
    if case.family == "both_flags_one_step":
        both = x["terminated"] & x["truncated"]
        keep |= {(n, i) for i in zip(*np.nonzero(both), strict=True)
                 for n in ("terminated", "truncated")}
    return keep


def _explained(runner: _Runner, found, failures):
    """The failures whose case the diagnosis reproduces (all of them when it reproduces none
    or names no class with outputs): the counterexample shows what the diagnosis says."""
    if found.run is None:
        return failures
    explained = [(family, case) for family, case in failures
                 if case is not None and found.reproduces(runner, case, runner.evaluate(case))]
    return explained or failures


def _with_most_evidence(runner: _Runner, found, family: str, case: Case) -> Case:
    """Of the family's recorded failing examples that the diagnosis reproduces, the one that
    the fewest other classes also reproduce (then the smallest): the counterexample that best
    tells the named class from the others."""
    if found.run is None or not found.rivals:
        return case
    best = None
    for i, (c, o) in enumerate(runner.records.get(family, [])):
        if o.ok or not found.reproduces(runner, c, o):
            continue
        matching = sum(not found.tells_apart(runner, c, o, (r,)) for r in found.rivals)
        key = (matching, c.T * c.B, i)
        if best is None or key < best[0]:
            best = (key, c)
    return case if best is None else best[1]


def _smallest(failures):
    """The failing case that reads best: from a family that isolates one factor before a
    mixed one (and before float64_precision's large numbers), then fewest cells, then fewest
    flags, then family order."""
    def key(item):
        i, (family, case) = item
        flags = int(case.inputs["terminated"].sum() + case.inputs["truncated"].sum())
        return (family.startswith("mixed_"), family == "float64_precision", case.T * case.B,
                case.T, flags, i)
    return min(enumerate(failures), key=key)[1]


def check(fn: Callable[..., Any], estimator: str, *,
          layout: str | LayoutProtocol = "contract", output: str | None = None,
          dtype: npt.DTypeLike | None = None, examples: int | None = None, seed: int = 0,
          strict_nan: bool = False, array: str | None = None, timeout: float | None = 10.0,
          moments: bool = True, per_step: bool = False, pick: str | int | None = None,
          fold: Any = None, **params: Any) -> Report:
    """Check ``fn`` against the contract of ``estimator`` (docs/DESIGN.md) in ``layout``.

    ``estimator``: a contract name (``gae``, ``vtrace``, ``puff_advantage``, ``per_decision_is``,
    ``nstep_returns``, ``retrace``, ``tree_backup``, ``q_lambda``, ``importance_sampling_q``).
    ``layout``: a name or a :mod:`~offpolicy.conform.layouts` instance (e.g.
    ``DoneNext(truncation_fold="bootstrap_reward")``). ``output``: which output ``fn`` returns
    (or which to take from its tuple/dict), default the estimator's first. ``dtype``:
    ``"float64"`` (default) or ``"float32"`` inputs. ``array``: ``"numpy"``, ``"torch"`` or
    ``"jax"`` (default: the layout's). ``examples``: examples per case family (default 40).
    ``params`` (``gamma``, ``lam``, ``rho_clip``, ``c_clip``, ``pg_rho_clip``, ``n``) fix
    parameters ``fn`` hard-codes; the others are drawn and passed by keyword. ``timeout``:
    seconds one call may take (main thread only). ``moments``: also run the exact-moment check.
    ``per_step``: the function takes ``gamma``/``lam`` as ``[T, B]`` arrays too (runs the
    ``per_step_gamma_lambda`` family). ``pick``: where ``output`` is in what ``fn`` returns
    (a dict key, namedtuple field or tuple index; default: ``output``'s own name or its
    singular/plural twin, else the contract's position in a plain tuple). ``fold``: what the
    rollout loop did with time-outs, for the layouts that store a rollout (``stored_values``,
    ``done_next``, ``puffer_rows``): a :class:`~offpolicy.conform.layouts.Fold`, one of
    ``layouts.FOLD_NAMES``, or ``"add[:every_timeout][:not_done]"``.

    Returns a :class:`Report`; raises ``ConformUsageError`` (a ``ValueError``) for bad
    arguments, never for what ``fn`` does.
    """
    start = time.perf_counter()
    if not callable(fn):
        raise ConformUsageError(f"fn: expected a callable, got {type(fn).__name__}")
    spec = spec_for(estimator)
    lay: LayoutProtocol = get_layout(layout)
    if fold is not None:
        if not hasattr(lay, "with_fold"):
            raise ConformUsageError(f"fold: the {lay.name} layout takes no fold")
        lay = lay.with_fold(fold)
    if spec.kind not in lay.kinds:
        raise ConformUsageError(f"layout: {lay.name} cannot express the {spec.kind}-value "
                                f"estimator {spec.name}")
    output = spec.outputs[0] if output is None else output
    if output not in spec.outputs:
        raise ConformUsageError(f"output: {spec.name} has outputs {', '.join(spec.outputs)}; "
                                f"got {output!r}")
    examples = DEFAULT_EXAMPLES if examples is None else examples
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
        raise ConformUsageError(f"examples: expected an integer >= 1, got {examples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConformUsageError(f"seed: expected an integer >= 0, got {seed!r}")
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ConformUsageError(f"timeout: expected seconds > 0 or None, got {timeout!r}")
    array = array or lay.default_array
    if array not in ("numpy", "torch", "jax"):
        raise ConformUsageError(f"array: expected numpy, torch or jax, got {array!r}")
    try:
        __import__({"numpy": "numpy", "torch": "torch", "jax": "jax.numpy"}[array])
    except ImportError:
        raise ConformUsageError(f"array: {array} is not installed") from None
    dtype = _dtype_name(dtype) or "float64"
    fixed = _validate_params(spec, params)
    passed = _parameters_to_pass(fn, spec, lay, fixed)
    notes: list[str] = []
    if isinstance(lay, Contract) and "auto" in (lay.batched, lay.flags):
        lay = _probe_contract(fn, spec, lay, OutputPick(output, pick), Arrays(array, dtype),
                              fixed, passed, timeout, notes)

    runner = _Runner(fn, spec, lay, output, Arrays(array, dtype), fixed, passed, timeout,
                     strict_nan, examples, seed, per_step=per_step, pick=pick)
    if pick is not None:
        _probe_pick(runner)
    results, failures = [], []
    for i, family in enumerate(FAMILIES):
        result, case = runner.run_family(i, family)
        results.append(result)
        if result.verdict == "fail":
            failures.append((family, case))
    if "float32" in runner.dtypes_seen:  # a float32 implementation is held to its dtype
        dtype = "float32"
        for r in results:
            if r.name == "float64_precision" and r.verdict != "fail":
                r.verdict, r.reason = "n/a", "the function returns float32"
    if moments and runner.hung_case is None:
        results.append(exact_check.run(runner))
    counterexample = None
    found = _diagnosis.diagnose_full(runner, results) if failures else _diagnosis.Diagnosis(
        None, None)
    if failures:
        family, case = _smallest(_explained(runner, found, failures))
        case = _with_most_evidence(runner, found, family, case)
        if runner.hung_case is None:
            case = runner.shrink(family, case, found)
            outcome = runner.evaluate(case)
        else:
            outcome = None
        counterexample = _counterexample(runner, family, case, outcome)
    name, detail = found.name, found.detail
    warnings = notes + [r.reason[len("warning: "):] for r in results
                        if r.reason.startswith("warning:")]
    return Report(spec.name, lay.describe(), output, _function_name(fn), results,
                  counterexample, name, detail, warnings, time.perf_counter() - start, dtype)


def _plain_case(spec, fixed, constraints=None) -> Case:
    """A small flagless example (T, B >= 2 where the layout allows) for the probes."""
    import hypothesis

    family = "no_dones" if constraints is None or not constraints.terminal_last \
        else "terminated_at_last_step"
    strategy = family_strategy(family, spec, fixed,
                               *(() if constraints is None else (constraints,)))
    return hypothesis.find(strategy, lambda c: c.T >= 2 and c.B >= 2,
                           settings=settings(database=None, max_examples=200,
                                             phases=[Phase.generate],
                                             suppress_health_check=list(HealthCheck)),
                           random=random.Random(0))


def _probe_pick(runner: _Runner):
    """``pick`` names where the output is: when the function returns and what it returns has
    no such key, field or index, that is the caller's mistake (a usage error naming ``pick``),
    not a verdict on the function."""
    case = _plain_case(runner.spec, runner.fixed, runner.constraints)
    try:
        with np.errstate(all="ignore"):
            runner.call(case)
    except WrongReturn as e:
        if e.by_pick:
            raise ConformUsageError(f"pick: {runner.selector.pick!r} is not in what the "
                                    f"function returns ({e})") from None
    except (Exception, SystemExit, _Hung):
        pass  # the families report what the function does


def _probe_contract(fn, spec, layout, output, arrays, fixed, passed, timeout, notes):
    """``Contract(batched="auto", flags="auto")``: the first form, in the contract's order of
    preference — ``[T, B]`` with bool flags, with 0/1 float flags, then one ``[T]`` stream per
    call — on which the function returns an array of the right shape. A function that fails
    in every form keeps the first, and the families say how it fails."""
    case = _plain_case(spec, fixed)
    params = {p: case.params[p] for p in passed}
    batched = [True] if layout.batched == "auto" else [layout.batched]
    if layout.batched == "auto":
        batched.append(False)
    flags = ["bool", "float"] if layout.flags == "auto" else [layout.flags]
    forms = [dataclasses.replace(layout, batched=b, flags=f) for b in batched for f in flags]
    for form in forms:
        try:
            with _time_limit(timeout), np.errstate(all="ignore"):
                y = form.run(fn, case, spec, params, arrays, output)  # an OutputPick
        except (Exception, SystemExit):
            continue
        if np.shape(y) == (case.T, case.B):
            if form.batched is False and layout.batched == "auto":
                notes.append("the function takes one stream [T] at a time (it fails on "
                             "[T, B]); checked column by column (Contract(batched=False))")
            if form.flags == "float" and layout.flags == "auto":
                notes.append("the function fails on bool flags; checked with 0/1 float "
                             "terminated/truncated (Contract(flags='float'))")
            return form
    return forms[0]


def _parameters_to_pass(fn, spec, layout, fixed) -> tuple[str, ...]:
    """Contract parameters passed to ``fn`` by keyword (see the module docstring)."""
    names, required = accepted_names(fn)
    passed = []
    for p in spec.params:
        if p in layout.folded_params:
            continue
        keyword = layout.keyword_for(p)
        if names is None or keyword in names:
            passed.append(p)
        elif p not in fixed:
            raise ConformUsageError(
                f"{p}: the function takes no {keyword!r}; pass {p}=<the value it hard-codes>")
    if names is not None and layout.name != "contract":
        offered = layout.provided(spec) | {layout.keyword_for(p) for p in passed}
        missing = sorted(required - offered)
        if missing:
            raise ConformUsageError(
                f"fn: requires {', '.join(missing)}, which the {layout.name} layout does not "
                f"provide (it provides: {', '.join(sorted(layout.provided(spec)))}); wrap it "
                f"in a lambda that renames")
    return tuple(passed)


def _recorded_call(runner: _Runner, case: Case) -> dict | None:
    """What the function received for ``case``, in the layout's own names (the first call
    when the layout calls once per column)."""
    if runner.layout.name == "contract":
        return None
    calls = []

    @functools.wraps(runner.fn)
    def recorder(*args, **kwargs):
        calls.append({k: Arrays.back(v).copy() if hasattr(v, "shape") else v
                      for k, v in {**dict(enumerate(args)), **kwargs}.items()})
        return runner.fn(*args, **kwargs)

    try:
        params = {runner.layout.keyword_for(p): case.params[p] for p in runner.passed}
        runner.layout.run(recorder, case, runner.spec, params, runner.arrays, runner.selector)
    except (Exception, SystemExit):
        pass
    return calls[0] if calls else None


def _counterexample(runner: _Runner, family: str, case: Case, outcome) -> Counterexample:
    inputs = {k: case.inputs[k] for k in runner.spec.inputs}
    if outcome is None:  # hung
        return Counterexample(family, inputs, dict(case.params), runner.expected(case), None,
                              f"did not return within {runner.timeout} s")
    return Counterexample(family, inputs, dict(case.params), outcome.expected, outcome.got,
                          outcome.error, _recorded_call(runner, case))


def assert_conforms(fn: Callable[..., Any], estimator: str, **kw: Any) -> Report:
    """``check`` and raise ``AssertionError`` with the report when ``fn`` does not conform.

    For a library's own test suite: ``def test_my_gae(): assert_conforms(my_gae, "gae")``.
    Returns the report when it conforms."""
    report = check(fn, estimator, **kw)
    if not report.ok:
        raise AssertionError(str(report))
    return report

