"""Specifications that kill mutmut mutants surviving the sampled run (reports/mutation/).

Each test names the mutant it was written against; the expected values are worked out by
hand from the docstrings, not read from the code's output."""

import numpy as np
import pytest

from estimators.losses import numpy as losses_np
from offpolicy import policies
from offpolicy._cli import one_line


def test_one_line_escapes_control_characters_whole():
    # offpolicy._cli.x_one_line__mutmut_11 (repr(c)[1:-2] drops the escape's last character)
    assert one_line("a\nb\x00c\r") == "a\\nb\\x00c\\r"


def test_total_variation_reduces_with_the_weights():
    # offpolicy.policies.x_total_variation__mutmut_16 (weights dropped: max over states)
    p = np.array([[0.5, 0.5], [1.0, 0.0]])
    q = np.array([[0.5, 0.5], [0.0, 1.0]])
    # per state TV = 0 and 1; all weight on state 0 gives 0, unweighted (max) would give 1
    assert policies.total_variation(p, q, weights=[1.0, 0.0]) == 0.0
    assert policies.total_variation(p, q, weights=[1.0, 1.0]) == pytest.approx(0.5)


def test_clipped_surrogate_rejects_logp_ref_of_another_shape():
    # estimators.losses.numpy.x_clipped_surrogate__mutmut_18 (logp_ref's shape unchecked: a
    # [T] reference would broadcast against [T, B] log-probabilities)
    with pytest.raises(ValueError, match=r"^logp_ref: shape \(3,\) differs from logp's \(3, 2\)"):
        losses_np.clipped_surrogate(np.zeros((3, 2)), np.zeros(3), np.ones((3, 2)))


def test_torch_losses_name_the_bad_argument():
    torch = pytest.importorskip("torch")
    from estimators.losses import torch as losses_t

    logp = torch.zeros(3, 2, dtype=torch.float64)
    # estimators.losses.torch.x__clipped_surrogate__mutmut_30 (the name in the message)
    with pytest.raises(ValueError, match=r"^is_weights: shape \(3,\) differs"):
        losses_t.prox_clip(logp, torch.zeros(3, 2, dtype=torch.float64),
                           torch.ones(3, 2, dtype=torch.float64), is_weights=torch.ones(3))
    # estimators.losses.torch.x__normalize__mutmut_7 (the message)
    with pytest.raises(ValueError, match=r"^advantages: normalising needs at least 2 counted"):
        losses_t.impala_pg(torch.zeros(1, dtype=torch.float64),
                           torch.ones(1, dtype=torch.float64), normalize=True)


def test_harness_check_gamma_rejects_a_discount_outside_the_unit_interval():
    # offpolicy.harness.measure.x_check_gamma__mutmut_1 (g = None: nothing is checked)
    from types import SimpleNamespace

    from offpolicy.harness import measure

    measure.check_gamma(SimpleNamespace(gamma=None))  # None: the MDP's own discount
    measure.check_gamma(SimpleNamespace(gamma=1.0))
    for bad in (0.0, 1.5, -0.1, "0.9"):
        with pytest.raises(ValueError, match="gamma"):
            measure.check_gamma(SimpleNamespace(gamma=bad))


def test_monte_carlo_standard_errors_are_the_sample_std_over_root_n():
    """The report's Monte Carlo columns: mc_bias_mean_se = std(e, ddof=1)/sqrt(n), which the
    other two columns determine exactly (var = (mean(e^2) - mean(e)^2) n/(n-1)); a standard
    error scaled the wrong way (times sqrt(n)) would widen every tolerance it scales."""
    import math

    from offpolicy.report import compute, grid, montecarlo

    cell = next(c for c in grid.cells(grid.PROFILES["quick"], ["chain"], ["gae"]) if c["mc"])
    su = compute.setup(cell["mdp"], cell["stale"], cell["values"], 0)
    metrics, tgt = compute.exact_metrics(cell, su)
    n = 400
    out = montecarlo.mc_metrics(cell, su, tgt, 0, n, metrics)
    var = (out["mc_mse"] - out["mc_bias_mean"] ** 2) * n / (n - 1)
    assert out["mc_bias_mean_se"] == pytest.approx(math.sqrt(var / n), rel=1e-9)
    assert out["mc_bias_mean_se"] < math.sqrt(var)  # divided by sqrt(n), not multiplied
    # the MSE column's: four times the samples, half the standard error (the sample std of
    # e^2 moves little between the two fixed-seed runs; a sqrt(n) factor the wrong way
    # would make the ratio 1/2)
    big = montecarlo.mc_metrics(cell, su, tgt, 0, 4 * n, metrics)
    assert 1.5 < out["mc_mse_se"] / big["mc_mse_se"] < 2.7
