"""estimators.losses: the numpy reference on hand-worked inputs, and torch's autograd against
the reference's closed-form derivatives."""

import numpy as np
import pytest
import torch

from estimators.losses import numpy as L
from estimators.losses import torch as TL

LOG15 = np.log(1.5)


@pytest.mark.parametrize("adv, loss, grad", [
    # r = 1.5, eps = 0.2: A > 0 -> the clipped branch 1.2 * 2 = 2.4 < 3 is the min, no gradient
    (2.0, -2.4, 0.0),
    # A < 0 -> the unclipped branch -3 < -2.4 is the min: d(-r A)/dlogp = -r A = 3
    (-2.0, 3.0, 3.0),
])
def test_ppo_clip_hand_cases(adv, loss, grad):
    out = L.ppo_clip([LOG15], [0.0], [adv], clip_coef=0.2)
    assert out.loss == pytest.approx(loss, abs=1e-12)
    assert out.grad_logp[0] == pytest.approx(grad, abs=1e-12)


def test_ppo_clip_inside_the_range_is_the_plain_surrogate():
    # r = 1 (theta = theta_old): loss -mean(A), gradient -A / n
    out = L.ppo_clip([0.0, 0.0], [0.0, 0.0], [2.0, -1.0])
    assert out.loss == pytest.approx(-0.5)
    np.testing.assert_allclose(out.grad_logp, [-1.0, 0.5])


def test_aggregation_weights_by_hand():
    mask = np.array([[1, 1], [1, 0]], bool)  # column 0: 2 tokens, column 1: 1 token
    np.testing.assert_allclose(L.aggregation_weights((2, 2), mask=mask), [[1 / 3, 1 / 3],
                                                                         [1 / 3, 0]])
    np.testing.assert_allclose(L.aggregation_weights((2, 2), mask=mask, aggregation="seq_mean"),
                               [[1 / 4, 1 / 2], [1 / 4, 0]])
    np.testing.assert_allclose(
        L.aggregation_weights((2, 2), mask=mask, aggregation="constant", constant=8.0),
        [[1 / 8, 1 / 8], [1 / 8, 0]])


def test_impala_pg_by_hand():
    out = L.impala_pg([np.log(0.5), np.log(0.25)], [2.0, -4.0], is_weights=[1.0, 0.5])
    # -(1/2)(1 * 2 * log .5 + .5 * -4 * log .25)
    assert out.loss == pytest.approx(-(2 * np.log(0.5) - 2 * np.log(0.25)) / 2)
    np.testing.assert_allclose(out.grad_logp, [-1.0, 1.0])


def test_clipped_value_loss_by_hand():
    # V = 1.5, V_old = 1, G = 0, eps = 0.2: plain 2.25, clipped (1.2)^2 = 1.44 -> plain wins
    out = L.clipped_value_loss([1.5], [1.0], [0.0], clip_coef=0.2)
    assert out.loss == pytest.approx(0.5 * 2.25)
    assert out.grad_values[0] == pytest.approx(1.5)
    # V = 0.5, V_old = 1, G = 2: plain 2.25, clipped (0.8 - 2)^2 = 1.44 -> plain again;
    # V = 1.5, V_old = 1, G = 3: plain 2.25, clipped (1.2 - 3)^2 = 3.24 -> clipped, outside: 0
    out = L.clipped_value_loss([1.5], [1.0], [3.0], clip_coef=0.2)
    assert out.loss == pytest.approx(0.5 * 3.24)
    assert out.grad_values[0] == 0.0


def test_normalize_matches_cleanrl_formula():
    a = np.array([1.0, 2.0, 4.0])
    expected = (a - a.mean()) / (a.std(ddof=1) + 1e-8)
    np.testing.assert_allclose(L.normalize_advantages(a), expected)


@pytest.mark.parametrize("kwargs, match", [
    ({"aggregation": "sum"}, "aggregation"),
    ({"aggregation": "constant"}, "constant"),
    ({"clip_coef": -0.1}, "clip_coef"),
    ({"mask": np.zeros(3, bool)}, "mask"),
])
def test_bad_arguments_name_themselves(kwargs, match):
    with pytest.raises(ValueError, match=match):
        L.ppo_clip(np.zeros(3), np.zeros(3), np.ones(3), **kwargs)


def test_shape_mismatch_names_the_argument():
    with pytest.raises(ValueError, match="advantages"):
        L.ppo_clip(np.zeros(3), np.zeros(3), np.ones(4))


CASES = [
    ("ppo_clip", {}), ("ppo_clip", {"normalize": True}),
    ("ppo_clip", {"aggregation": "seq_mean"}), ("ppo_clip", {"aggregation": "constant",
                                                             "constant": 7.0}),
    ("prox_clip", {"is_weights": "w"}), ("impala", {}), ("impala", {"is_weights": "w",
                                                                    "normalize": True}),
]


@pytest.mark.parametrize("name, kwargs", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_torch_autograd_equals_the_reference_derivative(name, kwargs, seed):
    rng = np.random.default_rng(seed)
    shape = (5, 3)
    logp = np.log(rng.uniform(0.05, 1.0, shape))
    ref = logp + rng.choice([0.0, 0.1, -0.1, 0.5, -0.5], shape)  # ties at r = 1 included
    adv = rng.normal(size=shape)
    mask = rng.uniform(size=shape) > 0.2
    mask[0] = True
    kw = dict(kwargs, mask=mask)
    if kw.get("is_weights") == "w":
        kw["is_weights"] = rng.uniform(0.2, 1.0, shape)
    t = torch.tensor(logp, requires_grad=True)
    if name == "impala":
        out = L.impala_pg(logp, adv, **kw)
        loss = TL.impala_pg(t, adv, **kw)
    else:
        out = getattr(L, name)(logp, ref, adv, **kw)
        loss = getattr(TL, name)(t, ref, adv, **kw)
    loss.backward()
    assert loss.item() == pytest.approx(out.loss, rel=1e-12, abs=1e-14)
    np.testing.assert_allclose(t.grad.numpy(), out.grad_logp, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["squared_value_loss", "clipped_value_loss", "td_loss"])
def test_torch_value_losses_match(name):
    rng = np.random.default_rng(4)
    v, v_old, g = rng.normal(size=(3, 6, 2))
    t = torch.tensor(v, requires_grad=True)
    if name == "clipped_value_loss":
        out = L.clipped_value_loss(v, v_old, g, clip_coef=0.3)
        loss = TL.clipped_value_loss(t, v_old, g, clip_coef=0.3)
    else:
        out = getattr(L, name)(v, g)
        loss = getattr(TL, name)(t, g)
    loss.backward()
    assert loss.item() == pytest.approx(out.loss, rel=1e-12)
    np.testing.assert_allclose(t.grad.numpy(), out.grad_values, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kwargs, match", [
    ({"aggregation": "sum"}, "aggregation"),
    ({"aggregation": "constant"}, "constant"),
    ({"mask": np.zeros(3, bool)}, "mask"),
    ({"mask": torch.zeros(2, dtype=torch.bool)}, "mask"),
])
def test_torch_bad_arguments_name_themselves_as_the_reference_does(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TL.ppo_clip(torch.zeros(3, requires_grad=True), np.zeros(3), np.ones(3), **kwargs)
