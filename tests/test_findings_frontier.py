"""The bias-variance frontier: dominated settings excluded, ties decided by the documented rounding
rule and then by name, so round-off never changes it (issue 22)."""

from __future__ import annotations

import numpy as np

from offpolicy.report import frontier, grid, render


def _names(points):
    return [p[0] for p in points]


def test_dominated_setting_is_excluded():
    # gae with a stale critic, garnet_small k = 4: the bias does not depend on lambda (equal in
    # exact arithmetic, here with different last bits), the variance grows with lambda, so only
    # lambda = 0 is on the frontier; lambda = 1 (listed by the old round-off ordering) is
    # dominated by every other setting.
    b2 = 0.025
    pts = [("gae lam=1", b2 * (1 - 2e-16), 0.457), ("gae lam=0.95", b2 * (1 + 1e-16), 0.311),
           ("gae lam=0.5", b2, 0.0542), ("gae lam=0", b2 * (1 + 3e-16), 0.0273)]
    assert _names(frontier.pareto(pts)) == ["gae lam=0"]


def test_strict_dominance_and_trade_off():
    # (1, 1) is dominated by (0.5, 1) (lower bias, same variance); (0.5, 1) and (0.1, 3) trade
    # bias against variance and both stay; (0.1, 4) is dominated by (0.1, 3).
    pts = [("a", 1.0, 1.0), ("b", 0.5, 1.0), ("c", 0.1, 3.0), ("d", 0.1, 4.0)]
    assert _names(frontier.pareto(pts)) == ["c", "b"]


def test_equal_points_are_both_kept_and_ordered_by_name():
    pts = [("z", 0.2, 0.3), ("a", 0.2 * (1 + 1e-15), 0.3), ("m", 0.5, 0.5)]
    assert _names(frontier.pareto(pts)) == ["a", "z"]


def test_round_off_zero_biases_tie():
    # every on-policy bias is 0 in exact arithmetic; float64 leaves 1e-33-sized squares whose
    # order is noise. Below the floor they are 0, so the lowest variance alone wins.
    pts = [("lam=1", 3e-33, 0.04), ("lam=0", 1e-32, 0.02), ("lam=0.5", 0.0, 0.03)]
    assert _names(frontier.pareto(pts)) == ["lam=0"]


def test_key_rounds_to_six_significant_digits():
    assert frontier.key(0.0250000000001) == 0.025
    assert frontier.key(1.2345649) == 1.23456
    assert frontier.key(-3e-21) == 0.0
    assert frontier.key(123456789.0) == 123457000.0


def test_frontier_is_invariant_under_round_off_perturbation():
    # a grid of settings with many exact ties (bias^2 in {0, 0.01, 0.04}, var in {0.1, 0.2})
    # and one trade-off point; perturbing every value by a relative 1e-13 (ten seeds) must give
    # the same frontier, worked out by hand: the zero-bias block's lowest variance "s00", then
    # nothing else (every other point has a larger bias and no smaller variance) except "t",
    # which has bias^2 0.04 > 0 but variance 0.05 < 0.1.
    base = [(f"s{i}{j}", b2, var) for i, b2 in enumerate((0.0, 0.01, 0.04))
            for j, var in enumerate((0.1, 0.2))] + [("t", 0.04, 0.05)]
    base[0] = ("s00", 1e-33, 0.1)
    expected = ["s00", "t"]
    assert _names(frontier.pareto(base)) == expected
    for seed in range(10):
        rng = np.random.default_rng(seed)
        eps = 1e-13 * rng.standard_normal((len(base), 2))
        pert = [(n, b2 * (1 + e[0]), v * (1 + e[1]))
                for (n, b2, v), e in zip(base, eps, strict=True)]
        rng.shuffle(pert)
        assert _names(frontier.pareto(pert)) == expected


def _record(mdp, lam, k, bias, var):
    cell = {"mdp": mdp, "estimator": "gae", "lam": lam, "n": None, "rho_clip": None,
            "c_clip": None, "stale": k, "T": grid.PROFILES["full"].show_T,
            "values": grid.PROFILES["full"].show_values}
    return {"cell": cell, "metrics": {"bias_target": bias, "var": var}}


def test_report_frontier_uses_the_rule():
    # render.frontier on report records: the same input in two orders, with round-off in the
    # bias, gives the same rows; the dominated lam = 1 row is absent.
    prof = grid.PROFILES["full"]
    recs = [_record("chain", 1.0, 4, 0.158113883008419, 0.457),
            _record("chain", 0.0, 4, 0.158113883008418, 0.0273),
            _record("chain", 0.5, 4, 0.158113883008420, 0.0542),
            _record("garnet_small", 0.0, 4, 0.2, 0.5), _record("garnet_small", 1.0, 4, 0.1, 0.9)]
    a = render.frontier(recs, prof)
    b = render.frontier(list(reversed(recs)), prof)
    assert a == b
    assert [(r["mdp"], r["setting"]) for r in a] == [
        ("garnet_small", "gae lam=1"), ("garnet_small", "gae lam=0"), ("chain", "gae lam=0")]
