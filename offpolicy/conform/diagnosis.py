"""Name the bug: match a failing function against the bug catalogue.

The catalogue is ``offpolicy.mutation``'s: each entry is a real-world bug written as a patch of
the reference (``estimators/numpy.py``), so the same definitions that the mutation check shows
the suite kills are here run as *implementations*: a function "behaves like" a bug class when
the patched reference reproduces what the function returned on every example the runner
recorded (failing and passing ones alike). Failures that are not wrong numbers have their own
classes: ``raises``, ``wrong_shape``, ``float32_arithmetic`` (only the float64-precision family
fails) and ``nan_leak_under_terminated``.
"""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np

from .registry import select_reference_output

__all__ = ["diagnose", "catalogue", "load_mutant"]

_MIN_MATCH = 0.95  # fraction of recorded examples a bug class must reproduce


def catalogue():
    from offpolicy import mutation

    return tuple(mutation.MUTANTS)


_cache: dict[str, types.ModuleType] = {}


def load_mutant(mutant) -> types.ModuleType:
    """The patched reference as an in-memory module (``offpolicy.mutation.load`` if it has one)."""
    from offpolicy import mutation

    if hasattr(mutation, "load"):
        return mutation.load(mutant)
    if mutant.name not in _cache:
        import estimators

        path = f"{estimators.__path__[0]}/numpy.py"
        source = mutation.apply(open(path).read(), mutant)
        name = f"estimators._diagnosis_{mutant.name}"
        spec = importlib.util.spec_from_loader(name, loader=None)
        module = importlib.util.module_from_spec(spec)
        module.__package__ = "estimators"
        exec(compile(source, f"<mutant {mutant.name}>", "exec"), module.__dict__)
        _cache[mutant.name] = module
        sys.modules.pop(name, None)
    return _cache[mutant.name]


def _mutant_output(module, runner, case):
    fn = getattr(module, runner.spec.name)
    with np.errstate(all="ignore"):
        result = fn(*case.contract_args(runner.spec), **case.params)
    return select_reference_output(runner.spec, result, runner.output)


def _reproduces(runner, case, outcome, module) -> bool:
    try:
        y = _mutant_output(module, runner, case)
    except Exception:
        return False
    if outcome.got is None or y.shape != outcome.got.shape:
        return False
    tol = 1e-4 * runner.scale(case, outcome.expected) if "float32" in runner.dtypes_seen \
        else 1e-9 * runner.scale(case, outcome.expected)
    same_nan = np.isnan(y) == np.isnan(outcome.got)
    both = ~np.isnan(y) & ~np.isnan(outcome.got)
    return bool(same_nan.all() and (np.abs(y[both] - outcome.got[both]) <= tol).all())


def _float32_close(runner, case, outcome) -> bool:
    """Off the float64 reference, but within float32 accuracy of it."""
    tol = 1e-5 * runner.scale(case, outcome.expected)
    return bool((np.abs(outcome.got - outcome.expected) <= tol).all())


def diagnose(runner, results) -> tuple[str | None, str | None]:
    """(bug class name, one line) for a runner whose families include failures."""
    records = [(c, o) for family, kept in runner.records.items() for c, o in kept
               if runner.strict_nan or family != "nan_under_terminated"]  # there: a warning
    failing = [(c, o) for c, o in records if not o.ok]
    failed = [r.name for r in results if r.verdict == "fail"]
    if runner.hung_case is not None:
        return "hangs", "the function did not return within the time limit"
    if failing and all(o.kind == "raised" for _, o in failing):
        return "raises", f"the function raises on valid input ({failing[0][1].error})"
    if failing and all(o.kind == "shape" for _, o in failing):
        return "wrong_shape", failing[0][1].error
    if failed == ["float64_precision"] or (failing and all(
            o.kind == "mismatch" and _float32_close(runner, c, o) for c, o in failing)):
        return ("float32_arithmetic", "float64 inputs, but the result is only float32-accurate "
                "(values near 1e3 with small rewards lose the difference)")
    best, best_score = None, 0.0
    for mutant in catalogue():
        estimators = getattr(mutant, "estimators", None)
        if estimators and runner.spec.name not in estimators:
            continue
        try:
            module = load_mutant(mutant)
        except Exception:
            continue
        if not all(_reproduces(runner, c, o, module) for c, o in failing):
            continue
        score = np.mean([_reproduces(runner, c, o, module) for c, o in records])
        if score > best_score:
            best, best_score = mutant, score
    if best is not None and best_score >= _MIN_MATCH:
        seen = getattr(best, "seen_in", "")
        return best.name, best.bug + (f" (seen in: {seen})" if seen else "")
    if failed == ["nan_under_terminated"] or (failing and all(
            o.kind == "nonfinite" for _, o in failing)):
        return ("nan_leak_under_terminated", "a NaN in the value after a termination reaches "
                "the output (multiplied by 0 instead of masked)")
    return None, None
