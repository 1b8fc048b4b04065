"""Running the grid: serially, on a process pool or on Ray, resumably, with a progress bar.

Workers only compute; each group of records comes back to the driver (as a return value: a
future's result or a Ray object), which appends it to the store."""

from __future__ import annotations

import hashlib
import os
import sys

from ..parallel import Pool
from . import grid
from ._blas import single_thread
from .store import CellStore

# the code whose change invalidates stored cells (a changed file starts a fresh run directory):
# every module the computation of a cell loads, except re-exports, argument parsing and the pool
# (tests/test_instr_report.py derives the list from what a computation imports)
_CODE = (
    "offpolicy/_checks.py", "offpolicy/mdp.py", "offpolicy/policies.py", "offpolicy/exact.py",
    "offpolicy/sampler.py", "offpolicy/moments.py", "offpolicy/registry.py",
    "offpolicy/report/compute.py",
    "offpolicy/report/montecarlo.py", "offpolicy/report/cell.py", "offpolicy/report/grid.py",
    "estimators/numpy.py", "estimators/_validate.py", "estimators/_types.py",
)


def code_fingerprint() -> str:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    h = hashlib.sha256()
    for rel in _CODE:
        path = os.path.join(root, rel)
        h.update(rel.encode())
        if os.path.exists(path):
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:12]


def _compute_group(cells: list[dict], seed: int, mc_samples: int) -> list[dict]:
    from .compute import compute_cell

    return [compute_cell(c, seed, mc_samples) for c in cells]


def _compute_task(task: tuple) -> list[dict]:
    return _compute_group(*task)


def _tasks(todo: list[dict], jobs: int) -> list[list[dict]]:
    """Group cells by their shared setup; split big groups so every worker has work."""
    groups: dict = {}
    for c in todo:
        groups.setdefault(grid.setup_key(c), []).append(c)
    size = max(1, min(64, len(todo) // max(1, 4 * jobs)))
    return [g[i:i + size] for g in groups.values() for i in range(0, len(g), size)]


def run_cells(cells: list[dict], store: CellStore, *, seed: int, mc_samples: int, jobs: int = 1,
              limit: int | None = None, progress: bool | None = None, executor: str = "process",
              address: str | None = None) -> int:
    """Compute the cells not yet in ``store`` (at most ``limit`` of them), appending each group
    as it comes back to this process (the driver: it alone writes). Returns how many cells were
    computed. ``executor``: see :mod:`offpolicy.parallel`; ``process`` with one job computes
    here."""
    todo = [c for c in cells if grid.cell_id(c) not in store]
    if limit is not None:
        todo = todo[:limit]
    if not todo:
        return 0
    if progress is None:
        progress = sys.stderr.isatty() and len(todo) > 50
    if executor == "process" and jobs <= 1:
        executor = "serial"
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="cell", desc="report", file=sys.stderr,
                   initial=0, dynamic_ncols=True)
    done = 0
    try:
        with Pool(executor, jobs, address=address, init=single_thread,
                  fingerprint=code_fingerprint) as pool:
            tasks = _tasks(todo, pool.workers)
            work = [(t, seed, mc_samples) for t in tasks]
            for _, recs in pool.imap_unordered(_compute_task, work):
                for rec in recs:
                    store.add(rec)
                done += len(recs)
                if bar:
                    bar.update(len(recs))
    finally:
        if bar:
            bar.close()
    return done
