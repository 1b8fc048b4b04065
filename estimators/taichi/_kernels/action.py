"""Kernels of the action-value trace (q_trace, Retrace, tree-backup, Q(lambda), IS):
``G_t = r_t + gamma beta_t E Q(s'_t) + gamma lam kappa_t c_{t+1} (G_{t+1} - Q(s_{t+1}, a_{t+1}))``,
the ``rows`` (CPU) and ``naive`` (GPU) forms over one element step."""

import taichi as ti

from .common import Q_IS, Q_ONES, Q_RETRACE, Q_TRACES, memo, nd1, steps


def build_action(dt, mode, per_step=False, serial=False):
    """Kernels of the action-value trace (``rows``, ``naive``); ``serial`` as in
    ``build_state``."""
    return memo(("action", dt, mode, per_step, serial),
                lambda: {"rows": make_rows(dt, mode, per_step, serial),
                         "naive": make_naive(dt, mode, per_step)})


def action_funcs(dt, mode, per_step):
    """(coef, element): the coefficient c_t from its input, and one element step."""
    return memo(("action_funcs", dt, mode, per_step), lambda: _make(dt, mode, per_step))


def _make(dt, mode, per_step):
    steps1 = steps(per_step)

    @ti.func
    def coef(x, lo, hi):
        """(c, bad) from the coefficient input x (traces, or log-ratios)."""
        c = ti.cast(1, dt)
        bad = ti.cast(0, dt)
        if ti.static(mode == Q_TRACES):
            c = x
            bad = ti.select((x >= lo) & (x <= hi), ti.cast(0, dt), ti.cast(1, dt))
        elif ti.static(mode == Q_RETRACE or mode == Q_IS):
            bad = ti.select(x < ti.cast(float("inf"), dt), ti.cast(0, dt), ti.cast(1, dt))
            c = ti.exp(x)
            if ti.static(mode == Q_RETRACE):
                c = ti.min(ti.cast(1, dt), c)
        return c, bad

    @ti.func
    def element(r: ti.template(), q: ti.template(), nq: ti.template(), te: ti.template(),
                tr: ti.template(), cx: ti.template(), out: ti.template(), gam: ti.template(),
                lm: ti.template(), i, nxt, k, gamma_s, lam_s, lo, hi, nxt_target):
        """G_t at flat index i given G_{t+1} (nxt_target); returns (G_t, bad), bad NaN when
        an input is not finite or G_t overflows."""
        gamma, lam = steps1(gam, lm, i, gamma_s, lam_s)
        term = te[i] != 0
        cut = term | (tr[i] != 0) | (k == 0)
        boot = ti.select(term, ti.cast(0, dt), nq[i])
        corr = ti.cast(0, dt)
        bad = ti.cast(0, dt)
        if not cut and gamma * lam > 0:  # gamma lam = 0: the trace is weighted by exactly 0
            cn, _b = coef(cx[nxt] if ti.static(mode != Q_ONES) else ti.cast(0, dt), lo, hi)
            corr = cn * (nxt_target - q[nxt])
        if ti.static(mode != Q_ONES):
            _c, bad = coef(cx[i], lo, hi)
        g = r[i] + gamma * boot + gamma * lam * corr
        out[i] = g
        return g, bad + r[i] * 0 + q[i] * 0 + boot * 0 + g * 0
    return coef, element


def make_rows(dt, mode, per_step, serial):
    """Blocks of BB streams in lockstep over contiguous rows (CPU)."""
    _coef, element = action_funcs(dt, mode, per_step)

    @ti.kernel
    def rows(r: nd1, q: nd1, nq: nd1, te: nd1, tr: nd1, cx: nd1, out: nd1, err: nd1, gam: nd1,
             lm: nd1, T: ti.i32, B: ti.i32, BB: ti.i32, gamma_: ti.f64, lam_: ti.f64,
             lo_: ti.f64, hi_: ti.f64):
        gamma = ti.cast(gamma_, dt)
        lam = ti.cast(lam_, dt)
        lo = ti.cast(lo_, dt)
        hi = ti.cast(hi_, dt)
        nblk = (B + BB - 1) // BB
        ti.loop_config(block_dim=1, serialize=serial)
        for blk in range(nblk):
            b0 = blk * BB
            b1 = ti.min(b0 + BB, B)
            bad = ti.cast(0, dt)
            for k in range(T):
                t = T - 1 - k
                for bb in range(b1 - b0):
                    b = b1 - 1 - bb  # descending, like t: one backward stream
                    i = t * B + b
                    prev = ti.cast(0, dt)
                    if k > 0:
                        prev = out[i + B]
                    _g, e = element(r, q, nq, te, tr, cx, out, gam, lm, i, i + B, k, gamma,
                                    lam, lo, hi, prev)
                    bad += e
            if not bad == 0:  # NaN-safe: `!=` may compile to an ordered compare
                err[0] = 1

    return rows


def make_naive(dt, mode, per_step):
    """One thread per stream walking T (GPU)."""
    _coef, element = action_funcs(dt, mode, per_step)

    @ti.kernel
    def naive(r: nd1, q: nd1, nq: nd1, te: nd1, tr: nd1, cx: nd1, out: nd1, err: nd1, gam: nd1,
              lm: nd1, T: ti.i32, B: ti.i32, gamma_: ti.f64, lam_: ti.f64, lo_: ti.f64,
              hi_: ti.f64):
        gamma = ti.cast(gamma_, dt)
        lam = ti.cast(lam_, dt)
        lo = ti.cast(lo_, dt)
        hi = ti.cast(hi_, dt)
        for b in range(B):
            bad = ti.cast(0, dt)
            g = ti.cast(0, dt)
            for k in range(T):
                t = T - 1 - k
                i = t * B + b
                g, e = element(r, q, nq, te, tr, cx, out, gam, lm, i, i + B, k, gamma, lam, lo,
                               hi, g)
                bad += e
            if not bad == 0:  # NaN-safe: `!=` may compile to an ordered compare
                err[0] = 1

    return naive
