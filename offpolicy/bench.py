"""Benchmark every estimator on every backend: ``python -m offpolicy.bench``.

For each size (B x T, streams x steps; default 4096x128, 1024x1024, 128x4096, 64x64, and the
small batches of issue 11: 16x128 and 4x128, that is 128 steps of 16 or 4 environments as in
CleanRL, and 128x16 and 128x4, the same numbers read as B x T), float32 inputs, and each
estimator: every backend's first call is timed on its own (for Taichi: JIT compile, or a load
from Taichi's offline cache when an earlier process compiled it; for rlax: the ``jax.jit``
compile), then, after a warm-up call, all backends and the copy floor are timed in ``--rounds``
interleaved rounds (the order rotating), ``--repeats`` calls each in all, and the median is
reported; the 1-minute load average is recorded before and after each cell's rounds, and the
number of CPUs with the table, so that a ratio measured on a busy machine says so. Columns:

* ``speedup_vs_numpy``: the numpy reference (``estimators.numpy``, float64, validated) time
  divided by this backend's time, measured in the same process;
* ``speedup_vs_loop``: the same against ``numpy-loop``, the bare float32 loop over T vectorised
  over B, with no validation or conversion (GAE and V-trace only): the yardstick of issue 7;
* ``x_copy_floor``: this backend's time divided by the time ``np.copyto`` takes to copy the
  estimator's input bytes (a memory-traffic floor for a one-pass kernel);
* ``speedup_vs_best_peer`` (``best_peer``): the fastest peer's time at that size and estimator
  divided by this backend's time (above 1: faster than every peer), when a peer ran.

Backends: ``numpy``, ``numpy-loop``, ``torch`` (CPU), ``taichi`` (its automatic kernel form),
``taichi-naive`` (one thread per stream walking T, to show why the lockstep form exists), and
peers when installed (never required; a missing one is skipped), each in every layout its users
call it in, the fastest of them the yardstick: ``torchrl-bm`` / ``torchrl-tm`` (functional
``generalized_advantage_estimate`` and ``vtrace_advantage_estimate`` on ``[B, T, 1]`` with
``time_dim=-2``, or ``[T, B, 1]`` with ``time_dim=0``), ``torchrl-vec-bm`` / ``torchrl-vec-tm``
(``vec_generalized_advantage_estimate``), and ``rlax-tm`` / ``rlax-bm``
(``truncated_generalized_advantage_estimation`` and ``vtrace`` with per-step lambda cut at
episode ends, under ``jax.jit``, ``jax.vmap``-ed over axis 1 of ``[T, B]`` arrays, as
acme-style learners call them, or over axis 0 of ``[B, T]``; timed with
``block_until_ready``). Peer inputs are made outside the timing, in the peer's layout.

Writes ``bench.csv`` and ``bench.md`` under ``--out`` (default ``offpolicy-out/bench/``,
git-ignored; the committed tables change only with ``--out reports/bench``). Exit codes: 0 done,
1 a cell failed (one line; the rows measured before it are written, marked partial), 2 bad
arguments, an unwritable ``--out`` or a size whose estimated memory (``BYTES_PER_ELEMENT`` per
element) exceeds what is available (one line, checked before anything is timed), 130
interrupted by Ctrl-C or SIGTERM (one line; the rows measured so far are written).

The committed tables are one run, with the peers, from the repository root, in a peers'
environment (torch pinned to the CPU build, then ``pip install -e .[test] jax jaxlib rlax
torchrl tensordict``)::

    /work/venv-bench/bin/python -m offpolicy.bench --repeats 30 --rounds 6 --out reports/bench
"""

from __future__ import annotations

import argparse
import csv
import importlib
import os
import platform
import statistics
import sys
import time

import numpy as np

from offpolicy import registry

DEFAULT_SIZES = ((4096, 128), (1024, 1024), (128, 4096), (64, 64), (16, 128), (4, 128),
                 (128, 16), (128, 4))
QUICK_SIZES = ((64, 16), (8, 64))
ESTIMATORS = registry.names()  # every contract estimator (offpolicy.registry)
# peers in each layout their users call them in: ``-bm`` batch-major ([B, T]), ``-tm``
# time-major ([T, B]); "vs best peer" is against the fastest of them, named
PEERS = ("torchrl-bm", "torchrl-tm", "torchrl-vec-bm", "torchrl-vec-tm", "rlax-tm", "rlax-bm")
BACKENDS = ("numpy", "numpy-loop", "torch", "taichi", "taichi-naive") + PEERS
# the two trace recursions (docs/DESIGN.md section 2), the estimators taichi-naive covers
STATE = {n for n in registry.names("state") if "values" in registry.lookup(n).inputs}
ACTION = set(registry.names("action"))
GAMMA, LAM, NSTEP, H = 0.99, 0.95, 5, 8
DEFAULT_OUT = os.path.join("offpolicy-out", "bench")  # git-ignored: never the committed tables


# ---------------------------------------------------------------------------------------------
# inputs and calls


def make_inputs(B, T, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    f = lambda scale=1.0: (scale * rng.standard_normal((T, B))).astype(dtype)
    return dict(
        rewards=f(), values=f(), next_values=f(), q_taken=f(), next_expected_q=f(),
        log_rhos=f(0.3), terminated=rng.random((T, B)) < 0.01,
        truncated=rng.random((T, B)) < 0.005,
        target_probs_taken=rng.random((T, B)).astype(dtype),
        traces=rng.random((T, B)).astype(dtype),
        reward_mean=(0.1 * rng.standard_normal((T, B, H))).astype(dtype),
        reward_std=(0.5 + rng.random((T, B, H))).astype(dtype),
    )


def call_args(name, d):
    """(positional arrays, keyword arguments) of estimator ``name``: its registry inputs in
    call order, and the benchmark's gamma, lam, n and P3O batch std where it takes them."""
    info = registry.lookup(name)
    given = dict(gamma=GAMMA, lam=LAM, n=NSTEP, batch_reward_std=1.0)
    return (tuple(d[k] for k in info.inputs),
            {k: v for k, v in given.items() if k in info.params})


def numpy_loop(name, d):
    """The bare float32 reference loop (GAE and V-trace): a loop over T vectorised over B."""
    r, v, nv = d["rewards"], d["values"], d["next_values"]
    te, tr = d["terminated"], d["truncated"]
    T = r.shape[0]
    g = np.float32(GAMMA)
    gl = np.float32(GAMMA * LAM)
    if name == "gae":
        def run():
            delta = r + g * np.where(te, np.float32(0), nv) - v
            coef = np.where(te | tr, np.float32(0), gl)
            adv = np.empty_like(r)
            a = np.zeros_like(r[0])
            for t in range(T - 1, -1, -1):
                a = delta[t] + coef[t] * a if t < T - 1 else delta[t]
                adv[t] = a
            return adv, adv + v
        return run
    if name == "vtrace":
        lr = d["log_rhos"]

        def run():
            rho = np.exp(lr)
            rh = np.minimum(np.float32(1), rho)
            boot = np.where(te, np.float32(0), nv)
            delta = rh * (r + g * boot - v)
            coef = np.where(te | tr, np.float32(0), gl * rh)
            adv = np.empty_like(r)
            a = np.zeros_like(r[0])
            for t in range(T - 1, -1, -1):
                a = delta[t] + coef[t] * a if t < T - 1 else delta[t]
                adv[t] = a
            vt = adv + v
            nxt = np.concatenate([vt[1:], np.zeros_like(vt[:1])])
            kappa = ~(te | tr)
            kappa[-1] = False
            q = r + g * np.where(kappa, np.float32(LAM) * nxt + np.float32(1 - LAM) * boot, boot)
            return adv, vt, rh * (q - v)
        return run
    return None


def backend_call(backend, name, d):
    """A zero-argument callable running ``name`` on ``backend``, or None if not available."""
    if backend == "numpy-loop":
        return numpy_loop(name, d)
    if backend in ("numpy", "torch", "taichi", "taichi-naive"):
        module = importlib.import_module(
            "estimators." + ("taichi" if backend.startswith("taichi") else backend))
        fn = getattr(module, name)
        args, kwargs = call_args(name, d)
        if backend == "torch":
            torch = importlib.import_module("torch")
            args = tuple(torch.from_numpy(x) for x in args)
        if backend == "taichi-naive":
            if name not in STATE | ACTION:
                return None
            form = module._form

            def run():
                with form("naive"):
                    return fn(*args, **kwargs)
            return run
        return lambda: fn(*args, **kwargs)
    if backend.startswith("torchrl"):
        return _torchrl_call(name, d, vectorised="-vec" in backend,
                             time_major=backend.endswith("-tm"))
    if backend.startswith("rlax"):
        return _rlax_call(name, d, time_major=backend.endswith("-tm"))
    raise ValueError(f"unknown backend {backend!r}")


def _torchrl_call(name, d, vectorised=False, time_major=False):
    """TorchRL's functional estimators on ``[B, T, 1]`` tensors with ``time_dim=-2`` (the layout
    of its tensordicts and value modules), or ``[T, B, 1]`` with ``time_dim=0``; the inputs are
    prepared outside the timing."""
    if name not in ("gae", "vtrace") or (vectorised and name != "gae"):
        return None
    try:
        F = importlib.import_module("torchrl.objectives.value.functional")
        torch = importlib.import_module("torch")
    except ImportError:
        return None
    if time_major:
        lay = lambda x: torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(-1)  # [T, B, 1]
        time_dim = 0
    else:
        lay = lambda x: torch.from_numpy(np.ascontiguousarray(x.T)).unsqueeze(-1)  # [B, T, 1]
        time_dim = -2
    r, v, nv = lay(d["rewards"]), lay(d["values"]), lay(d["next_values"])
    term = lay(d["terminated"])
    done = lay(d["terminated"] | d["truncated"])
    if name == "gae":
        gae = (F.vec_generalized_advantage_estimate if vectorised
               else F.generalized_advantage_estimate)
        return lambda: gae(GAMMA, LAM, v, nv, r, done, term, time_dim=time_dim)
    log_pi, log_mu = lay(d["log_rhos"]), torch.zeros_like(r)
    return lambda: F.vtrace_advantage_estimate(GAMMA, log_pi, log_mu, v, nv, r, done, term,
                                               time_dim=time_dim)


def _rlax_call(name, d, time_major=False):
    """rlax's per-stream functions under ``jax.jit``, ``jax.vmap``-ed over the streams: over
    axis 1 of ``[T, B]`` arrays (time-major, as acme-style learners call them) or axis 0 of
    ``[B, T]`` arrays (batch-major); JAX arrays made outside the timing."""
    if name not in ("gae", "vtrace"):
        return None
    try:
        rlax = importlib.import_module("rlax")
        jax = importlib.import_module("jax")
        jnp = importlib.import_module("jax.numpy")
    except ImportError:
        return None
    # rlax works per stream [T]; discount_t = gamma * not terminated, and lambda_t = 0 at cuts
    lay = (lambda x: jnp.asarray(np.ascontiguousarray(x))) if time_major else \
        (lambda x: jnp.asarray(np.ascontiguousarray(x.T)))
    axis = 1 if time_major else 0
    cat = lambda a, b: jnp.concatenate([a, b], axis=1 - axis)  # along T
    last = (lambda x: x[-1:]) if time_major else (lambda x: x[:, -1:])
    r, v, nv = lay(d["rewards"]), lay(d["values"]), lay(d["next_values"])
    disc = lay((GAMMA * ~d["terminated"]).astype(np.float32))
    lam = lay((LAM * ~(d["terminated"] | d["truncated"])).astype(np.float32))
    values = cat(v, last(nv))
    vmap = lambda f: jax.jit(jax.vmap(f, in_axes=axis, out_axes=axis))
    if name == "gae":
        gae_fn = rlax.truncated_generalized_advantage_estimation
        f = vmap(lambda r_, d_, l_, vals: gae_fn(r_, d_, l_, vals))
        return lambda: f(r, disc, lam, values).block_until_ready()
    lr = lay(d["log_rhos"])
    # the ratio is taken inside the compiled function (our backends take log-ratios too)
    f = vmap(lambda v_, r_, d_, lr_, l_: rlax.vtrace(v_[:-1], v_[1:], r_, d_, jnp.exp(lr_),
                                                     lambda_=l_))
    return lambda: f(values, r, disc, lr, lam).block_until_ready()


# ---------------------------------------------------------------------------------------------
# timing


def input_bytes(name, d):
    args, _ = call_args(name, d)
    return int(sum(np.asarray(x).nbytes for x in args))


def copy_floor_call(nbytes):
    """``np.copyto`` of ``nbytes`` bytes: the memory-traffic floor of a one-pass kernel."""
    src = np.ones(max(nbytes, 1), dtype=np.uint8)
    dst = np.empty_like(src)
    return lambda: np.copyto(dst, src)


def interleaved(fns, repeats, rounds, budget_s=3.0):
    """Time every callable of ``fns`` in ``rounds`` interleaved rounds (each round runs every
    callable in turn, the order rotating from round to round, about ``repeats / rounds`` calls
    each, at most ``budget_s / rounds`` seconds per callable and round), so that a slow window
    of a busy machine falls on every backend alike. Returns {key: (median, min, calls)} in ms;
    every callable has been called once (warm-up) before."""
    keys = list(fns)
    per_round = max(1, -(-repeats // rounds))
    times: dict = {k: [] for k in keys}
    for rnd in range(rounds):
        shift = rnd % len(keys) if keys else 0
        for k in keys[shift:] + keys[:shift]:
            fn = fns[k]
            start = time.perf_counter()
            for i in range(per_round):
                t0 = time.perf_counter()
                fn()
                t1 = time.perf_counter()
                times[k].append((t1 - t0) * 1e3)
                if i >= 1 and t1 - start > budget_s / rounds:
                    break
    return {k: (statistics.median(v), min(v), len(v)) for k, v in times.items()}


def _load():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover - not available on this platform
        return None


def run(sizes, estimators, backends, repeats, log=print, rows=None, rounds=5):
    """The rows of every (size, estimator, backend) cell, appended to ``rows`` (a new list by
    default) as each cell is measured: when a later size fails, the caller still holds the
    cells measured before it. Per size and estimator: every backend's first call timed alone
    (compile), one warm-up call, then ``interleaved`` rounds with the copy floor among them;
    the 1-minute load average is recorded before and after."""
    rows = [] if rows is None else rows
    for B, T in sizes:
        d = make_inputs(B, T)
        for name in estimators:
            nbytes = input_bytes(name, d)
            fns, first = {}, {}
            for backend in backends:
                try:
                    fn = backend_call(backend, name, d)
                except ImportError:
                    fn = None
                if fn is None:
                    continue
                t0 = time.perf_counter()
                fn()
                first[backend] = (time.perf_counter() - t0) * 1e3
                fn()  # warm-up
                fns[backend] = fn
            floor = copy_floor_call(nbytes)
            floor()
            fns[_FLOOR] = floor
            load_before = _load()
            timed = interleaved(fns, repeats, rounds)
            load_after = _load()
            floor_ms = timed.pop(_FLOOR)[0]
            results = {b: (*timed[b], first[b]) for b in timed}
            ref_ms = results.get("numpy", (None,))[0]
            loop_ms = results.get("numpy-loop", (None,))[0]
            peers = {b: results[b][0] for b in PEERS if b in results}
            best_peer = min(peers, key=peers.__getitem__) if peers else None
            peer_ms = peers.get(best_peer)
            for backend, (med, best, n, first_ms) in results.items():
                row = dict(
                    estimator=name, backend=backend, B=B, T=T, dtype="float32",
                    median_ms=round(med, 4), min_ms=round(best, 4), repeats=n,
                    first_call_ms=round(first_ms, 2),
                    speedup_vs_numpy=_ratio(ref_ms, med), speedup_vs_loop=_ratio(loop_ms, med),
                    x_copy_floor=_ratio(med, floor_ms), copy_floor_ms=round(floor_ms, 4),
                    speedup_vs_best_peer=_ratio(peer_ms, med), best_peer=best_peer or "",
                    input_bytes=nbytes, load_before=load_before, load_after=load_after,
                )
                rows.append(row)
                log(f"{B:>5}x{T:<5} {name:<22} {backend:<14} {med:9.3f} ms  "
                    f"(first {first_ms:8.1f} ms)  vs numpy x{_cell(row['speedup_vs_numpy'])}  "
                    f"vs loop x{_cell(row['speedup_vs_loop'])}  "
                    f"copy floor x{_cell(row['x_copy_floor'])}  "
                    f"vs best peer x{_peer_cell(row)}  load {load_before}->{load_after}")
    return rows


_FLOOR = object()  # the copy floor's key among the interleaved callables


def _ratio(a, b):
    """a / b to 2 decimals (2 significant digits below 0.1, so that no ratio reads 0.0)."""
    if a is None or b is None or b <= 0:
        return None
    x = a / b
    return round(x, 2) if x >= 0.1 else float(f"{x:.2g}")


def _cell(x):
    return "-" if x is None else f"{x}"


# ---------------------------------------------------------------------------------------------
# output


FIELDS = ("estimator", "backend", "B", "T", "dtype", "median_ms", "min_ms", "repeats",
          "first_call_ms", "speedup_vs_numpy", "speedup_vs_loop", "x_copy_floor",
          "copy_floor_ms", "speedup_vs_best_peer", "best_peer", "input_bytes", "load_before",
          "load_after")


def write(rows, out, meta):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "bench.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    note = meta.get("status") or ""
    status = [f"**{note[:1].upper() + note[1:]}**: the rows below are what was measured.", ""] \
        if note else []
    lines = ["# Estimator benchmark", "", f"Command: `{meta['command']}`", "", *status,
             f"Machine: {meta['machine']}; Python {meta['python']}; numpy {meta['numpy']}; "
             f"{meta['versions']}.", "",
             "Times are medians in ms (float32 inputs). `vs numpy`: speed-up over the numpy "
             "reference (float64, validated); `vs loop`: over the bare float32 numpy loop; "
             "`x floor`: time / the time to copy the input bytes with `np.copyto`; "
             "`vs best peer`: speed-up over the fastest peer library at that size and estimator "
             "(named; above 1 is faster than it). "
             "`first`: the first call in the process (Taichi: compile or offline-cache load; "
             "rlax: `jax.jit` compile), kept apart from the median. "
             "Peers run in each layout their users call them in: `-bm` batch-major "
             "(`[B, T]`), `-tm` time-major (`[T, B]`; rlax `jax.vmap(in_axes=1)`, TorchRL "
             "`time_dim=0`); `-vec`: TorchRL's vectorised GAE. "
             f"Every cell's backends (and the copy floor) ran in {meta.get('rounds', '?')} "
             "interleaved rounds; `load` is the 1-minute load average before and after the "
             "cell's rounds.",
             "", f"Load: {meta.get('load', '?')}.", "", *targets(rows), ""]
    sizes = list(dict.fromkeys((r["B"], r["T"]) for r in rows))
    for B, T in sizes:
        lines += [f"## B x T = {B} x {T}", "",
                  "| estimator | backend | median ms | first ms | vs numpy | vs loop | x floor "
                  "| vs best peer | load |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            if (r["B"], r["T"]) != (B, T):
                continue
            fmt = _cell
            lines.append(f"| {r['estimator']} | {r['backend']} | {r['median_ms']:.3f} | "
                         f"{r['first_call_ms']:.1f} | {fmt(r['speedup_vs_numpy'])} | "
                         f"{fmt(r['speedup_vs_loop'])} | {fmt(r['x_copy_floor'])} | "
                         f"{_peer_cell(r)} | {r['load_before']}-{r['load_after']} |")
        lines.append("")
    with open(os.path.join(out, "bench.md"), "w") as f:
        f.write("\n".join(lines))


def _row(rows, name, backend, size):
    return next((r for r in rows if r["estimator"] == name and r["backend"] == backend
                 and (r["B"], r["T"]) == size), None)


def targets(rows):
    """The issue-24 targets, read off ``rows`` (markdown lines; a cell not measured says so)."""
    out = ["## Targets (issue 24)", "",
           "| target | size | estimator | measured | met |", "|---|---|---|---:|---|"]

    def line(target, size, name, value, ok):
        out.append(f"| {target} | {size[0]}x{size[1]} | {name} | {value} | "
                   f"{'-' if ok is None else 'yes' if ok else 'NO'} |")

    sizes = list(dict.fromkeys((r["B"], r["T"]) for r in rows))
    for size in sizes:
        for name in ("gae", "vtrace"):
            r = _row(rows, name, "taichi", size)
            if r is None or r["best_peer"] == "":
                continue
            rlax = [p for p in rows if p["estimator"] == name and (p["B"], p["T"]) == size
                    and p["backend"].startswith("rlax")]
            if not rlax:
                continue
            fast = min(rlax, key=lambda p: p["median_ms"])
            x = _ratio(fast["median_ms"], r["median_ms"])
            want = 1.5 if size in ((4096, 128), (1024, 1024)) else 1.0
            line(f"taichi >= {want}x rlax's best layout", size, name,
                 f"{x}x ({fast['backend']})", x is not None and x >= want)
    r = _row(rows, "gae", "taichi", (4096, 128))
    if r is not None:
        line("taichi <= 1.3x copy floor", (4096, 128), "gae", f"{r['x_copy_floor']}x",
             r["x_copy_floor"] is not None and r["x_copy_floor"] <= 1.3)
    r = _row(rows, "vtrace", "taichi", (128, 4096))
    if r is not None:
        line("taichi >= 8x numpy loop", (128, 4096), "vtrace", f"{r['speedup_vs_loop']}x",
             r["speedup_vs_loop"] is not None and r["speedup_vs_loop"] >= 8)
    for size in sizes:
        for name in ("gae", "vtrace"):
            slow = [r for r in rows if r["estimator"] == name and (r["B"], r["T"]) == size
                    and r["backend"] in ("torch", "taichi") and r["speedup_vs_loop"] is not None]
            for r in slow:
                line(f"{r['backend']} no slower than numpy loop", size, name,
                     f"{r['speedup_vs_loop']}x", r["speedup_vs_loop"] >= 1.0)
    return out


def _peer_cell(row):
    if row["speedup_vs_best_peer"] is None:
        return "-"
    return f"{row['speedup_vs_best_peer']} ({row['best_peer']})"


def _versions():
    out = []
    for mod in ("torch", "taichi", "torchrl", "jax", "rlax"):
        m = sys.modules.get(mod)
        if m is not None:
            v = getattr(m, "__version__", None)
            if isinstance(v, tuple):
                v = ".".join(map(str, v))
            threads = f" ({m.get_num_threads()} threads)" if mod == "torch" else ""
            out.append(f"{mod} {v}{threads}")
    return ", ".join(out) or "no optional libraries"


# bytes of memory one element (one step of one stream) of a size may take at the peak: the
# float32 inputs (8 [T, B] arrays, 2 bool flags, P3O's two [T, B, H] predictions: ~98 bytes),
# numpy's float64 temporaries while making them, the reference's float64 copies (P3O's [T, B, H]
# weights dominate, ~260 bytes), and the outputs and peer copies of the fastest backends
BYTES_PER_ELEMENT = 512


def available_memory():
    """Bytes of memory this process may still use (MemAvailable, capped by a cgroup v2 limit),
    or None when the platform does not say."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max":
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return avail


def memory_problem(sizes, available):
    """One line naming the first size whose estimated peak memory exceeds ``available`` bytes
    (``BYTES_PER_ELEMENT`` per element), or None (also when ``available`` is unknown)."""
    if available is None:
        return None
    for B, T in sizes:
        need = B * T * BYTES_PER_ELEMENT
        if need > available:
            return (f"--sizes: {B}x{T} needs about {_gib(need)} of memory "
                    f"({BYTES_PER_ELEMENT} bytes per element), {_gib(available)} available")
    return None


def _gib(nbytes):
    return f"{nbytes / 2**30:.3g} GiB"


def parse_sizes(text):
    sizes = []
    for part in text.split(","):
        try:
            b, t = part.lower().split("x")
            size = (int(b), int(t))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not BxT (e.g. 64x16)") from None
        if min(size) < 1:
            raise argparse.ArgumentTypeError(f"{part!r}: B and T must be >= 1")
        sizes.append(size)
    return tuple(sizes)


def main(argv=None):
    from offpolicy._cli import OneLineParser, UsageError, parse_names, usage_error, writable_dir

    p = OneLineParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=parse_sizes, default=None,
                   help="comma-separated BxT list (default: "
                   + ",".join(f"{b}x{t}" for b, t in DEFAULT_SIZES) + ")")
    p.add_argument("--estimators", default=",".join(ESTIMATORS))
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--repeats", type=int, default=None, help="timed calls per cell (default 15)")
    p.add_argument("--rounds", type=int, default=5,
                   help="interleaved rounds per cell (default 5; the repeats are split over them)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--quick", action="store_true", help="tiny sizes, 3 repeats (a smoke run)")
    a = p.parse_args(argv)
    sizes = a.sizes or (QUICK_SIZES if a.quick else DEFAULT_SIZES)
    repeats = a.repeats or (3 if a.quick else 15)
    try:  # contract names, or the registry's aliases (puff, nstep, pdis, p3o, qtrace)
        estimators = list(parse_names(a.estimators, ESTIMATORS, "--estimators",
                                      aliases=registry.ALIASES))
    except UsageError as e:
        p.error(str(e))
    backends = [b for b in a.backends.split(",") if b]
    for b in backends:
        if b not in BACKENDS:
            p.error(f"--backends: unknown {b!r}; choose from {', '.join(BACKENDS)}")
    if a.repeats is not None and a.repeats < 1:
        p.error(f"--repeats: must be >= 1, got {a.repeats}")
    if a.rounds < 1:
        p.error(f"--rounds: must be >= 1, got {a.rounds}")
    if not estimators or not backends:
        p.error("--estimators/--backends: empty")
    problem = memory_problem(sizes, available_memory()) or writable_dir(a.out)
    if problem:  # before the benchmark runs, not after
        raise SystemExit(usage_error(PROG, problem))
    rows: list = []
    load_start = _load()
    command = f"{PROG} " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        run(sizes, estimators, backends, repeats, rows=rows, rounds=a.rounds)
    except KeyboardInterrupt:
        # one line, no traceback; the cells measured so far are kept
        _write_partial(rows, a.out, command, "interrupted")
        print(f"\n{PROG}: interrupted; {_kept(rows, a.out)}", file=sys.stderr)
        return 130  # run_main: exit 130, this line kept
    except Exception as e:  # noqa: BLE001 - any failure: one line, and what was measured
        what = f"{type(e).__name__}: {e}".strip().splitlines()[0]
        _write_partial(rows, a.out, command, f"failed ({what})")
        print(f"{PROG}: error: {what}; {_kept(rows, a.out)}", file=sys.stderr)
        raise SystemExit(1) from None
    meta = _meta(command)
    meta["rounds"] = a.rounds
    meta["load"] = f"1-minute load average {load_start} at the start, {_load()} at the end"
    write(rows, a.out, meta)
    print(f"wrote {os.path.join(a.out, 'bench.csv')} and bench.md")
    return rows


PROG = "python -m offpolicy.bench"


def _meta(command, status=None):
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    meta = dict(command=command,
                machine=f"{platform.machine()}, {os.cpu_count()} CPUs, {usable} usable by this "
                f"process ({platform.processor()})",
                python=platform.python_version(), numpy=np.__version__, versions=_versions())
    if status:
        meta["status"] = status
    return meta


def _write_partial(rows, out, command, status):
    if rows:
        write(rows, out, _meta(command, f"partial run, {status}"))


def _kept(rows, out):
    if not rows:
        return "nothing was measured, nothing written"
    return f"the {len(rows)} rows measured so far are in {os.path.join(out, 'bench.csv')}"


if __name__ == "__main__":
    from offpolicy._cli import run_main

    # Ctrl-C or kill anywhere (the imports included): one line, exit 130; while cells are
    # measured, main's own handler keeps what was measured and says so
    run_main(main, PROG)
