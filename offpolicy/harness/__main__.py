"""``python -m offpolicy.harness``: run a staleness x correction grid, write a table and plots.

Examples::

    python -m offpolicy.harness --algo ppo --env chain --lag 0,2,8 --estimator gae,vtrace --seeds 5
    python -m offpolicy.harness --algo dqn --env chain --min-age 0,200 --estimator nstep,retrace
    python -m offpolicy.harness --algo ppo --env cartpole --set total_steps=300000 --seeds 1

Comma-separated values make a grid axis; ``--set field=v1,v2`` reaches any config field
(see ``PPOConfig``/``DQNConfig``).  Outputs go to ``--out`` (default ``offpolicy-out/harness``;
the committed tables under ``reports/harness`` change only with ``--out reports/harness``).
Workers return each run's result to this process, which writes it to ``<out>/runs/``; an
interrupted grid resumes by skipping the runs already written; ``--fresh`` reruns them.
``--executor ray`` runs the grid on Ray (``--address`` joins an existing cluster).
Exit codes: 0 done, 2 bad arguments (one line, before anything runs), 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import typing
from dataclasses import fields
from pathlib import Path

from offpolicy import parallel
from offpolicy._cli import OneLineParser, positive_int, run_main, usage_error, writable_dir

# offpolicy.harness.grid, .report and .measure import torch, pandas and matplotlib (seconds):
# imported in main once the arguments have passed the checks that need none of them

PROG = "python -m offpolicy.harness"
ALGOS = ("dqn", "ppo")  # the keys of grid.ALGOS (tests/test_cli_errors.py checks they agree)
DEFAULT_OUT = os.path.join("offpolicy-out", "harness")  # git-ignored: never the committed tables

# CLI option -> config field (per algorithm); each takes a comma-separated list
SHORTCUTS = {
    "estimator": "estimator", "lag": "lag", "epochs": "update_epochs",
    "minibatches": "num_minibatches", "refresh": "refresh", "n": "n",
    "replay_ratio": "replay_ratio", "buffer_capacity": "buffer_capacity",
    "min_age": "min_age", "max_age": "max_age", "lam": "lam", "gae_lambda": "gae_lambda",
    "rho_clip": "rho_clip", "c_clip": "c_clip", "total_steps": "total_steps",
    "num_envs": "num_envs", "lr": "learning_rate",
    # behaviour != target, importance weighting and truncation handling (issue 14)
    "epsilon": "epsilon", "temperature": "temperature", "search_depth": "search_depth",
    "lag_spread": "lag_spread", "pg_loss": "pg_loss", "truncation": "truncation",
}


def _field_types(algo: str) -> dict:
    from offpolicy.harness import grid

    cls, _ = grid.ALGOS[algo]
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def parse_value(text: str, typ):
    text = text.strip()
    if text.lower() in ("none", "null") and type(None) in typing.get_args(typ):
        return None  # only for optional fields: refresh="none" stays a string
    args = [a for a in typing.get_args(typ) if a is not type(None)] or [typ]
    base = args[0]
    if base is bool:
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"not a bool: {text!r}")
    if base is int:
        return int(float(text)) if "e" in text.lower() else int(text)
    if base is float:
        return float(text)
    if base is dict:
        return json.loads(text)
    return text


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algo", choices=ALGOS, required=True)
    p.add_argument("--env", default="chain", help="chain, gridworld, garnet, cartpole, acrobot")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0..seeds-1)")
    p.add_argument("--seed-offset", type=int, default=0)
    for opt in SHORTCUTS:
        p.add_argument("--" + opt.replace("_", "-"), dest=opt, default=None,
                       help=f"comma-separated values of config field {SHORTCUTS[opt]}")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=V1[,V2]",
                   help="any config field; several values make an axis")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help=f"table and plots go here (default {DEFAULT_OUT})")
    p.add_argument("--name", default=None,
                   help="file stem of the table and plots (default <algo>_<env>)")
    p.add_argument("--runs-dir", default=None, help="per-run result files (default <out>/runs)")
    p.add_argument("--executor", choices=parallel.EXECUTORS, default="process",
                   help="process (default), serial, or ray (pip install 'offpolicy[ray]')")
    p.add_argument("--address", default=None,
                   help="with --executor ray: join this cluster (auto or HOST:PORT) instead of "
                   "starting a local Ray instance")
    p.add_argument("--jobs", type=positive_int, default=os.cpu_count() or 1,
                   help="worker processes, or the CPUs of a local Ray instance")
    p.add_argument("--no-timing", action="store_true",
                   help="leave the wall-clock fields (wall_time, sps, env_sps) out of every file: "
                   "the same seeds then give byte-identical files on any executor")
    p.add_argument("--fresh", action="store_true", help="rerun runs whose results exist")
    p.add_argument("--report-only", action="store_true", help="only rebuild table and plots")
    p.add_argument("--no-progress", action="store_true")
    return p


def _option(field_name: str, given: dict) -> str:
    """The command-line spelling of a config field (as the user gave it, if they did)."""
    if field_name in given:
        return given[field_name]
    for opt, f in SHORTCUTS.items():
        if f == field_name:
            return "--" + opt.replace("_", "-")
    return f"--set {field_name}"


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds: must be >= 1, got {args.seeds}")
    if args.seed_offset < 0:
        parser.error(f"--seed-offset: must be >= 0, got {args.seed_offset}")
    problem = parallel.check_executor(args.executor, args.address)
    if problem:
        parser.error(problem)
    for item in args.set:
        key, eq, _ = item.partition("=")
        if not eq or not key.strip():
            parser.error(f"--set {item!r}: expected FIELD=V1[,V2]")
    from offpolicy.harness import grid, report  # the checks from here on need the configs
    from offpolicy.harness.measure import ConfigError

    types = _field_types(args.algo)
    axes: dict[str, list] = {}
    base: dict = {"env": args.env}

    given = {"env": "--env"}  # config field -> the option that set it

    def add(field_name: str, text: str, option: str):
        if field_name not in types:
            parser.error(f"{option}: {args.algo} has no config field {field_name!r}")
        try:
            vals = [parse_value(t, types[field_name]) for t in text.split(",")] \
                if types[field_name] is not dict and "dict" not in str(types[field_name]) \
                else [parse_value(text, types[field_name])]
        except ValueError as e:
            parser.error(f"{option}: cannot read {text!r} as {field_name}: {e}")
        if field_name == "estimator":  # any registry name: puff_advantage means puff here
            vals = [grid.estimator_value(args.algo, v) for v in vals]
        given[field_name] = option
        if len(vals) == 1:
            base[field_name] = vals[0]
        else:
            axes[field_name] = vals

    for opt, field_name in SHORTCUTS.items():
        text = getattr(args, opt)
        if text is None:
            continue
        if field_name not in types and opt == "lam" and "gae_lambda" in types:
            field_name = "gae_lambda"
        add(field_name, text, "--" + opt.replace("_", "-"))
    for item in args.set:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            parser.error(f"--set {item!r}: expected FIELD=V1[,V2]")
        add(key.strip(), text, f"--set {key.strip()}")
    # the correction is always a column of the table, even with a single value
    if "estimator" in base and "estimator" not in axes:
        axes = {"estimator": [base.pop("estimator")], **axes}
    if "estimator" not in axes:
        axes = {"estimator": [types and grid.ALGOS[args.algo][0]().estimator], **axes}
    # put the correction first, staleness next
    order = ["estimator", *report.STALENESS[args.algo]]
    axes = dict(sorted(axes.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99))

    seeds = range(args.seed_offset, args.seed_offset + args.seeds)
    try:
        specs = grid.expand(args.algo, base, axes, seeds)
    except ConfigError as e:
        parser.error(f"{_option(e.field, given)}: {e.detail}")
    out = Path(args.out)
    runs_dir = Path(args.runs_dir) if args.runs_dir else out / "runs"
    for directory, flag in ((out, "--out"), (runs_dir, "--runs-dir" if args.runs_dir else "--out")):
        problem = writable_dir(str(directory), flag)
        if problem:  # before any run starts
            return usage_error(PROG, problem)
    if args.fresh:
        for s in specs:
            (runs_dir / f"{s['name']}.json").unlink(missing_ok=True)
    todo = grid.pending(specs, runs_dir)
    summary = (f"{args.algo} on {args.env}: {len(specs)} runs ({len(specs) - len(todo)} done), "
               f"axes {axes}, executor {args.executor}, jobs {args.jobs}")
    if args.report_only:
        print(summary, file=sys.stderr)
        results, missing = grid.load_results(specs, runs_dir, with_missing=True)
        if missing:
            print(f"warning: {len(missing)} of {len(specs)} runs have no result in {runs_dir} "
                  "and are left out of the table (run without --report-only to compute them)",
                  file=sys.stderr)
    else:
        def stop(signum, frame):  # `kill` stops as cleanly as Ctrl-C: workers killed, exit 130
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, stop)
        try:
            # printed inside the try: an interrupt once this line is out keeps finished runs
            print(summary, file=sys.stderr)
            results = grid.run_grid(specs, runs_dir, executor=args.executor, jobs=args.jobs,
                                    progress=not args.no_progress, address=args.address,
                                    drop_timing=args.no_timing)
        except (ConnectionError, parallel.WorkerCodeMismatch) as e:
            return usage_error(PROG, str(e))
        except KeyboardInterrupt:
            print(f"\ninterrupted: finished runs are kept in {runs_dir}; run the same command "
                  "again to resume", file=sys.stderr)
            return 130
        finally:
            signal.signal(signal.SIGTERM, previous)
    if args.no_timing:
        results = [grid.strip_timing(r) for r in results]
    paths = report.write_report(results, args.algo, axes, out, stem=args.name)
    for k, v in paths.items():
        print(f"{k}: {v}", file=sys.stderr)
    if "table_md" in paths:
        print(Path(paths["table_md"]).read_text())
    return 0


if __name__ == "__main__":
    run_main(main, PROG)
