"""The torch backend against the numpy reference (docs/DESIGN.md section 4, theorem 12): values on
random inputs of many shapes, dtype and device kept, gradients (torch.autograd.gradcheck)."""

import math

import numpy as np
import pytest
import torch

import estimators.numpy as N
import estimators.torch as E

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


def test_gradcheck():
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


def test_nan_under_terminated_gets_a_zero_gradient():
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
