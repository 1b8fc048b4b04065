"""The torch backend against the numpy reference (docs/DESIGN.md section 4, theorem 12): values on
random inputs of many shapes, dtype and device kept, gradients (torch.autograd.gradcheck)."""

import math

import numpy as np
import pytest
import torch

import estimators.numpy as N
import estimators.torch as E
from offpolicy import registry

SHAPES = [(1,), (6,), (1, 1), (1, 4), (5, 1), (7, 3), (12, 5)]
DTYPES = [torch.float32, torch.float64]
# float32 inputs are compared with the float64 reference run on the same (rounded) inputs.
TOLERANCES = {torch.float32: dict(rtol=1e-4, atol=1e-4),
              torch.float64: dict(rtol=1e-11, atol=1e-11)}


def inputs(shape, seed, p_done=0.3, H=3):
    rng = np.random.default_rng(seed)
    normal = lambda: rng.normal(size=shape)
    return dict(
        rewards=normal(), values=normal(), next_values=normal(), q_taken=normal(),
        next_expected_q=normal(), log_rhos=rng.uniform(-1.5, 1.5, size=shape),
        probs=rng.uniform(0.0, 1.0, size=shape),
        terminated=rng.random(shape) < p_done, truncated=rng.random(shape) < p_done,
        reward_mean=rng.normal(size=shape + (H,)),
        reward_std=rng.uniform(0.3, 3.0, size=shape + (H,)),
    )


def run_all(M, b, gamma=0.93, lam=0.8, n=3):
    flags = (b["terminated"], b["truncated"])
    state = (b["rewards"], b["values"], b["next_values"], *flags)
    action = (b["rewards"], b["q_taken"], b["next_expected_q"], *flags)
    lr = b["log_rhos"]
    p3o = lambda normalize: (M.p3o_advantage(b["rewards"], b["reward_mean"], b["reward_std"],
                                             *flags, batch_reward_std=1.1, normalize=normalize),)
    return {
        "gae": M.gae(*state, gamma=gamma, lam=lam),
        "vtrace": M.vtrace(*state, lr, gamma=gamma, lam=lam, rho_clip=1.2, c_clip=0.9,
                           pg_rho_clip=1.5),
        "puff": (M.puff_advantage(*state, lr, gamma=gamma, lam=lam, c_clip=math.inf),),
        "pdis": M.per_decision_is(*state, lr, gamma=gamma, lam=lam),
        "nstep": (M.nstep_returns(b["rewards"], b["next_values"], *flags, gamma=gamma, n=n),),
        "nstep_long": (M.nstep_returns(b["rewards"], b["next_values"], *flags, gamma=gamma,
                                       n=50),),
        "q_trace": (M.q_trace(*action, 2 * b["probs"], gamma=gamma, lam=lam),),
        "retrace": (M.retrace(*action, lr, gamma=gamma, lam=lam),),
        "tree_backup": (M.tree_backup(*action, b["probs"], gamma=gamma, lam=lam),),
        "q_lambda": (M.q_lambda(*action, gamma=gamma, lam=lam),),
        "is_q": (M.importance_sampling_q(*action, lr, gamma=gamma, lam=lam),),
        "p3o_max": p3o("max"),
        "p3o_sum": p3o("sum"),
        "p3o_none": p3o("none"),
    }


def to_torch(b, dtype, device="cpu"):
    return {k: torch.as_tensor(v, dtype=torch.bool if v.dtype == bool else dtype, device=device)
            for k, v in b.items()}


def compare(b_np, b_torch, dtype, device):
    expected = run_all(N, {k: v.cpu().numpy() for k, v in b_torch.items()})
    got = run_all(E, b_torch)
    for name, outs in expected.items():
        for e, g in zip(outs, got[name], strict=True):
            assert isinstance(g, torch.Tensor), name
            assert g.dtype == dtype and g.device.type == device, name
            assert tuple(g.shape) == b_np["rewards"].shape, name
            np.testing.assert_allclose(g.cpu().numpy(), e, err_msg=name, **TOLERANCES[dtype])


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_torch_equals_numpy(shape, dtype):
    for seed in range(3):
        b = inputs(shape, seed)
        compare(b, to_torch(b, dtype), dtype, "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_torch_on_cuda_equals_numpy(dtype):
    for shape in [(1,), (7, 3), (64, 33)]:
        b = inputs(shape, 0)
        compare(b, to_torch(b, dtype, "cuda"), dtype, "cuda")


def test_float_flags_lists_and_mixed_dtypes():
    b = inputs((6, 2), 1)
    # 0/1 float flags are flags; lists become float64 tensors; float32 + float64 -> float64.
    args = (b["rewards"].tolist(), torch.tensor(b["values"], dtype=torch.float32),
            torch.tensor(b["next_values"]), torch.tensor(b["terminated"], dtype=torch.float32),
            b["truncated"].astype(int).tolist())
    adv, ret = E.gae(*args, gamma=0.9, lam=0.7)
    assert adv.dtype == torch.float64
    expected = N.gae(b["rewards"], b["values"].astype(np.float32), b["next_values"],
                     b["terminated"], b["truncated"], gamma=0.9, lam=0.7)
    np.testing.assert_allclose(adv.numpy(), expected.advantages, rtol=1e-12)
    ints = torch.ones(3, dtype=torch.int64)
    out = E.gae(ints, ints, ints, [0, 0, 1], [0, 0, 0], gamma=1.0, lam=1.0)
    assert out.advantages.dtype == torch.get_default_dtype()


FORMS = ("loop", "doubling", "chunked")


@pytest.fixture(params=FORMS)
def scan_form(request, monkeypatch):
    """Every estimator with the scan over T forced into one form (the automatic choice takes
    the loop at the small T of these tests)."""
    monkeypatch.setattr(E, "_scan_form", lambda T, B, device_type: request.param)
    return request.param


def test_gradcheck(scan_form):
    b = to_torch(inputs((4, 2), 5), torch.float64)
    # keep rho away from the clip levels so finite differences do not cross a kink
    rho = torch.tensor([[0.5, 1.6], [2.0, 0.3], [0.7, 1.9], [1.4, 0.6]], dtype=torch.float64)
    b["log_rhos"] = rho.log()
    b["terminated"] = torch.tensor([[False, False], [False, True], [False, False], [True, False]])
    b["truncated"] = torch.tensor([[False, False], [True, False], [False, False], [False, False]])
    flags = (b["terminated"], b["truncated"])

    def check(fn, names):
        leaves = [b[k].clone().requires_grad_(True) for k in names]
        assert torch.autograd.gradcheck(lambda *xs: fn(dict(b, **dict(zip(names, xs,
                                                                           strict=True)))),
                                        leaves)

    state = ["rewards", "values", "next_values"]
    check(lambda d: E.gae(d["rewards"], d["values"], d["next_values"], *flags, gamma=0.9,
                          lam=0.8), state)
    check(lambda d: tuple(E.vtrace(d["rewards"], d["values"], d["next_values"], *flags,
                                   d["log_rhos"], gamma=0.9, lam=0.8, rho_clip=1.5, c_clip=1.0,
                                   pg_rho_clip=1.2)), state + ["log_rhos"])
    check(lambda d: E.per_decision_is(d["rewards"], d["values"], d["next_values"], *flags,
                                      d["log_rhos"], gamma=0.9, lam=0.8), state + ["log_rhos"])
    action = ["rewards", "q_taken", "next_expected_q"]
    check(lambda d: E.retrace(d["rewards"], d["q_taken"], d["next_expected_q"], *flags,
                              d["log_rhos"], gamma=0.9, lam=0.8), action + ["log_rhos"])
    check(lambda d: E.tree_backup(d["rewards"], d["q_taken"], d["next_expected_q"], *flags,
                                  d["probs"], gamma=0.9, lam=0.8), action + ["probs"])
    check(lambda d: E.nstep_returns(d["rewards"], d["next_values"], *flags, gamma=0.9, n=2),
          ["rewards", "next_values"])
    check(lambda d: E.p3o_advantage(d["rewards"], d["reward_mean"], d["reward_std"], *flags,
                                    batch_reward_std=1.1, normalize="sum"),
          ["rewards", "reward_mean", "reward_std"])


def test_nan_under_terminated_gets_a_zero_gradient(scan_form):
    b = to_torch(inputs((6, 3), 2, p_done=0.4), torch.float64)
    term = b["terminated"]
    assert term.any()
    nv = torch.where(term, math.nan, b["next_values"]).requires_grad_(True)
    nq = torch.where(term, math.inf, b["next_expected_q"]).requires_grad_(True)
    out = E.vtrace(b["rewards"], b["values"], nv, term, b["truncated"], b["log_rhos"],
                   gamma=0.9, lam=0.7)
    q = E.retrace(b["rewards"], b["q_taken"], nq, term, b["truncated"], b["log_rhos"],
                  gamma=0.9, lam=0.7)
    n = E.nstep_returns(b["rewards"], nv, term, b["truncated"], gamma=0.9, n=3)
    (sum(x.sum() for x in out) + q.sum() + n.sum()).backward()
    for grad in (nv.grad, nq.grad):
        assert torch.isfinite(grad).all()
        assert (grad[term] == 0).all()


# ---------------------------------------------------------------------------------------------
# the scan over T (y_t = a_t + c_t y_{t+1}) in every form, against a loop written here


def _loop(a, c):
    y = np.zeros_like(a)
    for t in reversed(range(a.shape[0])):
        y[t] = a[t] + (c[t] * y[t + 1] if t + 1 < a.shape[0] else 0.0)
    return y


def _scan(a, c, form, bounded=True):
    return E._scan(torch.as_tensor(a), torch.as_tensor(c), bounded=bounded, form=form).numpy()


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("T", [1, 2, 3, 5, 8, 13, 100, 257])
def test_scan_forms_equal_a_loop(form, T):
    rng = np.random.default_rng(T)
    a = rng.normal(size=(T, 3))
    c = rng.uniform(0.0, 1.0, size=(T, 3)) * (rng.random((T, 3)) > 0.1)  # cuts inside
    for factors in (c, np.zeros_like(c), np.ones_like(c)):  # a cut at every step; none
        np.testing.assert_allclose(_scan(a, factors, form), _loop(a, factors), rtol=1e-12,
                                   atol=1e-12, err_msg=f"{form} T={T}")
    np.testing.assert_array_equal(_scan(a, np.zeros_like(c), form), a)  # cut everywhere: y = a


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 16])
def test_chunked_scan_with_any_chunk_length(chunk):
    rng = np.random.default_rng(chunk)
    a, c = rng.normal(size=(37, 2)), rng.uniform(0.0, 1.0, size=(37, 2))
    got = E._scan_chunked(torch.as_tensor(a), torch.as_tensor(c), chunk=chunk).numpy()
    np.testing.assert_allclose(got, _loop(a, c), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("form", FORMS)
def test_scan_gradcheck(form):
    rng = np.random.default_rng(3)
    a = torch.tensor(rng.normal(size=(11, 2)), requires_grad=True)
    c = torch.tensor(rng.uniform(0, 1, size=(11, 2)) * (rng.random((11, 2)) > 0.2),
                     requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, c: E._scan(a, c, bounded=True, form=form), (a, c))


def test_every_scan_form_is_chosen_at_some_benchmark_size():
    from offpolicy import bench

    sizes = bench.DEFAULT_SIZES + ((1, 4096),)
    assert {E._scan_form(T, B, "cpu") for B, T in sizes} == set(FORMS)
    assert E._scan_form(4096, 128, "cuda") == "doubling"


@pytest.mark.parametrize("B", [2, 8], ids=["doubling", "chunked"])  # the automatic form
def test_long_sequences_match_the_reference_in_float64(B):
    """T = 4099 (not a power of two), gamma lam near 1, terminations and truncations inside:
    every estimator within 1e-12 of the numpy reference (the scan's sums are associated
    differently from the loop's)."""
    T = 4099
    assert E._scan_form(T, B, "cpu") == ("doubling" if B == 2 else "chunked")
    b = inputs((T, B), 7, p_done=0.002)
    b["log_rhos"] = np.random.default_rng(8).normal(0.0, 0.3, size=(T, B))
    tb = to_torch(b, torch.float64)
    for name in RECURRENCES:  # the estimators built on the scan
        want = getattr(N, name)(*_recurrence_args(name, b), gamma=0.999, lam=0.998)
        got = getattr(E, name)(*_recurrence_args(name, tb), gamma=0.999, lam=0.998)
        if not isinstance(want, tuple):
            want, got = (want,), (got,)
        for e, g in zip(want, got, strict=True):
            np.testing.assert_allclose(g.numpy(), e, rtol=1e-12, atol=1e-12, err_msg=name)


# every recurrence estimator of the registry: the state-value ones that read values, every Q one
RECURRENCES = tuple(n for n in registry.names()
                    if "values" in registry.lookup(n).inputs or registry.lookup(n).kind == "action")


def _recurrence_args(name, b):
    flags = (b["terminated"], b["truncated"])
    if name == "gae":
        return (b["rewards"], b["values"], b["next_values"], *flags)
    if name in ("vtrace", "puff_advantage", "per_decision_is"):
        return (b["rewards"], b["values"], b["next_values"], *flags, b["log_rhos"])
    action = (b["rewards"], b["q_taken"], b["next_expected_q"], *flags)
    extra = {"q_trace": (2 * b["probs"],), "tree_backup": (b["probs"],), "q_lambda": ()}
    return action + extra.get(name, (b["log_rhos"],))


def test_a_cut_at_every_step(scan_form):
    b = inputs((37, 3), 9)
    b["truncated"] = np.ones((37, 3), dtype=bool)
    compare(b, to_torch(b, torch.float64), torch.float64, "cpu")
    adv = E.gae(*(torch.as_tensor(b[k]) for k in ("rewards", "values", "next_values",
                                                  "terminated", "truncated")),
                gamma=0.9, lam=0.9).advantages
    delta = b["rewards"] + 0.9 * np.where(b["terminated"], 0.0, b["next_values"]) - b["values"]
    np.testing.assert_allclose(adv.numpy(), delta, rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("shape", [(1,), (1, 3), (37, 3), (64, 2)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_estimator_in_every_scan_form(scan_form, shape, dtype):
    b = inputs(shape, 4)
    compare(b, to_torch(b, dtype), dtype, "cpu")


def test_products_that_would_overflow_keep_the_loop(monkeypatch):
    """A scan multiplies factors together, a loop never does: traces of 1e200 overflow any
    product of two, so a forced scan gives NaN (inf * 0) where the loop gives the reference's
    finite targets; the automatic choice sees that and keeps the loop."""
    T = 64
    zeros = np.zeros((T, 1))
    r = zeros.copy()
    r[0] = 1.0
    no = np.zeros((T, 1), dtype=bool)
    traces = np.full((T, 1), 1e200)
    args = (r, zeros, zeros, no, no, traces)
    want = N.q_trace(*args, gamma=1.0, lam=1.0)
    assert np.isfinite(want).all() and want[0, 0] == 1.0
    factors = torch.full((T, 1), 1e200, dtype=torch.float64)
    assert E._safe_span(factors) == 1
    for form in ("doubling", "chunked"):  # the check can fail
        assert not np.isfinite(_scan(r, factors.numpy(), form)).all()
        monkeypatch.setattr(E, "_scan_form", lambda T, B, device_type, f=form: f)
        got = E.q_trace(*(torch.as_tensor(v) for v in args), gamma=1.0, lam=1.0)
        np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_large_factors_shorten_the_chunks(dtype, monkeypatch):
    """Factors up to 7 (2.8 bits each): products of T - 1 = 199 of them could overflow
    float32 (128 bits) but not float64 (1024); float32 doubling gives way to chunks (of
    ceil(sqrt(T)) = 15 < the safe span of 44 factors), float64 doubling runs; the results
    equal the loop's."""
    rng = np.random.default_rng(5)
    T = 200
    a = rng.normal(size=(T, 3))
    c = rng.uniform(0.5, 7.0, size=(T, 3)) * (rng.random((T, 3)) > 0.05)
    a_t, c_t = torch.tensor(a, dtype=dtype), torch.tensor(c, dtype=dtype)
    span = E._safe_span(c_t)
    bits, largest_bits = math.log2(torch.finfo(dtype).max) - 2, math.log2(c.max())
    assert span * largest_bits <= bits < (span + 1) * largest_bits  # the most that are safe
    assert (span < T - 1) == (dtype == torch.float32)
    assert E._safe_span(torch.tensor([[0.5], [1.0]], dtype=dtype)) is None
    assert E._safe_span(torch.tensor([[math.inf]], dtype=dtype)) == 0
    used = []
    real_chunked = E._scan_chunked
    monkeypatch.setattr(E, "_scan_chunked", lambda a, c, chunk=None: used.append(chunk)
                        or real_chunked(a, c, chunk))
    for form in ("doubling", "chunked"):
        monkeypatch.setattr(E, "_scan_form", lambda T, B, device_type, f=form: f)
        got = E._scan(a_t, c_t, bounded=False).numpy()
        want = _loop(a_t.numpy(), c_t.numpy())
        tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4)
        np.testing.assert_allclose(got, want, **tol)
    # float32: doubling (199 factors) gives way to chunks of 15 = ceil(sqrt(200)) <= 45;
    # float64: doubling is safe (199 <= 364) and runs itself
    assert used == ([15, 15] if dtype == torch.float32 else [15])


def test_finiteness_checks_on_tensors():
    """The input check reads a sum first (finite sum: every entry finite); a non-finite entry
    is still named, NaN under terminated is still fine, and finite entries whose float32 sum
    overflows are still accepted (the exact check decides)."""
    b = to_torch(inputs((6, 3), 3, p_done=0.4), torch.float32)
    term = b["terminated"]
    args = lambda **kw: [kw.get(k, b[k]) for k in ("rewards", "values", "next_values",
                                                   "terminated", "truncated")]
    for name, bad in (("rewards", math.nan), ("values", math.inf), ("next_values", -math.inf)):
        x = b[name].clone()
        x[~term] = torch.where(torch.arange(int((~term).sum())) == 2, bad, x[~term])
        with pytest.raises(ValueError, match=f"^{name}: contains NaN or inf"):
            E.gae(*args(**{name: x}), gamma=0.9, lam=0.9)
    nv = torch.where(term, math.nan, b["next_values"])
    assert torch.isfinite(E.gae(*args(next_values=nv), gamma=0.9, lam=0.9).advantages).all()
    huge = torch.full((6, 3), 3e38)
    assert not torch.isfinite(huge.sum())
    with pytest.raises(ValueError, match="^rewards: the estimator overflows float32"):
        E.gae(*args(rewards=huge), gamma=0.9, lam=0.9)  # accepted as input; the output is inf


def test_log_rho_checks_on_tensors():
    b = to_torch(inputs((6, 3), 4), torch.float32)
    state = [b[k] for k in ("rewards", "values", "next_values", "terminated", "truncated")]
    for bad in (math.nan, math.inf):
        lr = b["log_rhos"].clone()
        lr[3, 1] = bad
        with pytest.raises(ValueError, match="^log_rhos: contains NaN or \\+inf"):
            E.vtrace(*state, lr, gamma=0.9)
    lr = b["log_rhos"].clone()
    lr[3, 1] = -math.inf  # rho = 0: fine
    assert torch.isfinite(E.vtrace(*state, lr, gamma=0.9).value_targets).all()
    lr = torch.full((6, 3), 3e38)  # finite, but a float32 sum overflows: the exact check
    assert lr.sum() == math.inf
    out = E.vtrace(*state, lr, gamma=0.9)  # exp overflows, but every ratio is clipped: finite
    assert torch.isfinite(out.value_targets).all() and torch.isfinite(out.pg_advantages).all()


@pytest.mark.parametrize("shape", [(5, 0), (1, 0)], ids=str)
def test_no_streams(shape):
    """B = 0 (an empty batch) gives empty outputs, as in the reference, in every form."""
    b = inputs(shape, 0)
    compare(b, to_torch(b, torch.float64), torch.float64, "cpu")


# ---------------------------------------------------------------------------------------------
# CPU threads: a busy machine must not make a call collapse (issue 24)


def test_cpu_thread_choice(monkeypatch):
    monkeypatch.setattr(E, "_usable_cpus", lambda: 2)
    assert E._cpu_threads(10**7, 8) == 1  # at most 2 CPUs: always one thread
    monkeypatch.setattr(E, "_usable_cpus", lambda: 16)
    monkeypatch.setattr(E.os, "getloadavg", lambda: (4.0, 0.0, 0.0))
    assert E._cpu_threads(E.SINGLE_THREAD_MAX, 8) == 1  # small batch
    assert E._cpu_threads(E.SINGLE_THREAD_MAX + 1, 8) == 8  # 12 idle CPUs, torch set to 8
    monkeypatch.setattr(E.os, "getloadavg", lambda: (13.5, 0.0, 0.0))
    assert E._cpu_threads(10**7, 8) == 2  # 16 - 13.5 leaves 2 idle
    monkeypatch.setattr(E.os, "getloadavg", lambda: (40.0, 0.0, 0.0))
    assert E._cpu_threads(10**7, 8) == 1


def test_a_call_restores_torch_threads_and_runs_with_the_chosen_count(monkeypatch):
    seen = []
    real = E._state_value_trace

    def spy(*a, **kw):
        seen.append(torch.get_num_threads())
        return real(*a, **kw)

    monkeypatch.setattr(E, "_state_value_trace", spy)
    monkeypatch.setattr(E, "_cpu_threads", lambda n, have: 1)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        r = torch.ones(5, 3)
        f = torch.zeros(5, 3, dtype=torch.bool)
        out = E.gae(r, r, r, f, f, gamma=0.5, lam=1.0)
        assert seen == [1] and torch.get_num_threads() == 2
        # A_4 = 1 + 0.5 - 1 = 0.5 (the segment end), A_t = 0.5 + 0.5 A_{t+1}
        assert out.advantages[:, 0].tolist() == [0.96875, 0.9375, 0.875, 0.75, 0.5]
    finally:
        torch.set_num_threads(before)
