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

import functools
import types
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from .registry import select_reference_output

__all__ = ["diagnose", "diagnose_full", "Diagnosis", "catalogue", "load_mutant"]

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


def _through(view, run):
    """``run`` on the case the function received (``view``: the layout's ``received``)."""
    def through(case):
        seen = view(case)
        return run(case if seen is None else seen)
    return through


def _view(runner):
    """The layout's ``received`` when its fold changes what the function sees, else None."""
    received = getattr(runner.layout, "received", None)
    if received is None or getattr(runner.layout, "fold", None) is None:
        return None
    return received


def _candidates(runner):
    """(name, one line, f(case) -> output or None, breadth, mutant or (mutant, view) or
    None) for every bug class that applies; where the layout's rollout folds time-outs, each
    catalogue class twice: as the pipeline's bug (on the contract case) and as the function's
    (on what the rollout stored)."""
    view = _view(runner)
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
        if view is not None:  # the same bug in the function, behind the rollout's fold
            yield (mutant.name, detail + " [in the function, on what the rollout stored]",
                   _through(view, run), len(estimators or ()) or 99, (mutant, view))
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


class Diagnosis(NamedTuple):
    """The named class (or ``+``-joined classes), its one line, and for the runner: ``run``
    (case -> the class's output, None for call-level classes without one) and ``rivals``
    (the other classes' runs, to keep a counterexample that still tells them apart)."""

    name: str | None
    detail: str | None
    run: Callable | None = None
    rivals: tuple = ()

    def reproduces(self, runner, case, outcome) -> bool:
        """Whether the named class gives what the function gave on ``case``."""
        return self.run is not None and _match(runner, case, outcome, self.run(case))

    def tells_apart(self, runner, case, outcome, rivals=None) -> bool:
        """Whether no rival (default: every rival) gives what the function gave."""
        return not any(_match(runner, case, outcome, run(case))
                       for run in (self.rivals if rivals is None else rivals))


def _passes(key) -> bool:
    return key[0] >= 0.5 and key[1] >= 0.9


def _name_best(scored):
    """The best-scoring entry if it passes the thresholds, else None.

    Ranking (the tie rule): the most failing examples reproduced; then the most recorded
    examples reproduced; then the class specific to fewer estimators; then the catalogue's
    order (``offpolicy.mutation.CATALOGUE``, then the call-level classes). Classes equal on the
    first two are reported as indistinguishable here."""
    if not scored:
        return None
    best = max(scored, key=lambda x: x[0])  # max keeps the first of equal keys: catalogue order
    key, name, detail, k, n = best[:5]
    if not _passes(key):
        return None
    same = [x[1] for x in scored if x[0][:2] == key[:2] and x[1] != name]
    how = "" if key[:2] == (1.0, 1.0) else f" [reproduces {k} of {n} failing examples]"
    also = f" [indistinguishable here from: {', '.join(same)}]" if same else ""
    return best, name, detail + how + also


def _combined(runner, mutants):
    """The reference with every patch of ``mutants`` applied (None when two touch the same
    lines, or when they are not all seen through the same view)."""
    import dataclasses

    views = {m[1] if isinstance(m, tuple) else None for m in mutants}
    if len(views) > 1:
        return None
    view = views.pop()
    if view is not None:
        run = _combined(runner, [m[0] for m in mutants])
        return None if run is None else _through(view, run)
    if len(mutants) == 1:
        both = mutants[0]
    else:
        estimators = tuple(sorted(set().union(*(m.estimators or () for m in mutants))))
        both = dataclasses.replace(mutants[0], name="+".join(m.name for m in mutants),
                                   edits=sum((m.edits for m in mutants), ()),
                                   estimators=estimators)
    module = _load_cached(both)
    if module is None:
        return None

    def run(case):
        try:
            return _mutant_output(module, runner, case)
        except Exception:
            return None
    return run


@functools.lru_cache(maxsize=256)
def _load_cached(mutant):
    try:
        return load_mutant(mutant)
    except Exception:
        return None


_MAX_BUGS = 4  # the most bugs one diagnosis names together
_COMBINE_FROM = 12  # the classes (best single scores first) a combination is drawn from


def _combination(runner, records, scored):
    """Bugs at once: grow a set of catalogue patches greedily, each step adding the patch that
    reproduces the most failing examples (then the most examples) together with those
    already chosen, while that number grows; then drop any patch the set does not need.
    Returns (key, mutants, run) or None."""
    pool = [x for x in sorted(scored, key=lambda x: x[0], reverse=True) if x[5] is not None]
    pool = pool[:_COMBINE_FROM]
    chosen, best_key, best_run = [], (0.0, 0.0), None
    for _ in range(_MAX_BUGS):
        step = None
        for x in pool:
            m = x[5]
            if m in chosen:
                continue
            run = _combined(runner, chosen + [m])
            if run is None:
                continue
            key = _score(runner, records, run)[0]
            if key > best_key and (step is None or key > step[0]):
                step = (key, m, run)
        if step is None:
            break
        best_key, best_run = step[0], step[2]
        chosen.append(step[1])
        if best_key == (1.0, 1.0):
            break
    if len(chosen) < 2:
        return None
    for m in list(chosen):  # minimal: a patch the set does not need goes
        rest = [c for c in chosen if c is not m]
        run = _combined(runner, rest) if rest else None
        if run is not None and _score(runner, records, run)[0] >= best_key:
            chosen, best_run = rest, run
    return (best_key, chosen, best_run) if len(chosen) >= 2 else None


def diagnose(runner, results) -> tuple[str | None, str | None]:
    """(bug class name, one line) for a runner whose families include failures (see
    :func:`diagnose_full`)."""
    d = diagnose_full(runner, results)
    return d.name, d.detail


def diagnose_full(runner, results) -> Diagnosis:
    """The :class:`Diagnosis` of a runner whose families include failures.

    A class is named when it reproduces what the function returned on at least half of the
    failing examples and 9/10 of all recorded ones (the detail says how many); ranking and ties
    as in :func:`_name_best`. When the best class does not reproduce every failing example,
    several bugs at once are tried (:func:`_combination`: up to four catalogue patches applied
    together, every one named) and a class reproduced only to float32 accuracy
    (``<class>+float32_arithmetic``); the combination is named when it reproduces more.
    """
    records = [(c, o) for family, kept in runner.records.items() for c, o in kept
               if runner.strict_nan or family != "nan_under_terminated"]  # there: a warning
    failing = [(c, o) for c, o in records if not o.ok]
    failed = [r.name for r in results if r.verdict == "fail"]
    if runner.hung_case is not None:
        return Diagnosis("hangs", "the function did not return within the time limit")
    if failing and any(o.kind == "inplace" for _, o in failing):
        first = next(o for _, o in failing if o.kind == "inplace")
        return Diagnosis("modifies_inputs_in_place", f"the function {first.error}")
    if failing and all(o.kind == "raised" for _, o in failing):
        return Diagnosis("raises", f"the function raises on valid input "
                                   f"({failing[0][1].error})")
    if failing and all(o.kind == "shape" for _, o in failing):
        if all((o.error or "").startswith("returned shape") for _, o in failing):
            return Diagnosis("wrong_shape", failing[0][1].error)
        return Diagnosis("wrong_return", f"the function {failing[0][1].error}")
    if failed == ["float64_precision"] or (failing and all(
            o.kind == "mismatch" and _float32_close(runner, c, o) for c, o in failing)):
        return Diagnosis("float32_arithmetic", "float64 inputs, but the result is only "
                         "float32-accurate (within 1e-5 relative of the contract: float32 "
                         "arithmetic somewhere, e.g. a float32 discount, or a small epsilon "
                         "in a denominator)")
    scored = []  # (key, name, detail, hits on failing, failing, mutant, run)
    view = _view(runner)
    for name, detail, run, breadth, mutant in _candidates(runner):
        if isinstance(mutant, tuple) and _no_bug_there(runner, records, run, view):
            continue
        key, k, n = _score(runner, records, run)
        scored.append(((*key, -breadth), name, detail, k, n, mutant, run))

    def result(entry, name, detail) -> Diagnosis:
        # the rivals a counterexample keeps apart from the named class: every other class
        # that does not behave the same on every recorded example
        run = entry[6]
        rivals = tuple(x[6] for x in scored if x[6] is not run and x[0][:2] != entry[0][:2])
        return Diagnosis(name, detail, run, rivals)

    single = _name_best(scored)
    if single is None or single[0][0][:2] != (1.0, 1.0):
        combo = _combination(runner, records, scored)
        # a combination is named when no single class passes, or when it reproduces every
        # failing example and the best single class does not
        if combo is not None and _passes(combo[0]) and (
                single is None or combo[0][0] == 1.0 > single[0][0][0]):
            key, mutants, run = combo
            by_name = {x[1]: x for x in scored}
            k, n = _score(runner, records, run)[1:]
            names = [(m[0] if isinstance(m, tuple) else m).name for m in mutants]
            detail = "; and ".join(by_name[n_][2] for n_ in names)
            how = "" if key[:2] == (1.0, 1.0) else f" [reproduces {k} of {n} failing examples]"
            entry = (key, None, None, k, n, None, run)
            return result(entry, "+".join(names),
                          f"{len(mutants)} bugs at once: {detail}{how}")
    if single is not None:
        return result(*single)
    # a class reproduced to float32 accuracy only: that bug and float32 arithmetic
    float32 = []
    for (_, _, breadth), name, detail, _, _, _mutant, run in scored:
        key, k, n = _score(runner, records, run, rtol=1e-5)
        float32.append(((*key, breadth), f"{name}+float32_arithmetic",
                        f"{detail}; and float32 arithmetic on float64 inputs", k, n, None, run))
    named = _name_best(float32)
    if named:
        entry, name, detail = named
        return Diagnosis(name, detail, None, ())
    if failed == ["nan_under_terminated"] or (failing and all(
            o.kind == "nonfinite" and _has_nan(c) for c, o in failing)):
        return Diagnosis("nan_leak_under_terminated", "a NaN in the value after a termination "
                         "reaches the output (multiplied by 0 instead of masked)")
    if failing and all(o.kind == "nonfinite" for _, o in failing):
        return Diagnosis("returns_nonfinite", "the function returns NaN/inf on finite inputs "
                         "(e.g. 0/0, log of 0, an uninitialised buffer)")
    return Diagnosis(None, None)


def _no_bug_there(runner, records, run, view) -> bool:
    """Whether a class, seen through the rollout's view, gives the contract's answer on every
    recorded example of what the function received (a bug that makes no difference there is
    not the function's: e.g. a truncation class once the fold made every time-out a
    termination)."""
    for case, _ in records:
        seen = view(case)
        seen = case if seen is None else seen
        with np.errstate(all="ignore"):
            ref = select_reference_output(
                runner.spec, runner.spec.reference()(*seen.contract_args(runner.spec),
                                                     **seen.params), runner.output)
        y = run(case)
        if y is None or y.shape != ref.shape or not np.allclose(y, ref, equal_nan=True):
            return False
    return True


def _has_nan(case) -> bool:
    return any(v.dtype.kind == "f" and np.isnan(v).any() for v in case.inputs.values())
