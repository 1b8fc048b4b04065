"""Taichi backend: every estimator of docs/DESIGN.md section 2 as a Taichi kernel.

The same functions, names and keyword arguments as ``estimators.numpy`` (the reference) and
``estimators.torch``. Inputs are numpy arrays, torch tensors or python lists, ``[T]`` or
``[T, B]`` (time-major; ``p3o_advantage``'s predictions add a trailing ``[H]``).

* **dtype**: computed in float32 when every float input is float32, otherwise in float64
  (integer and bool inputs count as neither). Outputs have that dtype.
* **numpy in -> numpy out; torch in -> torch out** on the input's device. CPU tensors are used
  in place (no copy); CUDA tensors are passed to Taichi's CUDA backend without a host round trip
  when the backend runs on CUDA, and are copied through the host otherwise.
* **Non-contiguous input** is made contiguous first (a copy).
* **Bad input** raises the same ``ValueError`` / ``TypeError`` as the other backends: shape,
  dtype and scalar checks run before the kernel (``estimators._validate``); the element checks
  (NaN/inf, log-ratios of +inf, traces out of range) run inside the kernel in the same pass as
  the computation, and when one fails ``estimators._validate`` is re-run to raise its message.
* **Overflow** raises too, as in the reference: the kernels flag a non-finite output in the
  same pass; with valid inputs only an overflow makes one (``exp(log_rhos)`` read unclipped,
  above ~709.78 in float64 or 88.5 in float32, where Taichi's float32 exp saturates; or a
  product of ratios), and ``ValueError`` naming ``log_rhos`` is raised. A huge log-ratio where
  the ratio is clipped (V-trace, Retrace) or never read (a cut trace) is fine.
* **Per-step gamma/lam**: ``gamma`` and ``lam`` may be numpy arrays or torch tensors
  broadcastable to the rewards' shape (see ``estimators.numpy``); they are broadcast to
  ``[T*B]`` buffers of the compute dtype and read by a separate build of each kernel
  (``per_step=True``), every form included. Scalars keep the scalar kernels (unchanged code,
  bit-identical outputs, same speed). gamma/lam arrays do not take part in choosing the dtype.

Taichi is initialised lazily, on the first call, never at import. The architecture comes from
``configure(arch=...)`` or else the environment variable ``OFFPOLICY_TAICHI_ARCH``: ``cpu`` (the
default), ``cuda``, ``vulkan`` or ``auto`` (CUDA, then Vulkan, then CPU). Asking for an
architecture Taichi cannot start raises ``RuntimeError`` (Taichi itself would silently fall back
to the CPU). Taichi's offline cache is on, so kernels compiled once are reused by later
processes (first-call compile time is paid once per machine).

**Gradients.** When a torch input requires grad (and grad mode is on), the outputs are torch
tensors carrying a graph, with the gradients of ``estimators.torch`` (see its docstring):
w.r.t. rewards, values, next_values, q_taken, next_expected_q, log_rhos, traces,
target_probs_taken, reward_mean, reward_std, and ``gamma``/``lam`` given as tensors (0-d or per
step); through a ``min`` clip the gradient is the selected branch's; entries never read
(``next_values`` / ``next_expected_q`` under ``terminated``, a trace coefficient across a done)
get a zero gradient, even when they hold NaN. The values are those of the no-grad call, byte
for byte (the same kernels run on the detached inputs, all checks included). The element-wise
parts (TD errors, clipped ratios, the trace factors ``gamma_t lam_t c_t kappa_t``) are torch
operations; the scan ``y_t = a_t + c_t y_{t+1}`` is a ``torch.autograd.Function`` whose backward
is the adjoint scan ``u_t = g_t + c_{t-1} u_{t-1}`` forwards in time (``dL/da_t = u_t``,
``dL/dc_t = u_t y_{t+1}``), a Taichi kernel of the same shape. ``nstep_returns`` and
``p3o_advantage`` (windowed sums, no scan) take the torch backend's graph for their gradient.
A numpy ``rewards`` with a tensor ``gamma`` that requires grad returns tensors.

**Kernel forms** (``estimators._taichi_kernels``) and when each is chosen:

* CPU, state-value trace (GAE, V-trace, puff advantage, per-decision IS): ``vec4`` (GAE) or
  ``vec8`` (the log-ratio modes), the lockstep form: blocks of streams, each walking t
  downwards over contiguous rows with 4- / 8-wide vector arithmetic, when the compute dtype is
  float32, B % 4 == 0 (B % 8 for ``vec8``) and the arrays are 16-byte aligned; otherwise
  ``rows``, the same walk one lane at a time.
* CPU, action-value trace: ``rows``.
* Threads: at or below ``SERIAL_MAX`` elements (T*B; per family) the CPU forms run on the
  calling thread (a serial build of the same kernel, bit-identical outputs): waking Taichi's
  thread pool costs ~30-80 us per call, more than such a batch takes; above it, one block of
  streams per core. With at most 2 CPUs the limit is ``SERIAL_MAX_FEW_THREADS`` (4M elements):
  on the 2-vCPU dev machine a second thread did not pay at any benchmark size, and lost 5-10x
  when the other core was busy. Outputs of 64 KiB and more start on a cache line.
* Lean path: numpy arrays (or CPU torch tensors) of one float dtype with bool flags,
  C-contiguous, with python-float gamma/lam and clips, take a one-pass path to the same kernel
  (same checks, no conversions, a launch context kept per kernel): a 64x64 GAE call takes
  ~0.03 ms instead of ~0.25 (torch tensors: ~0.09 before).
* GPU: ``naive`` (one thread per stream), or ``chunked`` (T cut into chunks, each reduced to an
  affine map, the maps composed, the chunks re-walked) when B < 2048 and T >= 256.

The per-call floor (2-vCPU dev machine, 128x4 GAE, lean path, ~20 us a call): Taichi's
``launch_kernel`` ~5-7 us, setting the 7 array arguments ~5-7 us, reading 7 numpy data
pointers (``ndarray.ctypes.data``) ~5-8 us, checks and allocation ~4 us. The bare numpy loop
over T = 4 takes ~10-18 us with no checks, so at B x T = 128 x 4 a call stays slower than it;
from T = 16 (128x16: parity) and at 64x64, 4x128 and 16x128 (2.5-8x faster) it is not.

On a CPU with few cores a chunked scan over T adds no parallelism once B >= 64 (the lockstep
form already gives every core a block of streams) and costs a second pass over memory; the
``chunked`` form stays a GPU form (forced on a CPU it is correct, and slow: scalar code).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from . import _validate
from ._types import GAEOutput, PDISOutput, VTraceOutput

if TYPE_CHECKING:
    import torch

__all__ = [
    "gae",
    "vtrace",
    "puff_advantage",
    "per_decision_is",
    "nstep_returns",
    "q_trace",
    "retrace",
    "tree_backup",
    "q_lambda",
    "importance_sampling_q",
    "p3o_advantage",
    "configure",
    "current_arch",
]

ARCHS = ("cpu", "cuda", "vulkan", "auto")
ENV_ARCH = "OFFPOLICY_TAICHI_ARCH"

# arch: the running arch name once initialised
_state: dict[str, str | None] = {"requested": None, "arch": None}
_launchers: dict = {}
# tests and the benchmark pick a kernel form ("state") and serial or parallel blocks ("threads")
_forced_form: dict[str, str | None] = {"state": None, "threads": None}
# at or below this many elements (T*B) the CPU forms run on the calling thread: waking Taichi's
# thread pool costs ~30-80 us per launch (measured on the 2-core dev machine, see _serial)
SERIAL_MAX = {"gae": 65536, "log_ratio": 32768, "action": 16384}
# with at most 2 threads the pool is used only from this size on: on the 2-vCPU dev machine a
# second thread did not pay at any benchmark size (best of 60 interleaved calls, loaded
# machine: GAE 128x4096 serial 0.67 ms / parallel 1.04, V-trace 1.25 / 2.57, GAE 1024x1024
# 1.28 / 3.11; idle, parallel V-trace 4096x128 took 1.1-1.45 ms against ~1.1-1.3 serial), and
# when the other core is busy a parallel launch waits for its straggler (medians 5-10x worse)
SERIAL_MAX_FEW_THREADS = 1 << 22


# ---------------------------------------------------------------------------------------------
# initialisation


def configure(arch: str | None = None) -> None:
    """Choose the Taichi architecture (``cpu``, ``cuda``, ``vulkan``, ``auto``); ``None``
    goes back to ``OFFPOLICY_TAICHI_ARCH`` (default ``cpu``). Takes effect on the next call; if
    Taichi is already running on another architecture it is restarted."""
    if arch is not None and arch not in ARCHS:
        raise ValueError(f"arch: must be one of {ARCHS}, got {arch!r}")
    _state["requested"] = arch
    if _state["arch"] is not None and arch is not None and arch != _state["arch"]:
        _shutdown()


def current_arch() -> str:
    """The architecture the backend runs on (initialising Taichi if needed): cpu, cuda, vulkan."""
    return _ensure_init()


def _shutdown() -> None:
    if _state["arch"] is not None:
        import taichi as ti

        ti.reset()
    _state["arch"] = None
    _launchers.clear()


def _requested_arch() -> str:
    arch = _state["requested"] or os.environ.get(ENV_ARCH, "cpu").strip().lower() or "cpu"
    if arch not in ARCHS:
        raise ValueError(f"{ENV_ARCH}: must be one of {ARCHS}, got {arch!r}")
    return arch


def _ensure_init() -> str:
    if _state["arch"] is not None:
        return _state["arch"]
    want = _requested_arch()
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
    _state["arch"] = name
    return name


def _cache_dir() -> str:
    """Taichi's offline cache, one folder per version of the kernel source: Taichi's own key
    does not always see a change inside a ``@ti.func``, so a stale kernel could be reused."""
    import hashlib

    src = os.path.join(os.path.dirname(__file__), "_taichi_kernels.py")
    with open(src, "rb") as f:
        digest = hashlib.sha1(f.read()).hexdigest()[:12]
    base = os.environ.get("OFFPOLICY_TAICHI_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "offpolicy", "taichi"))
    return os.path.join(base, digest)


def _kernels():
    if _state["arch"] is None:
        _ensure_init()
    module = sys.modules.get(_KERNELS_MODULE)
    if module is None:
        from . import _taichi_kernels as module
    return module


_KERNELS_MODULE = __name__.rsplit(".", 1)[0] + "._taichi_kernels"


# ---------------------------------------------------------------------------------------------
# launching: Taichi's generic kernel call costs ~40 us per array argument in Python; the
# launcher below builds the launch context directly (same C++ calls, a few us per argument).


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
    call, its pointer resolved once: ``a.ctypes.data`` costs ~1-2 us per argument per call."""

    __slots__ = ("array", "ptr", "nbytes", "shape")

    def __init__(self, array, shape):
        self.array = array
        self.ptr = array.ctypes.data
        self.nbytes = array.nbytes
        self.shape = shape


_DUMMIES: dict = {}


def _dummy(dtype, lanes=1):
    """The shared never-read argument of ``dtype``: ``[1]`` (lanes 1) or ``[1, 4]`` (4)."""
    key = (dtype, lanes)  # dtype: the compute dtype, np.float32 or np.float64
    dummy = _DUMMIES.get(key)
    if dummy is None:
        array = np.zeros((1,) if lanes == 1 else (1, lanes), dtype)
        dummy = _DUMMIES[key] = _Dummy(array, (1,))
    return dummy


def _arrays(args):
    return [a.array if isinstance(a, _Dummy) else a for a in args]


def _launch(kernel, args, vec4=False):
    key = (id(kernel), vec4)
    launcher = _launchers.get(key)
    if launcher is None:
        launcher = _launchers[key] = _Launcher(kernel, _arrays(args))
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


# ---------------------------------------------------------------------------------------------
# input conversion


def _is_torch(x) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _array(x):
    """numpy arrays and torch tensors pass through; anything else becomes a numpy array."""
    return x if _is_torch(x) or isinstance(x, np.ndarray) else np.asarray(x)


class _Context:
    """Where the outputs go (numpy, or torch on a device) and the compute dtype."""

    def __init__(self, arrays):
        self.torch_device = None
        self.torch_dtype = None
        for x in arrays:
            if _is_torch(x):
                self.torch_device = x.device
                break
        float_dtypes = set()
        for x in arrays:
            if _is_torch(x):
                if x.dtype.is_floating_point:
                    float_dtypes.add(str(x.dtype).replace("torch.", ""))
            elif x.dtype.kind == "f":
                float_dtypes.add(x.dtype.name)
        self.dtype = np.float32 if float_dtypes == {"float32"} else np.float64
        if self.torch_device is not None:
            torch = sys.modules["torch"]
            self.torch_dtype = torch.float32 if self.dtype == np.float32 else torch.float64
        # CUDA tensors stay on the device only when Taichi runs on CUDA
        self.device_arrays = (self.torch_device is not None and self.torch_device.type == "cuda"
                              and _ensure_init() == "cuda")

    def floats(self, x):
        """A contiguous flat buffer of the compute dtype."""
        if _is_torch(x):
            torch = sys.modules["torch"]
            x = x.detach()
            if self.device_arrays:
                return x.to(self.torch_dtype).contiguous().reshape(-1)
            return x.to(device="cpu", dtype=self.torch_dtype).contiguous().reshape(-1).numpy() \
                if x.dtype != torch.bool else x.cpu().numpy().astype(self.dtype).reshape(-1)
        return np.ascontiguousarray(x, dtype=self.dtype).reshape(-1)

    def flags(self, x):
        """uint8 0/1 flat buffer (bool arrays are viewed, not copied)."""
        if _is_torch(x):
            torch = sys.modules["torch"]
            x = x.detach()
            u = (x != 0).to(torch.uint8) if x.dtype != torch.bool else x.view(torch.uint8)
            if self.device_arrays:
                return u.contiguous().reshape(-1)
            return u.cpu().contiguous().reshape(-1).numpy()
        if x.dtype == np.bool_:
            return np.ascontiguousarray(x).reshape(-1).view(np.uint8)
        return np.ascontiguousarray(x != 0).reshape(-1).view(np.uint8)

    def empty(self, n):
        if self.device_arrays:
            torch = sys.modules["torch"]
            return torch.empty(n, dtype=self.torch_dtype, device=self.torch_device)
        return _output(n, np.dtype(self.dtype))

    def zeros_err(self):
        if self.device_arrays:
            torch = sys.modules["torch"]
            return torch.zeros(1, dtype=torch.int32, device=self.torch_device)
        return np.zeros(1, dtype=np.int32)

    def dummy(self):
        """An argument the kernel never reads nor writes (shared; a tensor on CUDA)."""
        if self.device_arrays:
            return self.empty(1)
        return _dummy(self.dtype)

    def per_step(self, x, shape):
        """A per-step gamma/lam (validated, broadcastable to ``shape``) as a contiguous flat
        buffer of the compute dtype, broadcast to ``shape``."""
        if self.device_arrays:  # CUDA buffers: a numpy gamma/lam goes to the device too
            torch = sys.modules["torch"]
            x = torch.as_tensor(x).detach().to(device=self.torch_device, dtype=self.torch_dtype)
            return torch.broadcast_to(x, tuple(shape)).contiguous().reshape(-1)
        if _is_torch(x):
            x = x.detach().cpu().numpy()
        full = np.broadcast_to(np.asarray(x, dtype=self.dtype), tuple(shape))
        return np.ascontiguousarray(full).reshape(-1)

    def step_buffers(self, gamma, lam, shape):
        """(per_step, gam, lm): per-step buffers when gamma or lam is an array (the other one
        is broadcast too), else 1-element dummies that the scalar kernels never read."""
        if isinstance(gamma, float) and isinstance(lam, float):
            return False, self.dummy(), self.dummy()
        return True, self.per_step(gamma, shape), self.per_step(lam, shape)

    def out(self, flat, shape):
        """Give a flat result the rewards' shape, as numpy or torch like the input."""
        if self.torch_device is None:
            return flat.reshape(shape)
        torch = sys.modules["torch"]
        t = flat if self.device_arrays else torch.from_numpy(flat)
        return t.reshape(tuple(shape)).to(self.torch_device)


def _failed(err) -> bool:
    return bool(err[0] != 0)


def _raise_invalid(full, ctx, shape, outputs, log_rhos=None, culprit="rewards", state=False):
    """The kernel flagged a non-finite input or output: re-run the shared validation (raises
    its message for a bad input); otherwise an output overflowed: raise naming the culprit."""
    full()
    dtype_name = np.dtype(ctx.dtype).name
    # the state kernels' float32 exp saturates to inf above 88.5
    limit = 88.5 if state and ctx.dtype == np.float32 else None
    _validate.check_outputs_finite([x.reshape(shape) for x in outputs], dtype_name=dtype_name,
                                   log_rhos=log_rhos, culprit=culprit, exp_limit=limit)
    raise ValueError(f"{culprit}: the estimator overflows {dtype_name}")  # pragma: no cover


def _ti_dtype(dtype):
    import taichi as ti

    return ti.f32 if dtype == np.float32 else ti.f64


_NTHREADS: list[int] = []


def _nthreads() -> int:
    """The CPUs this process may run on (read once)."""
    if not _NTHREADS:
        try:
            _NTHREADS.append(max(1, len(os.sched_getaffinity(0))))
        except AttributeError:  # pragma: no cover - not Linux
            _NTHREADS.append(max(1, os.cpu_count() or 1))
    return _NTHREADS[0]


def _aligned16(*arrays) -> bool:
    return all(isinstance(a, np.ndarray) and a.ctypes.data % 16 == 0 for a in arrays)


@contextlib.contextmanager
def _threads(threads):
    """Force the CPU forms' blocks to run 'serial' (on the calling thread) or 'parallel' (on
    Taichi's thread pool); None: chosen by size (``_serial``)."""
    old = _forced_form["threads"]
    _forced_form["threads"] = threads
    try:
        yield
    finally:
        _forced_form["threads"] = old


def _serial(n, family) -> bool:
    """Whether the CPU forms run serially for ``n`` = T*B elements of ``family`` (gae,
    log_ratio, action): below the crossover the pool's wake-up costs more than the second core
    saves."""
    forced = _forced_form["threads"]
    if forced is not None:
        return forced == "serial"
    return n <= (SERIAL_MAX[family] if _nthreads() > 2 else SERIAL_MAX_FEW_THREADS)


def _block(count, serial, low, high) -> int:
    """Streams (or 4-lane groups) per block of a CPU form: all ``count`` on the calling thread
    when ``serial``, else an even share per pool thread kept within [``low``, ``high``]."""
    # never 0: the kernels divide by it (B = 0 on the calling thread died by SIGFPE)
    return max(1, count) if serial else min(high, max(low, -(-count // _nthreads())))


@contextlib.contextmanager
def _form(form):
    """Force the state-value kernel form: 'vec4', 'rows', 'naive', 'chunked' (None: auto)."""
    old = _forced_form["state"]
    _forced_form["state"] = form
    try:
        yield
    finally:
        _forced_form["state"] = old


def _checks(cheap, full):
    """Run the checks that do not read elements; if one fails, run the shared validation
    (``full``) first, so the error raised is exactly the reference's (its first failing check)."""
    try:
        return cheap()
    except (ValueError, TypeError):
        full()
        raise


# ---------------------------------------------------------------------------------------------
# autograd: when a torch input requires grad (and grad mode is on), the estimator's values come
# from the same no-grad kernels (byte-identical outputs), and a graph is attached to them: the
# element-wise parts (TD errors, clipped ratios, trace coefficients) are torch operations, and
# the scan y_t = a_t + c_t y_{t+1} is a torch.autograd.Function whose forward returns the
# kernel's y and whose backward is the adjoint scan, another Taichi kernel
# (``_taichi_kernels.build_scan_backward``).


def _needs_grad(*xs) -> bool:
    """Whether a torch input requires grad while grad mode is on (a cheap test: the no-grad
    path pays one dict look-up when torch was never imported)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    tensor = torch.Tensor
    for x in xs:
        if isinstance(x, tensor) and x.requires_grad:
            return torch.is_grad_enabled()
    return False


def _detached(x):
    return x.detach() if _is_torch(x) else x


_AUTOGRAD: dict = {}


def _autograd():
    """(Scan, Replace): the two autograd Functions, defined on first use (torch is optional)."""
    if _AUTOGRAD:
        return _AUTOGRAD["scan"], _AUTOGRAD["replace"]
    import torch
    from torch.autograd.function import once_differentiable

    class Scan(torch.autograd.Function):
        """``Scan.apply(a, c, y)``: y (the kernel's solution of ``y_t = a_t + c_t y_{t+1}``,
        [T, B]) as a function of a and c; the backward pass is the adjoint scan."""

        @staticmethod
        def forward(ctx, a, c, y):
            ctx.save_for_backward(c, y)
            return y.clone()

        @staticmethod
        @once_differentiable  # the adjoint kernel has no graph: a double backward raises
        def backward(ctx, grad):
            c, y = ctx.saved_tensors
            u, gc = _scan_backward(grad, c, y)
            return u, gc, None

    class Replace(torch.autograd.Function):
        """``Replace.apply(x, value)``: ``value`` (the kernel's output) carrying the gradient
        of ``x`` (the same quantity computed with torch operations)."""

        @staticmethod
        def forward(ctx, x, value):
            return value.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad, None

    _AUTOGRAD["scan"], _AUTOGRAD["replace"] = Scan, Replace
    return Scan, Replace


def _scan_backward(grad, c, y):
    """(u, dL/dc) of the adjoint scan (``_taichi_kernels.build_scan_backward``), [T, B]."""
    torch = sys.modules["torch"]
    T, B = c.shape
    device, dtype = c.device, c.dtype
    K = _kernels()
    on_device = device.type == "cuda" and _state["arch"] == "cuda"
    if on_device:
        g, cc, yy = (x.detach().to(dtype).contiguous().reshape(-1) for x in (grad, c, y))
        u, gc = torch.empty_like(g), torch.empty_like(g)
    else:
        g, cc, yy = (np.ascontiguousarray(x.detach().to(device="cpu", dtype=dtype).numpy())
                     .reshape(-1) for x in (grad, c, y))
        u, gc = np.empty_like(g), np.empty_like(g)
    dt = _ti_dtype(np.float32 if dtype == torch.float32 else np.float64)
    if T * B == 0:  # an empty batch: nothing to scan
        pass
    elif _state["arch"] == "cpu" and _forced_form["state"] != "naive":
        serial = _serial(T * B, "gae")
        kern = K.build_scan_backward(dt, serial)
        BB = _block(B, serial, 32, 2048)
        _launch(kern["rows"], [g, cc, yy, u, gc, T, B, BB])
    else:
        _launch(K.build_scan_backward(dt)["naive"], [g, cc, yy, u, gc, T, B, 1])
    if not on_device:
        u, gc = (torch.from_numpy(x).to(device) for x in (u, gc))
    return u.reshape(T, B), gc.reshape(T, B)


def _as_torch(x, like):
    """A kernel output (numpy or torch) as a torch tensor on ``like``'s device."""
    torch = sys.modules["torch"]
    if not _is_torch(x):
        x = torch.from_numpy(np.asarray(x))
    return x.to(like.device)


def _grad_device(*xs):
    """The device of the first torch input that requires grad."""
    torch = sys.modules["torch"]
    return next(x for x in xs if isinstance(x, torch.Tensor) and x.requires_grad)


class _Graph:
    """Torch versions of the inputs, [T, B] in the kernel output's dtype and device."""

    def __init__(self, out, shape):
        self.torch = sys.modules["torch"]
        self.dtype, self.device = out.dtype, out.device
        self.shape = tuple(shape)
        self.T = self.shape[0]

    def floats(self, x):
        t = x if isinstance(x, self.torch.Tensor) else self.torch.as_tensor(np.asarray(x))
        return t.to(device=self.device, dtype=self.dtype).reshape(self.T, -1)

    def flags(self, x):
        return (self.torch.as_tensor(x, device=self.device) != 0).reshape(self.T, -1)

    def per_step(self, x):
        """gamma or lam (a float, or an array broadcastable to the rewards' shape), [T, B]."""
        torch = self.torch
        if isinstance(x, torch.Tensor):
            t = x.to(device=self.device, dtype=self.dtype)  # keeps its graph
        else:  # a python float or numpy array: straight to the compute dtype (no float32 step)
            t = torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=self.dtype,
                                device=self.device)
        return torch.broadcast_to(t, self.shape).reshape(self.T, -1)

    def masks(self, terminated, truncated):
        """(kappa, beta) as in the other backends: the trace continues into t+1; bootstrap."""
        torch = self.torch
        te, tr = self.flags(terminated), self.flags(truncated)
        done = te | tr
        kappa = torch.cat([~done[:-1], torch.zeros_like(done[-1:])])
        return kappa, ~te

    def ratio(self, log_rhos):
        """exp(log_rhos), inf where it overflows; exp's input is masked there so that its
        backward gives 0 (not 0 * inf) where the ratio is clipped or never read."""
        torch = self.torch
        lr = self.floats(log_rhos)
        with torch.no_grad():
            overflows = torch.isinf(torch.exp(lr)) & (lr > 0)
        return torch.where(overflows, torch.inf, torch.exp(torch.where(overflows, 0.0, lr)))

    def cut(self, c, kappa, gamma_lam):
        """c where the trace continues, exactly 0 where it is cut or weighted by gamma lam = 0
        and c is inf (a finite c is kept there: the gradient w.r.t. gamma_t, lam_t)."""
        torch = self.torch
        return torch.where(kappa & ~((gamma_lam == 0) & torch.isinf(c)), c, 0.0)

    def out(self, x):
        return x.reshape(self.shape)


def _state_grad(mode, outputs, rewards, values, next_values, terminated, truncated, log_rhos,
                gamma, lam, clips):
    """``outputs`` (the kernel's adv, ret[, pg], numpy or torch) with the graph attached."""
    Scan, Replace = _autograd()
    like = _grad_device(rewards, values, next_values, log_rhos, gamma, lam)
    outputs = [_as_torch(x, like) for x in outputs]
    G = _Graph(outputs[0], outputs[0].shape)
    torch = G.torch
    r, v, nv = G.floats(rewards), G.floats(values), G.floats(next_values)
    g, l = G.per_step(gamma), G.per_step(lam)
    kappa, beta = G.masks(terminated, truncated)
    boot = torch.where(beta, nv, 0.0)
    gl = g * l
    delta = r + g * boot - v
    rho = None
    if mode == "gae":
        a, c = delta, gl * kappa.to(G.dtype)
    else:
        rho = G.ratio(log_rhos)
        rho_hat, c_hat = rho, rho
        if mode == "vtrace":
            rho_hat = torch.clamp(rho, max=clips["rho_clip"])
            c_hat = torch.clamp(rho, max=clips["c_clip"])
        a, c = rho_hat * delta, gl * G.cut(c_hat, kappa, gl)
    flat = [x.reshape(G.T, -1) for x in outputs]
    adv = Scan.apply(a, c, flat[0])
    ret = v + adv
    result = [G.out(adv), G.out(Replace.apply(ret, flat[1]))]
    if mode == "vtrace":
        v_next = torch.cat([ret[1:], torch.zeros_like(ret[:1])])
        q = r + g * torch.where(kappa, l * v_next + (1 - l) * boot, boot)
        pg = torch.clamp(rho, max=clips["pg_rho_clip"]) * (q - v)
        result.append(G.out(Replace.apply(pg, flat[2])))
    return result


def _action_grad(mode, output, rewards, q_taken, next_expected_q, terminated, truncated,
                 coefficient, gamma, lam):
    """``output`` (the kernel's G) with the graph of ``G_t = r_t + gamma_t beta_t E Q(s'_t) +
    gamma_t lam_t kappa_t c_{t+1} (G_{t+1} - Q_{t+1})`` attached: y = G, ``a_t = r_t + gamma_t
    beta_t E Q(s'_t) - gamma_t lam_t c'_t Q_{t+1}``, ``c_t = gamma_t lam_t c'_t`` with c' the
    cut c_{t+1}."""
    Scan, _ = _autograd()
    like = _grad_device(rewards, q_taken, next_expected_q, coefficient, gamma, lam)
    out = _as_torch(output, like)
    G = _Graph(out, out.shape)
    torch = G.torch
    r, q, nq = G.floats(rewards), G.floats(q_taken), G.floats(next_expected_q)
    g, l = G.per_step(gamma), G.per_step(lam)
    kappa, beta = G.masks(terminated, truncated)
    boot = torch.where(beta, nq, 0.0)
    gl = g * l
    if mode == "ones":
        traces = torch.ones_like(r)
    elif mode == "traces":
        traces = G.floats(coefficient)
    elif mode == "retrace":
        traces = torch.clamp(G.ratio(coefficient), max=1.0)
    else:  # importance sampling
        traces = G.ratio(coefficient)
    shift = lambda x: torch.cat([x[1:], torch.zeros_like(x[:1])])
    c = gl * G.cut(shift(traces), kappa, gl)
    a = r + g * boot - c * shift(q)
    return G.out(Scan.apply(a, c, out.reshape(G.T, -1)))


def _delegated_grad(name, value, args, kwargs):
    """``value`` (the kernel's output) carrying the gradient of the torch backend's ``name``
    (the windowed estimators: no scan; torch's graph of their vectorised sums is the backward)."""
    import importlib

    _, Replace = _autograd()
    like = _grad_device(*args, *kwargs.values())
    value = _as_torch(value, like)
    torch_backend = importlib.import_module("estimators.torch")
    want = getattr(torch_backend, name)(*args, **kwargs)
    return Replace.apply(want.to(value.dtype), value)


# ---------------------------------------------------------------------------------------------
# the lean path of the state-value trace: numpy inputs of one float dtype, bool flags, scalar
# gamma/lam, on the CPU. Same checks, same kernel and arguments as the general path below, in
# one pass without the conversions: at 64x64 the general path spends ~3/4 of a call in Python.

_F32, _F64, _BOOL = np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.bool_)
_ERR = threading.local()


class _LeanOut:
    """The output side of ``_Context`` for the lean path (numpy or CPU torch, unchanged)."""

    @staticmethod
    def out(flat, shape):
        return flat.reshape(shape)


# outputs of at least this many bytes start on a cache line (64 bytes)
ALIGN_FROM_BYTES = 1 << 16


def _output(n, dt):
    """A new output buffer of n elements of numpy dtype ``dt``; from ``ALIGN_FROM_BYTES`` on,
    it starts on a 64-byte cache line: blocks of streams run by different threads then write
    disjoint cache lines wherever a block boundary falls on a multiple of 64 bytes of a row
    (e.g. 128 float32 streams in two blocks). malloc gives only 16-byte alignment, and a line
    shared by two threads' stores at every step of T cost V-trace at 128x4096 ~2x."""
    nbytes = n * dt.itemsize
    if nbytes < ALIGN_FROM_BYTES:
        return np.empty(n, dt)
    raw = np.empty(nbytes + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start:start + nbytes].view(dt)


def _err_buffer():
    """This thread's error flag (zeroed) and its address: a call reuses it, no allocation."""
    pair = getattr(_ERR, "pair", None)
    if pair is None:
        buf = np.zeros(1, dtype=np.int32)
        pair = _ERR.pair = (buf, buf.ctypes.data)
    pair[0][0] = 0
    return pair


def _lean_arrays(r, floats, flags):
    """(numpy dtype, pointer of, new output of n elements) when ``r``, ``floats`` and ``flags``
    are all numpy arrays, or all CPU torch tensors, C-contiguous, of ``r``'s shape, the floats
    of one dtype (float32 or float64) and the flags bool; otherwise None."""
    if type(r) is np.ndarray:
        shape = r.shape
        dt = r.dtype
        if (dt is not _F32 and dt is not _F64) or not r.flags.c_contiguous:
            return None
        for x in floats:
            if (type(x) is not np.ndarray or x.dtype is not dt or x.shape != shape
                    or not x.flags.c_contiguous):
                return None
        for x in flags:
            if (type(x) is not np.ndarray or x.dtype is not _BOOL or x.shape != shape
                    or not x.flags.c_contiguous):
                return None
        return dt, None, _output
    torch = sys.modules.get("torch")
    if torch is None or type(r) is not torch.Tensor:
        return None
    shape = r.shape
    tdt = r.dtype
    if tdt is torch.float32:
        dt = _F32
    elif tdt is torch.float64:
        dt = _F64
    else:
        return None
    # a negative-bit view (torch._neg_view) holds -x in memory: the general path refuses it
    for x in (r, *floats):
        if (type(x) is not torch.Tensor or x.dtype is not tdt or not x.is_cpu
                or x.shape != shape or not x.is_contiguous() or x.is_neg()):
            return None
    for x in flags:
        if (type(x) is not torch.Tensor or x.dtype is not torch.bool or not x.is_cpu
                or x.shape != shape or not x.is_contiguous()):
            return None
    return dt, torch, lambda n, _dt: torch.empty(n, dtype=tdt)


def _fast_state(mode, K, r, v, nv, te, tr, lr, gamma, lam, clips):
    """(adv, ret, pg) flat, or None when the lean path does not apply (the general path then
    runs: other array types, dtypes or layouts, per-step gamma/lam, a forced form, a GPU, a
    kernel not yet compiled in this process, or an input that fails a check). Inputs: numpy
    arrays (numpy out) or CPU torch tensors (torch out, allocated 64-byte aligned by torch)."""
    if (type(gamma) is not float or type(lam) is not float or not 0.0 <= gamma <= 1.0
            or not 0.0 <= lam <= 1.0 or _state["arch"] != "cpu"
            or _forced_form["state"] is not None):
        return None
    lean = _lean_arrays(r, (v, nv) if lr is None else (v, nv, lr), (te, tr))
    if lean is None:
        return None
    dt, torch, new_output = lean
    shape = r.shape
    ndim = len(shape)
    if ndim == 2:
        T, B = shape
    elif ndim == 1:
        T, B = shape[0], 1
    else:
        return None
    n = T * B
    if n == 0:
        return None
    rho_clip = c_clip = pg_clip = 1.0
    if clips:
        levels = [clips["rho_clip"], clips["c_clip"], clips["pg_rho_clip"]]
        for level in levels:
            if type(level) is not float or not level >= 0.0:
                return None
        rho_clip, c_clip, pg_clip = levels
    if gamma * lam == 0:
        c_clip = 0.0  # as in the general path: a zero trace weight reads no c_t
    serial = _serial(n, "gae" if mode == K.GAE else "log_ratio")
    kern = K.build_state(_ti_dtype(dt), mode, False, serial)
    size = dt.itemsize
    nbytes = n * size
    # data pointers: ptrs[0:5] r, v, nv, adv, ret, then te, tr, then lr and pg when present
    n_out = 3 if mode == K.VTRACE else 2
    if torch is None and n_out * nbytes < ALIGN_FROM_BYTES:
        # small numpy outputs: one buffer, one allocation and one pointer for all of them
        # (each output a view of its own n elements; n % 4 == 0 keeps them 16-byte aligned)
        buf = np.empty(n_out * n, dt)
        base = buf.ctypes.data
        adv, ret = buf[:n], buf[n:2 * n]
        pg = buf[2 * n:] if n_out == 3 else None
        ptrs = [r.ctypes.data, v.ctypes.data, nv.ctypes.data, base, base + nbytes,
                te.ctypes.data, tr.ctypes.data]
        if lr is not None:
            ptrs.append(lr.ctypes.data)
        if pg is not None:
            ptrs.append(base + 2 * nbytes)
    else:
        adv, ret = new_output(n, dt), new_output(n, dt)
        pg = new_output(n, dt) if n_out == 3 else None
        arrays = [r, v, nv, adv, ret, te, tr]
        if lr is not None:
            arrays.append(lr)
        if pg is not None:
            arrays.append(pg)
        if torch is None:
            ptrs = [x.ctypes.data for x in arrays]
        else:
            ptrs = [x.data_ptr() for x in arrays]
    low = ptrs[0] | ptrs[1] | ptrs[2] | ptrs[3] | ptrs[4]  # the float arrays (not te, tr)
    for p in ptrs[7:]:
        low |= p
    vec = dt is _F32 and B % 4 == 0 and low % 16 == 0
    if vec:
        G = B // 4
        name = "vec4"
        if mode == K.GAE or G % 2:
            GB = _block(G, serial, 8, 512)
        else:
            name = "vec8"
            GB = _block(G // 2, serial, 4, 256)
        launcher = _launchers.get((id(kern[name]), True))
        shp = (n // 4,)
        dummy = _dummy(dt, 4)
        ints = (T, G, GB)
    else:
        launcher = _launchers.get((id(kern["rows"]), False))
        shp = (n,)
        dummy = _dummy(dt)
        ints = (T, B, _block(B, serial, 32, 2048))
    if launcher is None or not launcher.fast:
        return None  # compiled (and the launcher cached) by the general path
    err, err_ptr = _err_buffer()
    # the launch context is kept per thread and kernel: the arguments that do not change from
    # call to call (dummies, the error flag, the sizes and parameters) are set only when they
    # do; the arrays are set on every call
    contexts = getattr(_ERR, "contexts", None)
    if contexts is None:
        contexts = _ERR.contexts = {}
    key = (ints, gamma, lam, rho_clip, c_clip, pg_clip)
    entry = contexts.get(id(launcher))
    # the entry holds its launcher: after a restart of Taichi (configure) a new launcher with a
    # recycled id() never picks up a context of the old program
    if entry is None or entry[2] is not launcher or entry[1] != key:
        ctx = launcher.t_kernel.make_launch_context()
        contexts[id(launcher)] = (ctx, key, launcher)
        arg = ctx.set_arg_external_array_with_shape
        arg((9,), err_ptr, 4, (1,), 0)
        for i in (5, 8, 10, 11):  # set again below when lr / pg are real arrays
            arg((i,), dummy.ptr, dummy.nbytes, dummy.shape, 0)
        ctx.set_arg_int((12,), ints[0])
        ctx.set_arg_int((13,), ints[1])
        ctx.set_arg_int((14,), ints[2])
        ctx.set_arg_float((15,), gamma)
        ctx.set_arg_float((16,), lam)
        ctx.set_arg_float((17,), rho_clip)
        ctx.set_arg_float((18,), c_clip)
        ctx.set_arg_float((19,), pg_clip)
    else:
        ctx = entry[0]
    arg = ctx.set_arg_external_array_with_shape
    arg((0,), ptrs[0], nbytes, shp, 0)
    arg((1,), ptrs[1], nbytes, shp, 0)
    arg((2,), ptrs[2], nbytes, shp, 0)
    arg((3,), ptrs[5], n, (n,), 0)
    arg((4,), ptrs[6], n, (n,), 0)
    if lr is not None:
        arg((5,), ptrs[7], nbytes, shp, 0)
    arg((6,), ptrs[3], nbytes, shp, 0)
    arg((7,), ptrs[4], nbytes, shp, 0)
    if pg is not None:
        arg((8,), ptrs[-1], nbytes, shp, 0)
    launcher.prog.launch_kernel(launcher.compiled, ctx)
    if err[0] != 0:
        return None  # the general path re-runs the kernel and raises the shared message
    return adv, ret, pg


# ---------------------------------------------------------------------------------------------
# state-value trace


def _run_state(mode, rewards, values, next_values, terminated, truncated, log_rhos, gamma, lam,
               clips=None):
    """Validate, run the state-value kernel; returns (ctx, shape, adv, ret, pg) flat.
    ``clips``: {name: level} of the clip levels to check and use (V-trace)."""
    fast = _fast_state(mode, _kernels(), rewards, values, next_values, terminated, truncated,
                       log_rhos, gamma, lam, clips)
    if fast is not None:
        return (_LeanOut, tuple(rewards.shape), *fast)
    arrays = [_array(x) for x in (rewards, values, next_values, terminated, truncated)]
    lr = None if log_rhos is None else _array(log_rhos)
    clips = clips or {}

    def full():
        _validate.state_inputs(*arrays, gamma=gamma, lam=lam, log_rhos=lr)
        for name, level in clips.items():
            _validate.check_clip(name, level)

    def cheap():
        g, l = _cheap_state_checks(arrays, lr, gamma, lam)
        return [g, l] + [_validate.check_clip(name, level) for name, level in clips.items()]

    checked = _checks(cheap, full)
    gamma, lam = checked[:2]
    rho_clip, c_clip, pg_clip = checked[2:] + [1.0] * (3 - len(clips))
    if isinstance(gamma, float) and isinstance(lam, float) and gamma * lam == 0:
        # a scalar trace weight of 0 reads no c_t, even an inf one: c_clip = 0 gives the
        # same exact 0 trace factor without a per-lane compare in the vector kernels
        c_clip = 0.0
    K = _kernels()
    ctx = _Context(arrays + ([lr] if lr is not None else []))
    shape = tuple(arrays[0].shape)
    T = shape[0]
    B = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    r, v, nv = (ctx.floats(x) for x in arrays[:3])
    te, tr = (ctx.flags(x) for x in arrays[3:])
    lrb = ctx.floats(lr) if lr is not None else ctx.dummy()
    n = T * B
    adv, ret = ctx.empty(n), ctx.empty(n)
    pg = ctx.empty(n) if mode == K.VTRACE else ctx.dummy()
    err = ctx.zeros_err()
    if n == 0:  # an empty batch (B = 0): empty outputs, as the reference; no kernel launch
        return ctx, shape, adv, ret, pg
    per_step, gam, lm = ctx.step_buffers(gamma, lam, shape)
    # GPU forms have no serial build (one memo entry, one compile)
    serial = _state["arch"] == "cpu" and _serial(n, "gae" if mode == K.GAE else "log_ratio")
    kern = K.build_state(_ti_dtype(ctx.dtype), mode, per_step, serial)
    scalars = (0.0, 0.0) if per_step else (float(gamma), float(lam))  # unused when per step
    params = [*scalars, float(rho_clip), float(c_clip), float(pg_clip)]
    form = _forced_form["state"] or _auto_form(T, B, ctx)
    # <4 x float> loads need 16-byte alignment (float64 would need 32: it takes the scalar form)
    if form == "vec4" and not (ctx.dtype == np.float32 and B % 4 == 0
                               and _aligned16(r, v, nv, adv, ret)
                               and (mode != K.VTRACE or _aligned16(pg))
                               and (lr is None or _aligned16(lrb))
                               and (not per_step or _aligned16(gam, lm))):
        form = "rows"
    if form == "vec4":
        G = B // 4
        GB = _block(G, serial, 8, 512)
        v4 = [x.reshape(-1, 4) for x in (r, v, nv)]
        o4 = [x.reshape(-1, 4) for x in (adv, ret)]
        pg4 = pg.reshape(-1, 4) if mode == K.VTRACE else _dummy(ctx.dtype, 4)
        lr4 = lrb.reshape(-1, 4) if lr is not None else _dummy(ctx.dtype, 4)
        s4 = [x.reshape(-1, 4) for x in (gam, lm)] if per_step else [_dummy(ctx.dtype, 4)] * 2
        name = "vec4"
        if mode != K.GAE and G % 2 == 0:
            # log-ratio modes are compute-bound (exp): 8 lanes per step, GB in groups of 8
            name = "vec8"
            GB = _block(G // 2, serial, 4, 256)
        _launch(kern[name], [*v4, te, tr, lr4, *o4, pg4, err, *s4, T, G, GB, *params],
                vec4=True)
    elif form == "rows":
        BB = _block(B, serial, 32, 2048)
        _launch(kern["rows"], [r, v, nv, te, tr, lrb, adv, ret, pg, err, gam, lm, T, B, BB,
                               *params])
    elif form == "naive":
        _launch(kern["naive"], [r, v, nv, te, tr, lrb, adv, ret, pg, err, gam, lm, T, B,
                                *params])
    elif form == "chunked":
        L = max(8, int(math.sqrt(T)))
        NC = -(-T // L)
        scratch = [ctx.empty(NC * B) for _ in range(3)]
        _launch(kern["chunked"], [r, v, nv, te, tr, lrb, adv, ret, pg, err, gam, lm, *scratch,
                                  T, B, L, NC, *params])
    else:
        raise ValueError(f"unknown kernel form {form!r}")
    if _failed(err):
        outputs = (adv, ret, pg) if mode == K.VTRACE else (adv, ret)
        _raise_invalid(full, ctx, shape, outputs, log_rhos=lr, state=True)
    return ctx, shape, adv, ret, pg


def _auto_form(T, B, ctx):
    if _state["arch"] == "cpu":
        return "vec4"
    # GPU: one thread per stream, or a chunked scan when few long streams leave it idle
    return "chunked" if B < 2048 and T >= 256 else "naive"


def _cheap_state_checks(arrays, lr, gamma, lam):
    """Every check of _validate.state_inputs that does not read the elements (plus the 0/1
    check of non-bool flags, which the conversion needs, and the range of per-step gamma/lam
    arrays); returns (gamma, lam) as validated."""
    names = ("rewards", "values", "next_values", "terminated", "truncated")
    named = dict(zip(names, arrays, strict=False))
    if lr is not None:
        named["log_rhos"] = lr
    for name, x in named.items():
        _validate.check_real(name, x)
    others = {k: x for k, x in named.items() if k != "rewards"}
    _validate.check_time_major("rewards", arrays[0], **others)
    for name in ("terminated", "truncated"):
        if _validate._dtype_kind(named[name]) != "b":
            _validate.check_flags(name, named[name])
    shape = tuple(arrays[0].shape)
    return (_validate.check_unit_interval("gamma", gamma, shape),
            _validate.check_unit_interval("lam", lam, shape))


def gae(rewards: npt.ArrayLike | torch.Tensor, values: npt.ArrayLike | torch.Tensor,
        next_values: npt.ArrayLike | torch.Tensor, terminated: npt.ArrayLike | torch.Tensor,
        truncated: npt.ArrayLike | torch.Tensor, *, gamma: npt.ArrayLike | torch.Tensor,
        lam: npt.ArrayLike | torch.Tensor) -> GAEOutput:
    """Generalised advantage estimation (Schulman et al. 2016) and TD(lambda) returns.

    ``delta_t = r_t + gamma beta_t V(s'_t) - V(s_t)``,
    ``A_t = delta_t + gamma lam kappa_t A_{t+1}``, ``returns_t = V(s_t) + A_t``.
    Shapes ``[T]`` or ``[T,B]``. Returns ``GAEOutput(advantages, returns)`` (see the module
    docstring for dtype and array type).
    """
    if _needs_grad(rewards, values, next_values, gamma, lam):
        out = gae(*(_detached(x) for x in (rewards, values, next_values, terminated, truncated)),
                  gamma=_detached(gamma), lam=_detached(lam))
        return GAEOutput(*_state_grad("gae", out, rewards, values, next_values, terminated,
                                      truncated, None, gamma, lam, None))
    K = _kernels()
    ctx, shape, adv, ret, _ = _run_state(K.GAE, rewards, values, next_values, terminated,
                                         truncated, None, gamma, lam)
    return GAEOutput(ctx.out(adv, shape), ctx.out(ret, shape))


def _vtrace(rewards, values, next_values, terminated, truncated, log_rhos, gamma, lam, rho_clip,
            c_clip, pg_rho_clip):
    if _needs_grad(rewards, values, next_values, log_rhos, gamma, lam):
        out = _vtrace(*(_detached(x) for x in (rewards, values, next_values, terminated,
                                               truncated, log_rhos, gamma, lam)),
                      rho_clip, c_clip, pg_rho_clip)
        clips = {"rho_clip": float(rho_clip), "c_clip": float(c_clip),
                 "pg_rho_clip": float(pg_rho_clip)}
        return VTraceOutput(*_state_grad("vtrace", out, rewards, values, next_values,
                                         terminated, truncated, log_rhos, gamma, lam, clips))
    K = _kernels()
    clips = {"rho_clip": rho_clip, "c_clip": c_clip, "pg_rho_clip": pg_rho_clip}
    ctx, shape, adv, ret, pg = _run_state(K.VTRACE, rewards, values, next_values, terminated,
                                          truncated, log_rhos, gamma, lam, clips)
    return VTraceOutput(ctx.out(adv, shape), ctx.out(ret, shape), ctx.out(pg, shape))


def vtrace(rewards: npt.ArrayLike | torch.Tensor, values: npt.ArrayLike | torch.Tensor,
           next_values: npt.ArrayLike | torch.Tensor, terminated: npt.ArrayLike | torch.Tensor,
           truncated: npt.ArrayLike | torch.Tensor, log_rhos: npt.ArrayLike | torch.Tensor, *,
           gamma: npt.ArrayLike | torch.Tensor, lam: npt.ArrayLike | torch.Tensor = 1.0,
           rho_clip: float = 1.0, c_clip: float = 1.0, pg_rho_clip: float = 1.0) -> VTraceOutput:
    """V-trace (Espeholt et al. 2018, IMPALA), with the trace parameter lambda.

    ``rho_t = exp(log_rhos_t)``, ``rho_hat_t = min(rho_clip, rho_t)``, ``c_t = min(c_clip, rho_t)``;
    ``delta_t = rho_hat_t (r_t + gamma beta_t V(s'_t) - V(s_t))``,
    ``A_t = delta_t + gamma lam c_t kappa_t A_{t+1}``, ``v_t = V(s_t) + A_t``;
    ``q_t = r_t + gamma beta_t [kappa_t (lam v_{t+1} + (1-lam) V(s'_t)) + (1-kappa_t) V(s'_t)]``,
    ``pg_t = min(pg_rho_clip, rho_t) (q_t - V(s_t))``. Shapes ``[T]`` or ``[T,B]``.
    Returns ``VTraceOutput(advantages, value_targets, pg_advantages)``.
    """
    return _vtrace(rewards, values, next_values, terminated, truncated, log_rhos, gamma, lam,
                   rho_clip, c_clip, pg_rho_clip)


def puff_advantage(rewards: npt.ArrayLike | torch.Tensor, values: npt.ArrayLike | torch.Tensor,
                   next_values: npt.ArrayLike | torch.Tensor,
                   terminated: npt.ArrayLike | torch.Tensor,
                   truncated: npt.ArrayLike | torch.Tensor, log_rhos: npt.ArrayLike | torch.Tensor,
                   *, gamma: npt.ArrayLike | torch.Tensor, lam: npt.ArrayLike | torch.Tensor = 1.0,
                   rho_clip: float = 1.0, c_clip: float = 1.0) -> np.ndarray | torch.Tensor:
    """PufferLib's "puff advantage": V-trace's ``A_t = v_t - V(s_t)`` (see ``vtrace``)."""
    if _needs_grad(rewards, values, next_values, log_rhos, gamma, lam):
        return _vtrace(rewards, values, next_values, terminated, truncated, log_rhos, gamma, lam,
                       rho_clip, c_clip, 1.0).advantages
    K = _kernels()
    clips = {"rho_clip": rho_clip, "c_clip": c_clip, "pg_rho_clip": 1.0}
    ctx, shape, adv, _, _ = _run_state(K.VTRACE, rewards, values, next_values, terminated,
                                       truncated, log_rhos, gamma, lam, clips)
    return ctx.out(adv, shape)


def per_decision_is(rewards: npt.ArrayLike | torch.Tensor, values: npt.ArrayLike | torch.Tensor,
                    next_values: npt.ArrayLike | torch.Tensor,
                    terminated: npt.ArrayLike | torch.Tensor,
                    truncated: npt.ArrayLike | torch.Tensor, log_rhos: npt.ArrayLike | torch.Tensor,
                    *, gamma: npt.ArrayLike | torch.Tensor,
                    lam: npt.ArrayLike | torch.Tensor) -> PDISOutput:
    """Per-decision importance sampling with control variates (Precup et al. 2000), with lambda:
    the state-value trace with ``rho_hat_t = c_t = rho_t`` (no clipping).
    Returns ``PDISOutput(advantages, value_targets)``."""
    if _needs_grad(rewards, values, next_values, log_rhos, gamma, lam):
        out = per_decision_is(*(_detached(x) for x in (rewards, values, next_values, terminated,
                                                       truncated, log_rhos)),
                              gamma=_detached(gamma), lam=_detached(lam))
        return PDISOutput(*_state_grad("pdis", out, rewards, values, next_values, terminated,
                                       truncated, log_rhos, gamma, lam, None))
    K = _kernels()
    ctx, shape, adv, ret, _ = _run_state(K.PDIS, rewards, values, next_values, terminated,
                                         truncated, log_rhos, gamma, lam)
    return PDISOutput(ctx.out(adv, shape), ctx.out(ret, shape))


# ---------------------------------------------------------------------------------------------
# n-step returns


def nstep_returns(rewards: npt.ArrayLike | torch.Tensor, next_values: npt.ArrayLike | torch.Tensor,
                  terminated: npt.ArrayLike | torch.Tensor, truncated: npt.ArrayLike | torch.Tensor,
                  *, gamma: npt.ArrayLike | torch.Tensor, n: int) -> np.ndarray | torch.Tensor:
    """n-step returns ``G_t = sum_{k<m} D_{t,k} r_{t+k} + D_{t,m} beta_{t+m-1} V(s'_{t+m-1})``,
    ``D_{t,k} = prod_{j<k} gamma_{t+j}`` (``gamma^k`` for a scalar), ``m = min(n, T-t, 1 + steps
    to the first done at or after t)``. Shapes ``[T]``/``[T,B]``."""
    if _needs_grad(rewards, next_values, gamma):
        value = nstep_returns(*(_detached(x) for x in (rewards, next_values, terminated,
                                                        truncated)), gamma=_detached(gamma), n=n)
        return _delegated_grad("nstep_returns", value,
                               (rewards, next_values, terminated, truncated),
                               {"gamma": gamma, "n": n})
    arrays = [_array(x) for x in (rewards, next_values, terminated, truncated)]
    names = ("rewards", "next_values", "terminated", "truncated")

    def full():
        _validate.nstep_inputs(*arrays, gamma=gamma, n=n)

    def cheap():
        for name, x in zip(names, arrays, strict=True):
            _validate.check_real(name, x)
        _validate.check_time_major("rewards", arrays[0],
                                   **dict(zip(names[1:], arrays[1:], strict=True)))
        for name, x in zip(names[2:], arrays[2:], strict=True):
            if _validate._dtype_kind(x) != "b":
                _validate.check_flags(name, x)
        return (_validate.check_unit_interval("gamma", gamma, tuple(arrays[0].shape)),
                _validate.check_n(n))

    g, n_checked = _checks(cheap, full)
    K = _kernels()
    ctx = _Context(arrays)
    shape = tuple(arrays[0].shape)
    T = shape[0]
    B = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    r, nv = (ctx.floats(x) for x in arrays[:2])
    te, tr = (ctx.flags(x) for x in arrays[2:])
    out, err = ctx.empty(T * B), ctx.zeros_err()
    if T * B == 0:  # an empty batch: an empty output, as the reference
        return ctx.out(out, shape)
    per_step = not isinstance(g, float)
    gam = ctx.per_step(g, shape) if per_step else ctx.dummy()
    _launch(K.build_nstep(_ti_dtype(ctx.dtype), per_step),
            [r, nv, te, tr, out, err, gam, T, B, min(n_checked, T),
             0.0 if per_step else float(g)])
    if _failed(err):
        _raise_invalid(full, ctx, shape, (out,))
    return ctx.out(out, shape)


# ---------------------------------------------------------------------------------------------
# action-value trace


def _run_action(mode, rewards, q_taken, next_expected_q, terminated, truncated, gamma, lam,
                coefficient_name=None, coefficient_input=None):
    if _needs_grad(rewards, q_taken, next_expected_q, coefficient_input, gamma, lam):
        out = _run_action(mode, *(_detached(x) for x in (rewards, q_taken, next_expected_q,
                                                         terminated, truncated, gamma, lam)),
                          coefficient_name, _detached(coefficient_input))
        K = _kernels()
        kind = ("ones" if coefficient_name is None else "traces" if mode == K.Q_TRACES
                else "retrace" if mode == K.Q_RETRACE else "is")
        return _action_grad(kind, out, rewards, q_taken, next_expected_q, terminated, truncated,
                            coefficient_input, gamma, lam)
    arrays = [_array(x) for x in (rewards, q_taken, next_expected_q, terminated, truncated)]
    names = ("rewards", "q_taken", "next_expected_q", "terminated", "truncated")
    named = dict(zip(names, arrays, strict=False))
    cx = None
    if coefficient_name is not None:
        cx = _array(coefficient_input)
        named[coefficient_name] = cx
    extra = {} if coefficient_name is None else {coefficient_name: cx}

    def full():
        _validate.action_inputs(*arrays, gamma=gamma, lam=lam, **extra)

    def cheap():
        for name, x in named.items():
            _validate.check_real(name, x)
        _validate.check_time_major("rewards", arrays[0],
                                   **{k: x for k, x in named.items() if k != "rewards"})
        for name in ("terminated", "truncated"):
            if _validate._dtype_kind(named[name]) != "b":
                _validate.check_flags(name, named[name])
        shape = tuple(arrays[0].shape)
        return (_validate.check_unit_interval("gamma", gamma, shape),
                _validate.check_unit_interval("lam", lam, shape))

    g, l = _checks(cheap, full)
    K = _kernels()
    ctx = _Context(list(named.values()))
    shape = tuple(arrays[0].shape)
    T = shape[0]
    B = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    r, q, nq = (ctx.floats(x) for x in arrays[:3])
    te, tr = (ctx.flags(x) for x in arrays[3:])
    cxb = ctx.floats(cx) if cx is not None else ctx.dummy()
    out, err = ctx.empty(T * B), ctx.zeros_err()
    if T * B == 0:  # an empty batch: an empty output, as the reference
        return ctx.out(out, shape)
    hi = 1.0 if coefficient_name == "target_probs_taken" else float(np.finfo(ctx.dtype).max)
    per_step, gam, lm = ctx.step_buffers(g, l, shape)
    serial = _state["arch"] == "cpu" and _serial(T * B, "action")
    kern = K.build_action(_ti_dtype(ctx.dtype), mode, per_step, serial)
    scalars = (0.0, 0.0) if per_step else (float(g), float(l))  # unused when per step
    if _state["arch"] == "cpu" and _forced_form["state"] != "naive":
        BB = _block(B, serial, 32, 2048)
        _launch(kern["rows"], [r, q, nq, te, tr, cxb, out, err, gam, lm, T, B, BB, *scalars,
                               0.0, hi])
    else:
        _launch(kern["naive"], [r, q, nq, te, tr, cxb, out, err, gam, lm, T, B, *scalars,
                                0.0, hi])
    if _failed(err):
        _raise_invalid(full, ctx, shape, (out,),
                       log_rhos=cx if coefficient_name == "log_rhos" else None)
    return ctx.out(out, shape)


def q_trace(rewards: npt.ArrayLike | torch.Tensor, q_taken: npt.ArrayLike | torch.Tensor,
            next_expected_q: npt.ArrayLike | torch.Tensor, terminated: npt.ArrayLike | torch.Tensor,
            truncated: npt.ArrayLike | torch.Tensor, traces: npt.ArrayLike | torch.Tensor, *,
            gamma: npt.ArrayLike | torch.Tensor,
            lam: npt.ArrayLike | torch.Tensor) -> np.ndarray | torch.Tensor:
    """The general action-value trace:
    ``G_t = r_t + gamma beta_t next_expected_q_t
    + gamma lam kappa_t c_{t+1} (G_{t+1} - Q(s_{t+1}, a_{t+1}))`` with ``c = traces``."""
    K = _kernels()
    return _run_action(K.Q_TRACES, rewards, q_taken, next_expected_q, terminated, truncated,
                       gamma, lam, "traces", traces)


def retrace(rewards: npt.ArrayLike | torch.Tensor, q_taken: npt.ArrayLike | torch.Tensor,
            next_expected_q: npt.ArrayLike | torch.Tensor, terminated: npt.ArrayLike | torch.Tensor,
            truncated: npt.ArrayLike | torch.Tensor, log_rhos: npt.ArrayLike | torch.Tensor, *,
            gamma: npt.ArrayLike | torch.Tensor,
            lam: npt.ArrayLike | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Retrace(lambda) (Munos et al. 2016): ``q_trace`` with ``c_t = min(1, rho_t)``."""
    K = _kernels()
    return _run_action(K.Q_RETRACE, rewards, q_taken, next_expected_q, terminated, truncated,
                       gamma, lam, "log_rhos", log_rhos)


def tree_backup(rewards: npt.ArrayLike | torch.Tensor, q_taken: npt.ArrayLike | torch.Tensor,
                next_expected_q: npt.ArrayLike | torch.Tensor,
                terminated: npt.ArrayLike | torch.Tensor, truncated: npt.ArrayLike | torch.Tensor,
                target_probs_taken: npt.ArrayLike | torch.Tensor, *,
                gamma: npt.ArrayLike | torch.Tensor,
                lam: npt.ArrayLike | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Tree-backup(lambda) (Precup et al. 2000): ``q_trace`` with ``c_t = pi(a_t|s_t)``."""
    K = _kernels()
    return _run_action(K.Q_TRACES, rewards, q_taken, next_expected_q, terminated, truncated,
                       gamma, lam, "target_probs_taken", target_probs_taken)


def q_lambda(rewards: npt.ArrayLike | torch.Tensor, q_taken: npt.ArrayLike | torch.Tensor,
             next_expected_q: npt.ArrayLike | torch.Tensor,
             terminated: npt.ArrayLike | torch.Tensor, truncated: npt.ArrayLike | torch.Tensor, *,
             gamma: npt.ArrayLike | torch.Tensor,
             lam: npt.ArrayLike | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Q^pi(lambda) (Harutyunyan et al. 2016): ``q_trace`` with ``c_t = 1``."""
    K = _kernels()
    return _run_action(K.Q_ONES, rewards, q_taken, next_expected_q, terminated, truncated,
                       gamma, lam)


def importance_sampling_q(rewards: npt.ArrayLike | torch.Tensor,
                          q_taken: npt.ArrayLike | torch.Tensor,
                          next_expected_q: npt.ArrayLike | torch.Tensor,
                          terminated: npt.ArrayLike | torch.Tensor,
                          truncated: npt.ArrayLike | torch.Tensor,
                          log_rhos: npt.ArrayLike | torch.Tensor, *,
                          gamma: npt.ArrayLike | torch.Tensor,
                          lam: npt.ArrayLike | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Per-decision importance sampling for Q: ``q_trace`` with ``c_t = rho_t`` (unclipped)."""
    K = _kernels()
    return _run_action(K.Q_IS, rewards, q_taken, next_expected_q, terminated, truncated,
                       gamma, lam, "log_rhos", log_rhos)


# ---------------------------------------------------------------------------------------------
# P3O

_NORM = {"max": 0, "sum": 1, "none": 2}


def p3o_advantage(rewards: npt.ArrayLike | torch.Tensor, reward_mean: npt.ArrayLike | torch.Tensor,
                  reward_std: npt.ArrayLike | torch.Tensor,
                  terminated: npt.ArrayLike | torch.Tensor, truncated: npt.ArrayLike | torch.Tensor,
                  *, batch_reward_std: float, normalize: str = "max") -> np.ndarray | torch.Tensor:
    """P3O variance-weighted advantage (an experimental PufferLib estimator):
    ``w_{t,k} = max(0, sigma_{t,k}^-2 - sigma_r^-2)`` normalised per t over all H (by max, sum,
    or not), ``A_t = sum_{k<m} w_{t,k} (r_{t+k} - mu_{t,k})``,
    ``m = min(H, T-t, 1 + steps to the first done at or after t)``.
    Shapes: rewards ``[T]``/``[T,B]``, predictions ``[T,H]``/``[T,B,H]``."""
    if _needs_grad(rewards, reward_mean, reward_std):
        value = p3o_advantage(*(_detached(x) for x in (rewards, reward_mean, reward_std,
                                                        terminated, truncated)),
                              batch_reward_std=batch_reward_std, normalize=normalize)
        return _delegated_grad("p3o_advantage", value,
                               (rewards, reward_mean, reward_std, terminated, truncated),
                               {"batch_reward_std": batch_reward_std, "normalize": normalize})
    arrays = [_array(x) for x in (rewards, reward_mean, reward_std, terminated, truncated)]
    names = ("rewards", "reward_mean", "reward_std", "terminated", "truncated")
    r0, mean0, std0, te0, tr0 = arrays
    shape = tuple(r0.shape)

    def full():
        _validate.p3o_inputs(*arrays, batch_reward_std=batch_reward_std, normalize=normalize)

    def cheap():
        for name, x in zip(names, arrays, strict=True):
            _validate.check_real(name, x)
        _validate.check_time_major("rewards", r0, terminated=te0, truncated=tr0)
        for x in (mean0, std0):
            got = tuple(x.shape)
            if len(got) != len(shape) + 1 or got[:-1] != shape or got[-1] < 1:
                raise ValueError("shape")  # full() raises the shared message
        if tuple(std0.shape) != tuple(mean0.shape):
            raise ValueError("shape")
        for name, x in (("terminated", te0), ("truncated", tr0)):
            if _validate._dtype_kind(x) != "b":
                _validate.check_flags(name, x)
        return (_validate.check_positive("batch_reward_std", batch_reward_std),
                _validate.check_normalize(normalize))

    sigma_r, normalize = _checks(cheap, full)
    K = _kernels()
    ctx = _Context(arrays)
    T = shape[0]
    B = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    H = int(mean0.shape[-1])
    r, mean, std = (ctx.floats(x) for x in arrays[:3])
    te, tr = (ctx.flags(x) for x in arrays[3:])
    out, err = ctx.empty(T * B), ctx.zeros_err()
    if T * B == 0:  # an empty batch: an empty output, as the reference
        return ctx.out(out, shape)
    _launch(K.build_p3o(_ti_dtype(ctx.dtype)),
            [r, mean, std, te, tr, out, err, T, B, H, float(sigma_r) ** -2.0, _NORM[normalize]])
    if _failed(err):
        _raise_invalid(full, ctx, shape, (out,), culprit="reward_std")
    return ctx.out(out, shape)
