"""Taichi kernels behind ``estimators.taichi`` (imported lazily, after ``ti.init``).

Every kernel works on time-major memory, ``[T, B]`` flattened row by row (index ``t*B + b``),
and never loops over T or B in Python. Kernels are built per float dtype (``ti.f32`` or
``ti.f64``) and per estimator family by the ``build_*`` factories below, and cached.

Conventions (docs/DESIGN.md sections 1-2), written once in the ``@ti.func`` helpers:

* ``kappa_t = not (terminated_t or truncated_t) and t < T-1`` (the trace continues into t+1);
* ``beta_t = not terminated_t``: ``next_values`` under ``terminated`` is replaced by 0 with a
  select, never multiplied, so NaN or inf there cannot reach any output.

The forms of the state-value trace ``A_t = delta_t + gamma lam c_t kappa_t A_{t+1}``:

* ``vec4``  (CPU fast form): blocks of streams run in parallel (one block per core); inside a
  block the loop walks t downwards and, at each t, sweeps the block's streams in groups of 4
  contiguous lanes held in LLVM vector registers, also downwards: the whole walk is then one
  backward stream through each array, which the hardware prefetcher follows (sweeping each row
  upwards while t goes down cost V-trace at 128x4096 ~1.5x). Every CPU form also has a
  ``serial`` build (``build_state(..., serial=True)``), the same code with its blocks run on
  the calling thread, for small batches. ``A_{t+1}`` is re-read from the output row
  just written (it is still in L1/L2). Needs 16-byte aligned arrays and B % 4 == 0; the
  compile option ``real_matrix_scalarize=False`` makes Taichi emit real ``<4 x float>`` loads,
  stores and arithmetic. (Vector compares, selects and casts crash Taichi 1.7's LLVM codegen in
  that mode, so per-lane flags are handled as scalars and assembled into vectors.)
* ``vec8``  (the CPU fast form of the log-ratio modes, V-trace and PDIS, when B % 8 == 0): as
  ``vec4`` with 8 lanes per step, loaded as two aligned 4-vectors and joined, so the arithmetic
  runs on AVX ``<8 x float>`` (32-byte aligned loads would need 32-byte aligned arrays, which
  numpy does not give). The exp polynomial makes these modes compute-bound: 8 lanes cut V-trace
  at 4096x128 from ~2.8 to ~1.7 ms on the 2-core dev machine. GAE stays on ``vec4`` (8 lanes
  measured slower there: it is bound by loads/stores, not arithmetic). V-trace's pg advantage is
  computed as ``min(pg_clip, rho) (delta0 + gamma lam kappa (v_{t+1} - V(s'_t)))`` with
  ``delta0 = r + gamma beta V(s') - V(s)`` (the same q_t - V(s_t), fewer operations).
* ``rows``  (CPU fallback for any alignment / B): the same lockstep walk, one lane at a time.
* ``naive`` (one thread per stream walking T): the natural GPU form; slow on a CPU because the
  carried dependency along T leaves the vector units idle and strides through memory. Kept for
  the benchmark and used on GPUs.
* ``chunked`` (GPU form for few, long streams): T is cut into chunks; since the recurrence is an
  affine map ``A -> d + g A``, each chunk is first reduced to one map (parallel over chunks and
  streams), the maps are composed serially over chunks (per stream), and each chunk is finally
  re-walked from its now-known carry-in.

Every state/action kernel also checks the element-wise input rules of ``estimators._validate``
in the same pass (non-finite rewards/values, non-finite bootstrap values where not terminated,
NaN/+inf log-ratios, traces outside their range) and raises a per-block flag in ``err``; the
Python wrapper then re-runs ``_validate`` to raise the exact error the other backends raise.
The same flag is raised by a non-finite *output* (``x * 0`` is NaN iff x is not finite): with
valid inputs only an overflow (``exp(log_rhos)`` read unclipped, a product of ratios) makes
one, and the wrapper raises ``ValueError`` naming ``log_rhos`` (``_validate.check_outputs_finite``).
The vector forms check ``A_{t+1}`` as they load it (and row 0 after the walk), which costs
nothing on the critical path; ``v_t = V(s_t) + A_t`` itself is not re-checked there (checking it
cost ~2-3% on GAE): it overflows with finite V and A only within a factor 2 of the dtype's max.

Per-step ``gamma``/``lam``: ``build_state``, ``build_action`` and ``build_nstep`` take
``per_step``; their kernels take two more arrays ``gam``, ``lm`` after ``err`` (``gam`` only for
n-step; flat ``[T*B]`` arrays of the compute dtype, or 4-vector arrays in the vector forms).
With ``per_step=False`` they are 1-element dummies and never read: the scalar kernels compute
exactly as before (``steps*`` below select, at compile time, either the scalars or the array
entries), so their outputs are bit-identical.

Autograd: ``build_scan_backward`` is the adjoint of the scan ``y_t = a_t + c_t y_{t+1}``, the
backward pass of ``estimators.taichi``'s differentiable path (``rows`` on a CPU, ``naive`` on a
GPU).
"""


import taichi as ti

# kernel modes of the state-value trace
GAE, VTRACE, PDIS = 0, 1, 2
# kernel modes of the action-value trace (how c_t is obtained)
Q_TRACES, Q_RETRACE, Q_IS, Q_ONES = 0, 1, 2, 3

nd1 = ti.types.ndarray(ndim=1)


def _vec(dt):
    return ti.types.vector(4, dt)


_cache: dict = {}


def _memo(key, make):
    if key not in _cache:
        _cache[key] = make()
    return _cache[key]


# ---------------------------------------------------------------------------------------------
# state-value trace (GAE, V-trace, per-decision IS)


def build_state(dt, mode, per_step=False, serial=False):
    """Kernels of the state-value trace for float dtype ``dt`` and ``mode`` (GAE/VTRACE/PDIS).

    Arguments common to every form (flat 1-d arrays of T*B elements unless said otherwise):
    r, v, nv (dt), te, tr (u8), lr (dt; a 1-element dummy for GAE), adv, ret, pg (dt; pg is a
    1-element dummy unless VTRACE), err (i32, 1 element, set to 1 when an input breaks a
    rule), gam, lm (per-step gamma and lam; 1-element dummies unless ``per_step``), then the
    ints and the float parameters gamma, lam, rho_clip, c_clip, pg_clip (f64, cast to dt
    inside; gamma and lam unused when ``per_step``).

    ``serial``: the CPU forms (``vec4``, ``vec8``, ``rows``) run their blocks one after the
    other on the calling thread (``ti.loop_config(serialize=True)``): waking Taichi's thread
    pool costs ~30-80 us per launch, more than a small batch takes to compute. The arithmetic
    of every element is the same, so outputs are bit-identical to the parallel build.
    """
    return _memo(("state", dt, mode, per_step, serial),
                 lambda: _make_state(dt, mode, per_step, serial))


def _make_state(dt, mode, per_step, serial):
    V4 = _vec(dt)
    nd4 = ti.types.ndarray(dtype=V4, ndim=1)
    want_rho = mode != GAE
    want_pg = mode == VTRACE

    @ti.func
    def steps1(gam: ti.template(), lm: ti.template(), i, gamma, lam):
        """(gamma_t, lam_t) of flat element i: the arrays' entries, or the scalars."""
        if ti.static(per_step):
            return gam[i], lm[i]
        else:
            return gamma, lam

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

    return {"vec4": vec4, "vec8": vec8, "rows": rows, "naive": naive, "chunked": chunked}


# ---------------------------------------------------------------------------------------------
# action-value trace (q_trace, Retrace, tree-backup, Q(lambda), IS)


def build_action(dt, mode, per_step=False, serial=False):
    """Kernels of the action-value trace (``rows``, ``naive``); ``serial`` as in
    ``build_state``."""
    return _memo(("action", dt, mode, per_step, serial),
                 lambda: _make_action(dt, mode, per_step, serial))


def _make_action(dt, mode, per_step, serial):
    @ti.func
    def steps1(gam: ti.template(), lm: ti.template(), i, gamma, lam):
        """(gamma_t, lam_t) of flat element i: the arrays' entries, or the scalars."""
        if ti.static(per_step):
            return gam[i], lm[i]
        else:
            return gamma, lam

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

    return {"rows": rows, "naive": naive}


# ---------------------------------------------------------------------------------------------
# windowed estimators: every output element is independent, so they are parallel over (t, b)


def build_nstep(dt, per_step=False):
    return _memo(("nstep", dt, per_step), lambda: _make_nstep(dt, per_step))


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
    return _memo(("p3o", dt), lambda: _make_p3o(dt))


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


# ---------------------------------------------------------------------------------------------
# autograd: the adjoint of the first-order linear scan


def build_scan_backward(dt, serial=False):
    """The backward pass of ``y_t = a_t + c_t y_{t+1}`` (t = T-1 .. 0, ``y_T = 0``) for float
    dtype ``dt``: given ``g_t = dL/dy_t``, the adjoint ``u_t = g_t + c_{t-1} u_{t-1}`` runs
    forwards in time (``u_0 = g_0``) and gives ``dL/da_t = u_t``, ``dL/dc_t = u_t y_{t+1}``
    (0 at t = T-1). Arguments: g, c, y (dt, flat ``[T*B]``), u, gc (outputs), T, B, BB.

    ``rows`` (CPU): blocks of BB streams in parallel, each walking t upwards in lockstep over
    contiguous rows (as the state kernels' ``rows`` form); ``naive`` (GPU): one thread per
    stream (BB unused). ``serial``: ``rows`` on the calling thread (as in ``build_state``).
    """
    return _memo(("scan_backward", dt, serial), lambda: _make_scan_backward(dt, serial))


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
