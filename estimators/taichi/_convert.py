"""Inputs and outputs of the Taichi backend: numpy arrays, torch tensors or lists in, flat
contiguous buffers of the compute dtype for the kernels, and the outputs back as numpy or torch
like the input (``Context``); the checks run before a kernel, and the error raised after a
kernel flagged an element (``raise_invalid``)."""

from __future__ import annotations

import sys

import numpy as np

from .. import _validate
from ._runtime import ensure_init, shared_dummy


def is_torch(x) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def as_array(x):
    """numpy arrays and torch tensors pass through; anything else becomes a numpy array."""
    return x if is_torch(x) or isinstance(x, np.ndarray) else np.asarray(x)


class Context:
    """Where the outputs go (numpy, or torch on a device) and the compute dtype."""

    def __init__(self, arrays):
        self.torch_device = None
        self.torch_dtype = None
        for x in arrays:
            if is_torch(x):
                self.torch_device = x.device
                break
        float_dtypes = set()
        for x in arrays:
            if is_torch(x):
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
                              and ensure_init() == "cuda")

    def floats(self, x):
        """A contiguous flat buffer of the compute dtype."""
        if is_torch(x):
            torch = sys.modules["torch"]
            x = x.detach()
            if self.device_arrays:
                return x.to(self.torch_dtype).contiguous().reshape(-1)
            return x.to(device="cpu", dtype=self.torch_dtype).contiguous().reshape(-1).numpy() \
                if x.dtype != torch.bool else x.cpu().numpy().astype(self.dtype).reshape(-1)
        return np.ascontiguousarray(x, dtype=self.dtype).reshape(-1)

    def flags(self, x):
        """uint8 0/1 flat buffer (bool arrays are viewed, not copied)."""
        if is_torch(x):
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
        return output_buffer(n, np.dtype(self.dtype))

    def zeros_err(self):
        if self.device_arrays:
            torch = sys.modules["torch"]
            return torch.zeros(1, dtype=torch.int32, device=self.torch_device)
        return np.zeros(1, dtype=np.int32)

    def dummy(self):
        """An argument the kernel never reads nor writes (shared; a tensor on CUDA)."""
        if self.device_arrays:
            return self.empty(1)
        return shared_dummy(self.dtype)

    def per_step(self, x, shape):
        """A per-step gamma/lam (validated, broadcastable to ``shape``) as a contiguous flat
        buffer of the compute dtype, broadcast to ``shape``."""
        if self.device_arrays:  # CUDA buffers: a numpy gamma/lam goes to the device too
            torch = sys.modules["torch"]
            x = torch.as_tensor(x).detach().to(device=self.torch_device, dtype=self.torch_dtype)
            return torch.broadcast_to(x, tuple(shape)).contiguous().reshape(-1)
        if is_torch(x):
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


def failed(err) -> bool:
    return bool(err[0] != 0)


def raise_invalid(full, ctx, shape, outputs, log_rhos=None, culprit="rewards", state=False):
    """The kernel flagged a non-finite input or output: re-run the shared validation (raises
    its message for a bad input); otherwise an output overflowed: raise naming the culprit."""
    full()
    dtype_name = np.dtype(ctx.dtype).name
    # the state kernels' float32 exp saturates to inf above 88.5
    limit = 88.5 if state and ctx.dtype == np.float32 else None
    _validate.check_outputs_finite([x.reshape(shape) for x in outputs], dtype_name=dtype_name,
                                   log_rhos=log_rhos, culprit=culprit, exp_limit=limit)
    raise ValueError(f"{culprit}: the estimator overflows {dtype_name}")  # pragma: no cover


def aligned16(*arrays) -> bool:
    return all(isinstance(a, np.ndarray) and a.ctypes.data % 16 == 0 for a in arrays)


def checks(cheap, full):
    """Run the checks that do not read elements; if one fails, run the shared validation
    (``full``) first, so the error raised is exactly the reference's (its first failing check)."""
    try:
        return cheap()
    except (ValueError, TypeError):
        full()
        raise


# outputs of at least this many bytes start on a cache line (64 bytes)
ALIGN_FROM_BYTES = 1 << 16


def output_buffer(n, dt):
    """A new output buffer of n elements of numpy dtype ``dt``; from ``ALIGN_FROM_BYTES`` on,
    it starts on a 64-byte cache line: blocks of streams run by different threads then write
    disjoint cache lines wherever a block boundary falls on a multiple of 64 bytes of a row
    (e.g. 128 float32 streams in two blocks). malloc gives only 16-byte alignment, and a line
    shared by two threads' stores at every step of T was measured to slow V-trace down
    (``reports/bench/taichi_notes.md``)."""
    nbytes = n * dt.itemsize
    if nbytes < ALIGN_FROM_BYTES:
        return np.empty(n, dt)
    raw = np.empty(nbytes + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start:start + nbytes].view(dt)
