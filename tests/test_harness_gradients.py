"""The harness's per-update gradient measurement (issue 25): the tabular gradient helper on a
hand case, and its wiring into PPO's recorded rows."""

import numpy as np
import pytest
import torch

from offpolicy.harness import measure
from offpolicy.harness.ppo import PPOConfig, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_tabular_gradient_by_hand():
    # two samples in state 0 of 2, uniform logits; L = -mean(adv * logp):
    # -dL/dlogits = mean_i adv_i (e_{a_i} - pi) = ((1)(.5, -.5) + (2)(-.5, .5)) / 2
    logits = torch.zeros(2, 2)
    adv = torch.tensor([1.0, 2.0], dtype=torch.float64)
    g = measure.tabular_gradient(logits, [0, 1], [0, 0], lambda lp: -(adv * lp).mean(), 2)
    np.testing.assert_allclose(g, [[-0.25, 0.25], [0.0, 0.0]], atol=1e-15)


def test_cosine():
    assert measure.cosine(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(
        2 ** -0.5)
    assert np.isnan(measure.cosine(np.zeros(2), np.ones(2)))


def run(**kw):
    return train(PPOConfig(env="chain", total_steps=2048, seed=0, **kw))


def test_rows_carry_the_gradient_cosines_and_lagged_ppo_clip_points_away():
    fresh, stale = run(), run(lag=8, pg_loss="ppo_clip")
    for r in fresh["curve"] + stale["curve"]:
        assert -1.0 <= r["grad_cos"] <= 1.0 and -1.0 <= r["grad_cos_exact_adv"] <= 1.0
    # on-policy with exact advantages the batch update is a positive per-state multiple of
    # grad J up to sampling (T23): well aligned; the first update has no lag yet in both runs
    assert fresh["curve"][0]["grad_cos_exact_adv"] > 0.5
    assert fresh["curve"][0]["grad_cos"] == stale["curve"][0]["grad_cos"]
    # PPO's ratio against an 8-updates-old behaviour clips the improving samples away
    # (reports/full/gradients.md: negative cosines from k = 2 on the chain)
    assert stale["summary"]["grad_cos"] < fresh["summary"]["grad_cos"] - 0.3
