"""Gradients through the Taichi backend (issue 11): torch inputs that require grad get a graph.

The values come from the no-grad kernels (byte-identical to a call without grad); the
gradients are those of ``estimators.torch`` (the same masks, clips and conventions, see its
module docstring): checked with ``torch.autograd.gradcheck`` in float64 (finite differences
of the Taichi outputs themselves) and against ``estimators.torch``'s gradients to 1e-10.

Inputs: T = 8 steps, B = 2 streams, a termination and truncations inside the segment (the
truncated step's bootstrap value differs from values[t+1]), NaN next values under
termination (never read: zero gradient), log-ratios at least 0.1 away from every clip level
(the ``min`` kinks, where a finite difference is not a derivative).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("taichi")
X = pytest.importorskip("estimators.taichi")
from estimators import torch as TB  # noqa: E402

T, B = 8, 2
TOL = 1e-10


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    f = lambda: torch.tensor(rng.standard_normal((T, B)), dtype=torch.float64)
    term = torch.zeros((T, B), dtype=torch.bool)
    trunc = torch.zeros((T, B), dtype=torch.bool)
    term[3, 0] = True
    term[6, 1] = True
    trunc[2, 1] = True
    trunc[5, 0] = True
    nv = f()
    nv[term] = float("nan")  # never read: a zero gradient, no NaN anywhere
    # log-ratios away from the kink at 0 (clip level 1) and at log 2 ~ 0.69 (clip level 2)
    lr = torch.tensor(rng.choice([-1.2, -0.4, 0.25, 0.5, 1.1], size=(T, B)), dtype=torch.float64)
    lr = lr + torch.tensor(rng.uniform(-0.05, 0.05, (T, B)))
    return dict(r=f(), v=f(), nv=nv, te=term, tr=trunc, lr=lr, q=f(), nq=f(),
                probs=torch.tensor(rng.uniform(0.1, 0.9, (T, B))),
                traces=torch.tensor(rng.uniform(0.1, 1.9, (T, B))),
                gamma_t=torch.tensor(rng.uniform(0.5, 0.99, (T, 1))),
                lam_t=torch.tensor(rng.uniform(0.3, 0.95, (T, B))),
                mean=torch.tensor(rng.standard_normal((T, B, 3))),
                std=torch.tensor(rng.uniform(0.3, 1.5, (T, B, 3))))


STATE = {  # name: (keyword arguments, takes log-ratios)
    "gae": ({}, False),
    "vtrace": ({}, True),
    "vtrace_clips": ({"rho_clip": 2.0, "c_clip": 0.8, "pg_rho_clip": 1.5}, True),
    "puff_advantage": ({}, True),
    "per_decision_is": ({}, True),
}
ACTION = {  # name: the input holding the trace coefficient (None: c = 1)
    "q_trace": "traces",
    "retrace": "lr",
    "tree_backup": "probs",
    "q_lambda": None,
    "importance_sampling_q": "lr",
}


def _state_call(name, d, gamma, lam):
    """(fn(backend, *inputs) -> outputs, inputs) of a state-value estimator."""
    extra, log_ratio = STATE[name]
    fname = name.removesuffix("_clips")

    def fn(M, r, v, nv, g, l, *lr):
        out = getattr(M, fname)(r, v, nv, d["te"], d["tr"], *lr, gamma=g, lam=l, **extra)
        return tuple(out) if isinstance(out, tuple) else (out,)
    return fn, [d["r"], d["v"], d["nv"], gamma, lam] + ([d["lr"]] if log_ratio else [])


def _action_call(name, d, gamma, lam):
    key = ACTION[name]

    def fn(M, r, q, nq, g, l, *c):
        return (getattr(M, name)(r, q, nq, d["te"], d["tr"], *c, gamma=g, lam=l),)
    return fn, [d["r"], d["q"], d["nq"], gamma, lam] + ([d[key]] if key else [])


def _check(fn, inputs, gradcheck="full"):
    """gradcheck of the Taichi call ("full": every Jacobian entry; "fast": random projections;
    None: none), and its gradients equal to the torch backend's."""
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    if gradcheck:
        assert torch.autograd.gradcheck(lambda *xs: fn(X, *xs), leaves, eps=1e-6, atol=1e-7,
                                        rtol=1e-6, fast_mode=gradcheck == "fast")
    outs_x = fn(X, *leaves)
    outs_t = fn(TB, *leaves)
    rng = np.random.default_rng(1)
    weights = [torch.tensor(rng.standard_normal(tuple(o.shape))) for o in outs_t]
    for ox, ot in zip(outs_x, outs_t, strict=True):
        assert ox.requires_grad
        torch.testing.assert_close(ox, ot, atol=TOL, rtol=0)
    # a weighted sum of every output: each output's gradient takes part
    gx = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outs_x, weights, strict=True)),
                             leaves, allow_unused=True)
    gt = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outs_t, weights, strict=True)),
                             leaves, allow_unused=True)
    for x, y in zip(gx, gt, strict=True):
        assert x is not None and y is not None
        assert torch.isfinite(x).all()
        torch.testing.assert_close(x, y, atol=TOL, rtol=0)


def _gamma_lam(d, per_step):
    if per_step:
        return d["gamma_t"], d["lam_t"]
    return torch.tensor(0.93, dtype=torch.float64), torch.tensor(0.8, dtype=torch.float64)


@pytest.mark.parametrize("per_step", [False, True], ids=["scalar", "per_step"])
@pytest.mark.parametrize("name", list(STATE))
def test_state_value_gradients(name, per_step):
    d = _inputs()
    # every Jacobian entry with per-step gamma/lam; the scalar case projected (its gradients
    # are still compared entry by entry with the torch backend's)
    _check(*_state_call(name, d, *_gamma_lam(d, per_step)),
           gradcheck="full" if per_step else "fast")


@pytest.mark.parametrize("per_step", [False, True], ids=["scalar", "per_step"])
@pytest.mark.parametrize("name", list(ACTION))
def test_action_value_gradients(name, per_step):
    d = _inputs(2)
    _check(*_action_call(name, d, *_gamma_lam(d, per_step)),
           gradcheck="full" if per_step else "fast")


def test_windowed_gradients():
    d = _inputs(3)
    gamma = d["gamma_t"]
    _check(lambda M, r, nv, g: (M.nstep_returns(r, nv, d["te"], d["tr"], gamma=g, n=3),),
           [d["r"], d["nv"], gamma])
    _check(lambda M, r, mean, std: (M.p3o_advantage(r, mean, std, d["te"], d["tr"],
                                                    batch_reward_std=1.0, normalize="sum"),),
           [d["r"], d["mean"], d["std"]])


@pytest.mark.parametrize("form, threads", [("vec4", "serial"), ("vec4", "parallel"),
                                           ("rows", "serial"), ("rows", "parallel"),
                                           ("naive", None), ("chunked", None)])
def test_every_kernel_form_gives_the_same_gradients(form, threads):
    """The values come from the forced form, the adjoint scan from its matching form (serial
    or on the thread pool; ``naive``: the GPU kernel, one thread per stream)."""
    d = _inputs(4)
    gamma, lam = d["gamma_t"], torch.tensor(0.9, dtype=torch.float64)
    with X._form(form), X._threads(threads):
        for name in STATE:
            _check(*_state_call(name, d, gamma, lam), gradcheck=None)
        for name in ACTION:
            _check(*_action_call(name, d, gamma, lam), gradcheck=None)


def test_values_are_the_no_grad_values_byte_for_byte():
    d = _inputs(5)
    for dtype in (torch.float64, torch.float32):
        r, v, nv, lr = (d[k].to(dtype) for k in ("r", "v", "nv", "lr"))
        plain = X.vtrace(r, v, nv, d["te"], d["tr"], lr, gamma=0.9, lam=0.8)
        leaf = v.clone().requires_grad_(True)
        graded = X.vtrace(r, leaf, nv, d["te"], d["tr"], lr, gamma=0.9, lam=0.8)
        for a, b in zip(plain, graded, strict=True):
            assert b.requires_grad and b.dtype == dtype
            assert a.numpy().tobytes() == b.detach().numpy().tobytes()
        graded.value_targets.sum().backward()
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all()


def test_gradients_are_not_dropped():
    """A learned gamma (a 0-d tensor) with numpy rewards: the output is a tensor in its graph;
    under torch.no_grad no graph is built."""
    d = _inputs(6)
    gamma = torch.tensor(0.95, dtype=torch.float64, requires_grad=True)
    args = [d[k].numpy() for k in ("r", "v", "nv")] + [d["te"].numpy(), d["tr"].numpy()]
    out = X.gae(*args, gamma=gamma, lam=0.9)
    assert isinstance(out.advantages, torch.Tensor) and out.advantages.requires_grad
    out.advantages.sum().backward()
    want = torch.tensor(0.95, dtype=torch.float64, requires_grad=True)
    TB.gae(*args, gamma=want, lam=0.9).advantages.sum().backward()
    assert gamma.grad is not None and float(gamma.grad) != 0.0
    torch.testing.assert_close(gamma.grad, want.grad, atol=TOL, rtol=0)
    leaf = d["r"].clone().requires_grad_(True)
    with torch.no_grad():
        out = X.gae(leaf, d["v"], d["nv"], d["te"], d["tr"], gamma=0.9, lam=0.9)
    assert not out.advantages.requires_grad


def test_second_order_gradients_are_refused_not_wrong():
    """The adjoint scan is a kernel without a graph: asking for a gradient of the gradient
    raises instead of silently returning a partial one."""
    d = _inputs(7)
    lam = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    out = X.gae(d["r"], d["v"], d["nv"], d["te"], d["tr"], gamma=0.9, lam=lam)
    (g,) = torch.autograd.grad(out.advantages.sum(), lam, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g, lam)
