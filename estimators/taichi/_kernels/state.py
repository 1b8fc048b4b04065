"""The kernel forms of the state-value trace, one factory per form over the shared helpers of
``state_funcs``; ``build_state`` builds (and keeps) all of them for one configuration.

Arguments common to every form (flat 1-d arrays of T*B elements unless said otherwise): r, v, nv
(dt), te, tr (u8), lr (dt; a 1-element dummy for GAE), adv, ret, pg (dt; pg is a 1-element dummy
unless VTRACE), err (i32, 1 element, set to 1 when an input breaks a rule), gam, lm (per-step
gamma and lam; 1-element dummies unless ``per_step``), then the ints and the float parameters
gamma, lam, rho_clip, c_clip, pg_clip (f64, cast to dt inside; gamma and lam unused when
``per_step``). The vector forms take 4-vector arrays and G (groups of 4 lanes) for B.
"""

import taichi as ti

from .common import GAE, VTRACE, memo, nd1, vec
from .state_funcs import state_funcs


def make_vec4(dt, mode, per_step, serial):
    """The ``vec4`` form (see the package docstring)."""
    f = state_funcs(dt, mode, per_step)
    steps4, reads_trace, vexp, flags4 = f.steps4, f.reads_trace, f.vexp, f.flags4
    want_rho, want_pg = mode != GAE, mode == VTRACE
    nd4 = ti.types.ndarray(dtype=vec(dt), ndim=1)

    @ti.kernel
    def vec4(r: nd4, v: nd4, nv: nd4, te: nd1, tr: nd1, lr: nd4, adv: nd4, ret: nd4, pg: nd4,
             err: nd1, gam: nd4, lm: nd4, T: ti.i32, G: ti.i32, GB: ti.i32, gamma_: ti.f64,
             lam_: ti.f64, rho_clip_: ti.f64, c_clip_: ti.f64, pg_clip_: ti.f64):
        gamma = ti.cast(gamma_, dt)
        lam = ti.cast(lam_, dt)
        nblk = (G + GB - 1) // GB
        ti.loop_config(block_dim=1, serialize=serial)
        for blk in range(nblk):
            # Vector constants live inside the parallel loop: defined outside it they would be
            # stored in Taichi's global temporaries, where a <4 x float> may be misaligned.
            # (No python ints next to vectors either: an int->vector cast crashes the codegen.)
            zero = ti.Vector([0.0, 0.0, 0.0, 0.0], dt=dt)
            one = ti.Vector([1.0, 1.0, 1.0, 1.0], dt=dt)
            gl = gamma * lam * one
            rho_clip = ti.cast(rho_clip_, dt) * one
            c_clip = ti.cast(c_clip_, dt) * one
            pg_clip = ti.cast(pg_clip_, dt) * one
            g0 = blk * GB
            g1 = ti.min(g0 + GB, G)
            acc = zero  # A * 0 summed: NaN iff an input is NaN/inf or an output overflows
            nbad = 0
            for k in range(T):
                t = T - 1 - k
                for gg in range(g1 - g0):
                    g = g1 - 1 - gg  # descending, like t: one backward stream
                    i = t * G + g
                    gv, lv, glv, omlv = steps4(gam, lm, i, gamma, lam, gl, one)
                    boot, kap = flags4(te, tr, i * 4, nv[i], k == 0)
                    rv = r[i]
                    vv = v[i]
                    prev = zero
                    if k > 0:
                        prev = adv[i + G]
                    delta = rv + gv * boot - vv
                    cf = glv * kap
                    rho = one
                    if ti.static(want_rho):
                        lrv = lr[i]
                        for j in ti.static(range(4)):
                            nbad += ti.select(lrv[j] < float("inf"), 0, 1)
                        rho = vexp(lrv)
                        c = rho
                        if ti.static(mode == VTRACE):
                            delta = ti.min(rho_clip, rho) * delta
                            c = ti.min(c_clip, rho)
                        else:
                            delta = rho * delta
                        # a cut (or gamma_t lam_t = 0) gives a trace factor of exactly 0,
                        # even where c is inf
                        glc = glv * c
                        cf = ti.Vector([ti.select(reads_trace(kap[j], glv[j]), glc[j],
                                                  ti.cast(0, dt))
                                        for j in ti.static(range(4))], dt=dt)
                    a = delta + cf * prev
                    adv[i] = a
                    target = a + vv
                    ret[i] = target
                    # A_{t+1} * 0, NaN iff it is not finite: it is already loaded, so checking
                    # it costs no wait on this step's arithmetic (row 0 is checked below)
                    acc += prev * zero
                    if ti.static(want_pg):
                        vnext = zero
                        if k > 0:
                            vnext = ret[i + G]
                        q = rv + gv * (kap * (lv * vnext + omlv * boot) + (one - kap) * boot)
                        pgv = ti.min(pg_clip, rho) * (q - vv)
                        pg[i] = pgv
                        acc += pgv * zero
            for g in range(g0, g1):  # row t = 0, the one no later step loads as A_{t+1}
                acc += adv[g] * zero
            s = acc[0] + acc[1] + acc[2] + acc[3]
            if not (s == s and nbad == 0):
                err[0] = 1

    return vec4


def make_vec8(dt, mode, per_step, serial):
    """The ``vec8`` form (see the package docstring)."""
    f = state_funcs(dt, mode, per_step)
    steps8, reads_trace, vexp, ld8, st8 = f.steps8, f.reads_trace, f.vexp, f.ld8, f.st8
    want_pg = mode == VTRACE
    nd4 = ti.types.ndarray(dtype=vec(dt), ndim=1)

    @ti.kernel
    def vec8(r: nd4, v: nd4, nv: nd4, te: nd1, tr: nd1, lr: nd4, adv: nd4, ret: nd4, pg: nd4,
             err: nd1, gam: nd4, lm: nd4, T: ti.i32, G: ti.i32, GB: ti.i32, gamma_: ti.f64,
             lam_: ti.f64, rho_clip_: ti.f64, c_clip_: ti.f64, pg_clip_: ti.f64):
        # ``vec4`` with 8 lanes per step (G: groups of 4 lanes, even; GB: groups of 8 lanes
        # per block): for the log-ratio modes, where the exp polynomial makes the kernel
        # compute-bound and AVX's 8 lanes halve the instructions.
        gamma = ti.cast(gamma_, dt)
        lam = ti.cast(lam_, dt)
        G8 = G // 2
        nblk = (G8 + GB - 1) // GB
        ti.loop_config(block_dim=1, serialize=serial)
        for blk in range(nblk):
            zero = ti.Vector([0.0] * 8, dt=dt)
            one = ti.Vector([1.0] * 8, dt=dt)
            gl = gamma * lam * one
            rho_clip = ti.cast(rho_clip_, dt) * one
            c_clip = ti.cast(c_clip_, dt) * one
            pg_clip = ti.cast(pg_clip_, dt) * one
            g0 = blk * GB
            g1 = ti.min(g0 + GB, G8)
            acc = zero
            nbad = 0
            for k in range(T):
                t = T - 1 - k
                first = k == 0
                for gg in range(g1 - g0):
                    g = g1 - 1 - gg  # descending, like t: one backward stream
                    q = t * G + 2 * g
                    e = q * 4
                    nvv = ld8(nv, q)
                    boot = ti.Vector([ti.select(te[e + j] != 0, ti.cast(0, dt), nvv[j])
                                      for j in ti.static(range(8))], dt=dt)
                    kap = ti.Vector([ti.select(((te[e + j] | tr[e + j]) != 0) | first,
                                               ti.cast(0, dt), ti.cast(1, dt))
                                     for j in ti.static(range(8))], dt=dt)
                    rv = ld8(r, q)
                    vv = ld8(v, q)
                    prev = zero
                    vnext = zero
                    if k > 0:
                        prev = ld8(adv, q + G)
                        if ti.static(want_pg):
                            vnext = ld8(ret, q + G)
                    gv, glv = steps8(gam, lm, q, gamma, gl)
                    d0 = rv + gv * boot - vv
                    glk = glv * kap
                    lrv = ld8(lr, q)
                    for j in ti.static(range(8)):
                        nbad += ti.select(lrv[j] < float("inf"), 0, 1)
                    rho = vexp(lrv)
                    delta = d0
                    c = rho
                    if ti.static(mode == VTRACE):
                        delta = ti.min(rho_clip, rho) * d0
                        c = ti.min(c_clip, rho)
                    else:
                        delta = rho * d0
                    # a cut (or gamma_t lam_t = 0) gives a trace factor of exactly 0, even
                    # where c is inf (0 * inf)
                    glc = glv * c
                    cf = ti.Vector([ti.select(reads_trace(kap[j], glv[j]), glc[j],
                                              ti.cast(0, dt))
                                    for j in ti.static(range(8))], dt=dt)
                    a = delta + cf * prev
                    target = a + vv
                    st8(adv, q, a)
                    st8(ret, q, target)
                    acc += prev * zero  # A_{t+1}, already loaded (row 0 is checked below)
                    if ti.static(want_pg):
                        # q_t - V(s_t) = d0 + gamma lam kappa (v_{t+1} - V(s'_t))
                        pgv = ti.min(pg_clip, rho) * (d0 + glk * (vnext - boot))
                        st8(pg, q, pgv)
                        acc += pgv * zero
            for g in range(g0, g1):  # row t = 0, the one no later step loads as A_{t+1}
                acc += ld8(adv, 2 * g) * zero
            s = ti.cast(0, dt)
            for j in ti.static(range(8)):
                s += acc[j]
            if not (s == s and nbad == 0):
                err[0] = 1

    return vec8


def make_rows(dt, mode, per_step, serial):
    """The ``rows`` form (see the package docstring)."""
    f = state_funcs(dt, mode, per_step)
    element, pg_element = f.element, f.pg_element
    want_pg = mode == VTRACE

    @ti.kernel
    def rows(r: nd1, v: nd1, nv: nd1, te: nd1, tr: nd1, lr: nd1, adv: nd1, ret: nd1, pg: nd1,
             err: nd1, gam: nd1, lm: nd1, T: ti.i32, B: ti.i32, BB: ti.i32, gamma_: ti.f64,
             lam_: ti.f64, rho_clip_: ti.f64, c_clip_: ti.f64, pg_clip_: ti.f64):
        gamma = ti.cast(gamma_, dt)
        lam = ti.cast(lam_, dt)
        rho_clip = ti.cast(rho_clip_, dt)
        c_clip = ti.cast(c_clip_, dt)
        pg_clip = ti.cast(pg_clip_, dt)
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
                        prev = adv[i + B]
                    a, e = element(r, v, nv, te, tr, lr, adv, ret, pg, gam, lm, i, i + B, k,
                                   gamma, lam, rho_clip, c_clip, pg_clip, prev)
                    bad += e
                    if ti.static(want_pg):
                        bad += pg_element(r, v, nv, te, tr, lr, ret, pg, gam, lm, i, i + B, k,
                                          gamma, lam, pg_clip)
            if not bad == 0:  # NaN-safe: `!=` may compile to an ordered compare
                err[0] = 1

    return rows


def make_naive(dt, mode, per_step, serial):
    """The ``naive`` form (see the package docstring)."""
    f = state_funcs(dt, mode, per_step)
    element, pg_element = f.element, f.pg_element
    want_pg = mode == VTRACE

    @ti.kernel
    def naive(r: nd1, v: nd1, nv: nd1, te: nd1, tr: nd1, lr: nd1, adv: nd1, ret: nd1, pg: nd1,
              err: nd1, gam: nd1, lm: nd1, T: ti.i32, B: ti.i32, gamma_: ti.f64, lam_: ti.f64,
              rho_clip_: ti.f64, c_clip_: ti.f64, pg_clip_: ti.f64):
        gamma = ti.cast(gamma_, dt)
        lam = ti.cast(lam_, dt)
        rho_clip = ti.cast(rho_clip_, dt)
        c_clip = ti.cast(c_clip_, dt)
        pg_clip = ti.cast(pg_clip_, dt)
        for b in range(B):  # one thread per stream
            bad = ti.cast(0, dt)
            a = ti.cast(0, dt)
            for k in range(T):
                t = T - 1 - k
                i = t * B + b
                a, e = element(r, v, nv, te, tr, lr, adv, ret, pg, gam, lm, i, i + B, k, gamma,
                               lam, rho_clip, c_clip, pg_clip, a)
                bad += e
                if ti.static(want_pg):
                    bad += pg_element(r, v, nv, te, tr, lr, ret, pg, gam, lm, i, i + B, k,
                                      gamma, lam, pg_clip)
            if not bad == 0:  # NaN-safe: `!=` may compile to an ordered compare
                err[0] = 1

    return naive


def make_chunked(dt, mode, per_step, serial):
    """The ``chunked`` form (see the package docstring)."""
    f = state_funcs(dt, mode, per_step)
    steps1, lane, element, pg_element = f.steps1, f.lane, f.element, f.pg_element
    want_rho, want_pg = mode != GAE, mode == VTRACE

    @ti.kernel
    def chunked(r: nd1, v: nd1, nv: nd1, te: nd1, tr: nd1, lr: nd1, adv: nd1, ret: nd1,
                pg: nd1, err: nd1, gam: nd1, lm: nd1, dsum: nd1, gprod: nd1, carry: nd1,
                T: ti.i32, B: ti.i32, L: ti.i32, NC: ti.i32, gamma_: ti.f64, lam_: ti.f64,
                rho_clip_: ti.f64, c_clip_: ti.f64, pg_clip_: ti.f64):
        gamma = ti.cast(gamma_, dt)
        lam = ti.cast(lam_, dt)
        rho_clip = ti.cast(rho_clip_, dt)
        c_clip = ti.cast(c_clip_, dt)
        pg_clip = ti.cast(pg_clip_, dt)
        # 1. reduce each chunk [c L, (c+1) L) of each stream to the affine map A -> d + g A
        for c, b in ti.ndrange(NC, B):
            t0 = c * L
            t1 = ti.min(T, t0 + L)
            d = ti.cast(0, dt)
            gp = ti.cast(1, dt)
            bad = ti.cast(0, dt)
            for j in range(t1 - t0):
                t = t1 - 1 - j
                i = t * B + b
                gi, li = steps1(gam, lm, i, gamma, lam)
                l = lane(te[i], tr[i], lr[i] if ti.static(want_rho) else ti.cast(0, dt), nv[i],
                         t == T - 1, gi, li, rho_clip, c_clip, pg_clip)
                d = l[1] * (r[i] + gi * l[0] - v[i]) + l[2] * d
                gp = l[2] * gp
                bad += l[5] + r[i] * 0 + v[i] * 0 + l[0] * 0
            dsum[c * B + b] = d
            gprod[c * B + b] = gp
            if not bad == 0:  # NaN-safe: `!=` may compile to an ordered compare
                err[0] = 1
        # 2. compose the maps from the last chunk backwards: carry-in of every chunk
        for b in range(B):
            x = ti.cast(0, dt)
            for j in range(NC):
                c = NC - 1 - j
                carry[c * B + b] = x
                x = dsum[c * B + b] + gprod[c * B + b] * x
        # 3. re-walk every chunk from its carry-in (an overflowing output raises the flag)
        for c, b in ti.ndrange(NC, B):
            t0 = c * L
            t1 = ti.min(T, t0 + L)
            a = carry[c * B + b]
            bad = ti.cast(0, dt)
            for j in range(t1 - t0):
                t = t1 - 1 - j
                i = t * B + b
                a, e = element(r, v, nv, te, tr, lr, adv, ret, pg, gam, lm, i, i + B, T - 1 - t,
                               gamma, lam, rho_clip, c_clip, pg_clip, a)
                bad += e
            if not bad == 0:
                err[0] = 1
        # 4. V-trace's pg needs v_{t+1}, which may lie in another chunk: a separate pass
        if ti.static(want_pg):
            for t, b in ti.ndrange(T, B):
                i = t * B + b
                e = pg_element(r, v, nv, te, tr, lr, ret, pg, gam, lm, i, i + B, T - 1 - t,
                               gamma, lam, pg_clip)
                if not e == 0:
                    err[0] = 1

    return chunked


FORMS = {"vec4": make_vec4, "vec8": make_vec8, "rows": make_rows, "naive": make_naive,
         "chunked": make_chunked}


def build_state(dt, mode, per_step=False, serial=False):
    """Every kernel form of the state-value trace for float dtype ``dt`` and ``mode``
    (GAE/VTRACE/PDIS), as ``{form: kernel}``.

    ``serial``: the CPU forms (``vec4``, ``vec8``, ``rows``) run their blocks one after the
    other on the calling thread (``ti.loop_config(serialize=True)``), for batches too small to
    pay for waking Taichi's thread pool. The arithmetic of every element is the same, so outputs
    are bit-identical to the parallel build. (Kernels compile on their first launch: building
    the dict compiles nothing.)
    """
    return memo(("state", dt, mode, per_step, serial),
                lambda: {name: make(dt, mode, per_step, serial) for name, make in FORMS.items()})
