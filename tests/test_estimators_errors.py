"""Every bad-input case raises ValueError/TypeError whose message starts with the argument's
name, in every backend (numpy, torch, Taichi); and the inputs the contract allows are accepted."""

import math

import numpy as np
import pytest
import torch

import estimators.numpy as N
import estimators.taichi as X
import estimators.torch as E
from offpolicy import registry

T, B, H = 4, 2, 3
BACKENDS = {"numpy": N, "torch": E, "taichi": X}

# estimator -> (array arguments, scalar keyword arguments)
# keyword values each test passes; the array inputs, in call order, are the registry's
PARAMS = {
    "gae": dict(gamma=0.9, lam=0.9),
    "vtrace": dict(gamma=0.9, lam=0.9, rho_clip=1.0, c_clip=1.0, pg_rho_clip=1.0),
    "puff_advantage": dict(gamma=0.9, lam=0.9, rho_clip=1.0, c_clip=1.0),
    "per_decision_is": dict(gamma=0.9, lam=0.9),
    "nstep_returns": dict(gamma=0.9, n=2),
    "q_trace": dict(gamma=0.9, lam=0.9),
    "retrace": dict(gamma=0.9, lam=0.9),
    "tree_backup": dict(gamma=0.9, lam=0.9),
    "q_lambda": dict(gamma=0.9, lam=0.9),
    "importance_sampling_q": dict(gamma=0.9, lam=0.9),
    "p3o_advantage": dict(batch_reward_std=1.0, normalize="max"),
}
SIGNATURES = {name: (" ".join(registry.ESTIMATORS[name].inputs), PARAMS[name])
              for name in registry.ESTIMATORS}


def valid_array(name, t=T):
    rng = np.random.default_rng(0)
    if name in ("terminated", "truncated"):
        flags = np.zeros((t, B), bool)
        if name == "terminated" and t > 1:
            flags[1, 0] = True
        return flags
    if name in ("reward_mean", "reward_std"):
        return rng.uniform(0.5, 2.0, size=(t, B, H))
    if name in ("traces", "target_probs_taken"):
        return rng.uniform(0.0, 1.0, size=(t, B))
    return rng.normal(size=(t, B))


def with_value(name, index, value):
    x = valid_array(name).astype(float)
    x[index] = value
    return x


FLOATS = ("rewards", "values", "q_taken", "reward_mean")
NOT_UNDER_TERMINATED = ("next_values", "next_expected_q")


def array_cases(name):
    """(case id, replacement array, exception type) for one array argument."""
    cases = [("complex", valid_array(name).astype(complex), TypeError)]
    wrong = valid_array(name)
    cases.append(("shape", wrong[:, :1] if name != "rewards" else wrong[..., None], ValueError))
    if name in FLOATS + NOT_UNDER_TERMINATED:
        cases += [("nan", with_value(name, (2, 1), math.nan), ValueError),
                  ("inf", with_value(name, (0, 0), -math.inf), ValueError)]
    if name in ("terminated", "truncated"):
        cases += [("two", with_value(name, (0, 0), 2.0), ValueError),
                  ("half", with_value(name, (0, 0), 0.5), ValueError),
                  ("minus_one", with_value(name, (3, 1), -1), ValueError)]
    if name == "log_rhos":
        cases += [("plus_inf", with_value(name, (0, 1), math.inf), ValueError),
                  ("nan", with_value(name, (3, 0), math.nan), ValueError)]
    if name in ("traces", "target_probs_taken"):
        cases += [("negative", with_value(name, (0, 0), -0.1), ValueError),
                  ("nan", with_value(name, (0, 0), math.nan), ValueError)]
    if name == "target_probs_taken":
        cases.append(("above_one", with_value(name, (0, 0), 1.5), ValueError))
    if name == "reward_std":
        cases += [("zero", with_value(name, (0, 0, 1), 0.0), ValueError),
                  ("negative", with_value(name, (1, 1, 2), -1.0), ValueError),
                  ("nan", with_value(name, (0, 0, 0), math.nan), ValueError)]
    if name == "reward_mean":
        cases.append(("no_H", valid_array("rewards"), ValueError))
    return cases


V, TE = ValueError, TypeError
SCALAR_CASES = {
    "gamma": [(-0.1, V), (1.1, V), (math.nan, V), ("0.9", TE), (None, TE), ([0.9], TE)],
    "lam": [(-0.5, V), (1.5, V), (math.nan, V), ("1", TE)],
    "rho_clip": [(-1.0, V), (math.nan, V), ("1", TE)],
    "c_clip": [(-0.01, V), (math.nan, V)],
    "pg_rho_clip": [(-1.0, V), (math.nan, V)],
    "n": [(0, V), (-3, V), (2.5, TE), (2.0, TE), (True, TE), ("2", TE), (None, TE)],
    "batch_reward_std": [(0.0, V), (-1.0, V), (math.nan, V), ("1", TE)],
    "normalize": [("mean", V), (None, V), ("MAX", V)],
}


def build_cases():
    cases = []
    for fn, (arrays, scalars) in SIGNATURES.items():
        for name in arrays.split():
            for case, value, exc in array_cases(name):
                cases.append(pytest.param(fn, {name: value}, exc, name, id=f"{fn}-{name}-{case}"))
        for name, values in SCALAR_CASES.items():
            if name in scalars:
                for value, exc in values:
                    cases.append(pytest.param(fn, {name: value}, exc, name,
                                              id=f"{fn}-{name}-{value!r}"))
        empty = {k: valid_array(k, t=0) for k in arrays.split()}
        cases.append(pytest.param(fn, empty, ValueError, "rewards", id=f"{fn}-T0"))
    return cases


def call(backend, fn, overrides):
    arrays, scalars = SIGNATURES[fn]
    kwargs = {k: valid_array(k) for k in arrays.split()}
    kwargs.update(scalars)
    kwargs.update(overrides)
    if backend == "torch":
        kwargs = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v
                  for k, v in kwargs.items()}
    return getattr(BACKENDS[backend], fn)(**kwargs)


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("fn, overrides, exc, name", build_cases())
def test_bad_input_names_the_argument(backend, fn, overrides, exc, name):
    with pytest.raises(exc, match=rf"^{name}: "):
        call(backend, fn, overrides)


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("fn", list(SIGNATURES))
def test_the_valid_base_case_is_accepted(backend, fn):
    call(backend, fn, {})


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_allowed_edge_inputs_are_accepted(backend):
    """-inf log_rhos (rho = 0), 0/1 integer and float flags, infinite clips, reward_std = inf,
    batch_reward_std = inf, NaN next values under terminated, gamma/lam at 0 and 1, lists."""
    term = valid_array("terminated")
    out = call(backend, "vtrace", dict(
        log_rhos=with_value("log_rhos", (0, 0), -math.inf),
        terminated=term.astype(np.int64), truncated=valid_array("truncated").astype(np.float32),
        next_values=np.where(term, math.nan, valid_array("next_values")),
        rho_clip=math.inf, c_clip=math.inf, pg_rho_clip=0.0, gamma=1.0, lam=0.0))
    assert all(np.isfinite(np.asarray(x)).all() for x in out)
    out = call(backend, "p3o_advantage", dict(
        reward_std=with_value("reward_std", (0, 0, 0), math.inf), batch_reward_std=math.inf,
        normalize="none"))
    assert np.isfinite(np.asarray(out)).all()
    out = BACKENDS[backend].gae([1.0, 2.0], [0, 0], [1, 1], [False, True], [0, 0],
                                            gamma=np.float32(0.5), lam=torch.tensor(1.0))
    np.testing.assert_allclose(np.asarray(out.advantages), [2.5, 2.0])


# non-finite values where they are read, at the places a kernel might skip: a truncated step,
# the segment's last step, a terminated step (for values/rewards), a step with gamma_t = 0;
# every backend and every Taichi kernel form (float32 and float64)
READ_CASES = [
    ("next_values", (2, 1), math.nan, "truncated"),
    ("next_values", (3, 0), math.inf, "last step"),
    ("next_values", (2, 0), -math.inf, "gamma_t = 0"),
    ("values", (3, 1), math.nan, "last step"),
    ("values", (1, 0), math.nan, "terminated step"),
    ("rewards", (3, 1), math.inf, "last step"),
    ("rewards", (1, 0), -math.inf, "terminated step"),
    ("q_taken", (0, 0), math.nan, "first step"),
    ("next_expected_q", (2, 1), math.inf, "truncated"),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("name, index, value, where", READ_CASES,
                         ids=[f"{c[0]}-{c[3]}" for c in READ_CASES])
def test_non_finite_where_read_raises_in_every_form(backend, name, index, value, where, dtype):
    forms = ("vec4", "rows", "naive", "chunked") if backend == "taichi" else (None,)
    truncated = np.zeros((T, B), bool)
    truncated[2, 1] = True
    gamma = np.full((T, 1), 0.9)
    gamma[2] = 0.0
    for fn, (arrays, scalars) in SIGNATURES.items():
        if name not in arrays.split():
            continue
        bad = with_value(name, index, value)
        for form in forms:
            kw = {k: valid_array(k) for k in arrays.split()}
            kw.update({k: v.astype(dtype) for k, v in kw.items() if v.dtype.kind == "f"})
            kw.update(scalars, truncated=truncated, **{name: bad.astype(dtype)})
            if "gamma" in kw:
                kw["gamma"] = gamma
            if backend == "torch":
                kw = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v
                      for k, v in kw.items()}
            with X._form(form), pytest.raises(ValueError, match=rf"^{name}: contains NaN or "
                                                                rf"inf"):
                getattr(BACKENDS[backend], fn)(**kw)
