"""Gradients of the Taichi backend.

When a torch input requires grad (and grad mode is on), the estimator's values come from the same
no-grad kernels (byte-identical outputs), and a graph is attached to them: the element-wise parts
(TD errors, clipped ratios, trace coefficients) are torch operations, and the scan
``y_t = a_t + c_t y_{t+1}`` is a ``torch.autograd.Function`` whose forward returns the kernel's y
and whose backward is the adjoint scan ``u_t = g_t + c_{t-1} u_{t-1}``, another Taichi kernel
(``_kernels.build_scan_backward``). The windowed estimators (n-step, P3O) take the torch
backend's graph (``delegated_grad``).
"""

from __future__ import annotations

import sys

import numpy as np

from ._convert import is_torch
from ._runtime import arch_state, block_size, forced_forms, kernels, launch, serial_for, ti_dtype


def needs_grad(*xs) -> bool:
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


def detached(x):
    return x.detach() if is_torch(x) else x


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
    """(u, dL/dc) of the adjoint scan (``_kernels.build_scan_backward``), [T, B]."""
    torch = sys.modules["torch"]
    T, B = c.shape
    device, dtype = c.device, c.dtype
    K = kernels()
    on_device = device.type == "cuda" and arch_state["arch"] == "cuda"
    if on_device:
        g, cc, yy = (x.detach().to(dtype).contiguous().reshape(-1) for x in (grad, c, y))
        u, gc = torch.empty_like(g), torch.empty_like(g)
    else:
        g, cc, yy = (np.ascontiguousarray(x.detach().to(device="cpu", dtype=dtype).numpy())
                     .reshape(-1) for x in (grad, c, y))
        u, gc = np.empty_like(g), np.empty_like(g)
    dt = ti_dtype(np.float32 if dtype == torch.float32 else np.float64)
    if T * B == 0:  # an empty batch: nothing to scan
        pass
    elif arch_state["arch"] == "cpu" and forced_forms["state"] != "naive":
        serial = serial_for(T * B, "gae")
        kern = K.build_scan_backward(dt, serial)
        BB = block_size(B, serial, 32, 2048)
        launch(kern["rows"], [g, cc, yy, u, gc, T, B, BB])
    else:
        launch(K.build_scan_backward(dt)["naive"], [g, cc, yy, u, gc, T, B, 1])
    if not on_device:
        u, gc = (torch.from_numpy(x).to(device) for x in (u, gc))
    return u.reshape(T, B), gc.reshape(T, B)


def _as_torch(x, like):
    """A kernel output (numpy or torch) as a torch tensor on ``like``'s device."""
    torch = sys.modules["torch"]
    if not is_torch(x):
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


def state_grad(mode, outputs, rewards, values, next_values, terminated, truncated, log_rhos,
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


def action_grad(mode, output, rewards, q_taken, next_expected_q, terminated, truncated,
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


def delegated_grad(name, value, args, kwargs):
    """``value`` (the kernel's output) carrying the gradient of the torch backend's ``name``
    (the windowed estimators: no scan; torch's graph of their vectorised sums is the backward)."""
    import importlib

    _, Replace = _autograd()
    like = _grad_device(*args, *kwargs.values())
    value = _as_torch(value, like)
    torch_backend = importlib.import_module("estimators.torch")
    want = getattr(torch_backend, name)(*args, **kwargs)
    return Replace.apply(want.to(value.dtype), value)
