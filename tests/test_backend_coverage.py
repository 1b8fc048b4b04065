"""Coverage the other backend tests leave out (docs/DESIGN.md theorem 12 and section 1):

* every backend x dtype combination, mixed dtypes included (float32 rewards with float64
  log_rhos, integer rewards, bool vs 0/1 flags), agrees with the numpy reference at the
  tolerance of its compute dtype, and returns the documented dtype;
* every Taichi kernel form, forced on the CPU, runs (the launched kernel is recorded) and agrees
  at a T long enough for the chunked form to cut several chunks;
* huge but finite log-ratios: fine (exactly the clipped value, an exact 0 trace factor) where
  the ratio is clipped or never read, a ``ValueError`` naming ``log_rhos`` where an overflowed
  ratio is read, in every backend; torch gradients stay finite where the ratio is clipped/cut;
* torch gradients (gradcheck, float64) of every option, all three P3O normalisations included;
* no function of any backend modifies its inputs (byte-for-byte comparison);
* ``estimators.layout`` keeps dtype and device.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import estimators.numpy as N
import estimators.torch as E
from estimators import layout
from offpolicy import registry

X = pytest.importorskip("estimators.taichi")
K = None  # estimators.taichi._kernels, imported once Taichi runs

T0, B0, H = 7, 8, 3
# keyword values each test passes; the array inputs, in call order, are the registry's
PARAMS = {
    "gae": dict(gamma=0.9, lam=0.8),
    "vtrace": dict(gamma=0.9, lam=0.8, rho_clip=1.2, c_clip=0.9, pg_rho_clip=1.5),
    "puff_advantage": dict(gamma=0.9, lam=0.8, c_clip=math.inf),
    "per_decision_is": dict(gamma=0.9, lam=0.8),
    "nstep_returns": dict(gamma=0.9, n=3),
    "q_trace": dict(gamma=0.9, lam=0.8),
    "retrace": dict(gamma=0.9, lam=0.8),
    "tree_backup": dict(gamma=0.9, lam=0.8),
    "q_lambda": dict(gamma=0.9, lam=0.8),
    "importance_sampling_q": dict(gamma=0.9, lam=0.8),
    "p3o_advantage": dict(batch_reward_std=1.1, normalize="sum"),
}
SIG = {name: (" ".join(registry.ESTIMATORS[name].inputs), PARAMS[name])
       for name in registry.ESTIMATORS}
BACKENDS = {"numpy": N, "torch": E, "taichi": X}


def make(T=T0, B=B0, seed=0, nan_under_terminated=True):
    """float64 inputs of every name, [T,B] (predictions [T,B,H]); flags bool."""
    rng = np.random.default_rng(seed)
    shape = (T, B)
    te = rng.random(shape) < 0.15
    tr = rng.random(shape) < 0.15
    te[1, 0] = tr[1, 0] = True  # both flags on one step
    te[-1, 1] = True  # the last step terminated
    d = dict(rewards=rng.standard_normal(shape), values=rng.standard_normal(shape),
             next_values=rng.standard_normal(shape), q_taken=rng.standard_normal(shape),
             next_expected_q=rng.standard_normal(shape),
             log_rhos=rng.uniform(-1.5, 1.5, shape), traces=rng.uniform(0.0, 2.0, shape),
             target_probs_taken=rng.uniform(0.0, 1.0, shape), terminated=te, truncated=tr,
             reward_mean=rng.standard_normal(shape + (H,)),
             reward_std=rng.uniform(0.4, 2.0, shape + (H,)))
    if nan_under_terminated:
        d["next_values"][te] = np.nan
        d["next_expected_q"][te] = np.inf
    return d


def run(backend, name, d, **overrides):
    arrays, scalars = SIG[name]
    kwargs = {k: d[k] for k in arrays.split()}
    kwargs.update(scalars)
    kwargs.update(overrides)
    out = getattr(BACKENDS[backend], name)(**kwargs)
    return out if isinstance(out, tuple) else (out,)


def host(x):
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def close(got, want, tol, what):
    for g, w in zip(got, want, strict=True):
        g, w = host(g), host(w)
        assert g.shape == w.shape, what
        scale = 1.0 + float(np.max(np.abs(w)))
        err = float(np.max(np.abs(g - w)))
        assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:g} x {scale:.3g}"


TOL = {"float64": 1e-12, "float32": 1e-4}


# ---------------------------------------------------------------------------------------------
# dtypes, mixed dtypes, flags


FLOAT_NAMES = ("rewards", "values", "next_values", "q_taken", "next_expected_q", "log_rhos",
               "traces", "target_probs_taken", "reward_mean", "reward_std")
DTYPE_CASES = {
    # case: (dtype per float input, expected torch dtype, expected taichi dtype)
    "f64": ({}, "float64", "float64"),
    "f32": ({k: np.float32 for k in FLOAT_NAMES}, "float32", "float32"),
    "f32_with_f64_log_rhos": ({k: np.float32 for k in FLOAT_NAMES if k != "log_rhos"},
                              "float64", "float64"),
    "int_rewards_f32_rest": (dict({k: np.float32 for k in FLOAT_NAMES}, rewards=np.int64),
                             "float32", "float32"),
}


def _cast(d, dtypes):
    out = dict(d)
    for k, dt in dtypes.items():
        if dt is np.int64:
            out[k] = np.round(3 * d[k]).astype(np.int64)
        else:
            out[k] = d[k].astype(dt)
    return out


def _uses_log_rhos(name):
    return "log_rhos" in SIG[name][0]


@pytest.mark.parametrize("case", list(DTYPE_CASES))
@pytest.mark.parametrize("backend", ["torch", "taichi", "taichi_torch"])
def test_every_dtype_combination_agrees_with_reference(backend, case):
    dtypes, torch_dtype, taichi_dtype = DTYPE_CASES[case]
    d = _cast(make(), dtypes)
    for name in SIG:
        want = run("numpy", name, d)
        assert all(host(w).dtype == np.float64 and np.asarray(w).dtype == np.float64
                   for w in want), name
        if backend == "torch":
            x = {k: torch.as_tensor(v) for k, v in d.items()}
            got = run("torch", name, x)
            floats = [d[k] for k in SIG[name][0].split() if d[k].dtype.kind == "f"]
            expect = torch_dtype if floats else str(torch.get_default_dtype())[6:]
            if case == "f32_with_f64_log_rhos" and not _uses_log_rhos(name):
                expect = "float32"  # log_rhos is not an input of this estimator
            assert all(str(g.dtype) == f"torch.{expect}" for g in got), (name, got[0].dtype)
        else:
            x = d if backend == "taichi" else {k: torch.as_tensor(v) for k, v in d.items()}
            got = run("taichi", name, x)
            expect = taichi_dtype
            if case == "f32_with_f64_log_rhos" and not _uses_log_rhos(name):
                expect = "float32"
            for g in got:
                assert isinstance(g, torch.Tensor) == (backend == "taichi_torch"), name
                assert str(g.dtype).replace("torch.", "") == expect, (name, g.dtype)
        close(got, want, TOL[expect], f"{backend} {case} {name}")


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_integer_inputs_and_flag_encodings(backend):
    """Integer rewards/values; flags as bool, int 0/1 and float 0/1 give identical outputs."""
    d = make(nan_under_terminated=False)
    ints = dict(d, rewards=np.round(3 * d["rewards"]).astype(np.int32),
                values=np.round(3 * d["values"]).astype(np.int64),
                next_values=np.round(3 * d["next_values"]).astype(np.int64))
    conv = (lambda v: torch.as_tensor(v)) if backend == "torch" else (lambda v: v)
    for name in SIG:
        want = run("numpy", name, ints)
        got = run(backend, name, {k: conv(v) for k, v in ints.items()})
        dtype = host(got[0]).dtype
        close(got, want, TOL["float32"] if str(got[0].dtype).endswith("32") else 1e-12,
              f"{backend} int {name} {dtype}")
        by_flags = []
        for enc in (bool, np.int8, np.float32, np.float64):
            x = dict(d, terminated=d["terminated"].astype(enc),
                     truncated=d["truncated"].astype(enc))
            by_flags.append([host(o) for o in run(backend, name, {k: conv(v)
                                                                   for k, v in x.items()})])
        for other in by_flags[1:]:
            for a, b in zip(other, by_flags[0], strict=True):
                assert a.tobytes() == b.tobytes(), (backend, name)


# ---------------------------------------------------------------------------------------------
# every Taichi kernel form, forced on the CPU


def _kernel_names():
    global K
    from estimators.taichi import _kernels
    K = _kernels
    names = {}
    for built in K.CACHE.values():
        if isinstance(built, dict):
            names.update({id(kernel): form for form, kernel in built.items()})
    return names


@pytest.fixture
def launched(monkeypatch):
    """The kernel forms launched while the test runs, in order."""
    seen = []
    original = X._launch

    def spy(kernel, args, vec4=False):
        seen.append(kernel)
        return original(kernel, args, vec4)

    monkeypatch.setattr(X, "_launch", spy)

    def forms():
        names = _kernel_names()
        out = [names.get(id(k), "other") for k in seen]
        seen.clear()
        return out

    return forms


# from the registry: the state-value estimators that read values (not n-step), every Q one
STATE = tuple(n for n in registry.names("state") if "values" in registry.lookup(n).inputs)
ACTION = registry.names("action")


_REFERENCE: dict = {}


def _reference(name, B, dtype, per_step, d, kw):
    """The numpy reference of one configuration, computed once for all four forms."""
    key = (name, B, dtype, per_step)
    if key not in _REFERENCE:
        _REFERENCE[key] = run("numpy", name, d, **kw)
    return _REFERENCE[key]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("B", [12, 16])
@pytest.mark.parametrize("form", ["vec4", "rows", "naive", "chunked"])
@pytest.mark.parametrize("per_step", [False, True], ids=["scalar", "per_step"])
def test_every_taichi_form_runs_and_agrees(form, B, dtype, per_step, launched):
    """T = 200: the chunked form cuts it into 15 chunks of L = 14. B = 12 gives an odd number
    of 4-lane groups (the log-ratio modes run vec4), B = 16 an even one (they run vec8)."""
    d = _cast(make(T=200, B=B, seed=B), {k: np.dtype(dtype).type for k in FLOAT_NAMES})
    L = max(8, int(math.sqrt(200)))
    assert -(-200 // L) > 2  # several chunks
    kw = {}
    if per_step:
        rng = np.random.default_rng(1)
        kw = dict(gamma=rng.choice([0.0, 1.0, 0.95], size=(200, 1)), lam=rng.random((1, B)))
    for name in STATE:
        want = _reference(name, B, dtype, per_step, d, kw)
        launched()
        with X._form(form):
            got = run("taichi", name, d, **kw)
        ran = launched()
        expect = form
        if form == "vec4" and dtype == "float64":
            expect = "rows"  # <4 x double> would need 32-byte alignment: the scalar form
        elif form == "vec4" and name != "gae" and B == 16:
            expect = "vec8"
        assert ran == [expect], (name, ran)
        close(got, want, TOL[dtype], f"taichi[{form}] {name} B={B} {dtype}")
    for name in ACTION:  # the action-value trace has two forms: rows (CPU), naive (GPU)
        want = _reference(name, B, dtype, per_step, d, kw)
        with X._form("naive" if form == "naive" else None):
            got = run("taichi", name, d, **kw)
        assert launched() == ["naive" if form == "naive" else "rows"], name
        close(got, want, TOL[dtype], f"taichi[{form}] {name} B={B} {dtype}")


# ---------------------------------------------------------------------------------------------
# huge but finite log-ratios

HUGE = {"float64": 800.0, "float32": 100.0}  # exp overflows: > 709.78 and > 88.72


def _cut_steps(d):
    """[T,B] mask of the steps whose trace is cut (kappa_t = 0)."""
    cut = d["terminated"] | d["truncated"]
    cut = cut.copy()
    cut[-1] = True
    return cut


def _for(backend, d, dtype):
    d = _cast(d, {k: np.dtype(dtype).type for k in FLOAT_NAMES})
    if backend == "torch":
        return {k: torch.as_tensor(v) for k, v in d.items()}
    return d


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_huge_log_ratios_where_clipped_or_unread_are_fine(backend, dtype):
    d = make(T=12, B=8, seed=3)
    huge = HUGE[dtype]
    forms = ("vec4", "rows", "naive", "chunked") if backend == "taichi" else (None,)
    # clipped everywhere: min(level, inf) = level, exactly the value of a large finite ratio
    everywhere = dict(d, log_rhos=np.full(d["rewards"].shape, huge))
    moderate = dict(d, log_rhos=np.full(d["rewards"].shape, 30.0))
    # the state trace reads c_t only where kappa_t: put the huge ratio where the trace is cut
    cut = _cut_steps(d)
    at_cuts = dict(d, log_rhos=np.where(cut, huge, d["log_rhos"]))
    at_cuts_zero = dict(d, log_rhos=np.where(cut, 0.0, d["log_rhos"]))
    # the action trace reads c_t only where kappa_{t-1}: t = 0 and right after a cut
    unread = np.zeros_like(cut)
    unread[0] = True
    unread[1:] = cut[:-1]
    isq_huge = dict(d, log_rhos=np.where(unread, huge, d["log_rhos"]))
    isq_zero = dict(d, log_rhos=np.where(unread, 0.0, d["log_rhos"]))
    for form in forms:
        with X._form(form):
            for name, kw in (("vtrace", dict(rho_clip=1.0, c_clip=1.0, pg_rho_clip=1.0)),
                             ("vtrace", dict(rho_clip=2.0, c_clip=0.5, pg_rho_clip=1.0)),
                             ("puff_advantage", dict(rho_clip=1.0, c_clip=1.0)),
                             ("retrace", {})):
                got = run(backend, name, _for(backend, everywhere, dtype), **kw)
                want = run(backend, name, _for(backend, moderate, dtype), **kw)
                for g, w in zip(got, want, strict=True):
                    assert np.isfinite(host(g)).all(), (backend, form, name)
                    assert host(g).tobytes() == host(w).tobytes(), (backend, form, name)
            # c_clip = inf: c_t is read unclipped, but only where the trace continues
            kw = dict(rho_clip=1.0, c_clip=math.inf, pg_rho_clip=1.0)
            got = run(backend, "vtrace", _for(backend, at_cuts, dtype), **kw)
            want = run(backend, "vtrace", _for(backend, at_cuts_zero, dtype), **kw)
            for g, w in zip(got, want, strict=True):
                assert host(g).tobytes() == host(w).tobytes(), (backend, form, "vtrace cut")
            got = run(backend, "importance_sampling_q", _for(backend, isq_huge, dtype))
            want = run(backend, "importance_sampling_q", _for(backend, isq_zero, dtype))
            assert host(got[0]).tobytes() == host(want[0]).tobytes(), (backend, form, "is_q")
            close(got, run("numpy", "importance_sampling_q", _cast(isq_zero, {
                k: np.dtype(dtype).type for k in FLOAT_NAMES})), TOL[dtype], "is_q vs numpy")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_overflowed_ratio_read_unclipped_raises(backend, dtype):
    d = make(T=6, B=8, seed=4, nan_under_terminated=False)
    d["terminated"][:] = False
    d["truncated"][:] = False
    compute = "float64" if backend == "numpy" else dtype  # the reference computes in float64
    huge = HUGE[compute]
    lr = d["log_rhos"].copy()
    lr[3, 2] = huge  # read: kappa_2 and kappa_3 hold (no flags, t < T-1)
    bad = dict(d, log_rhos=lr)
    forms = ("vec4", "rows", "naive", "chunked") if backend == "taichi" else (None,)
    message = rf"^log_rhos: exp\(log_rhos\) overflows {compute} where the ratio is read"
    for form in forms:
        with X._form(form):
            for name, kw in (("per_decision_is", {}), ("importance_sampling_q", {}),
                             ("vtrace", dict(rho_clip=math.inf)),
                             ("vtrace", dict(c_clip=math.inf)),
                             ("vtrace", dict(pg_rho_clip=math.inf)),
                             ("puff_advantage", dict(rho_clip=math.inf, c_clip=math.inf))):
                with pytest.raises(ValueError, match=message):
                    run(backend, name, _for(backend, bad, dtype), **kw)
    # PDIS reads rho_t at every step (in delta_t), a cut step included
    d["terminated"][3, 2] = True
    with pytest.raises(ValueError, match=message):
        run(backend, "per_decision_is", _for(backend, dict(d, log_rhos=lr), dtype))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_zero_trace_weight_leaves_a_huge_ratio_unread(backend, dtype):
    """gamma_t lam_t = 0 weights the trace from t into t+1 by exactly 0, as a cut does
    (docs/DESIGN.md section 1: lam_t = 0 cuts like truncated[t]): the ratio that only that
    trace reads may overflow. The unclipped c_t (V-trace, c_clip = inf) is read by the trace
    from t; IS-Q's c_{t+1} by the trace from t."""
    d = make(T=8, B=8, seed=10, nan_under_terminated=False)
    d["terminated"][:] = False
    d["truncated"][:] = False
    compute = "float64" if backend == "numpy" else dtype
    huge = HUGE[compute]
    lam = np.full((8, 1), 0.9)
    lam[2] = 0.0
    gamma = np.full((1, 8), 0.95)
    gamma[0, 5] = 0.0  # stream 5: every trace weight is 0
    state_huge, state_zero = d["log_rhos"].copy(), d["log_rhos"].copy()
    state_huge[2], state_zero[2] = huge, 0.0  # c_2: read only by the trace from t = 2
    state_huge[:, 5], state_zero[:, 5] = huge, 0.0
    action_huge, action_zero = d["log_rhos"].copy(), d["log_rhos"].copy()
    action_huge[3], action_zero[3] = huge, 0.0  # c_3: read only by the trace from t = 2
    action_huge[:, 5], action_zero[:, 5] = huge, 0.0
    forms = ("vec4", "rows", "naive", "chunked") if backend == "taichi" else (None,)
    kw = dict(gamma=gamma, lam=lam)
    if backend == "torch":
        kw = {k: torch.as_tensor(v) for k, v in kw.items()}
    for form in forms:
        with X._form(form):
            for name, huge_lr, zero_lr, extra in (
                    ("vtrace", state_huge, state_zero,
                     dict(rho_clip=1.0, c_clip=math.inf, pg_rho_clip=1.0)),
                    ("importance_sampling_q", action_huge, action_zero, {})):
                got = run(backend, name, _for(backend, dict(d, log_rhos=huge_lr), dtype),
                          **kw, **extra)
                want = run(backend, name, _for(backend, dict(d, log_rhos=zero_lr), dtype),
                           **kw, **extra)
                for g, w in zip(got, want, strict=True):
                    assert np.isfinite(host(g)).all(), (backend, form, name)
                    assert host(g).tobytes() == host(w).tobytes(), (backend, form, name)
            # a scalar trace weight of 0 (lam = 0, or gamma = 0) reads no c_t at all
            everywhere = np.full(d["rewards"].shape, huge)
            clips = dict(rho_clip=1.0, c_clip=math.inf, pg_rho_clip=1.0)
            for scalar in (dict(gamma=0.9, lam=0.0), dict(gamma=0.0, lam=0.9)):
                for name, extra in (("vtrace", clips), ("importance_sampling_q", {})):
                    got = run(backend, name, _for(backend, dict(d, log_rhos=everywhere), dtype),
                              **scalar, **extra)
                    want = run(backend, name,
                               _for(backend, dict(d, log_rhos=np.zeros_like(everywhere)), dtype),
                               **scalar, **extra)
                    for g, w in zip(got, want, strict=True):
                        assert host(g).tobytes() == host(w).tobytes(), (backend, form, scalar)
            # a weight above 0 reads it: the same ratio then raises
            with pytest.raises(ValueError, match="^log_rhos: exp"):
                run(backend, "importance_sampling_q",
                    _for(backend, dict(d, log_rhos=action_huge), dtype), gamma=0.95, lam=0.9)


@pytest.mark.parametrize("backend", ["torch", "taichi"])
def test_float32_product_of_ratios_overflow_raises(backend):
    """Each exp(40) is finite in float32 but four of them in a row are not: the estimator
    raises instead of returning inf/NaN; the float64 reference represents the result."""
    d = make(T=5, B=8, seed=5, nan_under_terminated=False)
    d["terminated"][:] = False
    d["truncated"][:] = False
    d["log_rhos"][:] = 40.0
    want = run("numpy", "per_decision_is", d)
    assert all(np.isfinite(host(w)).all() for w in want)
    with pytest.raises(ValueError, match=r"^log_rhos: a product of importance ratios overflows "
                                         r"float32"):
        run(backend, "per_decision_is", _for(backend, d, "float32"))


def test_torch_gradients_stay_finite_where_the_ratio_is_clipped_or_cut():
    d = make(T=8, B=4, seed=6, nan_under_terminated=False)
    cut = _cut_steps(d)
    unread = np.zeros_like(cut)
    unread[0] = True
    unread[1:] = cut[:-1]
    huge = 800.0
    cases = [("vtrace", np.full(cut.shape, huge), {}),
             ("retrace", np.full(cut.shape, huge), {}),
             ("vtrace", np.where(cut, huge, d["log_rhos"]), dict(c_clip=math.inf)),
             ("importance_sampling_q", np.where(unread, huge, d["log_rhos"]), {})]
    for name, lr, kw in cases:
        x = {k: torch.tensor(v, requires_grad=v.dtype.kind == "f")
             for k, v in dict(d, log_rhos=lr).items()}
        out = run("torch", name, x, **kw)
        total = sum(o.sum() for o in out)
        inputs = [x[k] for k in SIG[name][0].split() if x[k].requires_grad]
        grads = torch.autograd.grad(total, inputs)
        for k, g in zip([k for k in SIG[name][0].split() if x[k].requires_grad], grads,
                        strict=True):
            assert torch.isfinite(g).all(), (name, k)
        lr_grad = grads[[k for k in SIG[name][0].split() if x[k].requires_grad].index(
            "log_rhos")]
        assert torch.all(lr_grad[torch.as_tensor(lr) > 700] == 0), name


# ---------------------------------------------------------------------------------------------
# gradients of every option (float64 gradcheck)


GRAD_OPTIONS = [
    ("gae", {}),
    ("gae", dict(lam=1.0)),
    ("vtrace", dict(rho_clip=1.0, c_clip=1.0, pg_rho_clip=1.0)),
    ("vtrace", dict(rho_clip=0.5, c_clip=2.0, pg_rho_clip=math.inf)),
    ("vtrace", dict(rho_clip=math.inf, c_clip=math.inf, pg_rho_clip=0.0, lam=0.0)),
    ("puff_advantage", dict(rho_clip=1.0, c_clip=math.inf)),
    ("per_decision_is", {}),
    ("nstep_returns", dict(n=1)),
    ("nstep_returns", dict(n=3)),
    ("nstep_returns", dict(n=50)),
    ("q_trace", {}),
    ("retrace", {}),
    ("tree_backup", {}),
    ("q_lambda", {}),
    ("importance_sampling_q", {}),
    ("p3o_advantage", dict(normalize="max")),
    ("p3o_advantage", dict(normalize="sum")),
    ("p3o_advantage", dict(normalize="none")),
    ("p3o_advantage", dict(normalize="max", batch_reward_std=math.inf)),
]


@pytest.mark.parametrize("name, options", GRAD_OPTIONS,
                         ids=[f"{n}-{o}" for n, o in GRAD_OPTIONS])
def test_torch_gradcheck_every_option(name, options):
    d = make(T=5, B=2, seed=7, nan_under_terminated=False)
    # keep log-ratios off the clip levels' kinks (log 0.5, 0, log 2): gradcheck steps 1e-6
    lr = d["log_rhos"]
    for kink in (math.log(0.5), 0.0, math.log(2.0)):
        lr = np.where(np.abs(lr - kink) < 0.05, kink + 0.1, lr)
    d["log_rhos"] = lr
    arrays = SIG[name][0].split()
    float_names = [k for k in arrays if d[k].dtype.kind == "f"]
    fixed = {k: torch.as_tensor(d[k]) for k in arrays if k not in float_names}
    scalars = dict(SIG[name][1], **options)

    def fn(*xs):
        out = getattr(E, name)(**dict(zip(float_names, xs, strict=True)), **fixed, **scalars)
        return out if isinstance(out, tuple) else (out,)

    xs = tuple(torch.tensor(d[k], requires_grad=True) for k in float_names)
    assert torch.autograd.gradcheck(fn, xs)


# ---------------------------------------------------------------------------------------------
# inputs are never modified


def _snapshot(kwargs):
    out = {}
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor):
            out[k] = (v.dtype, tuple(v.shape), v.detach().cpu().numpy().tobytes())
        elif isinstance(v, np.ndarray):
            out[k] = (v.dtype, v.shape, v.tobytes())
        else:
            out[k] = v
    return out


@pytest.mark.parametrize("backend, inputs", [("numpy", "numpy"), ("torch", "numpy"),
                                             ("torch", "torch"), ("taichi", "numpy"),
                                             ("taichi", "torch")])
def test_inputs_are_never_modified(backend, inputs):
    d = make(T=9, B=8, seed=8)
    d32 = _cast(d, {k: np.float32 for k in FLOAT_NAMES})
    rng = np.random.default_rng(0)
    per_step = dict(gamma=rng.random((9, 1)), lam=rng.random((1, 8)))
    for data in (d, d32):
        for name in SIG:
            for extra in ({}, per_step) if name != "p3o_advantage" else ({},):
                arrays, scalars = SIG[name]
                kwargs = {k: data[k] for k in arrays.split()}
                kwargs.update(scalars)
                kwargs.update({k: v for k, v in extra.items()
                               if k in scalars or k == "gamma"})
                if name == "nstep_returns":
                    kwargs.pop("lam", None)
                if inputs == "torch":
                    kwargs = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v
                              for k, v in kwargs.items()}
                before = _snapshot(kwargs)
                forms = ("vec4", "rows", "naive", "chunked") if backend == "taichi" else (None,)
                for form in forms:
                    with X._form(form):
                        getattr(BACKENDS[backend], name)(**kwargs)
                    assert _snapshot(kwargs) == before, (backend, inputs, name, form)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_layout_helpers_do_not_modify_inputs(kind):
    rng = np.random.default_rng(1)
    rows = dict(values=rng.random((3, 6)), rewards=rng.random((3, 6)),
                dones=(rng.random((3, 6)) < 0.3).astype(np.float64),
                importance=rng.random((3, 6)) + 0.5)
    rows["truncations"] = rows["dones"].copy()
    rows["truncation_values"] = rng.random((3, 6))
    conv = (lambda v: torch.as_tensor(v)) if kind == "torch" else (lambda v: v)
    rows = {k: conv(v) for k, v in rows.items()}
    before = _snapshot(rows)
    layout.from_pufferlib(**rows)
    layout.to_pufferlib(rows["values"])
    trunc = conv(np.zeros((6, 3), bool))
    vals = conv(rng.random((6, 3)))
    b2 = _snapshot(dict(v=vals, t=trunc))
    layout.next_values_from_values(vals, 0.5, truncated=trunc, truncation_values=vals)
    assert _snapshot(rows) == before and _snapshot(dict(v=vals, t=trunc)) == b2


# ---------------------------------------------------------------------------------------------
# layout keeps dtype and device


@pytest.mark.parametrize("kind, dtype", [("numpy", np.float32), ("numpy", np.float64),
                                         ("torch", torch.float32), ("torch", torch.float64)])
def test_layout_helpers_keep_dtype_and_device(kind, dtype):
    rng = np.random.default_rng(2)
    if kind == "numpy":
        mk = lambda a: np.asarray(a, dtype=dtype)
        device_of = lambda x: "cpu"
    else:
        mk = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype)
        device_of = lambda x: x.device
    values = mk(rng.random((6, 3)))
    truncated = np.zeros((6, 3), bool)
    truncated[2, 1] = True
    # bootstrap and truncation values given in float64 must not promote the result
    outs = [layout.next_values_from_values(values, 0.5),
            layout.next_values_from_values(values, np.float64(0.25)),
            layout.next_values_from_values(values, np.zeros(3), truncated=truncated,
                                           truncation_values=rng.random((6, 3)))]
    dones = np.zeros((3, 7))
    dones[0, 3] = 1
    d = layout.from_pufferlib(mk(rng.random((3, 7))), mk(rng.random((3, 7))), dones,
                              mk(rng.random((3, 7)) + 0.5), truncations=dones,
                              truncation_values=rng.random((3, 7)))
    outs += [d[k] for k in ("rewards", "values", "next_values", "log_rhos")]
    outs.append(layout.to_pufferlib(d["values"]))
    for out in outs:
        assert out.dtype == dtype
        assert device_of(out) == device_of(values)
        if kind == "torch":
            assert isinstance(out, torch.Tensor)
        else:
            assert isinstance(out, np.ndarray)
    assert d["terminated"].dtype in (np.bool_, torch.bool)


@pytest.mark.parametrize("B", [12, 16])
@pytest.mark.parametrize("name, index, value", [
    ("next_values", (4, 3), math.nan), ("next_values", (-1, 0), math.inf),
    ("values", (-1, 7), math.nan), ("rewards", (0, 5), -math.inf), ("log_rhos", (2, 2), math.nan)])
def test_vector_forms_raise_on_non_finite_input_where_read(name, index, value, B, launched):
    """The 4- and 8-lane kernels (float32, B % 4 == 0) check inputs in the same pass: a bad
    value in any lane, at a truncated step (4, 3) or the last step, raises naming it."""
    d = _cast(make(T=9, B=B, seed=9, nan_under_terminated=False),
              {k: np.float32 for k in FLOAT_NAMES})
    d["terminated"][:] = False
    d["truncated"][:] = False
    d["truncated"][4, 3] = True
    d[name] = d[name].copy()
    d[name][index] = value
    for fn in ("gae", "vtrace", "per_decision_is") if name != "log_rhos" else ("vtrace",):
        launched()
        with X._form("vec4"), pytest.raises(ValueError, match=rf"^{name}: contains NaN"):
            run("taichi", fn, d)
        assert launched() == ["vec8" if fn != "gae" and B == 16 else "vec4"], fn


@pytest.mark.parametrize("backend, dtype", [("numpy", "float64"), ("torch", "float32"),
                                            ("torch", "float64"), ("taichi", "float32"),
                                            ("taichi", "float64")])
def test_overflowing_output_raises_even_without_log_ratios(backend, dtype):
    """Finite rewards near the dtype's maximum: every TD error is finite, their discounted
    sum is not. The estimator raises instead of returning inf (the reference computes in
    float64, so it is checked with float64 inputs)."""
    big = float(np.finfo(dtype).max) / 1.5
    T, B = 6, 8
    r = np.full((T, B), big)
    z = np.zeros((T, B))
    flags = np.zeros((T, B), bool)
    d = _for(backend, dict(make(T, B), rewards=r, values=z, next_values=z, terminated=flags,
                           truncated=flags, q_taken=z, next_expected_q=z, log_rhos=z), dtype)
    forms = ("vec4", "rows", "naive", "chunked") if backend == "taichi" else (None,)
    compute = dtype
    for form in forms:
        with X._form(form):
            for name, kw in (("gae", dict(gamma=1.0, lam=1.0)),
                             ("vtrace", dict(gamma=1.0, lam=1.0)),
                             ("q_lambda", dict(gamma=1.0, lam=1.0))):
                arrays = SIG[name][0].split()
                with pytest.raises(ValueError, match=rf"overflows {compute}"):
                    getattr(BACKENDS[backend], name)(**{k: d[k] for k in arrays}, **kw)
