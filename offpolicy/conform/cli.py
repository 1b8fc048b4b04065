"""python -m offpolicy.conform MODULE:FUNCTION --estimator NAME [options]

Exit status: 0 the function conforms, 1 it does not, 2 usage or import error (one line).
``--peers`` runs every installed peer library instead (see ``offpolicy.conform.peers``).
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from pathlib import Path

from offpolicy import registry as _registry
from offpolicy._cli import RaisingParser, writable_dir, writable_file
from offpolicy._cli import UsageError as _Usage

from .cases import FAMILIES  # noqa: F401  (imported for --help completeness)
from .layouts import FOLD_ADDS, FOLD_NAMES, FOLD_STEPS, LAYOUTS, ConformUsageError
from .registry import ESTIMATORS

_ESTIMATOR_NAMES = sorted(ESTIMATORS) + sorted(a for a, n in _registry.ALIASES.items()
                                               if n in ESTIMATORS)


def _parser() -> argparse.ArgumentParser:
    p = RaisingParser(prog="python -m offpolicy.conform",
                description="Check an estimator function against the offpolicy contract.")
    p.add_argument("target", nargs="?", help="MODULE:FUNCTION (e.g. mypkg.advantages:gae)")
    p.add_argument("--estimator", choices=_ESTIMATOR_NAMES, metavar="NAME",
                   help=f"contract estimator: {', '.join(ESTIMATORS)} (or an alias of "
                   "offpolicy.registry: puff, pdis, nstep)")
    p.add_argument("--layout", default="contract", choices=sorted(LAYOUTS), metavar="L",
                   help=f"the function's layout: {', '.join(LAYOUTS)}")
    p.add_argument("--truncation-fold", choices=sorted(FOLD_NAMES), metavar="NAME",
                   help="done_next/puffer_rows/stored_values: a named fold of time-outs: "
                        f"{', '.join(FOLD_NAMES)}")
    p.add_argument("--fold", choices=FOLD_ADDS, metavar="ADD",
                   help="what the rollout adds on a time-out step: " + ", ".join(FOLD_ADDS))
    p.add_argument("--fold-on", choices=FOLD_STEPS, metavar="STEPS",
                   help="on which steps the fold acts: " + ", ".join(FOLD_STEPS))
    p.add_argument("--fold-not-done", action="store_true",
                   help="the rollout does not store a time-out as done")
    p.add_argument("--flags", choices=("terminated_timeouts", "dones", "masks",
                                       "episode_starts", "indices"), metavar="FORM",
                   help="stored_values: how terminations and time-outs are passed")
    p.add_argument("--calls", choices=("segment", "stream", "trajectory"), metavar="CALLS",
                   help="stored_values: one call per segment, per column or per trajectory")
    p.add_argument("--bootstrap", choices=("last_values", "values_plus_one"), metavar="FORM",
                   help="stored_values: last_values [B] or values with T+1 rows")
    p.add_argument("--next-values", action="store_true",
                   help="stored_values: also pass per-step next_values (V of the next obs)")
    p.add_argument("--values-form", choices=("auto", "v_t", "values"),
                   help="rlax: v_tm1/v_t arrays or one values[T+1] array")
    p.add_argument("--output", help="which contract output is checked (default: the first)")
    p.add_argument("--pick", help="where it is in what the function returns: a key, a field "
                                  "or a tuple index")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="fix a parameter the function hard-codes (gamma=0.99, lam=0.95, n=5)")
    p.add_argument("--dtype", choices=("float64", "float32"))
    p.add_argument("--array", choices=("numpy", "torch", "jax"))
    p.add_argument("--examples", type=int, help="examples per case family (default 40)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds one call may take")
    p.add_argument("--strict-nan", action="store_true",
                   help="NaN under terminated reaching the output is a failure")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    p.add_argument("--peers", action="store_true", help="run every installed peer library")
    p.add_argument("--out", metavar="DIR", help="--peers: output directory")
    return p


def _parse_param(text: str):
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise _Usage(f"--param: expected NAME=VALUE, got {text!r}")
    try:
        number = int(value) if name == "n" else float(value)
    except ValueError:
        raise _Usage(f"--param {name}: expected a number, got {value!r}") from None
    if name != "n" and math.isnan(number):
        raise _Usage(f"--param {name}: expected a number, got {value!r}")
    return name, number


def _load(target: str):
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise _Usage(f"target: expected MODULE:FUNCTION, got {target!r}")
    sys.path.insert(0, os.getcwd())  # like python -m: the current directory's modules
    try:
        obj = importlib.import_module(module_name)
    except Exception as e:  # any import-time error is a usage error, in one line
        raise _Usage(f"target: cannot import {module_name!r}: {type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else ''}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise _Usage(f"target: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise _Usage(f"target: {target!r} is not callable")
    return obj


def _writable_file(path: str) -> Path:
    problem = writable_file(path, "--json")
    if problem:
        raise _Usage(problem)
    return Path(path)


def _fold(args):
    if args.truncation_fold and (args.fold or args.fold_on or args.fold_not_done):
        raise _Usage("--fold: give either --truncation-fold NAME or --fold/--fold-on/"
                     "--fold-not-done")
    if args.truncation_fold:
        return args.truncation_fold
    if args.fold_on or args.fold_not_done:
        if not args.fold:
            raise _Usage("--fold: required with --fold-on or --fold-not-done")
    if not args.fold:
        return None
    from .layouts import Fold

    return Fold(args.fold, args.fold_on or "timeout_not_terminated", not args.fold_not_done)


def _layout(args):
    from . import layouts

    fold = _fold(args)
    if fold is not None and args.layout not in ("done_next", "puffer_rows", "stored_values"):
        raise _Usage("--fold: only for --layout stored_values, done_next or puffer_rows")
    stored = dict(flags=args.flags, calls=args.calls, bootstrap=args.bootstrap,
                  next_values=args.next_values or None)
    for option, value in stored.items():
        if value is not None and args.layout != "stored_values":
            raise _Usage(f"--{option.replace('_', '-')}: only for --layout stored_values")
    if args.values_form and args.layout != "rlax":
        raise _Usage("--values-form: only for --layout rlax")
    if args.layout == "done_next":
        return layouts.DoneNext(truncation_fold=fold)
    if args.layout == "puffer_rows":
        return layouts.PufferRows(truncation_fold=fold)
    if args.layout == "stored_values":
        return layouts.StoredValues(fold=fold, **{k: v for k, v in stored.items()
                                                  if v is not None})
    if args.layout == "rlax" and args.values_form:
        return layouts.Rlax(values_form=args.values_form)
    return args.layout


def _run_peers(args) -> int:
    try:
        from . import peers
    except ImportError as e:
        raise _Usage(f"--peers: the peers table is not available ({e})") from None
    out = Path(args.out) if args.out else Path("offpolicy-out") / "peers"
    problem = writable_dir(str(out), "--out")
    if problem:
        raise _Usage(problem)
    rows = peers.run_peers(out)
    peers.write_peer_reports(rows, out)
    print(f"wrote {out}/peers.md, peers.csv, peers.json")
    return 0


def main(argv=None) -> int:
    try:
        args = _parser().parse_args(argv)
        if args.peers:
            return _run_peers(args)
        if not args.target:
            raise _Usage("target: MODULE:FUNCTION is required (or --peers)")
        if not args.estimator:
            raise _Usage("--estimator: required")
        params = dict(_parse_param(p) for p in args.param)
        json_path = _writable_file(args.json) if args.json else None
        layout = _layout(args)
        fn = _load(args.target)
        from .runner import check

        pick = int(args.pick) if args.pick and args.pick.lstrip("-").isdigit() else args.pick
        report = check(fn, args.estimator, layout=layout, output=args.output, dtype=args.dtype,
                       pick=pick,
                       examples=args.examples, seed=args.seed, strict_nan=args.strict_nan,
                       array=args.array, timeout=args.timeout, **params)
    except (_Usage, ConformUsageError) as e:
        print(f"offpolicy.conform: error: {e}", file=sys.stderr)
        return 2
    print(report)
    if json_path is not None:
        json_path.write_text(report.to_json() + "\n")
    return 0 if report.ok else 1

