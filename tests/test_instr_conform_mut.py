"""The conformance runner's paths that sampled mutants showed untested (issue 20,
reports/mutation/groups/conform.md): each test pins one path by its observable effect on a
check of a function whose verdict follows from how it was written (a conforming function in
the layout's own convention, or the reference with one deliberate deviation)."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

import estimators.numpy as R
from offpolicy import conform, moments
from offpolicy.conform.cli import main as cli_main

FAST = dict(examples=4, moments=False)


# ---------------------------------------------------------------------------------------------
# the exact-moment check: its variance half, with the mean right


def pdis_advantages(rewards, values, next_values, terminated, truncated, log_rhos, *, gamma,
                    lam):
    return R.per_decision_is(rewards, values, next_values, terminated, truncated, log_rhos,
                             gamma=gamma, lam=lam).advantages


def unbiased_noise(eps):
    """Per-decision IS plus ``eps * (rho_0 - 1)`` at t = 0: E_mu[rho_0 | s_0] = sum_a pi(a|s_0)
    = 1, so the mean at t = 0 is unchanged from every start state and only the variance moves
    (by 2 eps Cov(A_0, rho_0) + eps^2 Var(rho_0))."""

    def fn(rewards, values, next_values, terminated, truncated, log_rhos, *, gamma, lam):
        out = pdis_advantages(rewards, values, next_values, terminated, truncated, log_rhos,
                              gamma=gamma, lam=lam).copy()
        out[0] += eps * (np.exp(log_rhos[0]) - 1.0)
        return out

    return fn


@pytest.fixture(scope="module")
def enumerated():
    """Per start state of the exact-moment check: the trajectory probabilities it enumerates
    (spied on ``moments.enumerate_segments``, unchanged) and, per trajectory, the correct
    output at t = 0 and rho_0 - 1 (recorded from the function's inputs)."""
    segments, calls = [], []
    original = moments.enumerate_segments

    def spy(*a, **k):
        s = original(*a, **k)
        segments.append(s)
        return s

    def recording(rewards, values, next_values, terminated, truncated, log_rhos, *, gamma,
                  lam):
        out = pdis_advantages(rewards, values, next_values, terminated, truncated, log_rhos,
                              gamma=gamma, lam=lam)
        calls.append((out[0].copy(), np.exp(log_rhos[0]) - 1.0))
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(moments, "enumerate_segments", spy)
        report = conform.check(recording, "per_decision_is", examples=1)
    assert report.case("exact_moments").verdict == "pass"
    assert len(segments) == 3
    rows = []
    for s, (x, y) in zip(segments, calls[-3:], strict=True):  # the check's calls come last
        w = s.weight / s.weight.sum()
        assert x.shape == w.shape
        cov = float(w @ ((x - w @ x) * (y - w @ y)))
        var_y = float(w @ (y - w @ y) ** 2)
        assert abs(w @ y) < 1e-12  # rho_0 - 1 has mean 0 from every start state
        rows.append(dict(scale=max(1.0, float(np.abs(x).max())), cov=cov, var_y=var_y))
    return rows


def _eps_for(row, d):
    """The eps > 0 whose variance change 2 eps cov + eps^2 var_y equals d (cov > 0 here)."""
    a, b = row["var_y"], 2 * row["cov"]
    return (-b + np.sqrt(b * b + 4 * a * d)) / (2 * a)


def _d_var(row, eps):
    return 2 * eps * row["cov"] + eps * eps * row["var_y"]


def test_the_variance_tolerance_is_quadratic_in_the_output_scale(enumerated):
    """Variance is in squared output units, so its tolerance is 1e-7 * scale^2 (scale =
    max(1, max |output at t=0|)). An unbiased function whose variance is off by half that
    from the first start state (and by at most half of it from every other) passes; the
    outputs here reach scale 26-740, where a tolerance linear in the scale (e.g.
    1e-7 * 2 * scale) is over 5 times smaller there and would fail it."""
    first = enumerated[0]
    assert first["cov"] > 0 and first["scale"] > 20
    eps = _eps_for(first, 0.5e-7 * first["scale"] ** 2)
    for row in enumerated:  # the construction: within half the tolerance everywhere
        assert _d_var(row, eps) <= 0.5e-7 * row["scale"] ** 2 * (1 + 1e-6)
    assert _d_var(first, eps) > 5 * 2e-7 * first["scale"]
    case = conform.check(unbiased_noise(eps), "per_decision_is", examples=1) \
        .case("exact_moments")
    assert case.verdict == "pass", case.reason


def test_a_variance_off_by_twice_the_tolerance_fails_with_the_mean_right(enumerated):
    """The same unbiased function with its variance off by twice 1e-7 * scale^2 from the
    first start state: the check fails there, and its message shows the mean agreeing."""
    first = enumerated[0]
    eps = _eps_for(first, 2e-7 * first["scale"] ** 2)
    case = conform.check(unbiased_noise(eps), "per_decision_is", examples=1) \
        .case("exact_moments")
    assert case.verdict == "fail"
    assert case.reason.startswith("from s0=0: mean ")
    mean_off = float(case.reason.split("(off by ")[1].split(")")[0])
    var_off = float(case.reason.split("(off by ")[2].split(")")[0])
    assert abs(mean_off) < 1e-12
    # the message rounds to 3 significant digits
    assert var_off == pytest.approx(2e-7 * first["scale"] ** 2, rel=5e-3)


# ---------------------------------------------------------------------------------------------
# what the exact-moment check says when the function raises


@pytest.mark.parametrize("error, said", [
    (RuntimeError(), "raised RuntimeError"),
    (RuntimeError("no inverse for matrix X"), "raised RuntimeError: no inverse for matrix X"),
    (KeyError("Q"), "raised KeyError: 'Q'"),
])
def test_the_exact_check_quotes_what_the_function_raised(error, said):
    """Only the enumerated segments (thousands of columns) make this function raise: the
    exact-moment case's reason quotes the exception, its type alone when it has no message,
    its first line whole (a trailing letter kept) otherwise."""
    def big_batches_raise(rewards, values, next_values, terminated, truncated, *, gamma, lam):
        if np.shape(rewards)[1] > 100:
            raise error
        return R.gae(rewards, values, next_values, terminated, truncated, gamma=gamma,
                     lam=lam).advantages

    rep = conform.check(big_batches_raise, "gae", examples=1)
    case = rep.case("exact_moments")
    assert case.verdict == "fail"
    assert case.reason == f"on the enumerated segments the function {said}"


# ---------------------------------------------------------------------------------------------
# the CLI's rlax layout


RLAX_MODULE = '''
import numpy as np

def td_lambda_advantages(r_t, discount_t, lambda_, values):
    """rlax's truncated GAE: one sequence, values[T+1] (the last the bootstrap)."""
    T = len(r_t)
    delta = r_t + discount_t * values[1:] - values[:-1]
    adv = np.zeros(T)
    last = 0.0
    for t in reversed(range(T)):
        last = delta[t] + discount_t[t] * lambda_[t] * last
        adv[t] = last
    return adv
'''


def test_cli_rlax_without_values_form_picks_the_form_from_the_signature(tmp_path, monkeypatch,
                                                                        capsys):
    """``--layout rlax`` alone is rlax's "auto" form: a function taking ``values[T+1]`` is
    checked in the values form, whose families with a truncation inside the segment are n/a
    (values[t+1] is the next episode's start), so a correct one conforms (exit 0)."""
    (tmp_path / "rlax_code.py").write_text(RLAX_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "r.json"
    code = cli_main(["rlax_code:td_lambda_advantages", "--estimator", "gae", "--layout", "rlax",
                     "--examples", "4", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    cases = {c["name"]: c for c in json.loads(out.read_text())["cases"]}
    assert cases["truncations_inside"]["verdict"] == "n/a"
    # the explicit v_t form cannot call it (no v_tm1/v_t in its signature): not a pass
    assert cli_main(["rlax_code:td_lambda_advantages", "--estimator", "gae", "--layout", "rlax",
                     "--values-form", "v_t", "--examples", "2"]) in (1, 2)


# ---------------------------------------------------------------------------------------------
# the Q side of the rlax layout, with conforming functions


def rlax_q_trace(trace):
    """A Q-trace in rlax's names, one sequence per call: ``q_tm1[t]`` = Q(s_t, .), ``q_t[t]``,
    ``pi_t[t]``, ``mu_t[t]`` the tables of the state after step t and ``a_t[t]`` the action
    taken there, ``discount_t`` = gamma (1 - terminated), ``lambda_`` = lam where the trace
    goes on. G_t = r_t + discount_t (E_pi q_t + c_t (G_{t+1} - q_t[a_t])), with
    c_t = lambda_t min(1, pi/mu) (Retrace), lambda_t pi (tree backup), lambda_t (Q(lambda)),
    lambda_t pi/mu (per-decision IS)."""

    def fn(q_tm1, a_tm1, r_t, discount_t, q_t, a_t, pi_t, mu_t, lambda_):
        T = len(r_t)
        out = np.zeros(T)
        g = 0.0
        for t in reversed(range(T)):
            pi_a, mu_a = pi_t[t, a_t[t]], mu_t[t, a_t[t]]
            c = lambda_[t] * {"retrace": min(1.0, pi_a / mu_a), "tree_backup": pi_a,
                              "q_lambda": 1.0, "importance_sampling_q": pi_a / mu_a}[trace]
            corr = c * (g - q_t[t, a_t[t]]) if lambda_[t] > 0 else 0.0
            g = r_t[t] + discount_t[t] * (pi_t[t] @ q_t[t] + corr)
            out[t] = g
        return out

    return fn


@pytest.mark.parametrize("estimator", ["retrace", "tree_backup", "q_lambda",
                                       "importance_sampling_q"])
def test_a_correct_q_trace_in_rlax_names_conforms(estimator):
    """The rlax layout's Q side hands each table to its rlax name (q_t is the table after
    the step): a correct Q-trace conforms in every family that runs and in the exact-moment
    check."""
    report = conform.check(rlax_q_trace(estimator), estimator, layout="rlax", examples=4)
    assert report.ok, str(report)
    assert report.case("exact_moments").verdict == "pass"
    assert report.case("no_dones").verdict == "pass"


def test_a_q_trace_in_rlax_names_with_the_wrong_trace_fails():
    report = conform.check(rlax_q_trace("q_lambda"), "retrace", layout="rlax", **FAST)
    assert not report.ok


# ---------------------------------------------------------------------------------------------
# single-episode rows returning a tuple


def rows_gae_tuple(rewards, values, *, gamma, lam):
    """TRL-style rows [B, T], each one episode ending at its last column: (advantages,
    returns) as a plain tuple, in the contract's order."""
    r, v = np.asarray(rewards, float).T, np.asarray(values, float).T
    nv = np.concatenate([v[1:], np.zeros_like(v[:1])])
    term = np.zeros(r.shape, bool)
    term[-1] = True
    out = R.gae(r, v, nv, term, np.zeros_like(term), gamma=gamma, lam=lam)
    return out.advantages.T, out.returns.T


@pytest.mark.parametrize("output", ["advantages", "returns"])
def test_single_episode_rows_take_a_plain_tuple_in_the_contract_order(output):
    report = conform.check(rows_gae_tuple, "gae", layout="single_episode_rows", output=output,
                           **FAST)
    assert report.ok, str(report)
    swapped = lambda rewards, values, *, gamma, lam: rows_gae_tuple(  # noqa: E731
        rewards, values, gamma=gamma, lam=lam)[::-1]
    assert not conform.check(swapped, "gae", layout="single_episode_rows", output=output,
                             **FAST).ok


# ---------------------------------------------------------------------------------------------
# stored_values: every flag name, the per-trajectory values[L+1], the NaN family


def _with_signature(fn, names):
    """``fn(**kw)`` declaring exactly ``names`` (the runner passes only declared names)."""
    fn.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY) for n in names])
    return fn


def stored_gae(terminated_name, timeouts_name):
    """GAE over a stored rollout with per-step next_values, reading the termination and
    time-out flags under the given names (``terminated`` and ``timeouts`` are the contract's
    ``terminated`` and ``truncated``)."""

    def fn(**kw):
        return R.gae(kw["rewards"], kw["values"], kw["next_values"], kw[terminated_name],
                     kw[timeouts_name], gamma=kw["gamma"], lam=kw["lam"]).advantages

    return _with_signature(fn, ["rewards", "values", "next_values", terminated_name,
                                timeouts_name, "gamma", "lam"])


@pytest.mark.parametrize("terminated_name", ["terminated", "terminations", "terminals"])
@pytest.mark.parametrize("timeouts_name", ["time_outs", "timeouts", "truncated",
                                           "truncations"])
def test_stored_values_pass_the_flags_under_each_of_their_names(terminated_name,
                                                                timeouts_name):
    layout = conform.layouts.StoredValues(next_values=True)
    report = conform.check(stored_gae(terminated_name, timeouts_name), "gae", layout=layout,
                           examples=3, moments=False)
    assert report.ok, str(report)
    assert report.case("truncations_inside").verdict == "pass"


def test_stored_values_dones_is_either_flag():
    def fn(rewards, values, next_values, terminated, dones, *, gamma, lam):
        timeouts = np.asarray(dones, bool) & ~np.asarray(terminated, bool)
        return R.gae(rewards, values, next_values, terminated, timeouts, gamma=gamma,
                     lam=lam).advantages

    report = conform.check(fn, "gae", layout=conform.layouts.StoredValues(next_values=True),
                           examples=3, moments=False)
    assert report.ok, str(report)


def spinning_up_finish_path(rewards, values, *, gamma, lam):
    """Spinning Up's per-trajectory GAE: ``values`` holds the trajectory's L values and then
    the last value (0 after a termination, else the bootstrap)."""
    rewards = np.asarray(rewards, float)
    values = np.asarray(values, float)
    deltas = rewards + gamma * values[1:] - values[:-1]
    adv = np.zeros_like(deltas)
    last = 0.0
    for t in reversed(range(len(deltas))):
        last = deltas[t] + gamma * lam * last
        adv[t] = last
    return adv


def test_stored_values_per_trajectory_with_values_plus_one_conforms():
    layout = conform.layouts.StoredValues(calls="trajectory", bootstrap="values_plus_one")
    report = conform.check(spinning_up_finish_path, "gae", layout=layout, output="advantages",
                           **FAST)
    assert report.ok, str(report)
    assert report.case("terminations_inside").verdict == "pass"
    assert report.case("truncations_inside").verdict == "pass"


def test_stored_values_without_next_values_have_no_nan_slot():
    """values[t+1] after a termination is the next episode's start: no input holds the value
    after a termination, so the NaN family is n/a with that reason (with next_values=True it
    runs)."""
    def fn(rewards, values, last_values, terminated, timeouts, *, gamma, lam):
        nv = np.concatenate([values[1:], np.asarray(last_values)[None]], axis=0)
        return R.gae(rewards, values, nv, terminated, timeouts, gamma=gamma,
                     lam=lam).advantages

    report = conform.check(fn, "gae", layout="stored_values", **FAST)
    assert report.ok, str(report)
    nan = report.case("nan_under_terminated")
    assert nan.verdict == "n/a" and nan.examples == 0
    assert nan.reason.startswith("no slot holds the value after a termination")
    withnext = conform.check(stored_gae("terminated", "timeouts"), "gae",
                             layout=conform.layouts.StoredValues(next_values=True), **FAST)
    assert withnext.case("nan_under_terminated").verdict == "pass"


# ---------------------------------------------------------------------------------------------
# the shrinker: flags in a mixed family, evidence kept for a named bug


def gae_adv(rewards, values, next_values, terminated, truncated, *, gamma, lam):
    return R.gae(rewards, values, next_values, terminated, truncated, gamma=gamma,
                 lam=lam).advantages


def off_with_both_flags(rewards, values, next_values, terminated, truncated, *, gamma, lam):
    """Off by 1 in every step of a column that holds a termination and a (separate) time-out;
    right elsewhere."""
    te, tr = np.asarray(terminated, bool), np.asarray(truncated, bool)
    both = (te & ~tr).any(axis=0) & (tr & ~te).any(axis=0)
    return gae_adv(rewards, values, next_values, terminated, truncated, gamma=gamma,
                   lam=lam) + both


def test_the_shrinker_clears_flags_only_while_the_failure_stays():
    """Only the mixed families hold both flags in one column; none of their flags is the
    family's own, so the shrinker tries clearing each: the counterexample is one column
    with exactly one termination and one time-out (clearing either passes), off by 1 at
    every step."""
    rep = conform.check(off_with_both_flags, "gae", examples=10, moments=False,
                        output="advantages")
    assert not rep.ok
    assert set(rep.failed) <= {"mixed_flags", "mixed_done_at_last_step", "mixed_B_equals_1"}
    ce = rep.counterexample
    x = ce.inputs
    assert x["rewards"].shape[1] == 1
    assert int((x["terminated"] & ~x["truncated"]).sum()) == 1
    assert int((x["truncated"] & ~x["terminated"]).sum()) == 1
    np.testing.assert_allclose(np.asarray(ce.got) - np.asarray(ce.expected), 1.0, atol=1e-12)


def truncation_as_termination(rewards, values, next_values, terminated, truncated, *, gamma,
                              lam):
    return gae_adv(rewards, values, next_values, np.asarray(terminated, bool) |
                   np.asarray(truncated, bool), np.zeros_like(truncated, bool), gamma=gamma,
                   lam=lam)


def test_a_named_bug_is_shrunk_to_one_truncated_step():
    """Treating a time-out as a termination drops gamma V(s'_T) at a truncated step: the
    diagnosis names it, and the shrunk counterexample is the one truncated step, where the
    function returns r - V(s) instead of r + gamma V(s') - V(s)."""
    rep = conform.check(truncation_as_termination, "gae", examples=6, moments=False,
                        output="advantages")
    assert rep.diagnosis == "truncation_as_termination"
    ce = rep.counterexample
    x = ce.inputs
    assert x["rewards"].shape == (1, 1) and x["truncated"][0, 0] and not x["terminated"][0, 0]
    r, v, nv, g = x["rewards"][0, 0], x["values"][0, 0], x["next_values"][0, 0], \
        ce.params["gamma"]
    assert float(np.ravel(ce.expected)[0]) == pytest.approx(r + g * nv - v, abs=1e-12)
    assert float(np.ravel(ce.got)[0]) == pytest.approx(r - v, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# seed-21 sample: the families' flags, the CLI's options, output picking, dtype names, the
# choice of the counterexample and what the diagnosis weighs


def test_the_terminated_at_last_step_family_ends_in_a_termination():
    """A function that bootstraps through a termination is wrong wherever a step terminates:
    the family about a termination at the last step fails, and its counterexample is that
    one terminated step. The family about a time-out at the last step passes (nothing
    terminates there)."""
    def bootstraps_through_terminations(rewards, values, next_values, terminated, truncated,
                                        *, gamma, lam):
        te = np.asarray(terminated, bool)
        return gae_adv(rewards, values, np.where(te, 1.0 + np.nan_to_num(next_values),
                                                 next_values), np.zeros_like(te),
                       te | np.asarray(truncated, bool), gamma=gamma, lam=lam)

    rep = conform.check(bootstraps_through_terminations, "gae", **FAST)
    assert rep.case("terminated_at_last_step").verdict == "fail"
    assert rep.case("truncated_at_last_step").verdict == "pass"
    assert rep.case("no_dones").verdict == "pass"


def test_the_counterexample_comes_from_the_failing_case_with_fewest_cells():
    """``_smallest``: isolated families before mixed ones and before float64_precision, then
    the fewest cells T*B (a 2x1 case before a 3x3 one, though 3/3 < 2/1), then fewer steps."""
    from offpolicy.conform.cases import Case
    from offpolicy.conform.runner import _smallest

    def case(family, T, B):
        z = np.zeros((T, B))
        return family, Case(family, dict(rewards=z, terminated=z > 0, truncated=z > 0), {})

    wide, tall = case("no_dones", 3, 3), case("B_equals_1", 2, 1)
    assert _smallest([wide, tall]) is tall
    assert _smallest([tall, wide]) is tall
    assert _smallest([case("mixed_flags", 1, 1), wide])[0] == "no_dones"
    assert _smallest([case("float64_precision", 1, 1), wide])[0] == "no_dones"
    assert _smallest([case("no_dones", 1, 4), case("T_equals_1", 4, 1)])[0] == "no_dones"


def test_a_class_must_also_agree_with_the_passing_examples():
    """A function that treats a time-out as a termination only in segments of 4 steps or more:
    every failing example looks like truncation_as_termination, but the shorter segments
    with a time-out, where the function is right, contradict that class; the diagnosis
    weighs them (a class is named only if it reproduces 9/10 of all recorded examples,
    passing ones included), so no class is named."""
    def only_long_segments(rewards, values, next_values, terminated, truncated, *, gamma, lam):
        if np.shape(rewards)[0] >= 4:
            return truncation_as_termination(rewards, values, next_values, terminated,
                                             truncated, gamma=gamma, lam=lam)
        return gae_adv(rewards, values, next_values, terminated, truncated, gamma=gamma,
                       lam=lam)

    rep = conform.check(only_long_segments, "gae", examples=10, moments=False)
    assert not rep.ok
    assert rep.diagnosis is None, str(rep)


def test_exact_check_fails_nan_at_the_first_step():
    """NaN at t = 0 on the enumerated segments (finite inputs) fails the exact-moment check
    with its own reason, though the later steps are finite."""
    def nan_first_step_on_big_batches(rewards, values, next_values, terminated, truncated, *,
                                      gamma, lam):
        out = gae_adv(rewards, values, next_values, terminated, truncated, gamma=gamma,
                      lam=lam).copy()
        if np.shape(rewards)[1] > 100:
            out[0, -1] = np.nan
        return out

    case = conform.check(nan_first_step_on_big_batches, "gae", examples=1) \
        .case("exact_moments")
    assert case.verdict == "fail"
    assert case.reason == "returned NaN/inf on the enumerated segments (finite inputs)"


def test_pick_an_index_of_a_single_array_is_a_usage_error_naming_pick():
    with pytest.raises(conform.ConformUsageError,
                       match=r"^pick: 0 is not in what the function returns \(returned "
                             r"ndarray, not a tuple to index with 0\)$"):
        conform.check(gae_adv, "gae", pick=0, **FAST)


def test_a_tuple_too_short_for_the_output_says_so():
    def only_advantages(rewards, values, next_values, terminated, truncated, *, gamma, lam):
        return (gae_adv(rewards, values, next_values, terminated, truncated, gamma=gamma,
                        lam=lam),)

    rep = conform.check(only_advantages, "gae", output="returns", **FAST)
    assert not rep.ok and rep.diagnosis == "wrong_return"
    assert rep.case("no_dones").reason.endswith(
        "first: returned a tuple of 1; pass pick=<index>")
    assert conform.check(only_advantages, "gae", output="advantages", **FAST).ok


@pytest.mark.parametrize("dtype", ["numpy.float32", "float32", np.float32, np.dtype("float32")])
def test_dtype_names_of_float32(dtype):
    def gae32(rewards, values, next_values, terminated, truncated, *, gamma, lam):
        return gae_adv(rewards, values, next_values, terminated, truncated, gamma=gamma,
                       lam=lam).astype(np.float32)

    rep = conform.check(gae32, "gae", dtype=dtype, **FAST)
    assert rep.ok, str(rep)
    assert rep.dtype == "float32"


CLI_MODULE = '''
import numpy as np
from estimators import numpy as ref

def both(rewards, values, next_values, terminated, truncated, *, gamma, lam):
    out = ref.gae(rewards, values, next_values, terminated, truncated, gamma=gamma, lam=lam)
    return out.returns, out.advantages
'''


def test_cli_options_reach_the_check(tmp_path, monkeypatch, capsys):
    """``--pick 1`` is a tuple index (the function returns (returns, advantages)), ``--timeout
    5`` is seconds as a number, ``--values-form values`` is taken with ``--layout rlax``, and
    ``--help`` names ``--json``'s argument PATH."""
    (tmp_path / "cli_code.py").write_text(CLI_MODULE + RLAX_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    base = ["--estimator", "gae", "--examples", "2"]
    assert cli_main(["cli_code:both", *base, "--pick", "1", "--timeout", "5"]) == 0
    assert cli_main(["cli_code:both", *base, "--pick", "0"]) == 1  # returns, not advantages
    assert cli_main(["cli_code:td_lambda_advantages", *base, "--layout", "rlax",
                     "--values-form", "values"]) == 0
    assert cli_main(["cli_code:both", *base, "--values-form", "values"]) == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli_main(["--help"])
    assert e.value.code == 0
    assert "--json PATH" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# the call-level bug classes (not patches of the reference: the call itself is wrong)


def flags_swapped(rewards, values, next_values, terminated, truncated, *, gamma, lam):
    return gae_adv(rewards, values, next_values, truncated, terminated, gamma=gamma, lam=lam)


def gamma_lam_swapped(rewards, values, next_values, terminated, truncated, *, gamma, lam):
    return gae_adv(rewards, values, next_values, terminated, truncated, gamma=lam, lam=gamma)


def returns_not_advantages(rewards, values, next_values, terminated, truncated, *, gamma, lam):
    return R.gae(rewards, values, next_values, terminated, truncated, gamma=gamma,
                 lam=lam).returns


@pytest.mark.parametrize("fn, name, says", [
    (flags_swapped, "terminated_truncated_swapped", "the terminated and truncated flags are "
                                                    "swapped"),
    (gamma_lam_swapped, "gamma_lam_swapped", "gamma and lambda passed the wrong way round"),
    (returns_not_advantages, "wrong_output_returns", "the function returns returns, not the "
                                                     "requested output"),
])
def test_call_level_bugs_are_named(fn, name, says):
    """The reference called with the flags swapped, gamma and lambda swapped, or the other
    output returned: the diagnosis names the wrong call (it reruns the reference with the
    same wrong call, its parameters included, and matches every example) and says it in
    words."""
    rep = conform.check(fn, "gae", output="advantages", examples=6, moments=False)
    assert rep.diagnosis == name, str(rep)
    assert rep.diagnosis_detail.startswith(says), rep.diagnosis_detail


def _on_big_batches(misbehave):
    """GAE that does ``misbehave(rewards)`` instead on the enumerated segments (hundreds of
    columns; the families draw at most a few)."""
    def fn(rewards, values, next_values, terminated, truncated, *, gamma, lam):
        if np.shape(rewards)[1] > 100:
            return misbehave(rewards)
        return gae_adv(rewards, values, next_values, terminated, truncated, gamma=gamma,
                       lam=lam)
    return fn


def _writes(rewards):
    rewards[0, 0] += 1.0
    return np.zeros(np.shape(rewards))


def _exits(rewards):
    raise SystemExit(3)


@pytest.mark.parametrize("misbehave, said", [
    (_writes, "on the enumerated segments the function modified its input 'rewards' in place"),
    (_exits, "on the enumerated segments the function called sys.exit(3)"),
    (lambda r: None, "on the enumerated segments the function returned None, not an array"),
    (lambda r: np.zeros(3), "returned shape (3,) on the enumerated segments, expected (3, 376)"),
])
def test_the_exact_check_says_how_the_call_went_wrong(misbehave, said):
    """Writing into an input, sys.exit, no array, a wrong shape: each is the exact check's
    verdict in one line saying what happened (never the runner's crash). (376: the
    trajectories of the first start state's enumeration, seed 0.)"""
    case = conform.check(_on_big_batches(misbehave), "gae", output="advantages",
                         examples=1).case("exact_moments")
    assert case.verdict == "fail"
    assert case.reason == said


def test_the_exact_check_says_the_function_returned_no_numbers():
    case = conform.check(_on_big_batches(lambda r: np.full(np.shape(r), "x")), "gae",
                         output="advantages", examples=1).case("exact_moments")
    assert case.verdict == "fail"
    assert case.reason.startswith("on the enumerated segments the function returned no "
                                  "numbers (could not convert string to float: "), case.reason


# ---------------------------------------------------------------------------------------------
# folds and layout names as reports print them


def test_a_fold_string_round_trips_through_its_description():
    """``"add[:every_timeout][:not_done]"`` names a Fold; ``describe`` writes the same string
    (the defaults left out), so a report's layout line can be pasted back as ``fold=``."""
    from offpolicy.conform.layouts import FOLD_ADDS, Fold, as_fold

    for add in FOLD_ADDS:
        for on, on_part in (("timeout_not_terminated", []), ("every_timeout",
                                                             ["every_timeout"])):
            for done, done_part in ((True, []), (False, ["not_done"])):
                text = ":".join([add, *on_part, *done_part])
                assert as_fold(text) == Fold(add, on, done), text
                assert Fold(add, on, done).describe() == text
    assert as_fold("nothing:not_done:every_timeout") == Fold("nothing", "every_timeout", False)
    assert as_fold("as_done") == Fold("nothing") and as_fold(None) is None
    assert as_fold(dict(add="final_value", done=False)) == Fold("final_value", done=False)


@pytest.mark.parametrize("bad, message", [
    ("nothing:sometimes", "fold: expected one of bootstrap_reward, as_done, ignored, "
                          "current_value_reward or ADD[:every_timeout][:not_done] with ADD in "
                          "gamma_final_value, final_value, gamma_current_value, current_value, "
                          "nothing, last_value; got 'nothing:sometimes'"),
    ("half_value", "fold: expected one of bootstrap_reward"),
    (dict(add="nothing", when="always"), "fold: "),
    (dict(add="half"), "fold: add must be one of gamma_final_value"),
    (3, "fold: expected a Fold, a name or None, got int"),
])
def test_a_bad_fold_is_a_usage_error_naming_fold(bad, message):
    from offpolicy.conform.layouts import as_fold

    with pytest.raises(conform.ConformUsageError) as e:
        as_fold(bad)
    assert str(e.value).startswith(message), str(e.value)


def test_layout_descriptions_name_the_options_that_differ_from_the_defaults():
    from offpolicy.conform.layouts import DoneNext, Fold, PufferRows, StoredValues

    assert StoredValues().describe() == "stored_values"
    assert StoredValues(flags="masks", calls="stream", bootstrap="values_plus_one",
                        next_values=True, fold="as_done").describe() == (
        "stored_values(flags='masks', calls='stream', bootstrap='values_plus_one', "
        "next_values=True, fold=nothing)")
    assert StoredValues(calls="trajectory", fold="last_value:every_timeout").describe() == \
        "stored_values(calls='trajectory', fold=last_value:every_timeout)"
    assert DoneNext().describe() == "done_next(truncation_fold=None)"
    assert DoneNext(truncation_fold="as_done").describe() == "done_next(truncation_fold=as_done)"
    assert PufferRows(truncation_fold=Fold("final_value", done=False)).describe() == \
        "puffer_rows(truncation_fold=final_value:not_done)"


def _bad_layouts():
    from offpolicy.conform.layouts import DoneNext, Fold, StoredValues

    return [
        (lambda: Fold("nothing", on="sometimes"),
         "fold: on must be one of timeout_not_terminated, every_timeout; got 'sometimes'"),
        (lambda: Fold("nothing", done=1), "fold: done must be True or False, got 1"),
        (lambda: StoredValues(flags="x"), "flags: expected one of terminated_timeouts, dones, "
                                          "masks, episode_starts, indices, got 'x'"),
        (lambda: StoredValues(calls="x"), "calls: expected one of segment, stream, "
                                          "trajectory, got 'x'"),
        (lambda: StoredValues(bootstrap="x"), "bootstrap: expected one of last_values, "
                                              "values_plus_one, got 'x'"),
        (lambda: StoredValues(next_values=1), "next_values: expected True or False, got 1"),
        (lambda: StoredValues(fold="last_value"), "fold: add='last_value' needs "
                                                  "calls='trajectory'"),
        (lambda: DoneNext(truncation_fold="bogus"), "truncation_fold: expected a Fold or one "
                                                    "of (None, 'bootstrap_reward', "),
        (lambda: DoneNext(truncation_fold=Fold("last_value")), "truncation_fold: 'last_value' "
                                                               "is for per-trajectory calls"),
    ]


@pytest.mark.parametrize("i", range(9))
def test_a_bad_layout_option_is_a_usage_error_naming_it(i):
    make, message = _bad_layouts()[i]
    with pytest.raises(conform.ConformUsageError) as e:
        make()
    assert str(e.value).startswith(message), str(e.value)


# ---------------------------------------------------------------------------------------------
# the report as people and machines read it


def _hand_made_report():
    from offpolicy.conform.report import CaseResult, Counterexample, Report

    cx = Counterexample(
        "truncations_inside",
        dict(rewards=np.array([[1.0], [np.nan]]), terminated=np.array([[False], [True]])),
        dict(gamma=0.5, n=np.int64(2)), expected=np.array([[0.123456789012345], [np.inf]]),
        got=np.array([[2.0], [-np.inf]]), call={"r_t": np.array([1.0, 2.0]), "lambda_": 0.5})
    cases = [CaseResult("no_dones", "pass", "4 examples agree with the reference", 4),
             CaseResult("truncations_inside", "fail", "1 of 4 examples fail", 4)]
    return Report("gae", "rlax", "advantages", "m:f", cases, cx, "some_bug", "what it does",
                  ["w1"], 1.234, "float64")


def test_the_report_prints_every_part_in_order():
    assert str(_hand_made_report()) == "\n".join([
        "m:f: DOES NOT CONFORM to the gae contract (layout rlax, output advantages, float64, "
        "1.2 s)",
        "  no_dones            pass  4 examples agree with the reference",
        "  truncations_inside  fail  1 of 4 examples fail",
        "diagnosis: some_bug — what it does",
        "counterexample (truncations_inside, T=2, B=1, params {'gamma': 0.5, 'n': 2}):",
        "  rewards = [[1.0], ['nan']]",
        "  terminated = [[False], [True]]",
        "  the function was called (rlax) with:",
        "    r_t = [1.0, 2.0]",
        "    lambda_ = 0.5",
        "  expected = [[0.123456789], ['inf']]",
        "  got      = [[2.0], ['-inf']]",
        "warning: w1",
    ])


def test_the_report_as_json():
    d = json.loads(_hand_made_report().to_json())
    assert d == {
        "ok": False, "estimator": "gae", "layout": "rlax", "output": "advantages",
        "function": "m:f", "dtype": "float64",
        "cases": [{"name": "no_dones", "verdict": "pass",
                   "reason": "4 examples agree with the reference"},
                  {"name": "truncations_inside", "verdict": "fail",
                   "reason": "1 of 4 examples fail"}],
        "counterexample": {
            "family": "truncations_inside", "T": 2, "B": 1,
            "inputs": {"rewards": [[1.0], ["nan"]], "terminated": [[False], [True]]},
            "params": {"gamma": 0.5, "n": 2},
            "expected": [[0.123456789], ["inf"]], "got": [[2.0], ["-inf"]], "error": None,
            "call": {"r_t": [1.0, 2.0], "lambda_": 0.5}},
        "diagnosis": "some_bug", "diagnosis_detail": "what it does", "warnings": ["w1"],
        "seconds": 1.234}
    assert _hand_made_report().to_json().startswith('{\n "ok": false,\n "estimator"')


def test_a_report_that_conforms_or_names_nothing():
    from offpolicy.conform.report import CaseResult, Report

    ok = Report("gae", "contract", "advantages", "m:f",
                [CaseResult("no_dones", "pass", "fine", 1)], None, None)
    assert ok.ok and ok.failed == [] and str(ok) == (
        "m:f: CONFORMS to the gae contract (layout contract, output advantages, float64, "
        "0.0 s)\n  no_dones  pass  fine")
    bad = Report("gae", "contract", "advantages", "m:f",
                 [CaseResult("no_dones", "fail", "x", 1), CaseResult("B_equals_1", "n/a", "y")],
                 None, None)
    assert not bad.ok and bad.failed == ["no_dones"]
    assert str(bad).endswith("diagnosis: no known bug class matches (see the counterexample)")
    assert bad.case("B_equals_1").reason == "y"
    with pytest.raises(KeyError):
        bad.case("lambda_1")


def test_a_counterexample_that_raised_shows_the_error():
    from offpolicy.conform.report import CaseResult, Counterexample, Report

    cx = Counterexample("no_dones", {"rewards": np.zeros((1, 1))}, {}, np.zeros((1, 1)), None,
                        "raised ValueError: no")
    rep = Report("gae", "contract", "advantages", "m:f",
                 [CaseResult("no_dones", "fail", "x", 1)], cx, "raises", "it raises")
    assert str(rep).splitlines()[-1] == "  got      = raised ValueError: no"
    d = rep.to_dict()["counterexample"]
    assert d["got"] is None and d["error"] == "raised ValueError: no" and d["call"] is None


# ---------------------------------------------------------------------------------------------
# the case families draw what their names say (cases.py's module docstring)


def _draw(family, estimator, n=25, constraints=None, **fixed):
    """``n`` cases hypothesis draws for ``family`` (seeded, deterministic)."""
    import random

    from hypothesis import HealthCheck, Phase, find, settings
    from hypothesis.errors import NoSuchExample

    from offpolicy.conform.cases import Constraints, family_strategy
    from offpolicy.conform.registry import spec_for

    got = []
    strategy = family_strategy(family, spec_for(estimator), fixed,
                               constraints or Constraints())
    try:
        find(strategy, lambda c: got.append(c) and False,
             settings=settings(max_examples=n, database=None, phases=[Phase.generate],
                               suppress_health_check=list(HealthCheck)),
             random=random.Random(1))
    except NoSuchExample:
        pass
    assert len(got) == n
    return got


def _flag_codes(c):
    x = c.inputs
    return x["terminated"].astype(int) + 2 * x["truncated"].astype(int)


ISOLATED_FLAGS = {
    # family -> what must hold of its flag codes [T, B] (0 none, 1 terminated, 2 truncated,
    # 3 both)
    "no_dones": lambda k: (k == 0).all(),
    "terminations_inside": lambda k: set(np.unique(k)) <= {0, 1} and (k[:-1] == 1).any()
    and (k[-1] == 0).all(),
    "truncations_inside": lambda k: set(np.unique(k)) <= {0, 2} and (k[:-1] == 2).any()
    and (k[-1] == 0).all(),
    "both_flags_one_step": lambda k: (k == 3).sum() == 1 and ((k == 0) | (k == 3)).all(),
    "terminated_at_last_step": lambda k: (k == 1).sum() == 1 and (k[-1] == 1).sum() == 1
    and (k[:-1] == 0).all() and set(np.unique(k[-1])) <= {0, 1},
    "truncated_at_last_step": lambda k: (k == 2).sum() == 1 and (k[-1] == 2).sum() == 1
    and (k[:-1] == 0).all() and set(np.unique(k[-1])) <= {0, 2},
    "T_equals_1": lambda k: k.shape[0] == 1 and (k == 0).all(),
    "B_equals_1": lambda k: k.shape[1] == 1 and (k == 0).all(),
    "inconsistent_next_values": lambda k: (k == 0).all() and k.shape[0] >= 2,
    "ratios_far_from_1": lambda k: (k == 0).all(),
    "rho_clip_ne_c_clip": lambda k: (k == 0).all(),
    "lambda_0": lambda k: (k == 0).all(),
    "lambda_0.5": lambda k: (k == 0).all(),
    "lambda_1": lambda k: (k == 0).all(),
    "float64_precision": lambda k: (k == 0).all(),
    "nan_under_terminated": lambda k: set(np.unique(k)) <= {0, 1} and (k == 1).any(),
    "per_step_gamma_lambda": lambda k: (k == 0).all(),
    "mixed_flags": lambda k: True,
    "mixed_done_at_last_step": lambda k: (k[-1] != 0).any(),
    "mixed_T_equals_1": lambda k: k.shape[0] == 1,
    "mixed_B_equals_1": lambda k: k.shape[1] == 1,
}


@pytest.mark.parametrize("family", list(ISOLATED_FLAGS))
def test_each_state_family_draws_its_flags_and_numbers(family):
    for c in _draw(family, "vtrace"):
        x, k = c.inputs, _flag_codes(c)
        assert 1 <= c.T <= 6 and 1 <= c.B <= 3
        assert ISOLATED_FLAGS[family](k), (family, k)
        v, nv = x["values"], x["next_values"]
        goes_on = ~(x["terminated"] | x["truncated"])[:-1]
        differs = (nv[:-1] != v[1:]) & goes_on
        if family == "inconsistent_next_values":
            assert differs.sum() == 1
        else:
            assert not differs.any()  # next_values[t] = values[t+1] while the episode goes on
        if family == "truncations_inside":
            cut = (k[:-1] == 2)
            assert (nv[:-1][cut] != v[1:][cut]).any()  # the final observation is not the reset
        if family == "nan_under_terminated":
            np.testing.assert_array_equal(np.isnan(nv), x["terminated"])
        else:
            assert np.isfinite(nv).all()
        if family == "float64_precision":
            assert (v >= 998.0).all() and (np.abs(x["rewards"]) <= 0.02 + 1e-12).all()
        else:  # one-decimal numbers
            for a in (x["rewards"], v):
                np.testing.assert_allclose(a * 10, np.round(a * 10), atol=1e-9)
            assert (np.abs(v) <= 2.0).all()
        far = np.abs(x["log_rhos"]) >= 2.0 - 1e-12
        assert far.any() == (family in ("ratios_far_from_1", "rho_clip_ne_c_clip")), family
        p = c.params
        if family in ("lambda_0", "lambda_0.5", "lambda_1"):
            assert p["lam"] == {"lambda_0": 0.0, "lambda_0.5": 0.5, "lambda_1": 1.0}[family]
        if family == "rho_clip_ne_c_clip":
            assert p["rho_clip"] != p["c_clip"]
        if family == "per_step_gamma_lambda":
            assert np.shape(p["gamma"]) == (c.T, c.B) == np.shape(p["lam"])
            assert set(np.unique(p["gamma"])) <= {0.0, 0.5, 0.9, 1.0}
        else:
            assert p["gamma"] in (0.5, 0.9, 1.0, 0.99)


@pytest.mark.parametrize("family", ["no_dones", "truncations_inside", "terminated_at_last_step",
                                    "nan_under_terminated", "mixed_flags"])
def test_each_action_family_keeps_the_tables_of_the_next_state(family):
    """Q side: while the episode goes on, the tables after step t are those of s_{t+1};
    the contract inputs are read off the tables (q_taken, E_pi Q, log pi/mu)."""
    for c in _draw(family, "retrace"):
        x, w, k = c.inputs, c.world, _flag_codes(c)
        assert ISOLATED_FLAGS[family](k), (family, k)
        goes_on = (k == 0)[:-1]
        a = w["actions"]
        np.testing.assert_array_equal(w["next_actions"][:-1][goes_on], a[1:][goes_on])
        np.testing.assert_array_equal(w["next_target_probs"][:-1][goes_on],
                                      w["target_probs"][1:][goes_on])
        diff = (w["next_q_values"][:-1] != w["q_values"][1:]).any(-1) & goes_on
        assert not diff.any()
        q_a = np.take_along_axis(w["q_values"], a[..., None], -1)[..., 0]
        np.testing.assert_array_equal(x["q_taken"], q_a)
        pi_a = np.take_along_axis(w["target_probs"], a[..., None], -1)[..., 0]
        mu_a = np.take_along_axis(w["behaviour_probs"], a[..., None], -1)[..., 0]
        np.testing.assert_allclose(x["log_rhos"], np.log(pi_a / mu_a), rtol=1e-12)
        np.testing.assert_array_equal(x["target_probs_taken"], pi_a)
        e_q = (w["next_target_probs"] * w["next_q_values"]).sum(-1)
        if family == "nan_under_terminated":
            np.testing.assert_array_equal(np.isnan(x["next_expected_q"]), x["terminated"])
            e_q = np.where(x["terminated"], np.nan, e_q)
        np.testing.assert_allclose(x["next_expected_q"], e_q, rtol=1e-12)
        np.testing.assert_allclose(w["target_probs"].sum(-1), 1.0, rtol=1e-12)


def test_the_families_keep_to_what_the_layout_can_hold():
    from offpolicy.conform.cases import Constraints

    no_trunc = Constraints(truncations_inside=False)
    for family in ("mixed_flags", "truncations_inside", "terminations_inside"):
        for c in _draw(family, "gae", n=15, constraints=no_trunc):
            k = _flag_codes(c)
            assert not (k[:-1] == 2).any(), (family, k)
    rows = Constraints(flags_inside=False, truncations_inside=False, terminal_last=True)
    for family in ("mixed_flags", "terminated_at_last_step", "lambda_1"):
        for c in _draw(family, "gae", n=15, constraints=rows):
            k = _flag_codes(c)
            assert (k[:-1] == 0).all() and (k[-1] & 1).all(), (family, k)


# ---------------------------------------------------------------------------------------------
# bad arguments to check(): one line naming the argument, what was expected and what came


def _needs_foo(rewards, values, foo, *, gamma, lam):
    return rewards


def _no_gamma(rewards, values, next_values, terminated, truncated):
    return rewards


BAD_CALLS = [
    (dict(fn=3), "fn: expected a callable, got int"),
    (dict(output="bogus"), "output: gae has outputs advantages, returns; got 'bogus'"),
    (dict(examples=0), "examples: expected an integer >= 1, got 0"),
    (dict(examples=True), "examples: expected an integer >= 1, got True"),
    (dict(seed=-1), "seed: expected an integer >= 0, got -1"),
    (dict(seed=1.0), "seed: expected an integer >= 0, got 1.0"),
    (dict(timeout=0), "timeout: expected seconds > 0 or None, got 0"),
    (dict(timeout="5"), "timeout: expected seconds > 0 or None, got '5'"),
    (dict(dtype="float16"), "dtype: expected float64 or float32, got 'float16'"),
    (dict(array="cupy"), "array: expected numpy, torch or jax, got 'cupy'"),
    (dict(gamma="x"), "gamma: expected a number, got 'x'"),
    (dict(gamma=1.5), "gamma: must lie in [0, 1], got 1.5"),
    (dict(lam=-0.5), "lam: must lie in [0, 1], got -0.5"),
    (dict(rho_clip=1.0), "rho_clip: gae takes no parameter 'rho_clip' (its parameters: gamma, "
                         "lam)"),
    (dict(estimator="vtrace", output="advantages", rho_clip=0),
     "rho_clip: must be > 0 (inf: no clipping), got 0.0"),
    (dict(estimator="nstep_returns", output=None, n=0), "n: expected an integer >= 1, got 0"),
    (dict(estimator="nstep_returns", output=None, n=2.0), "n: expected an integer >= 1, got "
                                                          "2.0"),
    (dict(estimator="nstep_returns", output=None, n=True), "n: expected an integer >= 1, got "
                                                           "True"),
    (dict(fold="as_done"), "fold: the contract layout receives its flags as they are; a fold "
                           "is for stored_values, done_next, puffer_rows"),
    (dict(estimator="retrace", output=None, layout="torchrl"),
     "layout: torchrl cannot express the action-value estimator retrace"),
    (dict(fn=_no_gamma, layout="done_next"),
     "gamma: the function takes no 'gamma'; pass gamma=<the value it hard-codes>"),
    (dict(fn=_needs_foo, layout="done_next"),
     "fn: requires foo, which the done_next layout does not provide (it provides: dones, "
     "last_dones, last_values, log_rhos, rewards, values); wrap it in a lambda that renames"),
]


@pytest.mark.parametrize("i", range(len(BAD_CALLS)))
def test_a_bad_argument_to_check_is_one_line_naming_it(i):
    kw, message = BAD_CALLS[i]
    kw = {"fn": gae_adv, "estimator": "gae", "output": "advantages", **kw}
    fn, estimator = kw.pop("fn"), kw.pop("estimator")
    with pytest.raises(conform.ConformUsageError) as e:
        conform.check(fn, estimator, **kw)
    assert str(e.value) == message
