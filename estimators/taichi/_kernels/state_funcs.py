"""The ``@ti.func`` helpers of the state-value trace ``A_t = delta_t + gamma lam c_t kappa_t
A_{t+1}`` (GAE, V-trace, per-decision IS), shared by every kernel form of ``state``: the
per-step parameter reads, the float32 exp polynomial (scalar and vector), the per-element
coefficients, the 4-/8-lane loads and stores, and the scalar forms' element step."""

from types import SimpleNamespace

import taichi as ti

from .common import GAE, VTRACE, memo, steps


def state_funcs(dt, mode, per_step):
    """The helpers for float dtype ``dt``, ``mode`` (GAE/VTRACE/PDIS) and ``per_step``."""
    return memo(("state_funcs", dt, mode, per_step), lambda: _make(dt, mode, per_step))


def _make(dt, mode, per_step):
    want_rho = mode != GAE
    steps1 = steps(per_step)

    @ti.func
    def steps4(gam: ti.template(), lm: ti.template(), i, gamma, lam, gl, one):
        """(gamma_t, lam_t, gamma_t lam_t, 1 - lam_t) of 4-vector i (scalars, as before, for
        scalar gamma and lam; no python int next to a vector: it crashes the codegen)."""
        if ti.static(per_step):
            g = gam[i]
            l = lm[i]
            return g, l, g * l, one - l
        else:
            return gamma, lam, gl, 1 - lam

    @ti.func
    def reads_trace(kap_j, gl_j):
        """Lane j's trace factor is read: kappa_t, and gamma_t lam_t > 0 (a scalar gamma lam
        of 0 is handled by the wrapper, which then passes c_clip = 0: no compare per lane)."""
        if ti.static(per_step):
            return (kap_j > 0) & (gl_j > 0)
        else:
            return kap_j > 0

    @ti.func
    def steps8(gam: ti.template(), lm: ti.template(), q, gamma, gl):
        """(gamma_t, gamma_t lam_t) of the 8 lanes at 4-vector q."""
        if ti.static(per_step):
            g = ld8(gam, q)
            return g, g * ld8(lm, q)
        else:
            return gamma, gl

    @ti.func
    def exp(x):
        """exp(x): libm's for float64; for float32 an inlined Cody-Waite reduction and a
        degree-6 polynomial (relative error ~2e-7), straight-line code that LLVM can vectorise,
        where a call to expf per element would dominate the whole kernel."""
        y = ti.cast(0, dt)
        if ti.static(dt == ti.f32):
            xc = ti.min(ti.max(x, ti.cast(-87.0, dt)), ti.cast(88.5, dt))
            k = ti.floor(xc * ti.cast(1.4426950408889634, dt) + ti.cast(0.5, dt))
            r = xc - k * ti.cast(0.693359375, dt) + k * ti.cast(2.12194440e-4, dt)
            p = ti.cast(1.0 / 720, dt)
            p = p * r + ti.cast(1.0 / 120, dt)
            p = p * r + ti.cast(1.0 / 24, dt)
            p = p * r + ti.cast(1.0 / 6, dt)
            p = p * r + ti.cast(0.5, dt)
            p = p * r + ti.cast(1.0, dt)
            p = p * r + ti.cast(1.0, dt)
            two_k = ti.bit_cast((ti.cast(k, ti.i32) + 127) << 23, ti.f32)
            y = p * two_k
            y = ti.select(x < ti.cast(-87.0, dt), ti.cast(0, dt), y)
            y = ti.select(x > ti.cast(88.5, dt), ti.cast(float("inf"), dt), y)
        else:
            y = ti.exp(x)
        return y

    @ti.func
    def lane(te, tr, lrj, nvj, first_step, gamma, lam, rho_clip, c_clip, pg_clip):
        """Per-element coefficients: (bootstrap value, rho_hat, trace factor gamma lam c kappa,
        kappa, pg ratio, bad log-ratio)."""
        term = te != 0
        cut = term | (tr != 0) | first_step  # first_step: t = T-1, the segment end
        boot = ti.select(term, ti.cast(0, dt), nvj)
        rh = ti.cast(1, dt)
        c = ti.cast(1, dt)
        rpg = ti.cast(1, dt)
        bad = ti.cast(0, dt)
        if ti.static(want_rho):
            rho = exp(lrj)
            bad = ti.select(lrj < ti.cast(float("inf"), dt), ti.cast(0, dt), ti.cast(1, dt))
            if ti.static(mode == VTRACE):
                rh = ti.min(rho_clip, rho)
                c = ti.min(c_clip, rho)
                rpg = ti.min(pg_clip, rho)
            else:
                rh = rho
                c = rho
        gl = gamma * lam
        # a cut (or gamma lam = 0) gives a trace factor of exactly 0, even where c is inf
        cf = ti.select(cut | (gl <= 0), ti.cast(0, dt), gl * c)
        kap = ti.select(cut, ti.cast(0, dt), ti.cast(1, dt))
        return ti.Vector([boot, rh, cf, kap, rpg, bad], dt=dt)

    @ti.func
    def vexp(x):
        """exp of a float32 4- or 8-vector (8: one AVX ``<8 x float>`` op per step),
        vectorised: the polynomial of ``exp`` on vectors (only 2^k is assembled per lane:
        vector casts crash Taichi 1.7 in this mode)."""
        w = ti.static(x.n)
        xc = ti.min(ti.max(x, ti.Vector([-87.0] * w, dt=dt)), ti.Vector([88.5] * w, dt=dt))
        k = ti.floor(xc * ti.cast(1.4426950408889634, dt) + ti.cast(0.5, dt))
        r = xc - k * ti.cast(0.693359375, dt) + k * ti.cast(2.12194440e-4, dt)
        p = r * ti.cast(1.0 / 720, dt) + ti.cast(1.0 / 120, dt)
        p = p * r + ti.cast(1.0 / 24, dt)
        p = p * r + ti.cast(1.0 / 6, dt)
        p = p * r + ti.cast(0.5, dt)
        p = p * r + ti.cast(1.0, dt)
        p = p * r + ti.cast(1.0, dt)
        two_k = ti.Vector([ti.bit_cast((ti.cast(k[j], ti.i32) + 127) << 23, ti.f32)
                           for j in ti.static(range(w))], dt=dt)
        y = p * two_k
        return ti.Vector([ti.select(x[j] < -87.0, ti.cast(0, dt),
                                    ti.select(x[j] > 88.5, ti.cast(float("inf"), dt), y[j]))
                          for j in ti.static(range(w))], dt=dt)

    @ti.func
    def flags4(te: ti.template(), tr: ti.template(), e, nvv, first_step):
        """(bootstrap values, kappa as 0/1) of the 4 lanes starting at flat index e."""
        boot = ti.Vector([ti.select(te[e + j] != 0, ti.cast(0, dt), nvv[j])
                          for j in ti.static(range(4))], dt=dt)
        # bitwise | on the compare results: Taichi's `or` short-circuits into branches
        kap = ti.Vector([ti.select(((te[e + j] | tr[e + j]) != 0) | first_step,
                                   ti.cast(0, dt), ti.cast(1, dt))
                         for j in ti.static(range(4))], dt=dt)
        return boot, kap

    @ti.func
    def ld8(a: ti.template(), q):
        """Lanes 4q .. 4q+7 of a 4-vector array as one 8-vector (two aligned 16-byte loads;
        an aligned 32-byte load would need 32-byte aligned arrays, which numpy does not give)."""
        x0 = a[q]
        x1 = a[q + 1]
        return ti.Vector([x0[0], x0[1], x0[2], x0[3], x1[0], x1[1], x1[2], x1[3]], dt=dt)

    @ti.func
    def st8(a: ti.template(), q, x):
        a[q] = ti.Vector([x[0], x[1], x[2], x[3]], dt=dt)
        a[q + 1] = ti.Vector([x[4], x[5], x[6], x[7]], dt=dt)


    @ti.func
    def element(r: ti.template(), v: ti.template(), nv: ti.template(), te: ti.template(),
                tr: ti.template(), lr: ti.template(), adv: ti.template(), ret: ti.template(),
                pg: ti.template(), gam: ti.template(), lm: ti.template(), i, nxt, k, gamma_s,
                lam_s, rho_clip, c_clip, pg_clip, prev):
        """One element of the scalar forms; returns (A_t, bad); bad is NaN when an input is
        not finite or the output overflows."""
        gamma, lam = steps1(gam, lm, i, gamma_s, lam_s)
        l = lane(te[i], tr[i], lr[i] if ti.static(want_rho) else ti.cast(0, dt), nv[i], k == 0,
                 gamma, lam, rho_clip, c_clip, pg_clip)
        rv = r[i]
        vv = v[i]
        a = l[1] * (rv + gamma * l[0] - vv) + l[2] * prev
        target = a + vv
        adv[i] = a
        ret[i] = target
        bad = l[5] + rv * 0 + vv * 0 + l[0] * 0 + target * 0
        return a, bad

    @ti.func
    def pg_element(r: ti.template(), v: ti.template(), nv: ti.template(), te: ti.template(),
                   tr: ti.template(), lr: ti.template(), ret: ti.template(), pg: ti.template(),
                   gam: ti.template(), lm: ti.template(), i, nxt, k, gamma_s, lam_s, pg_clip):
        """V-trace's policy-gradient advantage at flat index i (nxt: index of t+1); returns
        pg * 0 (NaN iff it is not finite)."""
        gamma, lam = steps1(gam, lm, i, gamma_s, lam_s)
        term = te[i] != 0
        kap = ti.select(term | (tr[i] != 0) | (k == 0), ti.cast(0, dt), ti.cast(1, dt))
        boot = ti.select(term, ti.cast(0, dt), nv[i])
        vnext = ti.cast(0, dt)
        if k > 0:
            vnext = ret[nxt]
        q = r[i] + gamma * (kap * (lam * vnext + (1 - lam) * boot) + (1 - kap) * boot)
        pgv = ti.min(pg_clip, ti.exp(lr[i])) * (q - v[i])
        pg[i] = pgv
        return pgv * 0

    return SimpleNamespace(steps1=steps1, steps4=steps4, reads_trace=reads_trace, steps8=steps8,
                           exp=exp, lane=lane, vexp=vexp, flags4=flags4, ld8=ld8, st8=st8,
                           element=element, pg_element=pg_element)
