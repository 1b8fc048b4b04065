"""Running the grid: serially or on a process pool, resumably, with a progress bar."""

from __future__ import annotations

import hashlib
import os
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from . import grid
from ._blas import single_thread
from .store import CellStore

# the code whose change invalidates stored cells (a changed file starts a fresh run directory)
_CODE = (
    "offpolicy/mdp.py", "offpolicy/policies.py", "offpolicy/exact.py", "offpolicy/sampler.py",
    "offpolicy/moments.py", "offpolicy/report/compute.py", "offpolicy/report/montecarlo.py",
    "offpolicy/report/grid.py", "estimators/numpy.py",
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


def _tasks(todo: list[dict], jobs: int) -> list[list[dict]]:
    """Group cells by their shared setup; split big groups so every worker has work."""
    groups: dict = {}
    for c in todo:
        groups.setdefault(grid.setup_key(c), []).append(c)
    size = max(1, min(64, len(todo) // max(1, 4 * jobs)))
    return [g[i:i + size] for g in groups.values() for i in range(0, len(g), size)]


def run_cells(cells: list[dict], store: CellStore, *, seed: int, mc_samples: int, jobs: int = 1,
              limit: int | None = None, progress: bool | None = None) -> int:
    """Compute the cells not yet in ``store`` (at most ``limit`` of them), appending each group
    as it finishes. Returns how many cells were computed."""
    todo = [c for c in cells if grid.cell_id(c) not in store]
    if limit is not None:
        todo = todo[:limit]
    if not todo:
        return 0
    if progress is None:
        progress = sys.stderr.isatty() and len(todo) > 50
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="cell", desc="report", file=sys.stderr,
                   initial=0, dynamic_ncols=True)
    done = 0
    tasks = _tasks(todo, jobs)
    try:
        if jobs <= 1:
            for t in tasks:
                for rec in _compute_group(t, seed, mc_samples):
                    store.add(rec)
                done += len(t)
                if bar:
                    bar.update(len(t))
        else:
            with ProcessPoolExecutor(max_workers=jobs, initializer=single_thread) as pool:
                pending = {pool.submit(_compute_group, t, seed, mc_samples) for t in tasks}
                try:
                    while pending:
                        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for f in finished:
                            recs = f.result()
                            for rec in recs:
                                store.add(rec)
                            done += len(recs)
                            if bar:
                                bar.update(len(recs))
                except BaseException:
                    for f in pending:
                        f.cancel()
                    raise
    finally:
        if bar:
            bar.close()
    return done
