"""Command line of the bias/variance report.

    python -m offpolicy.report                       # quick profile (< 1 min), reports/quick/
    python -m offpolicy.report --profile full --jobs 2   # the whole grid, reports/full/
    python -m offpolicy.report --check reports/baseline  # CI gate (exit 1 on regression)
    python -m offpolicy.report --update-baseline         # rewrite reports/baseline/
    python -m offpolicy.report --profile full --executor ray --address auto  # on a Ray cluster

Workers only compute; every cell comes back to this process (the driver), which alone writes
the store and the outputs, so ``--executor ray`` gives byte-identical files to the process
pool. Exit codes: 0 done (or --check passed), 1 --check found a regression, 2 bad arguments
or an unwritable output directory (one line, before any computing), 130 interrupted.

Cells are appended to ``<runs>/<profile>-<grid>-<code>/cells.jsonl`` as they finish; running the
same command again after Ctrl-C or kill resumes from there. A change to the grid, the seed or
the code involved starts a new run directory (``--fresh`` forces one).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

from .. import parallel
from .._cli import OneLineParser, UsageError, parse_names, positive_int, usage_error, writable_dir
from . import _blas, grid

DEFAULT_BASELINE = os.path.join("reports", "baseline")


def _parse(argv):
    p = OneLineParser(
        prog="python -m offpolicy.report",
        description="Exact bias, variance and MSE of every estimator over an MDP suite, "
        "staleness levels and parameter grids, with a Monte Carlo cross-check.",
    )
    p.add_argument("--profile", choices=sorted(grid.PROFILES),
                   help="quick (default, under a minute) or full (the whole grid); with "
                   "--check, the baseline's profile")
    p.add_argument("--estimators", help="comma-separated subset of: " + ",".join(grid.ESTIMATORS))
    p.add_argument("--mdps", help="comma-separated subset of: " + ",".join(grid.MDPS))
    p.add_argument("--seed", type=int,
                   help="seed of the Monte Carlo and noisy values (default 0; with --check, "
                   "the baseline's seed)")
    p.add_argument("--jobs", type=positive_int, default=1,
                   help="worker processes, or the CPUs of a local Ray instance (default 1)")
    p.add_argument("--executor", choices=parallel.EXECUTORS, default="process",
                   help="process (default), serial, or ray (pip install 'offpolicy[ray]')")
    p.add_argument("--address", help="with --executor ray: join this cluster (auto or "
                   "HOST:PORT) instead of starting a local Ray instance")
    p.add_argument("--out", help="output directory (default reports/<profile>)")
    p.add_argument("--check", metavar="BASELINE_DIR",
                   help="recompute and compare with the baseline; exit 1 on any regression")
    p.add_argument("--update-baseline", nargs="?", const=DEFAULT_BASELINE, metavar="DIR",
                   help=f"recompute and rewrite the baseline (default {DEFAULT_BASELINE})")
    p.add_argument("--fresh", action="store_true", help="ignore stored cells, recompute all")
    p.add_argument("--limit", type=int, help="stop after computing this many new cells "
                   "(the run resumes on the next call)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--quiet", action="store_true", help="no tables on the terminal")
    args = p.parse_args(argv)
    args.mdps = _subset(p, args.mdps, grid.MDPS, "--mdps")
    args.estimators = _subset(p, args.estimators, tuple(grid.ESTIMATORS), "--estimators",
                              grid.ALIASES)
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit: must be >= 1, got {args.limit}")
    if args.seed is not None and args.seed < 0:
        p.error(f"--seed: must be >= 0, got {args.seed}")
    problem = parallel.check_executor(args.executor, args.address)
    if problem:
        p.error(problem)
    return args


def _subset(p, text, known, flag, aliases=None):
    if text is None:
        return None
    try:
        return parse_names(text, known, flag, aliases=aliases)
    except UsageError as e:
        p.error(str(e))


def command_line(args) -> str:
    """The canonical command that regenerates a result (written into the files)."""
    parts = ["python -m offpolicy.report", f"--profile {args.profile}"]
    if args.seed != 0:
        parts.append(f"--seed {args.seed}")
    if args.mdps:
        parts.append("--mdps " + ",".join(args.mdps))
    if args.estimators:
        parts.append("--estimators " + ",".join(args.estimators))
    if args.profile == "full":
        parts.append("--jobs 2")
    return " ".join(parts)


def compute(args, profile, cells, run_dir, progress) -> list[dict] | None:
    """Run (or resume) the grid in ``run_dir``; the records in grid order, or None if stopped
    early by ``--limit``."""
    import signal

    from .run import run_cells
    from .store import CellStore

    def stop(signum, frame):  # `kill` stops as cleanly as Ctrl-C
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        with CellStore(os.path.join(run_dir, "cells.jsonl")) as store:
            run_cells(cells, store, seed=args.seed, mc_samples=profile.mc_samples,
                      jobs=args.jobs, limit=args.limit, progress=progress,
                      executor=args.executor, address=args.address)
            missing = [c for c in cells if grid.cell_id(c) not in store]
            if missing:
                return None
            return [store.records[grid.cell_id(c)] for c in cells]
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _records_with_cells(records, cells):
    # the stored cell dicts went through JSON; keep the in-memory ones (same content)
    return [dict(r, cell=c) for r, c in zip(records, cells, strict=True)]


def main(argv=None) -> int:
    args = _parse(argv)
    _blas.single_thread()
    baseline = None
    if args.check:
        from .check import load_baseline

        try:
            baseline = load_baseline(args.check)
        except (OSError, ValueError, KeyError, TypeError) as e:  # one line, names the file
            print(f"cannot use the baseline: {e} (create one with --update-baseline "
                  f"{args.check})", file=sys.stderr)
            return 2
        args.limit = None  # a check always compares the whole grid
        args.profile = args.profile or baseline["meta"]["profile"]
        args.seed = baseline["meta"]["seed"] if args.seed is None else args.seed
    args.profile = args.profile or "quick"
    args.seed = 0 if args.seed is None else args.seed
    profile = grid.PROFILES[args.profile]
    cells = grid.cells(profile, args.mdps, args.estimators)
    progress = False if args.no_progress else None
    from .run import code_fingerprint

    tag = (f"{profile.name}-{grid.fingerprint(profile, args.seed, args.mdps, args.estimators)}"
           f"-{code_fingerprint()}")

    if args.check:
        try:
            return _check(args, profile, cells, tag, progress, baseline)
        except (ConnectionError, parallel.WorkerCodeMismatch) as e:
            return usage_error("python -m offpolicy.report", str(e))

    out_dir = args.out or os.path.join("reports", profile.name)
    runs = os.path.join(out_dir, "_runs") if args.out else os.path.join("reports", "_runs")
    run_dir = os.path.join(runs, tag)
    for directory, flag in ((out_dir, "--out"), (runs, "--out"),
                            (args.update_baseline, "--update-baseline")):
        problem = directory and writable_dir(directory, flag)
        if problem:  # before any computing
            return usage_error("python -m offpolicy.report", problem)
    if args.fresh and os.path.isdir(run_dir):
        shutil.rmtree(run_dir)
    try:
        records = compute(args, profile, cells, run_dir, progress)
    except (ConnectionError, parallel.WorkerCodeMismatch) as e:
        return usage_error("python -m offpolicy.report", str(e))
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished cells are kept in {run_dir}; run the same command "
              "again to resume", file=sys.stderr)
        return 130
    if records is None:
        print(f"stopped after --limit {args.limit} new cells; cells so far are in {run_dir}; "
              "run again to resume", file=sys.stderr)
        return 0
    records = _records_with_cells(records, cells)
    meta = _meta(args, profile, cells)
    if args.update_baseline:
        return _write_baseline(args.update_baseline, records, profile, meta, args)
    return _publish(args, out_dir, records, profile, meta)


def _meta(args, profile, cells) -> dict:
    return {"profile": profile.name, "seed": args.seed, "command": command_line(args),
            "cells": len(cells), "mc_samples": profile.mc_samples,
            "mdps": list(args.mdps or profile.mdps),
            "estimators": list(args.estimators or profile.estimators)}


def _publish(args, out_dir, records, profile, meta) -> int:
    from . import render

    summ = render.write_outputs(out_dir, records, profile, meta)
    written = ["results.csv", "results.json", "results.md"]
    if _with_gradients(args, profile):
        from . import gradients

        written += [os.path.basename(p) for p in gradients.write(out_dir,
                                                                 gradients.compute(profile.name))]
    if not args.no_plots:
        from .plots import plot_all

        written += [os.path.basename(p) for p in plot_all(out_dir, records, profile)]
    if not args.quiet:
        _print_tables(records, profile, summ)
    print(f"wrote {', '.join(written)} to {out_dir}/ ({len(records)} cells; "
          f"regenerate: {meta['command']})")
    return 0


def _print_tables(records, profile, summ) -> None:
    from . import render

    s = profile
    h, b = render.staleness_table(records, profile)
    render.print_table(h, b, f"MSE by staleness k  (lam={grid.fmt_param(s.show_lam)}, "
                       f"n={s.show_n}, rho/c={grid.fmt_param(s.show_clip[0])}/"
                       f"{grid.fmt_param(s.show_clip[1])}, T={s.show_T}, values={s.show_values})")
    h, b = render.best_table(summ["best_by_staleness"], long=True)
    render.print_table(h, b, f"Lowest MSE per staleness level, each estimator tuned over its "
                       f"grid (T={s.show_T}, values={s.show_values})")
    if summ["mc_cells"]:
        print(f"Monte Carlo: {summ['mc_cells']} cells x {s.mc_samples} segments; largest |z| "
              f"against the exact figures: {render.short(summ['mc_max_abs_z'], 3)}")


def _with_gradients(args, profile) -> bool:
    """The gradient section (offpolicy/report/gradients.py) runs with its profile's whole
    grid only: not for a subset of MDPs or estimators."""
    from .gradients import GRIDS

    return profile.name in GRIDS and not (args.mdps or args.estimators)


def _write_baseline(directory, records, profile, meta, args) -> int:
    from . import render
    from .check import format_regressions, self_consistency

    bad = self_consistency(records)
    if bad:  # never bless an estimator that disagrees with its exact moments
        print(format_regressions(bad, "(the exact moments)", len(records)))
        print(f"baseline NOT rewritten: {directory}")
        return 1
    render.write_outputs(directory, records, profile, meta)
    if _with_gradients(args, profile):
        from . import gradients

        gradients.write(directory, gradients.compute(profile.name))
    print(f"baseline rewritten: {directory}/results.json ({len(records)} cells)")
    return 0


def _check(args, profile, cells, tag, progress, baseline) -> int:
    from .check import compare, format_regressions

    with tempfile.TemporaryDirectory(prefix="offpolicy-check-") as tmp:
        records = compute(args, profile, cells, os.path.join(tmp, tag), progress)
    records = _records_with_cells(records, cells)
    if args.mdps or args.estimators:
        # the baseline's cells of the selected MDPs and estimators, produced or not: one the
        # grid no longer produces is a regression, as in a full check
        mdps, ests = {c["mdp"] for c in cells}, {c["estimator"] for c in cells}

        def selected(cid: str) -> bool:
            axes = dict(t.split("=", 1) for t in cid.split() if "=" in t)
            return axes.get("mdp") in mdps and axes.get("estimator") in ests

        expected = {grid.cell_id(c) for c in cells} | {
            cid for cid in baseline["cells"] if selected(cid)}
    else:
        expected = set(baseline["cells"])
    regs = compare(records, baseline, expected)
    text = format_regressions(regs, args.check, len(records))
    print(text, end="" if text.endswith("\n") else "\n")
    grad_problems = []
    if _with_gradients(args, profile):
        from . import gradients

        rows = gradients.compute(profile.name)
        grad_problems = gradients.compare(rows, args.check)
        if grad_problems:
            print(f"check FAILED: gradients: {len(grad_problems)} regression(s) against "
                  f"{args.check}/{gradients.CSV}")
        for line in grad_problems:
            print(f"  {line}")
        if not grad_problems:
            print(f"gradients: {len(rows)} rows match {args.check}/{gradients.CSV}")
    return 1 if regs or grad_problems else 0


