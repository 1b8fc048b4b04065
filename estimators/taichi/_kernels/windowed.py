"""Windowed estimators (n-step returns, P3O): every output element is independent, so the
kernels are parallel over (t, b)."""

import taichi as ti

from .common import memo, nd1


def build_nstep(dt, per_step=False):
    return memo(("nstep", dt, per_step), lambda: _make_nstep(dt, per_step))


def _make_nstep(dt, per_step):
    @ti.kernel
    def nstep(r: nd1, nv: nd1, te: nd1, tr: nd1, out: nd1, err: nd1, gam: nd1, T: ti.i32,
              B: ti.i32, n: ti.i32, gamma_: ti.f64):
        gamma = ti.cast(gamma_, dt)
        ti.loop_config(block_dim=256)
        for i in range(T * B):
            t = i // B
            # validity of this element's own inputs (each element is checked exactly once)
            own = te[i] != 0
            bad = r[i] * 0 + ti.select(own, ti.cast(0, dt), nv[i] * 0)
            total = ti.cast(0, dt)
            disc = ti.cast(1, dt)
            m = ti.min(n, T - t)
            for k in range(m):
                j = i + k * B
                total += disc * r[j]
                if ti.static(per_step):
                    disc *= gam[j]  # prod_{l<=k} gamma_{t+l}
                else:
                    disc *= gamma
                term = te[j] != 0
                if term or tr[j] != 0 or k == m - 1:
                    if not term:
                        total += disc * nv[j]
                    break
            out[i] = total
            bad += total * 0  # an overflowing output raises the flag too
            if not bad == 0:  # NaN-safe: `!=` may compile to an ordered compare
                err[0] = 1

    return nstep


def build_p3o(dt):
    return memo(("p3o", dt), lambda: _make_p3o(dt))


def _make_p3o(dt):
    @ti.kernel
    def p3o(r: nd1, mean: nd1, std: nd1, te: nd1, tr: nd1, out: nd1, err: nd1, T: ti.i32,
            B: ti.i32, H: ti.i32, inv_var_r_: ti.f64, norm: ti.i32):
        inv_var_r = ti.cast(inv_var_r_, dt)
        ti.loop_config(block_dim=64)
        for i in range(T * B):
            t = i // B
            h0 = i * H
            scale = ti.cast(0, dt)
            bad = r[i] * 0
            for k in range(H):
                s = std[h0 + k]
                w = ti.max(ti.cast(0, dt), 1 / (s * s) - inv_var_r)
                bad += mean[h0 + k] * 0 + ti.select(s > 0, ti.cast(0, dt), ti.cast(1, dt))
                if norm == 0:
                    scale = ti.max(scale, w)
                else:
                    scale += w
            if norm == 2 or not scale > 0:
                scale = ti.cast(1, dt)
            total = ti.cast(0, dt)
            m = ti.min(H, T - t)
            for k in range(m):
                j = i + k * B
                s = std[h0 + k]
                w = ti.max(ti.cast(0, dt), 1 / (s * s) - inv_var_r) / scale
                total += w * (r[j] - mean[h0 + k])
                if te[j] != 0 or tr[j] != 0:
                    break
            out[i] = total
            bad += total * 0  # an overflowing output raises the flag too
            if not bad == 0:  # NaN-safe: `!=` may compile to an ordered compare
                err[0] = 1

    return p3o
