"""Mutation check: inject bugs that real libraries have shipped into a copy of the reference
(``estimators/numpy.py``) and show that the property suite kills every one.

    python -m offpolicy.mutation [--list] [--only NAME ...] [-- extra pytest args]

For each mutant: copy the ``estimators`` package into a temporary directory, apply the mutant
as a textual patch (exact lines of the real file: a patch that no longer matches is reported
as ``STALE`` and fails the run, so drift in the reference is caught), and run
``pytest -m property -x -q -k "not T12"`` with ``HYPOTHESIS_PROFILE=ci`` and the mutated copy
first on the import path. A mutant is *killed* when the suite fails. Theorem 12 (backends agree
with the reference) is left out: an unmutated torch twin would kill every mutant trivially,
and the point is that the theorems themselves catch each bug. The unmutated copy runs first and must
pass. Exit status 0 only if every mutant is killed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = "estimators/numpy.py"


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    bug: str
    old: str  # exact text of the reference, must occur exactly once
    new: str


MUTANTS = (
    Mutant(
        "trace_not_cut_at_truncation",
        "the trace runs on across a time-limit truncation",
        "    kappa = ~done\n",
        "    kappa = ~terminated\n",
    ),
    Mutant(
        "bootstrap_at_termination",
        "next_values is bootstrapped even where terminated",
        "    beta = ~terminated  # a terminal s'_t has value 0: no bootstrap\n",
        "    beta = np.ones_like(terminated)\n",
    ),
    Mutant(
        "vtrace_c_next_step",
        "V-trace's trace uses c_{t+1} instead of c_t",
        "    adv = _state_value_trace(r, v, nv, term, trunc, _clip(rho, rho_clip), "
        "_clip(rho, c_clip),\n",
        "    adv = _state_value_trace(r, v, nv, term, trunc, _clip(rho, rho_clip), "
        "_next_step(_clip(rho, c_clip)),\n",
    ),
    Mutant(
        "retrace_c_same_step",
        "Retrace's (Q-trace's) trace uses c_t instead of c_{t+1}",
        "    next_traces = _next_step(traces)",
        "    next_traces = traces",
    ),
    Mutant(
        "ratio_inverted",
        "the importance ratio computed as mu/pi",
        "    return np.exp(log_rhos)\n",
        "    return np.exp(-log_rhos)\n",
    ),
    Mutant(
        "clip_on_td_error_only",
        "V-trace clips the TD-error ratio but leaves the trace coefficient unclipped",
        "    adv = _state_value_trace(r, v, nv, term, trunc, _clip(rho, rho_clip), "
        "_clip(rho, c_clip),\n",
        "    adv = _state_value_trace(r, v, nv, term, trunc, _clip(rho, rho_clip), rho,\n",
    ),
    Mutant(
        "nan_leak_under_terminated",
        "next_values under terminated multiplied by 0 instead of masked (NaN * 0 = NaN)",
        "    bootstrap = np.where(beta, next_values, 0.0)  # next_values under terminated is "
        "never read\n",
        "    bootstrap = beta * next_values\n",
    ),
    Mutant(
        "truncation_as_termination",
        "a time-limit truncation is treated as a termination (no bootstrap)",
        "    beta = ~terminated  # a terminal s'_t has value 0: no bootstrap\n",
        "    beta = ~done\n",
    ),
    Mutant(
        "lambda_on_first_step",
        "lambda also weights the first TD error (A = lam delta_t + gamma lam c A_{t+1})",
        "            advantages[t] = delta[t] + gamma[t] * lam[t] * trace\n",
        "            advantages[t] = lam[t] * delta[t] + gamma[t] * lam[t] * trace\n",
    ),
    Mutant(
        "segment_end_not_bootstrapped",
        "the last step of a segment does not bootstrap from next_values",
        "    beta = ~terminated  # a terminal s'_t has value 0: no bootstrap\n",
        "    beta = ~terminated\n    beta[-1] = False\n",
    ),
)


class StalePatch(Exception):
    pass


def apply(source: str, mutant: Mutant) -> str:
    count = source.count(mutant.old)
    if count != 1:
        raise StalePatch(f"{mutant.name}: the patched text occurs {count} times in {TARGET}")
    return source.replace(mutant.old, mutant.new)


def run_suite(package_dir: Path, pytest_args: list[str]) -> tuple[bool, float, str]:
    """Run the property suite with ``package_dir`` first on the path; (passed, seconds, tail)."""
    env = dict(os.environ)
    env["HYPOTHESIS_PROFILE"] = "ci"
    env["PYTHONPATH"] = os.pathsep.join([str(package_dir), str(ROOT),
                                         env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    check = subprocess.run(
        [sys.executable, "-c", "import estimators; print(estimators.__file__)"],
        cwd=package_dir, env=env, capture_output=True, text=True,
    )
    if not check.stdout.strip().startswith(str(package_dir)):
        raise RuntimeError(f"the copy is not imported first: {check.stdout}{check.stderr}")
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "tests"), "-m", "property", "-x", "-q",
           "-k", "not T12", "-p", "no:cacheprovider", "--rootdir", str(ROOT), *pytest_args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=package_dir, env=env, capture_output=True, text=True)
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
    return proc.returncode == 0, time.perf_counter() - start, tail


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--only", nargs="*", default=None, help="run only these mutants")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if args.only is None or m.name in args.only]
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:32s} {m.bug}")
        return 0
    source = (ROOT / TARGET).read_text()
    failures = 0
    with tempfile.TemporaryDirectory(prefix="offpolicy-mutation-") as tmp:
        work = Path(tmp)
        shutil.copytree(ROOT / "estimators", work / "estimators",
                        ignore=shutil.ignore_patterns("__pycache__"))
        target = work / TARGET
        passed, secs, tail = run_suite(work, args.pytest_args)
        print(f"{'(unmutated reference)':32s} {'passes' if passed else 'FAILS'}  {secs:6.1f}s")
        if not passed:
            print(tail)
            return 2
        killed = 0
        for m in mutants:
            try:
                target.write_text(apply(source, m))
            except StalePatch as exc:
                print(f"{m.name:32s} STALE   {exc}")
                failures += 1
                continue
            passed, secs, tail = run_suite(work, args.pytest_args)
            target.write_text(source)
            if passed:
                failures += 1
                print(f"{m.name:32s} SURVIVED {secs:6.1f}s  ({m.bug})")
            else:
                killed += 1
                first = next((ln for ln in tail.splitlines() if ln.startswith("FAILED")), tail)
                print(f"{m.name:32s} killed  {secs:6.1f}s  {first[:110]}")
        print(f"\n{killed}/{len(mutants)} mutants killed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
