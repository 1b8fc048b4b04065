"""What every kernel factory shares: the array annotation types, the mode constants, the memo
of built kernels, and the per-step parameter read."""

import taichi as ti

# kernel modes of the state-value trace
GAE, VTRACE, PDIS = 0, 1, 2
# kernel modes of the action-value trace (how c_t is obtained)
Q_TRACES, Q_RETRACE, Q_IS, Q_ONES = 0, 1, 2, 3

nd1 = ti.types.ndarray(ndim=1)


def vec(dt):
    """The 4-lane vector type of float dtype ``dt``."""
    return ti.types.vector(4, dt)


# every kernel (or dict of kernel forms) built in this process, by factory arguments
CACHE: dict = {}


def memo(key, make):
    """``make()``, built once per ``key`` and kept in ``CACHE``."""
    if key not in CACHE:
        CACHE[key] = make()
    return CACHE[key]


def steps(per_step):
    """``steps1(gam, lm, i, gamma, lam)``: (gamma_t, lam_t) of flat element i, the per-step
    arrays' entries (``per_step``) or the scalars, chosen at compile time."""
    return memo(("steps1", per_step), lambda: _make_steps(per_step))


def _make_steps(per_step):
    @ti.func
    def steps1(gam: ti.template(), lm: ti.template(), i, gamma, lam):
        """(gamma_t, lam_t) of flat element i: the arrays' entries, or the scalars."""
        if ti.static(per_step):
            return gam[i], lm[i]
        else:
            return gamma, lam

    return steps1
