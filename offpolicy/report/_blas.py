"""One BLAS thread per process.

The report solves many small (at most a few hundred square) systems. With OpenBLAS's default
thread pool on a small machine every such call pays for waking and synchronising threads: on
the 2-core CI machine one 160x160 solve takes ~13 ms with the pool and ~0.7 ms without it.
Workers of ``--jobs N`` already run in parallel, so each process uses one BLAS thread.
"""

from __future__ import annotations

import ctypes
import os

_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
            "openblas_set_num_threads64_", "openblas_set_num_threads")


def single_thread() -> None:
    """Before numpy is loaded: set the environment. After: call OpenBLAS's own setter on the
    loaded library (found through /proc/self/maps on Linux; elsewhere a no-op)."""
    for v in _VARS:
        os.environ.setdefault(v, "1")
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({p for p in (ln.split()[-1] for ln in f)
                            if "openblas" in p.lower() and ".so" in p})
    except OSError:
        return
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _SETTERS:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn(1)
                break
