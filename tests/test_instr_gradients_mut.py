"""Mutation-guided tests of the gradients group (issue 20, group ``gradients`` of
.ci/mutation_score): the exact gradient moments' defaults and their ``proximal`` argument.

Expected figures are worked out by hand on a one-state MDP (every segment is the same, so the
expected update is one deterministic number), or follow from the documented definitions of
the losses (an identity between two of them), never from the code's output.
"""

import numpy as np
import pytest

from offpolicy import gradients
from offpolicy.mdp import TabularMDP, garnet


def _loop():
    """One state, one action, reward 1, back to itself; gamma 0.5 (V^pi = 2)."""
    return TabularMDP([[[1.0]]], [[1.0]], 0.5)


@pytest.mark.parametrize("lam,want", [(None, 1.25), (1.0, 1.25), (0.0, 1.0), (0.5, 1.125)])
def test_value_gradient_default_lam_is_one(lam, want):
    """Critic V = 0 on the loop, horizon 2, GAE's returns as targets, loss
    0.5 (V - G_t)^2 aggregated by 1/horizon: g_hat = (G_0 + G_1) / 2 with
    G_1 = 1 + 0.5 V = 1 and G_0 = 1 + 0.5 ((1 - lam) V + lam G_1) = 1 + 0.5 lam.
    lam = 1 (the default): 1.25; lam = 0: 1.0; lam = 0.5: 1.125. Every segment is the same:
    variance 0."""
    kw = {} if lam is None else {"lam": lam}
    one = np.ones((1, 1))
    g = gradients.exact_value_gradient_moments(_loop(), "gae", target=one, behaviour=one,
                                               horizon=2, values=[0.0], **kw)
    np.testing.assert_allclose(g.mean, [want], rtol=0, atol=1e-15)
    assert g.total_variance == pytest.approx(0.0, abs=1e-24)


def test_value_gradient_default_lam_matches_for_a_q_trace():
    """Retrace on the loop with Q = 0, one action (pi = mu = 1, traces c = lam): targets
    G_1 = 1 + 0.5 * 0 = 1, G_0 = 1 + 0.5 (E Q + c (G_1 - Q)) = 1 + 0.5 lam. Default lam = 1:
    g_hat = (1.5 + 1) / 2 = 1.25."""
    one = np.ones((1, 1))
    g = gradients.exact_value_gradient_moments(_loop(), "retrace", target=one, behaviour=one,
                                               horizon=2, q=[[0.0]])
    np.testing.assert_allclose(g.mean, [[1.25]], rtol=0, atol=1e-15)


def _garnet():
    return garnet(3, 2, 2, gamma=0.8, seed=5)


PI = np.array([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]])
MU = np.array([[0.4, 0.6], [0.5, 0.5], [0.9, 0.1]])


def test_prox_clip_with_the_behaviour_as_proximal_is_ppo_clip():
    """prox_clip: r = pi / proximal and, for GAE, weight min(pg_rho_clip, proximal / mu); with
    proximal = mu the weight is 1 and r = pi / mu: ppo_clip's loss, term for term."""
    m = _garnet()
    ppo = gradients.exact_gradient_moments(m, "ppo_clip", "gae", target=PI, behaviour=MU,
                                           horizon=2, lam=0.9)
    prox = gradients.exact_gradient_moments(m, "prox_clip", "gae", target=PI, behaviour=MU,
                                            proximal=MU, horizon=2, lam=0.9)
    np.testing.assert_allclose(prox.mean, ppo.mean, rtol=1e-12, atol=1e-15)
    assert prox.total_variance == pytest.approx(ppo.total_variance, rel=1e-12)


def test_prox_clip_default_proximal_is_the_target():
    """Documented default: proximal = target. Passing the target explicitly gives the same
    moments; passing the behaviour (above: ppo_clip's) gives different ones here."""
    m = _garnet()
    kw = dict(target=PI, behaviour=MU, horizon=2, lam=0.9)
    default = gradients.exact_gradient_moments(m, "prox_clip", "gae", **kw)
    explicit = gradients.exact_gradient_moments(m, "prox_clip", "gae", proximal=PI.tolist(),
                                                **kw)
    np.testing.assert_allclose(explicit.mean, default.mean, rtol=1e-12, atol=1e-15)
    other = gradients.exact_gradient_moments(m, "prox_clip", "gae", proximal=MU, **kw)
    assert np.abs(other.mean - default.mean).max() > 1e-6


def test_clipped_pg_bias_integer_policies_equal_their_float_copies():
    """A deterministic target written as integers is the same policy as its float copy."""
    pi = np.array([[1, 0], [0, 1]])
    mu = np.array([[0.5, 0.5], [0.25, 0.75]])
    adv = np.array([[1.0, -2.0], [0.5, 3.0]])
    for counted in ("once", "twice"):
        np.testing.assert_array_equal(
            gradients.clipped_pg_bias(pi, mu, adv, 1.0, counted=counted),
            gradients.clipped_pg_bias(pi.astype(float), mu, adv, 1.0, counted=counted))
    # by hand, "once", state 0: (pi - mu)^+ = (0.5, 0): coef (-0.5, 0), x = (-0.5, 0);
    # x - sum(x) pi = (-0.5 + 0.5, 0) = (0, 0). State 1: (pi - mu)^+ = (0, 0.25):
    # x = (0, -0.75); x - sum(x) pi = (0, -0.75 + 0.75) = (0, 0)
    np.testing.assert_allclose(gradients.clipped_pg_bias(pi, mu, adv, 1.0), 0.0, atol=1e-15)


# ---- seed-21 sample ------------------------------------------------------------------------------


def test_clipped_surrogate_checks_every_array_against_logp():
    from estimators.losses import numpy as L

    lp = np.zeros(2)
    with pytest.raises(ValueError, match=r"^advantages: shape \(3,\) differs from logp's \(2,\)"):
        L.clipped_surrogate(lp, lp, np.zeros(3))
    # a [1] weight would broadcast silently: it must be refused, naming is_weights
    with pytest.raises(ValueError, match=r"^is_weights: shape \(1,\) differs from logp's \(2,\)"):
        L.clipped_surrogate(lp, lp, np.ones(2), is_weights=np.ones(1))
    with pytest.raises(TypeError, match="^advantages: expected a numeric array"):
        L.clipped_surrogate(lp, lp, ["a", "b"])


def test_clipped_value_loss_refuses_targets_of_another_shape():
    from estimators.losses import numpy as L

    v = np.zeros(2)
    with pytest.raises(ValueError, match=r"^targets: shape \(1,\) differs from logp's \(2,\)"):
        L.clipped_value_loss(v, v, np.ones(1))


def test_torch_impala_pg_names_advantages_of_another_shape():
    import torch

    from estimators.losses import torch as LT

    lp = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match=r"^advantages: shape \(3,\) differs from logp's \(2,\)"):
        LT.impala_pg(lp, np.zeros(3))


def test_normalized_gradient_moments_at_horizon_one_is_one_clean_error():
    """Normalising one advantage per segment has no standard deviation: the documented
    ValueError, with no RuntimeWarning (ddof=1 on one sample) on the way."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"^normalize: needs horizon >= 2$"):
            gradients.exact_gradient_moments(_garnet(), "ppo_clip", "gae", target=PI,
                                             behaviour=MU, horizon=1, normalize=True)


@pytest.mark.parametrize("folder", ["reports/baseline", "reports/full"])
def test_committed_gradient_reports_are_the_rendering_of_their_tables(folder):
    """reports/*/gradients.md is what render writes from the committed gradients.csv, byte for
    byte (headings included): the report and its table cannot drift apart."""
    from pathlib import Path

    from offpolicy.report import gradients as G

    root = Path(__file__).resolve().parent.parent / folder
    rows = G.read(str(root / G.CSV))
    assert G.render(rows) == (root / "gradients.md").read_text()


# prox_clip: 0/0 ratios; impala: the loss value's 0 * log 0 warns (reports/mutation/groups/
# gradients.md, "Observations"); the moments compared here are not affected
@pytest.mark.filterwarnings("ignore:invalid value encountered in multiply:RuntimeWarning")
@pytest.mark.parametrize("loss", ["ppo_clip", "impala"])
def test_gradient_moments_of_an_integer_deterministic_target_equal_its_float_copy(loss):
    """A deterministic target written as integers (seed-20 note: ``np.asarray(target, float)``
    -> ``np.asarray(target)``) is the same policy as its float copy: same moments."""
    pi = np.array([[1, 0], [0, 1], [1, 0]])
    kw = dict(behaviour=MU, horizon=2, lam=0.9)
    a = gradients.exact_gradient_moments(_garnet(), loss, "gae", target=pi, **kw)
    b = gradients.exact_gradient_moments(_garnet(), loss, "gae", target=pi.astype(float), **kw)
    np.testing.assert_array_equal(a.mean, b.mean)
    assert a.total_variance == b.total_variance
