"""The Taichi backend equals the numpy reference (docs/DESIGN.md section 4, theorem 12).

Tolerances, relative to the magnitude of the reference output (``1 + max |reference|``):
float64 inputs 1e-10; float32 inputs 1e-4 (the reference computes in float64 from the same
float32 values, so the gap is float32 rounding accumulated along the trace).

Every kernel form of the state-value trace is checked (``vec4``: the CPU lockstep form;
``rows``: its scalar fallback; ``naive``: one thread per stream; ``chunked``: the scan over
chunks of T), on the CPU, the CPU forms both serial and parallel, and the automatic choice
(which takes the lean path for numpy inputs). Kernels compile once per process (and are kept in
Taichi's offline cache), so the examples themselves are cheap.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from estimators import numpy as ref

X = pytest.importorskip("estimators.taichi")
pytest.importorskip("taichi")
from estimators.taichi import _runtime  # noqa: E402 (after the import checks)

FORMS = ("vec4", "rows", "naive", "chunked")
# (form, threads): None picks by size (the automatic choice, and the lean path for numpy
# inputs); the CPU forms both on the calling thread and on Taichi's thread pool
VARIANTS = ((None, None), ("vec4", "serial"), ("vec4", "parallel"), ("rows", "serial"),
            ("rows", "parallel"), ("naive", None), ("chunked", None))
TOL = {np.float64: 1e-10, np.float32: 1e-4}


def _close(got, want, dtype, what=""):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, what
    scale = 1.0 + (np.max(np.abs(want)) if want.size else 0.0)
    err = np.max(np.abs(got - want)) if want.size else 0.0
    assert err <= TOL[dtype] * scale, f"{what}: max error {err:.3g} > {TOL[dtype]:g} x {scale:.3g}"


# ---------------------------------------------------------------------------------------------
# random inputs


@st.composite
def batches(draw):
    T = draw(st.sampled_from([1, 2, 3, 5, 8, 13]))
    B = draw(st.sampled_from([None, 1, 3, 4, 8, 12]))  # None: a [T] input
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    p_term = draw(st.sampled_from([0.0, 0.25, 1.0]))
    p_trunc = draw(st.sampled_from([0.0, 0.25, 1.0]))
    # extreme ratios: exp(+-20) in float64; float32 keeps products of rho finite
    lr_scale = draw(st.sampled_from([0.0, 1.0, 20.0 if dtype == np.float64 else 4.0]))
    gamma = draw(st.sampled_from([0.0, 0.5, 0.99, 1.0]))
    lam = draw(st.sampled_from([0.0, 0.7, 1.0]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    shape = (T,) if B is None else (T, B)
    f = lambda scale=1.0: (scale * rng.standard_normal(shape)).astype(dtype)
    term = rng.random(shape) < p_term
    trunc = rng.random(shape) < p_trunc
    nv = f()
    nv[term] = np.nan  # ignored under terminated: must not reach any output
    nq = f()
    nq[term] = np.inf
    lr = f(lr_scale)
    if lr_scale > 0:
        lr[rng.random(shape) < 0.1] = -np.inf  # rho = 0 is allowed
    return dict(T=T, shape=shape, dtype=dtype, r=f(), v=f(), nv=nv, te=term, tr=trunc, lr=lr,
                q=f(), nq=nq, probs=rng.random(shape).astype(dtype),
                traces=(2 * rng.random(shape)).astype(dtype), gamma=gamma, lam=lam, rng=rng)


@given(batches())
def test_state_value_estimators_match_reference(d):
    args = (d["r"], d["v"], d["nv"], d["te"], d["tr"])
    kw = dict(gamma=d["gamma"], lam=d["lam"])
    rng = d["rng"]
    clips = dict(rho_clip=float(rng.choice([0.0, 0.5, 1.0, np.inf])),
                 c_clip=float(rng.choice([0.5, 1.0, np.inf])),
                 pg_rho_clip=float(rng.choice([1.0, np.inf])))
    want_gae = ref.gae(*args, **kw)
    want_vt = ref.vtrace(*args, d["lr"], **kw, **clips)
    want_pdis = ref.per_decision_is(*args, d["lr"], **kw)
    want_puff = ref.puff_advantage(*args, d["lr"], **kw, rho_clip=clips["rho_clip"],
                                   c_clip=clips["c_clip"])
    for form, threads in VARIANTS:
        with X._form(form), X._threads(threads):
            got = X.gae(*args, **kw)
            for g, w, name in zip(got, want_gae, ("advantages", "returns"), strict=True):
                _close(g, w, d["dtype"], f"gae.{name} [{form} {threads}]")
            got = X.vtrace(*args, d["lr"], **kw, **clips)
            for g, w, name in zip(got, want_vt, want_vt._fields, strict=True):
                _close(g, w, d["dtype"], f"vtrace.{name} [{form} {threads}]")
            got = X.per_decision_is(*args, d["lr"], **kw)
            for g, w, name in zip(got, want_pdis, want_pdis._fields, strict=True):
                _close(g, w, d["dtype"], f"per_decision_is.{name} [{form} {threads}]")
            got = X.puff_advantage(*args, d["lr"], **kw, rho_clip=clips["rho_clip"],
                                   c_clip=clips["c_clip"])
            _close(got, want_puff, d["dtype"], f"puff_advantage [{form} {threads}]")


@given(batches())
def test_action_value_estimators_match_reference(d):
    args = (d["r"], d["q"], d["nq"], d["te"], d["tr"])
    kw = dict(gamma=d["gamma"], lam=d["lam"])
    cases = [
        ("q_trace", (d["traces"],)),
        ("retrace", (d["lr"],)),
        ("tree_backup", (d["probs"],)),
        ("q_lambda", ()),
        ("importance_sampling_q", (d["lr"],)),
    ]
    for name, extra in cases:
        want = getattr(ref, name)(*args, *extra, **kw)
        for form, threads in ((None, None), (None, "serial"), (None, "parallel"),
                              ("naive", None)):
            with X._form(form), X._threads(threads):
                got = getattr(X, name)(*args, *extra, **kw)
            _close(got, want, d["dtype"], f"{name} [{form or 'auto'} {threads}]")


@given(batches(), st.integers(1, 15), st.integers(1, 5),
       st.sampled_from(["max", "sum", "none"]))
def test_windowed_estimators_match_reference(d, n, H, normalize):
    kw = dict(gamma=d["gamma"], n=n)
    _close(X.nstep_returns(d["r"], d["nv"], d["te"], d["tr"], **kw),
           ref.nstep_returns(d["r"], d["nv"], d["te"], d["tr"], **kw), d["dtype"], "nstep")
    rng = d["rng"]
    mean = rng.standard_normal(d["shape"] + (H,)).astype(d["dtype"])
    std = (0.2 + rng.random(d["shape"] + (H,))).astype(d["dtype"])
    std[rng.random(std.shape) < 0.1] = np.inf  # weight 0
    kw = dict(batch_reward_std=float(rng.choice([0.5, 1.0, np.inf])), normalize=normalize)
    _close(X.p3o_advantage(d["r"], mean, std, d["te"], d["tr"], **kw),
           ref.p3o_advantage(d["r"], mean, std, d["te"], d["tr"], **kw), d["dtype"], "p3o")


# ---------------------------------------------------------------------------------------------
# determinism, layouts, array types


def _big(dtype=np.float32, T=37, B=24, seed=1):
    rng = np.random.default_rng(seed)
    f = lambda: rng.standard_normal((T, B)).astype(dtype)
    return f(), f(), f(), rng.random((T, B)) < 0.05, rng.random((T, B)) < 0.05, f()


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_calling_twice_gives_identical_output(variant):
    r, v, nv, te, tr, lr = _big()
    with X._form(variant[0]), X._threads(variant[1]):
        first = X.vtrace(r, v, nv, te, tr, lr, gamma=0.99, lam=0.95, rho_clip=2.0)
        second = X.vtrace(r, v, nv, te, tr, lr, gamma=0.99, lam=0.95, rho_clip=2.0)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    once = X.retrace(r, v, nv, te, tr, lr, gamma=0.9, lam=0.9)
    np.testing.assert_array_equal(once, X.retrace(r, v, nv, te, tr, lr, gamma=0.9, lam=0.9))


def test_output_dtype_follows_input():
    r, v, nv, te, tr, lr = _big(np.float32)
    assert X.gae(r, v, nv, te, tr, gamma=0.9, lam=0.9).advantages.dtype == np.float32
    assert X.gae(r.astype(np.float64), v, nv, te, tr, gamma=0.9,
                 lam=0.9).advantages.dtype == np.float64
    ints = np.ones((5, 3), dtype=np.int64)
    out = X.gae(ints, ints, ints, ints * 0, ints * 0, gamma=0.9, lam=0.9).advantages
    assert out.dtype == np.float64
    _close(out, ref.gae(ints, ints, ints, ints * 0, ints * 0, gamma=0.9, lam=0.9).advantages,
           np.float64)


def test_non_contiguous_and_misaligned_input():
    r, v, nv, te, tr, lr = _big(np.float32, T=20, B=16)
    strided = [x[::2, 1::2] for x in (r, v, nv, te, tr, lr)]  # non-contiguous views
    transposed = [np.asfortranarray(x) for x in (r, v, nv, te, tr, lr)]
    buf = np.empty(r.size + 1, np.float32)[1:].reshape(r.shape)  # 4 bytes off 16-alignment
    buf[...] = r
    misaligned = [buf, v, nv, te, tr, lr]
    for arrays in (strided, transposed, misaligned):
        want = ref.vtrace(*arrays, gamma=0.9, lam=0.8)
        got = X.vtrace(*arrays, gamma=0.9, lam=0.8)
        for g, w in zip(got, want, strict=True):
            _close(g, w, np.float32)
    flags_as_floats = X.gae(r, v, nv, te.astype(np.float32), tr.astype(np.int8), gamma=0.9,
                            lam=0.8)
    _close(flags_as_floats.advantages, ref.gae(r, v, nv, te, tr, gamma=0.9, lam=0.8).advantages,
           np.float32)


def test_python_lists_are_accepted():
    out = X.gae([1.0, 1.0, 1.0], [0.5, 0.4, 0.3], [0.4, 0.3, 0.0], [False, False, True],
                [False, False, False], gamma=0.9, lam=0.5)
    np.testing.assert_allclose(out.advantages, [1.39325, 1.185, 0.70], rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_in_torch_out(dtype):
    torch = pytest.importorskip("torch")
    r, v, nv, te, tr, lr = _big(np.float64)
    tt = [torch.tensor(x, dtype=getattr(torch, dtype)) for x in (r, v, nv, lr)]
    flags = [torch.tensor(x) for x in (te, tr)]
    out = X.vtrace(tt[0], tt[1], tt[2], *flags, tt[3], gamma=0.9, lam=0.8)
    want = ref.vtrace(*(x.numpy() for x in tt[:3]), te, tr, tt[3].numpy(), gamma=0.9, lam=0.8)
    for g, w in zip(out, want, strict=True):
        assert isinstance(g, torch.Tensor)
        assert g.dtype == getattr(torch, dtype) and g.device == tt[0].device
        _close(g.numpy(), w, np.dtype(dtype).type)
    # a non-contiguous tensor that requires grad is read, not modified
    rt = tt[0].clone().requires_grad_(True)
    got = X.gae(rt.T.contiguous().T, tt[1], tt[2], *flags, gamma=0.9, lam=0.8).advantages
    assert got.requires_grad  # gradients flow (tests/test_taichi_autograd.py)
    want = ref.gae(tt[0].numpy(), tt[1].numpy(), tt[2].numpy(), te, tr, gamma=0.9, lam=0.8)
    _close(got.detach().numpy(), want.advantages, np.dtype(dtype).type)
    q = X.nstep_returns(tt[0][:, ::2], tt[2][:, ::2], flags[0][:, ::2], flags[1][:, ::2],
                        gamma=0.9, n=3)
    assert isinstance(q, torch.Tensor)


# ---------------------------------------------------------------------------------------------
# the same bad-input errors as the reference


def _state(T=4, B=3):
    rng = np.random.default_rng(0)
    f = lambda: rng.standard_normal((T, B))
    return dict(rewards=f(), values=f(), next_values=f(), terminated=np.zeros((T, B), bool),
                truncated=np.zeros((T, B), bool))


def _bad_cases():
    s = _state()
    r = s["rewards"]
    nan, inf = np.full_like(r, np.nan), np.full_like(r, np.inf)
    lr = np.zeros_like(r)
    act = dict(rewards=r, q_taken=r, next_expected_q=r, terminated=s["terminated"],
               truncated=s["truncated"])
    mean = np.zeros(r.shape + (2,))
    yield "gae", dict(s, values=r[:2]), dict(gamma=0.9, lam=0.9)
    yield "gae", dict(s, rewards=r[:0], values=r[:0], next_values=r[:0],
                      terminated=s["terminated"][:0], truncated=s["truncated"][:0]), \
        dict(gamma=0.9, lam=0.9)
    yield "gae", dict(s, rewards=nan), dict(gamma=0.9, lam=0.9)
    yield "gae", dict(s, values=inf), dict(gamma=0.9, lam=0.9)
    yield "gae", dict(s, next_values=nan), dict(gamma=0.9, lam=0.9)
    yield "gae", dict(s, terminated=np.full(r.shape, 2)), dict(gamma=0.9, lam=0.9)
    yield "gae", dict(s, truncated=r.astype(complex)), dict(gamma=0.9, lam=0.9)
    yield "gae", dict(s), dict(gamma=1.5, lam=0.9)
    yield "gae", dict(s), dict(gamma=0.9, lam=-0.1)
    yield "gae", dict(s, rewards=nan), dict(gamma=1.5, lam=0.9)  # two faults: same first one
    yield "vtrace", dict(s, log_rhos=lr + np.inf), dict(gamma=0.9)
    yield "vtrace", dict(s, log_rhos=lr + np.nan), dict(gamma=0.9)
    yield "vtrace", dict(s, log_rhos=lr), dict(gamma=0.9, rho_clip=-1.0)
    yield "vtrace", dict(s, log_rhos=lr), dict(gamma=0.9, pg_rho_clip=np.nan)
    yield "vtrace", dict(s, rewards=nan, log_rhos=lr), dict(gamma=0.9, c_clip=-1.0)
    yield "puff_advantage", dict(s, log_rhos=lr), dict(gamma=0.9, c_clip=-2.0)
    yield "per_decision_is", dict(s, log_rhos=lr + np.inf), dict(gamma=0.9, lam=1.0)
    yield "nstep_returns", dict(rewards=r, next_values=nan, terminated=s["terminated"],
                                truncated=s["truncated"]), dict(gamma=0.9, n=2)
    yield "nstep_returns", dict(rewards=r, next_values=r, terminated=s["terminated"],
                                truncated=s["truncated"]), dict(gamma=0.9, n=0)
    yield "nstep_returns", dict(rewards=r, next_values=r, terminated=s["terminated"],
                                truncated=s["truncated"]), dict(gamma=0.9, n=1.5)
    yield "q_trace", dict(act, traces=-np.ones_like(r)), dict(gamma=0.9, lam=0.9)
    yield "q_trace", dict(act, traces=inf), dict(gamma=0.9, lam=0.9)
    yield "retrace", dict(act, log_rhos=lr + np.inf), dict(gamma=0.9, lam=0.9)
    yield "tree_backup", dict(act, target_probs_taken=lr + 1.5), dict(gamma=0.9, lam=0.9)
    yield "q_lambda", dict(act, next_expected_q=nan), dict(gamma=0.9, lam=0.9)
    yield "importance_sampling_q", dict(act, q_taken=inf, log_rhos=lr), dict(gamma=0.9, lam=0.9)
    p3o = dict(rewards=r, reward_mean=mean, reward_std=mean + 1, terminated=s["terminated"],
               truncated=s["truncated"])
    yield "p3o_advantage", dict(p3o, reward_std=mean), dict(batch_reward_std=1.0)
    yield "p3o_advantage", dict(p3o, reward_mean=mean + np.nan), dict(batch_reward_std=1.0)
    yield "p3o_advantage", dict(p3o, reward_mean=mean[..., :0]), dict(batch_reward_std=1.0)
    yield "p3o_advantage", dict(p3o, reward_std=mean[:, :2] + 1), dict(batch_reward_std=1.0)
    yield "p3o_advantage", dict(p3o), dict(batch_reward_std=0.0)
    yield "p3o_advantage", dict(p3o), dict(batch_reward_std=1.0, normalize="mean")


@pytest.mark.parametrize("case", list(_bad_cases()), ids=lambda c: c[0])
def test_same_bad_input_errors_as_reference(case):
    name, arrays, kwargs = case
    with pytest.raises((ValueError, TypeError)) as expected:
        getattr(ref, name)(**arrays, **kwargs)
    with pytest.raises(type(expected.value), match=re.escape(str(expected.value))):
        getattr(X, name)(**arrays, **kwargs)


# ---------------------------------------------------------------------------------------------
# initialisation and architecture


def test_import_does_not_start_taichi():
    code = ("import sys, estimators.taichi; "
            "assert 'taichi' not in sys.modules, 'taichi imported at import time'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=_root())


def test_bad_arch_name_is_rejected(monkeypatch):
    monkeypatch.setenv(X.ENV_ARCH, "tpu")
    monkeypatch.setitem(X._state, "requested", None)
    with pytest.raises(ValueError, match="OFFPOLICY_TAICHI_ARCH"):
        _runtime.requested_arch()
    with pytest.raises(ValueError, match="arch"):
        X.configure(arch="tpu")


def test_missing_cuda_is_a_clear_error():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is present: nothing to refuse")
    code = ("from estimators import taichi as X\n"
            "try:\n    X.gae([1.0], [0.0], [0.0], [True], [False], gamma=0.9, lam=0.9)\n"
            "except RuntimeError as e:\n    print('REFUSED', e)\n")
    env = dict(os.environ, **{X.ENV_ARCH: "cuda"})
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=_root(), check=True).stdout
    assert "REFUSED" in out and "cuda" in out


def _root():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cuda_or_skip():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch


@pytest.mark.gpu
def test_gpu_matches_reference():
    """On a CUDA machine: every form on CUDA tensors, without a host round trip."""
    torch = _cuda_or_skip()
    code = r"""
import numpy as np, torch
from estimators import numpy as ref, taichi as X
X.configure("cuda")
rng = np.random.default_rng(0)
T, B = 300, 64
r, v, nv, lr = (rng.standard_normal((T, B)) for _ in range(4))
te, tr = rng.random((T, B)) < 0.02, rng.random((T, B)) < 0.02
want = ref.vtrace(r, v, nv, te, tr, lr, gamma=0.99, lam=0.95)
dev = [torch.tensor(x, device="cuda") for x in (r, v, nv, te, tr, lr)]
for form in ("naive", "chunked", None):
    with X._form(form):
        got = X.vtrace(*dev, gamma=0.99, lam=0.95)
    for g, w in zip(got, want):
        assert g.is_cuda
        assert np.abs(g.cpu().numpy() - w).max() <= 1e-10 * (1 + np.abs(w).max())
# per-step gamma (numpy) and lam (a CUDA tensor)
g = rng.uniform(0.5, 1.0, (T, 1))
want = ref.vtrace(r, v, nv, te, tr, lr, gamma=g, lam=0.9)
lam = torch.full((1, B), 0.9, dtype=torch.float64, device="cuda")
for form in ("naive", "chunked", None):
    with X._form(form):
        got = X.vtrace(*dev, gamma=g, lam=lam)
    for x, w in zip(got, want):
        assert x.is_cuda
        assert np.abs(x.cpu().numpy() - w).max() <= 1e-10 * (1 + np.abs(w).max())
print("GPU OK")
"""
    del torch
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=_root(), check=True).stdout
    assert "GPU OK" in out


def test_serial_and_parallel_blocks_give_identical_bytes():
    """The serial build runs the same per-element arithmetic on the calling thread: the same
    bytes as the thread pool, for every CPU form, including the lean path (auto form)."""
    for dtype in (np.float32, np.float64):
        r, v, nv, te, tr, lr = _big(dtype, T=29, B=40, seed=3)
        for form in (None, "vec4", "rows"):
            outs = []
            for threads in ("serial", "parallel"):
                with X._form(form), X._threads(threads):
                    got = X.vtrace(r, v, nv, te, tr, lr, gamma=0.97, lam=0.9, rho_clip=1.5)
                    got = tuple(got) + tuple(X.gae(r, v, nv, te, tr, gamma=0.97, lam=0.9))
                    got += (X.retrace(r, v, nv, te, tr, lr, gamma=0.97, lam=0.9),)
                outs.append(b"".join(x.tobytes() for x in got))
            assert outs[0] == outs[1], (dtype, form)


def test_lean_path_is_taken_and_matches_the_general_path():
    """numpy arrays, or CPU tensors, of one float dtype with bool flags take the lean path;
    0/1 integer flags (the general path) give the same bytes."""
    torch = pytest.importorskip("torch")
    for dtype in (np.float32, np.float64):
        r, v, nv, te, tr, lr = _big(dtype, T=16, B=64, seed=4)
        tensors = [torch.from_numpy(x) for x in (r, v, nv, te, tr, lr)]
        X.vtrace(r, v, nv, te, tr, lr, gamma=0.9, lam=0.9)  # compiles, caches the launcher
        K = _runtime.kernels()
        clips = {"rho_clip": 1.0, "c_clip": 1.0, "pg_rho_clip": 1.0}
        assert X._fast_state(K.VTRACE, K, r, v, nv, te, tr, lr, 0.9, 0.9, clips) is not None
        assert X._fast_state(K.VTRACE, K, *tensors, 0.9, 0.9, clips) is not None
        assert X._fast_state(K.VTRACE, K, r, v, nv, te.astype(np.uint8), tr, lr, 0.9, 0.9,
                             clips) is None
        lean = X.vtrace(r, v, nv, te, tr, lr, gamma=0.9, lam=0.9)
        lean_torch = X.vtrace(*tensors, gamma=0.9, lam=0.9)
        general = X.vtrace(r, v, nv, te.astype(np.uint8), tr, lr, gamma=0.9, lam=0.9)
        for a, b, c in zip(lean, lean_torch, general, strict=True):
            assert isinstance(b, torch.Tensor) and b.dtype == tensors[0].dtype
            assert a.tobytes() == b.numpy().tobytes() == c.tobytes()


@pytest.mark.parametrize("threads", ["serial", "parallel"])
def test_large_outputs_start_on_a_cache_line(threads):
    """Outputs of 64 KiB and more start on a 64-byte line (two threads' blocks then never
    store into one line), in both the lean and the general path, and match the reference."""
    torch = pytest.importorskip("torch")
    r, v, nv, te, tr, lr = _big(np.float32, T=130, B=128, seed=5)
    want = ref.vtrace(r, v, nv, te, tr, lr, gamma=0.99, lam=0.95)
    with X._threads(threads):
        lean = X.vtrace(r, v, nv, te, tr, lr, gamma=0.99, lam=0.95)
        # mixed numpy and torch inputs: the general path
        general = X.vtrace(torch.from_numpy(r), v, nv, te, tr, lr, gamma=0.99, lam=0.95)
    for a, b, w in zip(lean, general, want, strict=True):
        assert a.ctypes.data % 64 == 0 and b.data_ptr() % 64 == 0
        assert a.tobytes() == b.numpy().tobytes()
        _close(a, w, np.float32)


def test_lean_path_reused_launch_context_follows_every_argument():
    """The lean path keeps a launch context per kernel and sets only what changed: calls that
    alternate arrays, sizes and parameters (and a failing call in between) give the bytes of
    a first call with each of them."""
    a = _big(np.float32, T=12, B=16, seed=6)
    b = _big(np.float32, T=7, B=8, seed=7)
    cases = [(a, dict(gamma=0.9, lam=0.8)), (b, dict(gamma=0.5, lam=1.0, rho_clip=2.0)),
             (a, dict(gamma=0.9, lam=0.8, c_clip=0.5))]
    first = [b"".join(x.tobytes() for x in X.vtrace(*arrays, **kw)) for arrays, kw in cases]
    bad = list(a)
    bad[0] = np.full_like(a[0], np.nan)
    with pytest.raises(ValueError, match="rewards"):
        X.vtrace(*bad, gamma=0.9, lam=0.8)
    for _ in range(2):
        for (arrays, kw), want in zip(cases, first, strict=True):
            got = X.vtrace(*arrays, **kw)
            assert b"".join(x.tobytes() for x in got) == want
            ref_out = ref.vtrace(*arrays, **kw)
            for g, w in zip(got, ref_out, strict=True):
                _close(g, w, np.float32)
