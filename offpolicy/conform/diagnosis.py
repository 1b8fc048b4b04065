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

import types

import numpy as np

from .registry import select_reference_output

__all__ = ["diagnose", "catalogue", "load_mutant"]

_MIN_MATCH = 0.95  # fraction of recorded examples a bug class must reproduce


def catalogue():
    from offpolicy import mutation

    return tuple(mutation.MUTANTS)


def load_mutant(mutant) -> types.ModuleType:
    """The patched reference as an in-memory module (``offpolicy.mutation.load``)."""
    from offpolicy import mutation

    return mutation.load(mutant)


def _mutant_output(module, runner, case):
    fn = getattr(module, runner.spec.name)
    with np.errstate(all="ignore"):
        result = fn(*case.contract_args(runner.spec), **case.params)
    return select_reference_output(runner.spec, result, runner.output)


def _float32_close(runner, case, outcome) -> bool:
    """Off the float64 reference, but within float32 accuracy of it."""
    tol = 1e-5 * runner.scale(case, outcome.expected)
    return bool((np.abs(outcome.got - outcome.expected) <= tol).all())


def _transformed(runner, case, transform):
    """The reference on inputs/params changed by ``transform`` (None: not applicable)."""
    spec = runner.spec
    changed = transform(case)
    if changed is None:
        return None
    inputs, params, output = changed
    with np.errstate(all="ignore"):
        result = spec.reference()(*[inputs[k] for k in spec.inputs], **params)
    return select_reference_output(spec, result, output)


def _other_output(name):
    return lambda c: (c.inputs, c.params, name)


def _swap_gamma_lam(c):
    if "lam" not in c.params:
        return None
    return c.inputs, {**c.params, "gamma": c.params["lam"], "lam": c.params["gamma"]}, None


def _swap_flags(c):
    x = c.inputs
    return {**x, "terminated": x["truncated"], "truncated": x["terminated"]}, c.params, None


def _extra_classes(spec):
    """Bug classes that are not patches of the reference: the call itself is wrong."""
    classes = [(f"wrong_output_{name}", f"the function returns {name}, not the requested "
                f"output", _other_output(name)) for name in spec.outputs]
    classes.append(("gamma_lam_swapped", "gamma and lambda passed the wrong way round",
                    _swap_gamma_lam))
    classes.append(("terminated_truncated_swapped", "the terminated and truncated flags are "
                    "swapped", _swap_flags))
    return classes


def _match(runner, case, outcome, y, rtol=None) -> bool:
    if y is None or outcome.got is None or y.shape != outcome.got.shape:
        return False
    if rtol is None:
        rtol = 1e-4 if "float32" in runner.dtypes_seen else 1e-9
    tol = rtol * runner.scale(case, outcome.expected)
    same_nan = np.isnan(y) == np.isnan(outcome.got)
    both = ~np.isnan(y) & ~np.isnan(outcome.got)
    return bool(same_nan.all() and (np.abs(y[both] - outcome.got[both]) <= tol).all())


def _candidates(runner):
    """(name, one line, f(case) -> output or None) for every bug class that applies."""
    for mutant in catalogue():
        estimators = getattr(mutant, "estimators", None)
        if estimators and runner.spec.name not in estimators:
            continue
        try:
            module = load_mutant(mutant)
        except Exception:
            continue
        seen = getattr(mutant, "seen_in", "")
        detail = mutant.bug + (f" (seen in: {seen})" if seen else "")

        def run(case, module=module):
            try:
                return _mutant_output(module, runner, case)
            except Exception:
                return None
        yield mutant.name, detail, run, len(estimators or ()) or 99, mutant
    for name, detail, transform in _extra_classes(runner.spec):
        if name == f"wrong_output_{runner.output}":
            continue

        def run(case, transform=transform):
            def with_output(c):
                changed = transform(c)
                if changed is None:
                    return None
                inputs, params, output = changed
                return inputs, params, output or runner.output
            try:
                return _transformed(runner, case, with_output)
            except Exception:
                return None
        yield name, detail, run, 99, None


def _score(runner, records, run, rtol=None):
    """((failing fraction reproduced, all fraction reproduced), k, n failing)."""
    hits = [_match(runner, c, o, run(c), rtol) for c, o in records]
    fail_hits = [h for h, (_, o) in zip(hits, records, strict=True) if not o.ok]
    key = (float(np.mean(fail_hits)) if fail_hits else 0.0, float(np.mean(hits)))
    return key, sum(fail_hits), len(fail_hits)


def _name_best(scored):
    """(name, detail) of the best-scoring class if it passes the thresholds, else None."""
    if not scored:
        return None
    best = max(scored, key=lambda x: x[0])
    key, name, detail, k, n = best[:5]
    if key[0] < 0.5 or key[1] < 0.9:
        return None
    same = [x[1] for x in scored if x[0][:2] == key[:2] and x[1] != name]
    how = "" if key[:2] == (1.0, 1.0) else f" [reproduces {k} of {n} failing examples]"
    also = f" [indistinguishable here from: {', '.join(same)}]" if same else ""
    return name, detail + how + also


def _pair_runner(runner, a, b):
    """The reference with both bugs' patches applied (None when they touch the same lines)."""
    import dataclasses

    estimators = tuple(sorted(set(a.estimators or ()) | set(b.estimators or ())))
    both = dataclasses.replace(a, name=f"{a.name}+{b.name}", edits=a.edits + b.edits,
                               estimators=estimators)
    try:
        module = load_mutant(both)
    except Exception:
        return None

    def run(case):
        try:
            return _mutant_output(module, runner, case)
        except Exception:
            return None
    return run


def diagnose(runner, results) -> tuple[str | None, str | None]:
    """(bug class name, one line) for a runner whose families include failures.

    A class is named when it reproduces what the function returned on at least half of the
    failing examples and 9/10 of all recorded ones (the detail says how many); the class with
    the most failing examples reproduced wins, ties going to the most examples overall.
    """
    records = [(c, o) for family, kept in runner.records.items() for c, o in kept
               if runner.strict_nan or family != "nan_under_terminated"]  # there: a warning
    failing = [(c, o) for c, o in records if not o.ok]
    failed = [r.name for r in results if r.verdict == "fail"]
    if runner.hung_case is not None:
        return "hangs", "the function did not return within the time limit"
    if failing and any(o.kind == "inplace" for _, o in failing):
        first = next(o for _, o in failing if o.kind == "inplace")
        return "modifies_inputs_in_place", f"the function {first.error}"
    if failing and all(o.kind == "raised" for _, o in failing):
        return "raises", f"the function raises on valid input ({failing[0][1].error})"
    if failing and all(o.kind == "shape" for _, o in failing):
        return "wrong_shape", failing[0][1].error
    if failed == ["float64_precision"] or (failing and all(
            o.kind == "mismatch" and _float32_close(runner, c, o) for c, o in failing)):
        return ("float32_arithmetic", "float64 inputs, but the result is only float32-accurate "
                "(within 1e-5 relative of the contract: float32 arithmetic somewhere, e.g. a "
                "float32 discount, or a small epsilon in a denominator)")
    scored = []  # (key, name, detail, hits on failing, failing, mutant)
    for name, detail, run, breadth, mutant in _candidates(runner):
        key, k, n = _score(runner, records, run)
        # the most failing examples reproduced, then the most examples; between classes that
        # behave the same here, the one specific to fewer estimators
        scored.append(((*key, -breadth), name, detail, k, n, mutant, run))
    named = _name_best(scored)
    if named:
        return named
    # two bugs at once: a class reproduced to float32 accuracy only, or two patches together
    float32 = []
    for (_, _, breadth), name, detail, _, _, _mutant, run in scored:
        key, k, n = _score(runner, records, run, rtol=1e-5)
        float32.append(((*key, breadth), f"{name}+float32_arithmetic",
                        f"{detail}; and float32 arithmetic on float64 inputs", k, n, None, run))
    named = _name_best(float32)
    if named:
        return named
    pairs = []
    top = sorted((x for x in scored if x[5] is not None), key=lambda x: x[0], reverse=True)[:6]
    for i, a in enumerate(top):
        for b in top[i + 1:]:
            run = _pair_runner(runner, a[5], b[5])
            if run is None:
                continue
            key, k, n = _score(runner, records, run)
            pairs.append(((*key, -99), f"{a[1]}+{b[1]}", f"{a[2]}; and {b[2]}", k, n, None, run))
    named = _name_best(pairs)
    if named:
        return named
    if failed == ["nan_under_terminated"] or (failing and all(
            o.kind == "nonfinite" for _, o in failing)):
        return ("nan_leak_under_terminated", "a NaN in the value after a termination reaches "
                "the output (multiplied by 0 instead of masked)")
    return None, None
