"""The conformance runner's own logic (issue 20), through its public behaviour
(``offpolicy.conform.check``): the NaN family's warning and failure paths, the shrinker's
window at the end of a segment, fixed parameters at the ends of their allowed range, and which
families a layout runs. Each function under test is the reference with one deliberate,
hand-made deviation, so the expected verdict follows from the deviation alone."""

from __future__ import annotations

import numpy as np
import pytest

import estimators.numpy as R
from offpolicy import conform

FAST = dict(examples=5, moments=False, output="advantages")


def gae_adv(rewards, values, next_values, terminated, truncated, *, gamma, lam):
    return R.gae(rewards, values, next_values, terminated, truncated, gamma=gamma,
                 lam=lam).advantages


def leaky(rewards, values, next_values, terminated, truncated, *, gamma, lam):
    """Right values, but the NaN stored after a termination reaches the output (0 * NaN)."""
    clean = np.where(terminated, 0.0, next_values)
    return gae_adv(rewards, values, clean, terminated, truncated, gamma=gamma, lam=lam) \
        + 0.0 * next_values * terminated


def raising(rewards, values, next_values, terminated, truncated, *, gamma, lam):
    """Right values, but refuses any NaN input (it never reads the value after a termination)."""
    if np.isnan(next_values).any():
        raise ValueError("NaN in next_values")
    return gae_adv(rewards, values, next_values, terminated, truncated, gamma=gamma, lam=lam)


def test_a_correct_function_passes_the_nan_family_without_warning():
    rep = conform.check(gae_adv, "gae", **FAST)
    case = rep.case("nan_under_terminated")
    assert rep.ok and case.verdict == "pass" and not rep.warnings
    assert case.reason == "5 examples: NaN after a termination never reaches the output"


@pytest.mark.parametrize("fn,what", [(leaky, "reached the output in 5 examples"),
                                     (raising, "made the function raise in 5 examples")])
def test_nan_reaching_the_output_or_a_raise_is_a_warning_by_default(fn, what):
    rep = conform.check(fn, "gae", **FAST)
    case = rep.case("nan_under_terminated")
    assert rep.ok and case.verdict == "pass"
    assert case.reason.startswith("warning: NaN in the value after a termination")
    assert what in case.reason and "(a failure with strict_nan=True)" in case.reason
    assert rep.warnings == [case.reason[len("warning: "):]]
    # every other family agrees: the deviation only shows with NaN under a termination
    assert [c.name for c in rep.cases if c.verdict == "fail"] == []


@pytest.mark.parametrize("fn", [leaky, raising])
def test_nan_reaching_the_output_or_a_raise_fails_with_strict_nan(fn):
    rep = conform.check(fn, "gae", strict_nan=True, **FAST)
    assert not rep.ok
    assert rep.failed == ["nan_under_terminated"]
    assert rep.case("nan_under_terminated").verdict == "fail"
    assert rep.counterexample is not None
    assert rep.counterexample.family == "nan_under_terminated"


def test_a_function_nonfinite_everywhere_is_no_nan_warning():
    """NaN in every output is a failure of every family, not a NaN-handling warning."""
    def nan_everywhere(rewards, values, next_values, terminated, truncated, *, gamma, lam):
        return np.full(np.shape(rewards), np.nan)

    rep = conform.check(nan_everywhere, "gae", **FAST)
    assert not rep.ok and not rep.warnings
    assert "no_dones" in rep.failed


def rows_gae(rewards, values, *, gamma, lam):
    """GAE on single-episode rows [B, T] (each row terminates after its last column)."""
    r, v = np.asarray(rewards, float).T, np.asarray(values, float).T
    nv = np.concatenate([v[1:], np.zeros_like(v[:1])])
    term = np.zeros(r.shape, bool)
    term[-1] = True
    return gae_adv(r, v, nv, term, np.zeros_like(term), gamma=gamma, lam=lam).T


def rows_gae_wrong_at_the_end(rewards, values, *, gamma, lam):
    """One deviation: the terminal column's advantage is off by 1."""
    out = rows_gae(rewards, values, gamma=gamma, lam=lam).copy()
    out[:, -1] += 1.0
    return out


def test_the_shrinker_keeps_a_window_that_ends_at_the_segment_end():
    """In single-episode rows only windows ending at the terminal column are valid segments,
    and the deviation is at that column: the smallest failing case is the one-step window at
    the end (a shrinker that never tries a window ending at T-1 keeps the whole row)."""
    assert conform.check(rows_gae, "gae", layout="single_episode_rows", examples=5,
                         moments=False, output="advantages").ok
    rep = conform.check(rows_gae_wrong_at_the_end, "gae", layout="single_episode_rows",
                        examples=5, moments=False, output="advantages")
    ce = rep.counterexample
    assert not rep.ok and ce is not None
    assert ce.inputs["rewards"].shape == (1, 1) and ce.inputs["terminated"][0, 0]
    want = ce.inputs["rewards"][0, 0] - ce.inputs["values"][0, 0]
    np.testing.assert_allclose(np.asarray(ce.expected).reshape(-1), [want], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(ce.got).reshape(-1), [want + 1.0], rtol=1e-12)


def wrong_at_first_step(rewards, values, next_values, terminated, truncated, *, gamma, lam):
    out = gae_adv(rewards, values, next_values, terminated, truncated, gamma=gamma,
                  lam=lam).copy()
    out[0] = out[0] + np.where(np.asarray(terminated[0], bool), 1.0, 0.0)
    return out


def test_the_shrinker_narrows_a_first_step_deviation_to_one_step():
    """(A window starting at t = 0 is one of several that show this deviation: other
    terminations inside give windows starting there, so this pins the result, not that
    window.)"""
    rep = conform.check(wrong_at_first_step, "gae", examples=10, moments=False,
                        output="advantages")
    ce = rep.counterexample
    assert not rep.ok and ce is not None
    assert ce.inputs["rewards"].shape == (1, 1) and ce.inputs["terminated"][0, 0]


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_fixed_lambda_at_the_ends_of_its_range_is_passed_as_fixed(lam):
    def hard_coded(rewards, values, next_values, terminated, truncated, *, gamma):
        return gae_adv(rewards, values, next_values, terminated, truncated, gamma=gamma,
                       lam=lam)

    rep = conform.check(hard_coded, "gae", lam=lam, **FAST)
    assert rep.ok, rep
    other = conform.check(hard_coded, "gae", lam=1.0 - lam, **FAST)
    assert not other.ok and other.counterexample.params["lam"] == 1.0 - lam


@pytest.mark.parametrize("gamma", [0.0, 1.0])
def test_fixed_gamma_at_the_ends_of_its_range_is_accepted(gamma):
    def hard_coded(rewards, values, next_values, terminated, truncated, *, lam):
        return gae_adv(rewards, values, next_values, terminated, truncated, gamma=gamma,
                       lam=lam)

    assert conform.check(hard_coded, "gae", gamma=gamma, **FAST).ok


@pytest.mark.parametrize("params", [dict(lam=-1e-9), dict(lam=1.0 + 1e-9),
                                    dict(gamma=1.0 + 1e-9), dict(gamma=-1e-9)])
def test_fixed_parameters_outside_their_range_are_usage_errors(params):
    name = next(iter(params))
    with pytest.raises(conform.ConformUsageError, match=name):
        conform.check(gae_adv, "gae", **FAST, **params)


def test_per_step_family_runs_only_when_asked():
    def per_step(rewards, values, next_values, terminated, truncated, *, gamma, lam):
        return gae_adv(rewards, values, next_values, terminated, truncated, gamma=gamma,
                       lam=lam)

    off = conform.check(per_step, "gae", **FAST).case("per_step_gamma_lambda")
    on = conform.check(per_step, "gae", per_step=True, **FAST).case("per_step_gamma_lambda")
    assert off.verdict != "pass" and off.examples == 0
    assert on.verdict == "pass" and on.examples == 5


def test_exact_moment_check_catches_a_shifted_mean_and_passes_the_reference():
    """The exact-moment family compares the enumerated mean at t = 0 with offpolicy.moments':
    a shift of 1e-3 (far above its 1e-9 relative tolerance) fails it; the reference passes."""
    def shifted(rewards, values, next_values, terminated, truncated, *, gamma, lam):
        out = gae_adv(rewards, values, next_values, terminated, truncated, gamma=gamma,
                      lam=lam).copy()
        out[0] += 1e-3
        return out

    good = conform.check(gae_adv, "gae", examples=2, output="advantages").case("exact_moments")
    assert good.verdict == "pass", good.reason
    bad = conform.check(shifted, "gae", examples=2, output="advantages").case("exact_moments")
    assert bad.verdict == "fail"
    assert "(off by 0.001)" in bad.reason
