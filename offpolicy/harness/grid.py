"""Grids of runs: expansion, resumable per-run result files, executors.

A *run* is one (algo, config) pair.  Its result is written atomically (temporary file, then
``os.replace``) to ``<runs_dir>/<name>.json``, so an interrupted grid resumes by skipping the
runs whose file exists.  Executors:

    serial   in this process (handy for debugging and tiny grids);
    process  a ``concurrent.futures.ProcessPoolExecutor`` with ``--jobs`` workers (default);
    ray      Ray tasks (``pip install 'offpolicy[ray]'``); connects to ``RAY_ADDRESS`` if set,
             else starts a local instance.

Every worker runs torch single-threaded (``torch.set_num_threads(1)``): runs are parallel
across processes, never inside one.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import tempfile
from dataclasses import asdict, fields
from pathlib import Path

from offpolicy.harness import dqn, ppo

ALGOS = {"ppo": (ppo.PPOConfig, ppo.train), "dqn": (dqn.DQNConfig, dqn.train)}
EXECUTORS = ("process", "serial", "ray")


def make_config(algo: str, overrides: dict):
    cls, _ = ALGOS[algo]
    names = {f.name for f in fields(cls)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"{algo}: unknown config field(s) {sorted(unknown)}; "
                         f"fields: {sorted(names)}")
    return cls(**overrides)


def expand(algo: str, base: dict, axes: dict[str, list], seeds) -> list[dict]:
    """The cartesian product of ``axes`` (field -> values) times ``seeds``, each a run spec
    ``{"algo", "config", "axes", "name"}``; ``config`` is the full config as a dict."""
    keys = list(axes)
    specs = []
    for combo in itertools.product(*(axes[k] for k in keys)):
        for seed in seeds:
            over = dict(base, **dict(zip(keys, combo, strict=False)), seed=int(seed))
            cfg = asdict(make_config(algo, over))
            specs.append({"algo": algo, "config": cfg, "axes": dict(zip(keys, combo, strict=False)),
                          "name": run_name(algo, cfg, keys)})
    return specs


def run_name(algo: str, cfg: dict, axis_keys) -> str:
    digest = hashlib.sha1(json.dumps([algo, cfg], sort_keys=True, default=str).encode()).hexdigest()
    label = "-".join(f"{k}={cfg[k]}" for k in axis_keys)
    safe = "".join(c if c.isalnum() or c in "=-_." else "_" for c in label)
    return f"{algo}-{cfg['env']}-{safe}-seed={cfg['seed']}-{digest[:10]}"


def _atomic_write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, default=_json_default)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _json_default(x):
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x)}")


def run_one(spec: dict, runs_dir: str) -> str:
    """Run one spec (in whatever process this is) and write its result file; returns the path."""
    import torch

    torch.set_num_threads(1)
    _, train = ALGOS[spec["algo"]]
    cls, _ = ALGOS[spec["algo"]]
    result = train(cls(**spec["config"]))
    result.update(name=spec["name"], axes=spec["axes"])
    path = Path(runs_dir) / f"{spec['name']}.json"
    _atomic_write_json(path, _finite(result))
    return str(path)


def _finite(obj):
    """NaN/inf -> None so the files are strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _worker_init():
    import torch

    torch.set_num_threads(1)


def pending(specs: list[dict], runs_dir) -> list[dict]:
    return [s for s in specs if not (Path(runs_dir) / f"{s['name']}.json").exists()]


def run_grid(specs: list[dict], runs_dir, executor: str = "process", jobs: int | None = None,
             progress: bool = True) -> list[dict]:
    """Run every spec whose result file is missing; return all results of ``specs``."""
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    todo = pending(specs, runs_dir)
    jobs = jobs or os.cpu_count() or 1
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(specs), initial=len(specs) - len(todo), desc="runs", unit="run")
    tick = (lambda: bar.update(1)) if bar is not None else (lambda: None)
    try:
        if executor == "serial" or (executor == "process" and (jobs == 1 or len(todo) <= 1)):
            for spec in todo:
                run_one(spec, str(runs_dir))
                tick()
        elif executor == "process":
            _run_process_pool(todo, runs_dir, jobs, tick)
        elif executor == "ray":
            _run_ray(todo, runs_dir, jobs, tick)
        else:
            raise ValueError(f"unknown executor {executor!r}; choose from {EXECUTORS}")
    finally:
        if bar is not None:
            bar.close()
    return load_results(specs, runs_dir)


def _run_process_pool(todo, runs_dir, jobs, tick):
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: a fresh interpreter per worker, safe whatever torch threads the parent started.
    with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=mp.get_context("spawn"),
                             initializer=_worker_init) as pool:
        futures = [pool.submit(run_one, spec, str(runs_dir)) for spec in todo]
        for fut in as_completed(futures):
            fut.result()
            tick()


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def _run_ray(todo, runs_dir, jobs, tick):
    try:
        import ray
    except ImportError as e:
        raise RuntimeError("--executor ray needs Ray: pip install 'offpolicy[ray]'") from e
    started_here = not ray.is_initialized()
    if started_here:
        address = os.environ.get("RAY_ADDRESS")
        ray.init(address=address) if address else ray.init(num_cpus=jobs)
    try:
        remote = ray.remote(num_cpus=1)(run_one)
        pending_refs = [remote.remote(spec, str(Path(runs_dir).resolve())) for spec in todo]
        while pending_refs:
            done, pending_refs = ray.wait(pending_refs, num_returns=1)
            ray.get(done)
            tick()
    finally:
        if started_here:
            ray.shutdown()


def load_results(specs: list[dict], runs_dir) -> list[dict]:
    out = []
    for spec in specs:
        path = Path(runs_dir) / f"{spec['name']}.json"
        if path.exists():
            with open(path) as f:
                out.append(json.load(f))
    return out
