"""Per-step discounts and trace parameters: ``gamma`` and ``lam`` given as arrays
broadcastable to the rewards' shape, in every estimator and every backend.

Contract (estimators.numpy's module docstring): gamma_t multiplies the bootstrap of step t and
the trace from t into t+1; lam_t multiplies the trace from t into t+1. The oracle below is an
independent plain-python loop over b and t (it calls nothing of the estimators), written from
those formulas; the numpy reference is held to it at 1e-12, torch and every Taichi kernel form to
the reference (float64 1e-12; float32 1e-4 of the output's scale, the float32 rounding carried
along the trace). A scalar given as an array of one repeated value must give exactly the scalar
result (byte for byte) in every backend.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import estimators.numpy as N
import estimators.torch as E
from offpolicy import registry

X = pytest.importorskip("estimators.taichi")
FORMS = ("vec4", "rows", "naive", "chunked")

# from the registry: the state-value estimators that read values (not n-step), every Q one
STATE = tuple(n for n in registry.names("state") if "values" in registry.lookup(n).inputs)
ACTION = registry.names("action")
ALL = STATE + ("nstep_returns",) + ACTION


# ---------------------------------------------------------------------------------------------
# the oracle: plain python over b and t, from the contract's formulas


def _grid(x, shape2):
    """Any array broadcastable to the [T,B] grid as a list of lists of python floats."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1 and a.shape[0] == shape2[0] and shape2[1] == 1:
        a = a[:, None]
    a = np.broadcast_to(a, shape2)
    return [[float(a[t, b]) for b in range(shape2[1])] for t in range(shape2[0])]


def _flags(x, shape2):
    return [[bool(v) for v in row] for row in _grid(np.asarray(x, dtype=np.float64), shape2)]


def oracle_state(kind, d, g, lm, clips=(1.0, 1.0, 1.0)):
    """(advantages, value_targets, pg) of gae / vtrace / per_decision_is, [T,B] float64."""
    T, B = d["shape2"]
    r, v, nv = (_grid(d[k], (T, B)) for k in ("r", "v", "nv"))
    te, tr = _flags(d["te"], (T, B)), _flags(d["tr"], (T, B))
    lr = _grid(d["lr"], (T, B))
    G, L = _grid(g, (T, B)), _grid(lm, (T, B))
    rho_clip, c_clip, pg_clip = clips
    adv = np.zeros((T, B))
    pg = np.zeros((T, B))
    for b in range(B):
        after = 0.0  # A_{t+1}
        for t in reversed(range(T)):
            rho = math.exp(lr[t][b]) if kind != "gae" else 1.0
            rho_hat = {"gae": 1.0, "vtrace": min(rho_clip, rho), "pdis": rho}[kind]
            c = {"gae": 1.0, "vtrace": min(c_clip, rho), "pdis": rho}[kind]
            boot = 0.0 if te[t][b] else nv[t][b]
            delta = rho_hat * (r[t][b] + G[t][b] * boot - v[t][b])
            continues = not (te[t][b] or tr[t][b]) and t < T - 1
            adv[t, b] = delta + (G[t][b] * L[t][b] * c * after if continues else 0.0)
            after = adv[t, b]
        for t in range(T):
            boot = 0.0 if te[t][b] else nv[t][b]
            continues = not (te[t][b] or tr[t][b]) and t < T - 1
            if continues:
                v_next = v[t + 1][b] + adv[t + 1, b]
                q = r[t][b] + G[t][b] * (L[t][b] * v_next + (1 - L[t][b]) * boot)
            else:
                q = r[t][b] + G[t][b] * boot
            rho = math.exp(lr[t][b]) if kind != "gae" else 1.0
            pg[t, b] = min(pg_clip, rho) * (q - v[t][b])
    targets = np.asarray(_grid(d["v"], (T, B))) + adv
    return adv, targets, pg


def oracle_action(kind, d, g, lm):
    """G_t = r_t + g_t beta_t nq_t + g_t l_t kappa_t c_{t+1} (G_{t+1} - q_{t+1})."""
    T, B = d["shape2"]
    r, q, nq = (_grid(d[k], (T, B)) for k in ("r", "q", "nq"))
    te, tr = _flags(d["te"], (T, B)), _flags(d["tr"], (T, B))
    coefficient = {
        "q_trace": _grid(d["traces"], (T, B)),
        "retrace": [[min(1.0, math.exp(x)) for x in row] for row in _grid(d["lr"], (T, B))],
        "tree_backup": _grid(d["probs"], (T, B)),
        "q_lambda": [[1.0] * B for _ in range(T)],
        "importance_sampling_q": [[math.exp(x) for x in row] for row in _grid(d["lr"], (T, B))],
    }[kind]
    G, L = _grid(g, (T, B)), _grid(lm, (T, B))
    out = np.zeros((T, B))
    for b in range(B):
        after = 0.0
        for t in reversed(range(T)):
            boot = 0.0 if te[t][b] else nq[t][b]
            target = r[t][b] + G[t][b] * boot
            if not (te[t][b] or tr[t][b]) and t < T - 1:
                target += G[t][b] * L[t][b] * coefficient[t + 1][b] * (after - q[t + 1][b])
            out[t, b] = target
            after = target
    return out


def oracle_nstep(d, g, n):
    """sum_{k<m} (prod_{j<k} g_{t+j}) r_{t+k} + (prod_{j<m} g_{t+j}) beta V(s'_{t+m-1})."""
    T, B = d["shape2"]
    r, nv = _grid(d["r"], (T, B)), _grid(d["nv"], (T, B))
    te, tr = _flags(d["te"], (T, B)), _flags(d["tr"], (T, B))
    G = _grid(g, (T, B))
    out = np.zeros((T, B))
    for b in range(B):
        for t in range(T):
            total, discount = 0.0, 1.0
            for k in range(n):
                j = t + k
                total += discount * r[j][b]
                discount *= G[j][b]
                if te[j][b]:
                    break
                if tr[j][b] or j == T - 1 or k == n - 1:
                    total += discount * nv[j][b]
                    break
            out[t, b] = total
    return out


# ---------------------------------------------------------------------------------------------
# inputs


@st.composite
def segments(draw):
    """A segment with adversarial flags and per-step gamma/lam (0 and 1 entries included)."""
    T = draw(st.sampled_from([1, 2, 5, 9]))
    B = draw(st.sampled_from([None, 1, 3, 8]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    shape = (T,) if B is None else (T, B)
    shape2 = (T, 1 if B is None else B)
    f = lambda scale=1.0: scale * rng.standard_normal(shape)
    te = rng.random(shape) < draw(st.sampled_from([0.0, 0.2, 0.5]))
    tr = rng.random(shape) < draw(st.sampled_from([0.0, 0.2, 0.5]))
    if draw(st.booleans()):  # both flags on one step, and the last step done
        te.reshape(shape2)[rng.integers(T), 0] = True
        tr.reshape(shape2)[rng.integers(T), 0] = True
        te.reshape(shape2)[-1, -1] = True
    nv, nq = f(), f()
    nv[te] = np.nan  # never read under terminated
    nq[te] = np.inf
    shapes = {"full": shape, "time": (T,) if B is None else (T, 1),
              "stream": (1,) if B is None else (1, B), "scalar_array": ()}
    g_shape = shapes[draw(st.sampled_from(list(shapes)))]
    l_shape = shapes[draw(st.sampled_from(list(shapes)))]

    def unit(size_shape):
        x = rng.choice([0.0, 1.0, 0.5, 0.9], size=size_shape)
        x = np.where(rng.random(size_shape) < 0.5, rng.random(size_shape), x)
        return np.asarray(x, dtype=np.float64)

    return dict(shape=shape, shape2=shape2, r=f(), v=f(), nv=nv, q=f(), nq=nq, te=te, tr=tr,
                lr=f(0.7), probs=rng.random(shape), traces=2 * rng.random(shape),
                gamma=unit(g_shape), lam=unit(l_shape),
                n=int(rng.integers(1, 6)))


def call(M, name, d, gamma, lam, convert=lambda x: x, **extra):
    """Call estimator ``name`` of backend module M on the segment d (arrays through convert)."""
    c = convert
    s = (c(d["r"]), c(d["v"]), c(d["nv"]), c(d["te"]), c(d["tr"]))
    a = (c(d["r"]), c(d["q"]), c(d["nq"]), c(d["te"]), c(d["tr"]))
    kw = dict(gamma=gamma, lam=lam)
    if name == "gae":
        return M.gae(*s, **kw, **extra)
    if name in ("vtrace", "puff_advantage", "per_decision_is"):
        return getattr(M, name)(*s, c(d["lr"]), **kw, **extra)
    if name == "nstep_returns":
        return M.nstep_returns(c(d["r"]), c(d["nv"]), c(d["te"]), c(d["tr"]), gamma=gamma,
                               n=d["n"])
    coefficient = {"q_trace": (c(d["traces"]),), "retrace": (c(d["lr"]),),
                   "tree_backup": (c(d["probs"]),), "q_lambda": (),
                   "importance_sampling_q": (c(d["lr"]),)}[name]
    return getattr(M, name)(*a, *coefficient, **kw)


def outputs(x):
    xs = x if isinstance(x, tuple) else (x,)
    return [np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float64)
            for v in xs]


def close(got, want, tol, what):
    for g, w in zip(outputs(got), outputs(want), strict=True):
        assert g.shape == w.shape, what
        scale = 1.0 + float(np.max(np.abs(w)))
        err = float(np.max(np.abs(g - w)))
        assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:g} x {scale:.3g}"


# ---------------------------------------------------------------------------------------------
# the reference against the oracle


CLIPS = dict(rho_clip=1.3, c_clip=0.8, pg_rho_clip=1.1)


@given(segments())
def test_reference_matches_the_per_step_oracle(d):
    g, lm = d["gamma"], d["lam"]
    shape = d["shape"]
    as_shape = lambda x: x.reshape(shape)
    adv, targets, _ = oracle_state("gae", d, g, lm)
    got = N.gae(d["r"], d["v"], d["nv"], d["te"], d["tr"], gamma=g, lam=lm)
    close(got, (as_shape(adv), as_shape(targets)), 1e-12, "gae")
    adv, targets, pg = oracle_state("vtrace", d, g, lm, (1.3, 0.8, 1.1))
    got = call(N, "vtrace", d, g, lm, **CLIPS)
    close(got, tuple(as_shape(x) for x in (adv, targets, pg)), 1e-12, "vtrace")
    adv, _, _ = oracle_state("vtrace", d, g, lm, (1.3, 0.8, 1.0))
    got = call(N, "puff_advantage", d, g, lm, rho_clip=1.3, c_clip=0.8)
    close(got, as_shape(adv), 1e-12, "puff_advantage")
    adv, targets, _ = oracle_state("pdis", d, g, lm)
    close(call(N, "per_decision_is", d, g, lm), (as_shape(adv), as_shape(targets)), 1e-12,
          "per_decision_is")
    close(call(N, "nstep_returns", d, g, lm), as_shape(oracle_nstep(d, g, d["n"])), 1e-12,
          "nstep_returns")
    for name in ACTION:
        close(call(N, name, d, g, lm), as_shape(oracle_action(name, d, g, lm)), 1e-12, name)


def test_oracle_is_not_vacuous():
    """Per-step values change the result (a constant gamma would not give the oracle's)."""
    rng = np.random.default_rng(3)
    T, B = 6, 2
    d = dict(shape=(T, B), shape2=(T, B), r=rng.standard_normal((T, B)),
             v=rng.standard_normal((T, B)), nv=rng.standard_normal((T, B)),
             te=np.zeros((T, B), bool), tr=np.zeros((T, B), bool), lr=np.zeros((T, B)))
    g = np.array([[0.9], [0.0], [1.0], [0.5], [0.9], [0.7]])
    lm = np.full((T, 1), 0.8)
    adv, _, _ = oracle_state("gae", d, g, lm)
    assert np.all(adv[1] == d["r"][1] - d["v"][1])  # gamma_1 = 0: no bootstrap, no trace
    mean = N.gae(d["r"], d["v"], d["nv"], d["te"], d["tr"], gamma=float(g.mean()), lam=0.8)
    assert np.max(np.abs(mean.advantages - adv)) > 1e-3


# ---------------------------------------------------------------------------------------------
# torch and Taichi against the reference


def _tensor(dtype):
    def convert(x):
        x = np.asarray(x)
        return torch.as_tensor(x, dtype=torch.bool if x.dtype == bool else dtype)
    return convert


def _numpy(dtype):
    return lambda x: np.asarray(x) if np.asarray(x).dtype == bool else np.asarray(x, dtype)


@given(segments(), st.sampled_from([np.float64, np.float32]))
def test_torch_matches_reference(d, dtype):
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    tol = 1e-12 if dtype == np.float64 else 1e-4
    rounded = {k: (np.asarray(v, dtype) if isinstance(v, np.ndarray) and v.dtype != bool
                   and k not in ("gamma", "lam") else v) for k, v in d.items()}
    g, lm = d["gamma"], d["lam"]
    for name in ALL:
        want = call(N, name, rounded, g, lm)
        got = call(E, name, rounded, torch.as_tensor(g), torch.as_tensor(lm), _tensor(tdtype))
        for x in outputs(got):
            assert x.shape == d["shape"]
        close(got, want, tol, f"torch {name} {dtype.__name__}")
        # numpy gamma/lam arrays are accepted by the torch backend too
        close(call(E, name, rounded, g, lm, _tensor(tdtype)), want, tol, f"torch {name} np")


@given(segments(), st.sampled_from([np.float64, np.float32]))
def test_taichi_every_form_matches_reference(d, dtype):
    tol = 1e-12 if dtype == np.float64 else 1e-4
    rounded = {k: (np.asarray(v, dtype) if isinstance(v, np.ndarray) and v.dtype != bool
                   and k not in ("gamma", "lam") else v) for k, v in d.items()}
    g, lm = d["gamma"], d["lam"]
    wants = {name: call(N, name, rounded, g, lm) for name in ALL}
    for form in FORMS:
        with X._form(form):
            for name in ALL:
                got = call(X, name, rounded, g, lm, _numpy(dtype))
                close(got, wants[name], tol, f"taichi[{form}] {name} {dtype.__name__}")


def test_taichi_vector_forms_take_per_step_arrays():
    """Float32, B a multiple of 8, aligned buffers: the vec4 (GAE) and vec8 (V-trace, PDIS)
    kernels run with per-step arrays (forced and automatic form), at a T that needs several
    chunks in the chunked form."""
    rng = np.random.default_rng(7)
    T, B = 70, 16
    f = lambda: rng.standard_normal((T, B)).astype(np.float32)
    r, v, nv, lr = f(), f(), f(), (0.5 * f())
    te, tr = rng.random((T, B)) < 0.05, rng.random((T, B)) < 0.05
    te[-1, 3] = tr[-1, 3] = True
    g = rng.choice([0.0, 1.0, 0.97], size=(T, 1))
    lm = rng.random((1, B))
    r64 = [x.astype(np.float64) for x in (r, v, nv)]
    for form in (None, "vec4", "chunked"):
        with X._form(form):
            close(X.gae(r, v, nv, te, tr, gamma=g, lam=lm),
                  N.gae(*r64, te, tr, gamma=g, lam=lm), 1e-4, f"gae {form}")
            close(X.vtrace(r, v, nv, te, tr, lr, gamma=g, lam=lm, rho_clip=2.0),
                  N.vtrace(*r64, te, tr, lr, gamma=g, lam=lm, rho_clip=2.0), 1e-4,
                  f"vtrace {form}")
            close(X.per_decision_is(r, v, nv, te, tr, lr, gamma=g, lam=lm),
                  N.per_decision_is(*r64, te, tr, lr, gamma=g, lam=lm), 1e-4, f"pdis {form}")


# ---------------------------------------------------------------------------------------------
# a scalar given as an array is the scalar, exactly; broadcasting


def _run_backend(backend, name, d, gamma, lam, dtype):
    if backend == "numpy":
        return call(N, name, d, gamma, lam, _numpy(dtype))
    if backend == "torch":
        tdtype = torch.float64 if dtype == np.float64 else torch.float32
        conv = lambda x: torch.as_tensor(x) if isinstance(x, np.ndarray) else x
        return call(E, name, d, conv(gamma), conv(lam), _tensor(tdtype))
    return call(X, name, d, gamma, lam, _numpy(dtype))


def _fixed(T=13, B=8, seed=5):
    rng = np.random.default_rng(seed)
    shape = (T, B)
    te = rng.random(shape) < 0.1
    te[2, 1] = True
    tr = rng.random(shape) < 0.1
    tr[2, 1] = True
    nv = rng.standard_normal(shape)
    nv[te] = np.nan
    return dict(shape=shape, shape2=shape, r=rng.standard_normal(shape),
                v=rng.standard_normal(shape), nv=nv, q=rng.standard_normal(shape),
                nq=rng.standard_normal(shape), te=te, tr=tr, lr=0.5 * rng.standard_normal(shape),
                probs=rng.random(shape), traces=2 * rng.random(shape), n=4)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend", ["numpy", "torch", "taichi"])
def test_scalar_valued_arrays_equal_scalars_exactly(backend, dtype):
    d = _fixed()
    forms = FORMS if backend == "taichi" else (None,)
    for form in forms:
        with X._form(form):
            for name in ALL:
                want = outputs(_run_backend(backend, name, d, 0.95, 0.7, dtype))
                for g_shape, l_shape in (((13, 8), (13, 8)), ((13, 1), (1, 8)), ((), ())):
                    got = outputs(_run_backend(backend, name, d, np.full(g_shape, 0.95),
                                               np.full(l_shape, 0.7), dtype))
                    for a, b in zip(got, want, strict=True):
                        assert a.tobytes() == b.tobytes(), (backend, form, name, g_shape)


@pytest.mark.parametrize("backend", ["numpy", "torch", "taichi"])
def test_broadcast_shapes_equal_the_full_array(backend):
    d = _fixed()
    rng = np.random.default_rng(11)
    per_time = rng.random((13, 1))
    per_stream = rng.random((1, 8))
    for name in ALL:
        for g, lm in ((per_time, per_stream), (per_stream, per_time)):
            want = outputs(_run_backend(backend, name, d, np.broadcast_to(g, (13, 8)).copy(),
                                        np.broadcast_to(lm, (13, 8)).copy(), np.float64))
            got = outputs(_run_backend(backend, name, d, g, lm, np.float64))
            for a, b in zip(got, want, strict=True):
                np.testing.assert_array_equal(a, b, err_msg=f"{backend} {name}")
    # [T] rewards with a [T] gamma; a single stream [T] equals its [T,1] column
    single = {k: (v[:, 0] if isinstance(v, np.ndarray) and v.ndim == 2 else v)
              for k, v in d.items()}
    single.update(shape=(13,), shape2=(13, 1))
    column = {k: (v[:, :1] if isinstance(v, np.ndarray) and v.ndim == 2 else v)
              for k, v in d.items()}
    column.update(shape=(13, 1), shape2=(13, 1))
    for name in ALL:
        got = outputs(_run_backend(backend, name, single, per_time[:, 0], per_time[:, 0],
                                   np.float64))
        want = outputs(_run_backend(backend, name, column, per_time, per_time, np.float64))
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b[:, 0], err_msg=f"{backend} {name} [T]")


# ---------------------------------------------------------------------------------------------
# gradients with respect to gamma and lam


@pytest.mark.parametrize("name", ALL)
def test_torch_gradcheck_wrt_gamma_and_lam(name):
    d = _fixed(T=6, B=3)
    d["nv"] = np.where(d["te"], 0.0, d["nv"])  # gradcheck perturbs every input: keep it finite
    rng = np.random.default_rng(2)
    g = torch.tensor(rng.uniform(0.1, 0.9, (6, 3)), dtype=torch.float64, requires_grad=True)
    lm = torch.tensor(rng.uniform(0.1, 0.9, (6, 1)), dtype=torch.float64, requires_grad=True)

    def fn(g, lm):
        out = call(E, name, d, g, lm, _tensor(torch.float64))
        return out if isinstance(out, tuple) else (out,)

    if name == "nstep_returns":
        assert torch.autograd.gradcheck(lambda g: fn(g, lm), (g,))
    else:
        assert torch.autograd.gradcheck(fn, (g, lm))
    # the gradient is not trivially zero
    total = sum(x.sum() for x in fn(g, lm))
    grads = torch.autograd.grad(total, (g,) if name == "nstep_returns" else (g, lm))
    assert all(float(x.abs().sum()) > 0 for x in grads)


def test_torch_zero_dim_gamma_keeps_its_graph():
    d = _fixed(T=5, B=2)
    g = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    out = call(E, "gae", d, g, 0.8, _tensor(torch.float64))
    (grad,) = torch.autograd.grad(out.advantages.sum(), g)
    assert float(grad) != 0.0
    float_out = call(E, "gae", d, 0.9, 0.8, _tensor(torch.float64))
    assert torch.equal(out.advantages.detach(), float_out.advantages)


# ---------------------------------------------------------------------------------------------
# bad gamma / lam


BAD = [
    ("gamma", np.full((3, 5), 0.9), ValueError, r"gamma: shape \(3, 5\) is not broadcastable "
                                                r"to rewards \(4, 2\)"),
    ("lam", np.array([[0.5, 0.5]] * 2 + [[1.5, 0.5]] + [[0.5, 0.5]]), ValueError,
     r"lam: values must lie in \[0, 1\], got 1.5 at index \(2, 0\)"),
    ("gamma", np.array([[0.9], [np.nan], [0.9], [0.9]]), ValueError,
     r"gamma: values must lie in \[0, 1\], got nan at index \(1, 0\)"),
    ("gamma", np.array([[0.9, -0.1]]), ValueError, r"gamma: values must lie in \[0, 1\]"),
    ("lam", np.array([[np.inf, 0.0]]), ValueError, r"lam: values must lie in \[0, 1\]"),
    ("gamma", np.full(4, 0.9), ValueError, r"gamma: shape \(4,\) is not broadcastable to "
                                           r"rewards \(4, 2\) \(a 1-d array"),
    ("lam", np.full(2, 0.9), ValueError, r"lam: shape \(2,\) is not broadcastable to "
                                         r"rewards \(4, 2\) \(a 1-d array"),
    ("gamma", np.full((1, 4, 2), 0.9), ValueError, r"gamma: shape \(1, 4, 2\) is not "),
    ("lam", np.ones((4, 2), dtype=bool), TypeError, r"lam: expected a real"),
    ("lam", np.ones((4, 2), dtype=complex), TypeError, r"lam: expected a real"),
    ("gamma", [0.9, 0.9], TypeError, r"gamma: expected a real number or a numpy/torch array"),
    ("gamma", np.array(1.5), ValueError, r"gamma: must lie in \[0, 1\], got 1.5"),
]


def _small():
    rng = np.random.default_rng(0)
    shape = (4, 2)
    z = np.zeros(shape, bool)
    return dict(shape=shape, shape2=shape, r=rng.standard_normal(shape),
                v=rng.standard_normal(shape), nv=rng.standard_normal(shape),
                q=rng.standard_normal(shape), nq=rng.standard_normal(shape), te=z, tr=z,
                lr=np.zeros(shape), probs=np.full(shape, 0.5), traces=np.ones(shape), n=2)


@pytest.mark.parametrize("backend", ["numpy", "torch", "taichi"])
@pytest.mark.parametrize("which, value, exc, message", BAD,
                         ids=[f"{w}-{i}" for i, (w, *_) in enumerate(BAD)])
def test_bad_gamma_or_lam_names_the_argument(backend, which, value, exc, message):
    d = _small()
    for name in ALL:
        if name == "nstep_returns" and which == "lam":
            continue
        kw = dict(gamma=0.9, lam=0.9)
        kw[which] = value
        if backend == "torch" and isinstance(value, np.ndarray) and value.dtype != complex:
            kw[which] = torch.as_tensor(value)
        with pytest.raises(exc, match=f"^{message}"):
            _run_backend(backend, name, d, kw["gamma"], kw["lam"], np.float64)


def test_taichi_accepts_torch_gamma_and_rejects_bad_ones():
    d = _small()
    g = torch.full((4, 1), 0.9, dtype=torch.float64)
    want = call(N, "gae", d, g.numpy(), 0.5)
    close(call(X, "gae", d, g, 0.5), want, 1e-12, "taichi torch gamma")
    with pytest.raises(ValueError, match=r"^gamma: values must lie in \[0, 1\], got 2.0 at "):
        call(X, "retrace", d, torch.full((4, 1), 2.0), 0.5)


@pytest.mark.parametrize("name", ["gae", "vtrace", "per_decision_is", "q_trace",
                                  "importance_sampling_q"])
def test_torch_gradient_wrt_lam_at_zero(name):
    """lam_t = 0 weights the trace by 0 (and then even an overflowed ratio is not read), but
    with a finite ratio the derivative w.r.t. lam_t is still gamma_t c kappa_t (...): it
    matches a one-sided difference quotient of the reference (gradcheck's two-sided steps
    would leave [0, 1])."""
    d = _fixed(T=6, B=3)
    d["nv"] = np.where(d["te"], 0.0, d["nv"])
    d["te"][:] = False
    d["tr"][:] = False
    rng = np.random.default_rng(4)
    lam = rng.uniform(0.2, 0.8, (6, 1))
    lam[2] = 0.0
    lam_t = torch.tensor(lam, requires_grad=True)
    out = call(E, name, d, 0.9, lam_t, _tensor(torch.float64))
    total = sum(o.sum() for o in (out if isinstance(out, tuple) else (out,)))
    (grad,) = torch.autograd.grad(total, lam_t)
    eps = 1e-7
    stepped = lam.copy()
    stepped[2] = eps
    total_of = lambda lm: sum(float(o.sum()) for o in outputs(call(N, name, d, 0.9, lm)))
    quotient = (total_of(stepped) - total_of(lam)) / eps
    assert abs(quotient) > 1e-3
    assert abs(float(grad[2, 0]) - quotient) <= 1e-5 * (1 + abs(quotient)), name
