"""Where the Taichi backend runs and how it launches a kernel.

* the architecture: ``configure(arch=...)`` or ``OFFPOLICY_TAICHI_ARCH`` (``cpu``, ``cuda``,
  ``vulkan``, ``auto``), Taichi started lazily on the first call, an architecture that cannot
  start refused (Taichi itself would silently fall back to the CPU), Taichi's offline cache kept
  per version of the kernel source;
* threads: at or below ``SERIAL_MAX`` elements (``SERIAL_MAX_FEW_THREADS`` with at most 2 CPUs)
  the CPU forms run on the calling thread (a serial build of the same kernel, the same bytes);
  above it one block of streams per core; ``force_form`` / ``force_threads`` pin a form or the
  threads (tests, the benchmark);
* launching: Taichi's generic kernel call costs tens of microseconds per array argument in
  Python; ``launch`` builds the launch context directly (the same C++ calls).

The measurements behind the thresholds are in ``reports/bench/taichi_notes.md``.
"""

from __future__ import annotations

import contextlib
import os
import sys

import numpy as np

ARCHS = ("cpu", "cuda", "vulkan", "auto")
ENV_ARCH = "OFFPOLICY_TAICHI_ARCH"


# arch: the running arch name once initialised
arch_state: dict[str, str | None] = {"requested": None, "arch": None}


launchers: dict = {}


# tests and the benchmark pick a kernel form ("state") and serial or parallel blocks ("threads")
forced_forms: dict[str, str | None] = {"state": None, "threads": None}


# at or below this many elements (T*B) the CPU forms run on the calling thread: waking Taichi's
# thread pool costs more than such a batch takes (reports/bench/taichi_notes.md)
SERIAL_MAX = {"gae": 65536, "log_ratio": 32768, "action": 16384}
# with at most 2 threads the pool is used only from this size on: on a 2-vCPU machine a second
# thread did not pay at any benchmark size, and when the other core is busy a parallel launch
# waits for its straggler (the measurements: reports/bench/taichi_notes.md)
SERIAL_MAX_FEW_THREADS = 1 << 22


def configure(arch: str | None = None) -> None:
    """Choose the Taichi architecture (``cpu``, ``cuda``, ``vulkan``, ``auto``); ``None``
    goes back to ``OFFPOLICY_TAICHI_ARCH`` (default ``cpu``). Takes effect on the next call; if
    Taichi is already running on another architecture it is restarted."""
    if arch is not None and arch not in ARCHS:
        raise ValueError(f"arch: must be one of {ARCHS}, got {arch!r}")
    arch_state["requested"] = arch
    if arch_state["arch"] is not None and arch is not None and arch != arch_state["arch"]:
        _shutdown()


def current_arch() -> str:
    """The architecture the backend runs on (initialising Taichi if needed): cpu, cuda, vulkan."""
    return ensure_init()


def _shutdown() -> None:
    if arch_state["arch"] is not None:
        import taichi as ti

        ti.reset()
    arch_state["arch"] = None
    launchers.clear()


def requested_arch() -> str:
    arch = arch_state["requested"] or os.environ.get(ENV_ARCH, "cpu").strip().lower() or "cpu"
    if arch not in ARCHS:
        raise ValueError(f"{ENV_ARCH}: must be one of {ARCHS}, got {arch!r}")
    return arch


def ensure_init() -> str:
    if arch_state["arch"] is not None:
        return arch_state["arch"]
    want = requested_arch()
    import taichi as ti
    from taichi.lang import impl

    choices = {"cpu": [ti.cpu], "cuda": [ti.cuda], "vulkan": [ti.vulkan],
               "auto": [ti.cuda, ti.vulkan, ti.cpu]}[want]
    ti.init(
        arch=choices if len(choices) > 1 else choices[0],
        offline_cache=True,
        offline_cache_file_path=_cache_dir(),
        fast_math=False,  # NaN checks and IEEE semantics must survive compilation
        real_matrix_scalarize=False,  # real <4 x float> vector code for the CPU fast form
        log_level=ti.WARN,
    )
    got = impl.current_cfg().arch
    names = {ti.x64: "cpu", ti.arm64: "cpu", ti.cuda: "cuda", ti.vulkan: "vulkan"}
    name = names.get(got, str(got))
    if want != "auto" and name != want:
        ti.reset()
        raise RuntimeError(
            f"Taichi could not start on arch {want!r} (it fell back to {name!r}); check the "
            f"driver/device, or set {ENV_ARCH}=cpu or auto"
        )
    arch_state["arch"] = name
    return name


def _cache_dir() -> str:
    """Taichi's offline cache, one folder per version of the kernel source: Taichi's own key
    does not always see a change inside a ``@ti.func``, so a stale kernel could be reused."""
    import hashlib

    folder = os.path.join(os.path.dirname(__file__), "_kernels")
    h = hashlib.sha1()
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            with open(os.path.join(folder, name), "rb") as f:
                h.update(name.encode() + b"\0" + f.read())
    digest = h.hexdigest()[:12]
    base = os.environ.get("OFFPOLICY_TAICHI_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "offpolicy", "taichi"))
    return os.path.join(base, digest)


def kernels():
    """The kernel factories (``estimators.taichi._kernels``), imported once Taichi runs."""
    if arch_state["arch"] is None:
        ensure_init()
    module = sys.modules.get(_KERNELS_MODULE)
    if module is None:
        from . import _kernels as module
    return module


_KERNELS_MODULE = __name__.rsplit(".", 1)[0] + "._kernels"


class _Launcher:
    def __init__(self, kernel, args):
        self.kernel = kernel
        self.fast = None
        try:
            from taichi.lang import impl

            primal = kernel._primal
            key = primal.ensure_compiled(*args)
            self.t_kernel = primal.compiled_kernels[key]
            self.prog = impl.get_runtime().prog
            self.compiled = self.prog.compile_kernel(
                self.prog.config(), self.prog.get_device_caps(), self.t_kernel)
            self.fast = True
        except (AttributeError, KeyError, TypeError):  # another Taichi version's internals
            self.fast = False

    def __call__(self, args):
        if not self.fast:
            self.kernel(*_arrays(args))
            return
        ctx = self.t_kernel.make_launch_context()
        for i, a in enumerate(args):
            if isinstance(a, _Dummy):
                ctx.set_arg_external_array_with_shape((i,), a.ptr, a.nbytes, a.shape, 0)
            elif isinstance(a, np.ndarray):
                ctx.set_arg_external_array_with_shape((i,), a.ctypes.data, a.nbytes, a.shape, 0)
            elif isinstance(a, float):
                ctx.set_arg_float((i,), a)
            elif isinstance(a, int):
                ctx.set_arg_int((i,), a)
            else:  # a torch tensor (CUDA): pass its device pointer
                ctx.set_arg_external_array_with_shape(
                    (i,), int(a.data_ptr()), a.element_size() * a.nelement(), tuple(a.shape), 0)
        self.prog.launch_kernel(self.compiled, ctx)


class _Dummy:
    """A 1-element (or one 4-vector) argument a kernel never reads nor writes, shared by every
    call, its pointer resolved once (``a.ctypes.data`` costs about a microsecond a call)."""

    __slots__ = ("array", "ptr", "nbytes", "shape")

    def __init__(self, array, shape):
        self.array = array
        self.ptr = array.ctypes.data
        self.nbytes = array.nbytes
        self.shape = shape


_DUMMIES: dict = {}


def shared_dummy(dtype, lanes=1):
    """The shared never-read argument of ``dtype``: ``[1]`` (lanes 1) or ``[1, 4]`` (4)."""
    key = (dtype, lanes)  # dtype: the compute dtype, np.float32 or np.float64
    dummy = _DUMMIES.get(key)
    if dummy is None:
        array = np.zeros((1,) if lanes == 1 else (1, lanes), dtype)
        dummy = _DUMMIES[key] = _Dummy(array, (1,))
    return dummy


def _arrays(args):
    return [a.array if isinstance(a, _Dummy) else a for a in args]


def launch(kernel, args, vec4=False):
    key = (id(kernel), vec4)
    launcher = launchers.get(key)
    if launcher is None:
        launcher = launchers[key] = _Launcher(kernel, _arrays(args))
    if vec4 and launcher.fast:
        # vector-typed arrays are [n, 4] numpy arrays; Taichi wants the outer shape only
        args = [_Vec4View(a) if isinstance(a, np.ndarray) and a.ndim == 2 else a for a in args]
        _launch_vec4(launcher, args)
    else:
        launcher(args)


class _Vec4View:
    __slots__ = ("a",)

    def __init__(self, a):
        self.a = a


def _launch_vec4(launcher, args):
    ctx = launcher.t_kernel.make_launch_context()
    for i, a in enumerate(args):
        if isinstance(a, _Dummy):
            ctx.set_arg_external_array_with_shape((i,), a.ptr, a.nbytes, a.shape, 0)
        elif isinstance(a, _Vec4View):
            a = a.a
            ctx.set_arg_external_array_with_shape((i,), a.ctypes.data, a.nbytes, a.shape[:1], 0)
        elif isinstance(a, np.ndarray):
            ctx.set_arg_external_array_with_shape((i,), a.ctypes.data, a.nbytes, a.shape, 0)
        elif isinstance(a, float):
            ctx.set_arg_float((i,), a)
        else:
            ctx.set_arg_int((i,), a)
    launcher.prog.launch_kernel(launcher.compiled, ctx)


def ti_dtype(dtype):
    import taichi as ti

    return ti.f32 if dtype == np.float32 else ti.f64


_NTHREADS: list[int] = []


def nthreads() -> int:
    """The CPUs this process may run on (read once)."""
    if not _NTHREADS:
        try:
            _NTHREADS.append(max(1, len(os.sched_getaffinity(0))))
        except AttributeError:  # pragma: no cover - not Linux
            _NTHREADS.append(max(1, os.cpu_count() or 1))
    return _NTHREADS[0]


@contextlib.contextmanager
def force_threads(threads):
    """Force the CPU forms' blocks to run 'serial' (on the calling thread) or 'parallel' (on
    Taichi's thread pool); None: chosen by size (``serial_for``)."""
    old = forced_forms["threads"]
    forced_forms["threads"] = threads
    try:
        yield
    finally:
        forced_forms["threads"] = old


def serial_for(n, family) -> bool:
    """Whether the CPU forms run serially for ``n`` = T*B elements of ``family`` (gae,
    log_ratio, action): below the crossover the pool's wake-up costs more than the second core
    saves."""
    forced = forced_forms["threads"]
    if forced is not None:
        return forced == "serial"
    return n <= (SERIAL_MAX[family] if nthreads() > 2 else SERIAL_MAX_FEW_THREADS)


def block_size(count, serial, low, high) -> int:
    """Streams (or 4-lane groups) per block of a CPU form: all ``count`` on the calling thread
    when ``serial``, else an even share per pool thread kept within [``low``, ``high``]."""
    # never 0: the kernels divide by it (B = 0 on the calling thread died by SIGFPE)
    return max(1, count) if serial else min(high, max(low, -(-count // nthreads())))


@contextlib.contextmanager
def force_form(form):
    """Force the state-value kernel form: 'vec4', 'rows', 'naive', 'chunked' (None: auto)."""
    old = forced_forms["state"]
    forced_forms["state"] = form
    try:
        yield
    finally:
        forced_forms["state"] = old
