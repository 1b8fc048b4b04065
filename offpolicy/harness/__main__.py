"""``python -m offpolicy.harness``: run a staleness x correction grid, write a table and plots.

Examples::

    python -m offpolicy.harness --algo ppo --env chain --lag 0,2,8 --estimator gae,vtrace --seeds 5
    python -m offpolicy.harness --algo dqn --env chain --min-age 0,200 --estimator nstep,retrace
    python -m offpolicy.harness --algo ppo --env cartpole --set total_steps=300000 --seeds 1

Comma-separated values make a grid axis; ``--set field=v1,v2`` reaches any config field
(see ``PPOConfig``/``DQNConfig``).  Per-run results go to ``<out>/runs/`` and an interrupted
grid resumes by skipping the runs already written; ``--fresh`` reruns them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import typing
from dataclasses import fields
from pathlib import Path

from offpolicy.harness import grid, report

# CLI option -> config field (per algorithm); each takes a comma-separated list
SHORTCUTS = {
    "estimator": "estimator", "lag": "lag", "epochs": "update_epochs",
    "minibatches": "num_minibatches", "refresh": "refresh", "n": "n",
    "replay_ratio": "replay_ratio", "buffer_capacity": "buffer_capacity",
    "min_age": "min_age", "max_age": "max_age", "lam": "lam", "gae_lambda": "gae_lambda",
    "rho_clip": "rho_clip", "c_clip": "c_clip", "total_steps": "total_steps",
    "num_envs": "num_envs", "lr": "learning_rate",
}


def _field_types(algo: str) -> dict:
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
    p = argparse.ArgumentParser(prog="python -m offpolicy.harness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algo", choices=sorted(grid.ALGOS), required=True)
    p.add_argument("--env", default="chain", help="chain, gridworld, garnet, cartpole, acrobot")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0..seeds-1)")
    p.add_argument("--seed-offset", type=int, default=0)
    for opt in SHORTCUTS:
        p.add_argument("--" + opt.replace("_", "-"), dest=opt, default=None,
                       help=f"comma-separated values of config field {SHORTCUTS[opt]}")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=V1[,V2]",
                   help="any config field; several values make an axis")
    p.add_argument("--out", default="reports/harness", help="table and plots go here")
    p.add_argument("--name", default=None,
                   help="file stem of the table and plots (default <algo>_<env>)")
    p.add_argument("--runs-dir", default=None, help="per-run result files (default <out>/runs)")
    p.add_argument("--executor", choices=grid.EXECUTORS, default="process")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--fresh", action="store_true", help="rerun runs whose results exist")
    p.add_argument("--report-only", action="store_true", help="only rebuild table and plots")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    types = _field_types(args.algo)
    axes: dict[str, list] = {}
    base: dict = {"env": args.env}

    def add(field_name: str, text: str):
        if field_name not in types:
            raise SystemExit(f"--{field_name}: {args.algo} has no config field {field_name!r}")
        vals = [parse_value(t, types[field_name]) for t in text.split(",")] \
            if types[field_name] is not dict and "dict" not in str(types[field_name]) \
            else [parse_value(text, types[field_name])]
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
        add(field_name, text)
    for item in args.set:
        key, _, text = item.partition("=")
        add(key.strip(), text)
    # the correction is always a column of the table, even with a single value
    if "estimator" in base and "estimator" not in axes:
        axes = {"estimator": [base.pop("estimator")], **axes}
    if "estimator" not in axes:
        axes = {"estimator": [types and grid.ALGOS[args.algo][0]().estimator], **axes}
    # put the correction first, staleness next
    order = ["estimator", *report.STALENESS[args.algo]]
    axes = dict(sorted(axes.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99))

    seeds = range(args.seed_offset, args.seed_offset + args.seeds)
    specs = grid.expand(args.algo, base, axes, seeds)
    out = Path(args.out)
    runs_dir = Path(args.runs_dir) if args.runs_dir else out / "runs"
    if args.fresh:
        for s in specs:
            (runs_dir / f"{s['name']}.json").unlink(missing_ok=True)
    todo = grid.pending(specs, runs_dir)
    print(f"{args.algo} on {args.env}: {len(specs)} runs ({len(specs) - len(todo)} done), "
          f"axes {axes}, executor {args.executor}, jobs {args.jobs}", file=sys.stderr)
    if args.report_only:
        results = grid.load_results(specs, runs_dir)
    else:
        results = grid.run_grid(specs, runs_dir, executor=args.executor, jobs=args.jobs,
                                progress=not args.no_progress)
    paths = report.write_report(results, args.algo, axes, out, stem=args.name)
    for k, v in paths.items():
        print(f"{k}: {v}", file=sys.stderr)
    if "table_md" in paths:
        print(Path(paths["table_md"]).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
