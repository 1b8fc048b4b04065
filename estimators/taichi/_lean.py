"""The lean path of the state-value trace: numpy arrays (or CPU torch tensors) of one float
dtype with bool flags, C-contiguous, scalar gamma/lam and clips, on the CPU. The same checks,
kernel and arguments as the general path in ``estimators.taichi``, in one pass without the
conversions, with a launch context kept per kernel and thread (only the arrays are set on every
call). ``fast_state`` returns None whenever it does not apply, and the general path runs."""

from __future__ import annotations

import sys
import threading

import numpy as np

from ._convert import ALIGN_FROM_BYTES, output_buffer
from ._runtime import (
    arch_state,
    block_size,
    forced_forms,
    launchers,
    serial_for,
    shared_dummy,
    ti_dtype,
)

_F32, _F64, _BOOL = np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.bool_)


_ERR = threading.local()


class LeanOut:
    """The output side of ``Context`` for the lean path (numpy or CPU torch, unchanged)."""

    @staticmethod
    def out(flat, shape):
        return flat.reshape(shape)


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
        return dt, None, output_buffer
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


def fast_state(mode, K, r, v, nv, te, tr, lr, gamma, lam, clips):
    """(adv, ret, pg) flat, or None when the lean path does not apply (the general path then
    runs: other array types, dtypes or layouts, per-step gamma/lam, a forced form, a GPU, a
    kernel not yet compiled in this process, or an input that fails a check). Inputs: numpy
    arrays (numpy out) or CPU torch tensors (torch out, allocated 64-byte aligned by torch)."""
    if (type(gamma) is not float or type(lam) is not float or not 0.0 <= gamma <= 1.0
            or not 0.0 <= lam <= 1.0 or arch_state["arch"] != "cpu"
            or forced_forms["state"] is not None):
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
    serial = serial_for(n, "gae" if mode == K.GAE else "log_ratio")
    kern = K.build_state(ti_dtype(dt), mode, False, serial)
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
            GB = block_size(G, serial, 8, 512)
        else:
            name = "vec8"
            GB = block_size(G // 2, serial, 4, 256)
        launcher = launchers.get((id(kern[name]), True))
        shp = (n // 4,)
        dummy = shared_dummy(dt, 4)
        ints = (T, G, GB)
    else:
        launcher = launchers.get((id(kern["rows"]), False))
        shp = (n,)
        dummy = shared_dummy(dt)
        ints = (T, B, block_size(B, serial, 32, 2048))
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
