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

**Modules.** This package holds the public functions and their general path;
``_runtime`` (architecture, threads, launching), ``_convert`` (array types and dtypes in and
out), ``_lean`` (the one-pass path for plain numpy/CPU-torch inputs), ``_autograd`` (gradients)
and ``_kernels`` (one factory per kernel form, over shared ``@ti.func`` helpers).

**Kernel forms** (``estimators.taichi._kernels``) and when each is chosen:

* CPU, state-value trace (GAE, V-trace, puff advantage, per-decision IS): ``vec4`` (GAE) or
  ``vec8`` (the log-ratio modes), the lockstep form: blocks of streams, each walking t
  downwards over contiguous rows with 4- / 8-wide vector arithmetic, when the compute dtype is
  float32, B % 4 == 0 (B % 8 for ``vec8``) and the arrays are 16-byte aligned; otherwise
  ``rows``, the same walk one lane at a time.
* CPU, action-value trace: ``rows``.
* Threads: at or below ``SERIAL_MAX`` elements (T*B; per family) the CPU forms run on the
  calling thread (a serial build of the same kernel, bit-identical outputs), where waking
  Taichi's thread pool costs more than the batch takes; above it, one block of streams per
  core. With at most 2 CPUs the limit is ``SERIAL_MAX_FEW_THREADS`` (4M elements). Outputs of
  64 KiB and more start on a cache line.
* Lean path: numpy arrays (or CPU torch tensors) of one float dtype with bool flags,
  C-contiguous, with python-float gamma/lam and clips, take a one-pass path to the same kernel
  (same checks, no conversions, a launch context kept per kernel).
* GPU: ``naive`` (one thread per stream), or ``chunked`` (T cut into chunks, each reduced to an
  affine map, the maps composed, the chunks re-walked) when B < 2048 and T >= 256. On a CPU
  the ``chunked`` form is correct and slow (scalar code); it stays a GPU form.

The measurements behind these choices (thread crossover, per-call floor, vector widths) are in
``reports/bench/taichi_notes.md``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from .. import _validate
from .._types import GAEOutput, PDISOutput, VTraceOutput
from . import _runtime
from ._autograd import action_grad as _action_grad
from ._autograd import delegated_grad as _delegated_grad
from ._autograd import detached as _detached
from ._autograd import needs_grad as _needs_grad
from ._autograd import state_grad as _state_grad
from ._convert import Context as _Context
from ._convert import aligned16 as _aligned16
from ._convert import as_array as _array
from ._convert import checks as _checks
from ._convert import failed as _failed
from ._convert import raise_invalid as _raise_invalid
from ._lean import LeanOut as _LeanOut
from ._lean import fast_state as _fast_state
from ._runtime import ENV_ARCH, configure, current_arch  # noqa: F401 (public)
from ._runtime import arch_state as _state
from ._runtime import block_size as _block
from ._runtime import forced_forms as _forced_form
from ._runtime import kernels as _kernel_module
from ._runtime import launch as _launch
from ._runtime import serial_for as _serial
from ._runtime import shared_dummy as _dummy
from ._runtime import ti_dtype as _ti_dtype

if TYPE_CHECKING:
    import torch

# the handles tests and the benchmark use to pin a kernel form or the threads
_form, _threads = _runtime.force_form, _runtime.force_threads

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



def _run_state(mode, rewards, values, next_values, terminated, truncated, log_rhos, gamma, lam,
               clips=None):
    """Validate, run the state-value kernel; returns (ctx, shape, adv, ret, pg) flat.
    ``clips``: {name: level} of the clip levels to check and use (V-trace)."""
    fast = _fast_state(mode, _kernel_module(), rewards, values, next_values, terminated, truncated,
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
    K = _kernel_module()
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
    K = _kernel_module()
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
    K = _kernel_module()
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
    K = _kernel_module()
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
    K = _kernel_module()
    ctx, shape, adv, ret, _ = _run_state(K.PDIS, rewards, values, next_values, terminated,
                                         truncated, log_rhos, gamma, lam)
    return PDISOutput(ctx.out(adv, shape), ctx.out(ret, shape))


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
    K = _kernel_module()
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


def _run_action(mode, rewards, q_taken, next_expected_q, terminated, truncated, gamma, lam,
                coefficient_name=None, coefficient_input=None):
    if _needs_grad(rewards, q_taken, next_expected_q, coefficient_input, gamma, lam):
        out = _run_action(mode, *(_detached(x) for x in (rewards, q_taken, next_expected_q,
                                                         terminated, truncated, gamma, lam)),
                          coefficient_name, _detached(coefficient_input))
        K = _kernel_module()
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
    K = _kernel_module()
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
    K = _kernel_module()
    return _run_action(K.Q_TRACES, rewards, q_taken, next_expected_q, terminated, truncated,
                       gamma, lam, "traces", traces)


def retrace(rewards: npt.ArrayLike | torch.Tensor, q_taken: npt.ArrayLike | torch.Tensor,
            next_expected_q: npt.ArrayLike | torch.Tensor, terminated: npt.ArrayLike | torch.Tensor,
            truncated: npt.ArrayLike | torch.Tensor, log_rhos: npt.ArrayLike | torch.Tensor, *,
            gamma: npt.ArrayLike | torch.Tensor,
            lam: npt.ArrayLike | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Retrace(lambda) (Munos et al. 2016): ``q_trace`` with ``c_t = min(1, rho_t)``."""
    K = _kernel_module()
    return _run_action(K.Q_RETRACE, rewards, q_taken, next_expected_q, terminated, truncated,
                       gamma, lam, "log_rhos", log_rhos)


def tree_backup(rewards: npt.ArrayLike | torch.Tensor, q_taken: npt.ArrayLike | torch.Tensor,
                next_expected_q: npt.ArrayLike | torch.Tensor,
                terminated: npt.ArrayLike | torch.Tensor, truncated: npt.ArrayLike | torch.Tensor,
                target_probs_taken: npt.ArrayLike | torch.Tensor, *,
                gamma: npt.ArrayLike | torch.Tensor,
                lam: npt.ArrayLike | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Tree-backup(lambda) (Precup et al. 2000): ``q_trace`` with ``c_t = pi(a_t|s_t)``."""
    K = _kernel_module()
    return _run_action(K.Q_TRACES, rewards, q_taken, next_expected_q, terminated, truncated,
                       gamma, lam, "target_probs_taken", target_probs_taken)


def q_lambda(rewards: npt.ArrayLike | torch.Tensor, q_taken: npt.ArrayLike | torch.Tensor,
             next_expected_q: npt.ArrayLike | torch.Tensor,
             terminated: npt.ArrayLike | torch.Tensor, truncated: npt.ArrayLike | torch.Tensor, *,
             gamma: npt.ArrayLike | torch.Tensor,
             lam: npt.ArrayLike | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Q^pi(lambda) (Harutyunyan et al. 2016): ``q_trace`` with ``c_t = 1``."""
    K = _kernel_module()
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
    K = _kernel_module()
    return _run_action(K.Q_IS, rewards, q_taken, next_expected_q, terminated, truncated,
                       gamma, lam, "log_rhos", log_rhos)


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
    K = _kernel_module()
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
