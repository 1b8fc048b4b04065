"""Grids of runs: expansion, resumable per-run result files, executors.

A *run* is one (algo, config) pair.  Workers only compute: each result comes back to the
driver (a future's result, or a Ray task's return value through the object store), which
writes it atomically (temporary file, then ``os.replace``) to ``<runs_dir>/<name>.json`` as it
arrives, so an interrupted grid resumes by skipping the runs whose file exists.  Executors
(:mod:`offpolicy.parallel`; workers die with the driver on each):

    serial   in this process (handy for debugging and tiny grids);
    process  a spawn-context process pool with ``--jobs`` workers (default);
    ray      Ray tasks (``pip install 'offpolicy[ray]'``) on a local instance started here, or
             on an existing cluster with ``address`` (``--address``).

Every worker runs torch single-threaded (``torch.set_num_threads(1)``): runs are parallel
across processes, never inside one.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import multiprocessing as mp
import os
import tempfile
from dataclasses import asdict, fields
from pathlib import Path

from offpolicy import parallel, registry
from offpolicy.harness import dqn, ppo

ALGOS = {"ppo": (ppo.PPOConfig, ppo.train), "dqn": (dqn.DQNConfig, dqn.train)}
CHECKS = {"ppo": ppo.check_config, "dqn": dqn.check_config}
EXECUTORS = parallel.EXECUTORS
#: each learner's ``estimator`` values: registry names (the aliases ``puff``, ``pdis``, ``nstep``
#: key the committed results), and PPO's ``decoupled`` (a loss, not a contract estimator)
ESTIMATORS = {"ppo": ppo.ESTIMATORS, "dqn": dqn.ESTIMATORS}


def estimator_value(algo: str, name):
    """The learner's value for an estimator given by any :mod:`offpolicy.registry` name
    (``puff_advantage`` -> ``puff``); other values pass through to the config's own check."""
    own = ESTIMATORS[algo]
    if not isinstance(name, str) or name in own:
        return name
    try:
        wanted = registry.canonical(name)
    except ValueError:
        return name
    for value in own:
        if value != "decoupled" and registry.canonical(value) == wanted:
            return value
    return name


def make_config(algo: str, overrides: dict):
    cls, _ = ALGOS[algo]
    names = {f.name for f in fields(cls)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"{algo}: unknown config field(s) {sorted(unknown)}; "
                         f"fields: {sorted(names)}")
    cfg = cls(**overrides)
    CHECKS[algo](cfg)  # a bad value fails here, naming its field, before any run starts
    return cfg


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


def compute_run(spec: dict) -> dict:
    """Run one spec in whatever process this is (a pool or Ray worker, or the driver) and
    return its result; nothing is written here."""
    import torch

    torch.set_num_threads(1)
    cls, train = ALGOS[spec["algo"]]
    result = train(cls(**spec["config"]))
    result.update(name=spec["name"], axes=spec["axes"])
    return _finite(result)


def write_result(result: dict, runs_dir, drop_timing: bool = False) -> Path:
    """The driver's side: write one result file atomically (the grid's resume state)."""
    path = Path(runs_dir) / f"{result['name']}.json"
    _atomic_write_json(path, strip_timing(result) if drop_timing else result)
    return path


def run_one(spec: dict, runs_dir: str) -> str:
    """Compute one spec here and write its result file; returns the path."""
    return str(write_result(compute_run(spec), runs_dir))


TIMING_KEYS = ("wall_time", "sps", "env_sps")


def strip_timing(result: dict) -> dict:
    """The result without its wall-clock measurements (the only fields that differ between
    two runs of the same spec)."""
    out = dict(result)
    if "curve" in out:
        out["curve"] = [{k: v for k, v in row.items() if k not in TIMING_KEYS}
                        for row in out["curve"]]
    if isinstance(out.get("summary"), dict):
        out["summary"] = {k: v for k, v in out["summary"].items() if k not in TIMING_KEYS}
    return out


def code_fingerprint() -> str:
    """Hash of the code a run's result depends on (the learners and the estimators); a Ray
    worker on a node with other code installed is refused."""
    pkg = Path(__file__).resolve().parent
    root = pkg.parent.parent
    h = hashlib.sha256()
    files = sorted([*pkg.glob("*.py"), *(root / "estimators").glob("*.py"),
                    *(root / "offpolicy" / f for f in ("mdp.py", "exact.py", "policies.py"))])
    for path in files:
        if not path.exists():
            continue
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


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
             progress: bool = True, address: str | None = None,
             drop_timing: bool = False) -> list[dict]:
    """Run every spec whose result file is missing; return all results of ``specs``.

    Workers only compute; each result comes back to this process (a future's result or a Ray
    task's return value), which writes its file as it arrives, so a killed grid resumes from
    the runs already written. ``drop_timing``: write results without wall-clock fields."""
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    todo = pending(specs, runs_dir)
    jobs = jobs or os.cpu_count() or 1
    if executor == "process" and (jobs == 1 or len(todo) <= 1):
        executor = "serial"
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(specs), initial=len(specs) - len(todo), desc="runs", unit="run")
    try:
        if todo:
            # spawn: a fresh interpreter per worker, whatever torch threads the driver started
            with parallel.Pool(executor, min(jobs, len(todo)), address=address,
                               init=_worker_init, mp_context=mp.get_context("spawn"),
                               fingerprint=code_fingerprint) as pool:
                for _, result in pool.imap_unordered(compute_run, todo):
                    write_result(result, runs_dir, drop_timing)
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    results, missing = load_results(specs, runs_dir, with_missing=True)
    if missing:  # every run was computed above: a missing file is a bug, never a silent gap
        raise RuntimeError(f"{len(missing)} run(s) have no result file in {runs_dir}, "
                           f"e.g. {missing[0]}")
    return results


def ray_available() -> bool:
    return parallel.ray_available()


def load_results(specs: list[dict], runs_dir, with_missing: bool = False):
    """The stored results of ``specs`` (in spec order); with ``with_missing``, also the names
    of the specs that have no result file."""
    out, missing = [], []
    for spec in specs:
        path = Path(runs_dir) / f"{spec['name']}.json"
        if path.exists():
            with open(path) as f:
                out.append(json.load(f))
        else:
            missing.append(spec["name"])
    return (out, missing) if with_missing else out
