"""Autograd: the adjoint of the first-order linear scan (the backward pass of
``estimators.taichi``'s differentiable path)."""

import taichi as ti

from .common import memo, nd1


def build_scan_backward(dt, serial=False):
    """The backward pass of ``y_t = a_t + c_t y_{t+1}`` (t = T-1 .. 0, ``y_T = 0``) for float
    dtype ``dt``: given ``g_t = dL/dy_t``, the adjoint ``u_t = g_t + c_{t-1} u_{t-1}`` runs
    forwards in time (``u_0 = g_0``) and gives ``dL/da_t = u_t``, ``dL/dc_t = u_t y_{t+1}``
    (0 at t = T-1). Arguments: g, c, y (dt, flat ``[T*B]``), u, gc (outputs), T, B, BB.

    ``rows`` (CPU): blocks of BB streams in parallel, each walking t upwards in lockstep over
    contiguous rows (as the state kernels' ``rows`` form); ``naive`` (GPU): one thread per
    stream (BB unused). ``serial``: ``rows`` on the calling thread (as in ``build_state``).
    """
    return memo(("scan_backward", dt, serial), lambda: _make_scan_backward(dt, serial))


def _make_scan_backward(dt, serial):
    @ti.func
    def element(g: ti.template(), c: ti.template(), y: ti.template(), u: ti.template(),
                gc: ti.template(), i, t, T, B, prev):
        ut = g[i]
        if t > 0:
            ut += c[i - B] * prev
        u[i] = ut
        gct = ti.cast(0, dt)
        if t < T - 1:
            gct = ut * y[i + B]
        gc[i] = gct
        return ut

    @ti.kernel
    def rows(g: nd1, c: nd1, y: nd1, u: nd1, gc: nd1, T: ti.i32, B: ti.i32, BB: ti.i32):
        nblk = (B + BB - 1) // BB
        ti.loop_config(block_dim=1, serialize=serial)
        for blk in range(nblk):
            b0 = blk * BB
            b1 = ti.min(b0 + BB, B)
            for t in range(T):
                for b in range(b0, b1):
                    i = t * B + b
                    prev = ti.cast(0, dt)
                    if t > 0:
                        prev = u[i - B]
                    element(g, c, y, u, gc, i, t, T, B, prev)

    @ti.kernel
    def naive(g: nd1, c: nd1, y: nd1, u: nd1, gc: nd1, T: ti.i32, B: ti.i32, BB: ti.i32):
        for b in range(B):  # one thread per stream
            prev = ti.cast(0, dt)
            for t in range(T):
                prev = element(g, c, y, u, gc, t * B + b, t, T, B, prev)

    return {"rows": rows, "naive": naive}
