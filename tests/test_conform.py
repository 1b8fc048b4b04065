"""The conformance runner, checked with small estimator functions written here.

Correct ones are written independently of ``estimators/`` (other loops, other layouts) and must
conform; buggy ones reproduce one real-world bug class each and must fail with a short
counterexample and the right diagnosis. Every layout is checked by a round trip (a function
that rebuilds the contract from the layout and calls the reference must conform), and bad
input gives a verdict or a usage error, never a traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from estimators import layout as layout_helpers
from estimators import numpy as ref
from offpolicy import conform
from offpolicy.conform.__main__ import main as cli_main

FAST = dict(examples=8, moments=False)


# ---------------------------------------------------------------------------------------------
# correct implementations, written independently


def gae_closed_form(rewards, values, next_values, terminated, truncated, *, gamma, lam):
    """A_t = sum_l (gamma lam)^l delta_{t+l} over the steps before the first cut."""
    T, B = rewards.shape
    out = np.zeros((T, B))
    for b in range(B):
        delta = [rewards[t, b] - values[t, b]
                 + (0.0 if terminated[t, b] else gamma * next_values[t, b]) for t in range(T)]
        for t in range(T):
            total, weight, k = 0.0, 1.0, t
            while True:
                total += weight * delta[k]
                if terminated[k, b] or truncated[k, b] or k == T - 1:
                    break
                weight *= gamma * lam
                k += 1
            out[t, b] = total
    return out


def cleanrl_style_gae(rewards, values, dones, last_values, last_dones, *, gamma, lam):
    """CleanRL's loop: dones[t] is the episode-start flag of step t."""
    T = rewards.shape[0]
    advantages = np.zeros_like(rewards)
    last = 0.0
    for t in reversed(range(T)):
        if t == T - 1:
            nonterminal, next_value = 1.0 - last_dones, last_values
        else:
            nonterminal, next_value = 1.0 - dones[t + 1], values[t + 1]
        delta = rewards[t] + gamma * next_value * nonterminal - values[t]
        advantages[t] = last = delta + gamma * lam * nonterminal * last
    return advantages


def rlax_style_vtrace(v_tm1, v_t, r_t, discount_t, rho_tm1, lambda_, *, clip_rho_threshold):
    """One sequence; the trace coefficient is clipped at 1 (as rlax does)."""
    rho_hat = np.minimum(clip_rho_threshold, rho_tm1)
    c = np.minimum(1.0, rho_tm1) * lambda_
    delta = rho_hat * (r_t + discount_t * v_t - v_tm1)
    out, acc = np.zeros_like(v_tm1), 0.0
    for t in reversed(range(len(v_tm1))):
        acc = delta[t] + discount_t[t] * c[t] * acc
        out[t] = acc
    return out  # v_s - v_tm1


def nstep_forward(rewards, next_values, terminated, truncated, *, gamma, n):
    T, B = rewards.shape
    out = np.zeros((T, B))
    for b in range(B):
        for t in range(T):
            total, k = 0.0, t
            while True:
                total += gamma ** (k - t) * rewards[k, b]
                if terminated[k, b]:
                    break
                if truncated[k, b] or k == T - 1 or k - t == n - 1:
                    total += gamma ** (k - t + 1) * next_values[k, b]
                    break
                k += 1
            out[t, b] = total
    return out


def retrace_from_tables(rewards, q_values, next_q_values, actions, next_actions,
                        next_target_probs, next_behaviour_probs, terminated, truncated, *,
                        gamma, lam):
    T, B = rewards.shape
    targets = np.zeros((T, B))
    for b in range(B):
        after = 0.0
        for t in reversed(range(T)):
            q_next = next_q_values[t, b]
            g = rewards[t, b] + (0.0 if terminated[t, b] else gamma * next_target_probs[t, b]
                                 @ q_next)
            if not (terminated[t, b] or truncated[t, b]) and t < T - 1:
                a2 = next_actions[t, b]
                c = lam * min(1.0, next_target_probs[t, b, a2] / next_behaviour_probs[t, b, a2])
                g += gamma * c * (after - q_next[a2])
            targets[t, b] = after = g
    return targets


def gae_batch_major(state_value, next_state_value, reward, done, terminated, *, gamma, lmbda):
    """TorchRL-shaped [B, T, 1] tensors, in torch."""
    import torch

    not_term = (~terminated).to(reward.dtype)
    not_done = (~done).to(reward.dtype)
    delta = reward + gamma * not_term * next_state_value - state_value
    out = torch.zeros_like(delta)
    acc = torch.zeros_like(delta[:, 0])
    T = reward.shape[1]
    for t in reversed(range(T)):
        keep = not_done[:, t] if t < T - 1 else torch.zeros_like(not_done[:, t])
        acc = delta[:, t] + gamma * lmbda * keep * acc
        out[:, t] = acc
    return out


# ---------------------------------------------------------------------------------------------
# layout round trips: rebuild the contract from the layout, call the reference


def _done_next_to_contract(rewards, values, dones, last_values, last_dones, *, gamma, lam):
    done = np.vstack([dones[1:], last_dones[None]]) != 0
    next_values = np.vstack([values[1:], last_values[None]])
    return ref.gae(rewards, values, next_values, done, np.zeros_like(done),
                   gamma=gamma, lam=lam).advantages


def _rlax_to_contract(r_t, discount_t, v_tm1, v_t, lambda_, rho_tm1, *, clip_rho_threshold):
    terminated = discount_t == 0
    gamma = discount_t.max() if terminated.all() is np.False_ else discount_t.max()
    no = np.zeros_like(terminated)
    return ref.vtrace(r_t, v_tm1, v_t, terminated, no, np.log(rho_tm1), gamma=gamma,
                      lam=lambda_, rho_clip=clip_rho_threshold, c_clip=1.0).advantages


def _torchrl_to_contract(state_value, next_state_value, reward, done, terminated, *, gamma,
                         lmbda):
    import torch

    t = lambda x: x[..., 0].T.numpy()  # noqa: E731
    adv = ref.gae(t(reward), t(state_value), t(next_state_value), t(terminated),
                  t(done) & ~t(terminated), gamma=gamma, lam=lmbda).advantages
    return torch.from_numpy(np.ascontiguousarray(adv.T[..., None]))


def _puffer_to_contract(values, rewards, dones, importance, advantages, *, gamma, lam,
                        rho_clip, c_clip):
    d = layout_helpers.from_pufferlib(values, rewards, dones, importance)
    result = ref.puff_advantage(**d, gamma=gamma, lam=lam, rho_clip=rho_clip, c_clip=c_clip)
    advantages[:] = layout_helpers.to_pufferlib(result)  # in place, as PufferLib's kernel


def _rows_to_contract(rewards, values, *, gamma, lam):
    B, T = rewards.shape
    terminated = np.zeros((T, B), bool)
    terminated[-1] = True
    next_values = np.vstack([values.T[1:], np.zeros((1, B))])
    return ref.gae(rewards.T, values.T, next_values, terminated, np.zeros_like(terminated),
                   gamma=gamma, lam=lam).advantages.T


def _tables_to_contract(rewards, q_values, next_q_values, actions, next_target_probs,
                        target_probs, behaviour_probs, terminated, truncated, *, gamma, lam):
    take = lambda x: np.take_along_axis(x, actions[..., None], -1)[..., 0]  # noqa: E731
    log_rhos = np.log(take(target_probs)) - np.log(take(behaviour_probs))
    expected_q = np.where(terminated, np.nan, (next_target_probs * next_q_values).sum(-1))
    return ref.retrace(rewards, take(q_values), expected_q, terminated, truncated, log_rhos,
                       gamma=gamma, lam=lam)


ROUND_TRIPS = [
    (_done_next_to_contract, "gae", dict(layout="done_next")),
    (_done_next_to_contract, "gae", dict(layout=conform.DoneNext("bootstrap_reward"))),
    (_rlax_to_contract, "vtrace", dict(layout="rlax", c_clip=1.0, pg_rho_clip=1.0)),
    (_torchrl_to_contract, "gae", dict(layout="torchrl")),
    (_puffer_to_contract, "puff_advantage", dict(layout="puffer_rows")),
    (_rows_to_contract, "gae", dict(layout="single_episode_rows")),
    (_tables_to_contract, "retrace", dict(layout="q_tables")),
]


@pytest.mark.parametrize("fn,estimator,kw", ROUND_TRIPS,
                         ids=[str(kw["layout"]) for _, _, kw in ROUND_TRIPS])
def test_every_layout_round_trips(fn, estimator, kw):
    report = conform.check(fn, estimator, **FAST, **kw)
    assert report.ok, str(report)
    ran = [c for c in report.cases if c.verdict == "pass"]
    assert len(ran) >= 6, str(report)  # the layout holds most families


# ---------------------------------------------------------------------------------------------
# correct functions conform


CORRECT = [
    (gae_closed_form, "gae", dict()),
    (cleanrl_style_gae, "gae", dict(layout="done_next")),
    (rlax_style_vtrace, "vtrace", dict(layout="rlax", c_clip=1.0, pg_rho_clip=1.0)),
    (nstep_forward, "nstep_returns", dict()),
    (retrace_from_tables, "retrace", dict(layout="q_tables")),
    (gae_batch_major, "gae", dict(layout="torchrl")),
]


@pytest.mark.parametrize("fn,estimator,kw", CORRECT, ids=[c[0].__name__ for c in CORRECT])
def test_correct_functions_conform(fn, estimator, kw):
    report = conform.check(fn, estimator, examples=10, **kw)
    assert report.ok, str(report)
    assert report.diagnosis is None and report.counterexample is None
    moments = report.case("exact_moments")
    assert moments.verdict == "pass", moments.reason


def test_contract_reference_conforms_with_every_family_run():
    report = conform.check(ref.vtrace, "vtrace", examples=10, per_step=True)
    assert report.ok
    assert {c.name for c in report.cases if c.verdict == "n/a"} == set()


# ---------------------------------------------------------------------------------------------
# buggy functions fail, with a short counterexample and the right name


def gae_next_row(rewards, values, next_values, terminated, truncated, *, gamma, lam):
    """reads values[t+1] instead of next_values[t]"""
    nv = np.vstack([values[1:], next_values[-1:]])
    return gae_closed_form(rewards, values, nv, terminated, truncated, gamma=gamma, lam=lam)


def gae_cut_at_termination_only(rewards, values, next_values, terminated, truncated, *, gamma,
                                lam):
    return gae_closed_form(rewards, values, next_values, terminated, np.zeros_like(truncated),
                           gamma=gamma, lam=lam)


def gae_no_lambda(rewards, values, next_values, terminated, truncated, *, gamma, lam):
    return gae_closed_form(rewards, values, next_values, terminated, truncated, gamma=gamma,
                           lam=1.0)


def nstep_across_done(rewards, next_values, terminated, truncated, *, gamma, n):
    T, B = rewards.shape
    out = np.zeros((T, B))
    for t in range(T):
        m = min(n, T - t)
        out[t] = sum(gamma ** k * rewards[t + k] for k in range(m))
        last = t + m - 1
        out[t] += gamma ** m * np.where(terminated[last], 0.0, next_values[last])
    return out


def vtrace_ratio_inverted(v_tm1, v_t, r_t, discount_t, rho_tm1, lambda_, *, clip_rho_threshold):
    return rlax_style_vtrace(v_tm1, v_t, r_t, discount_t, 1.0 / rho_tm1, lambda_,
                             clip_rho_threshold=clip_rho_threshold)


def retrace_same_step_trace(rewards, q_values, next_q_values, actions, target_probs,
                            behaviour_probs, next_target_probs, terminated, truncated, *,
                            gamma, lam):
    T, B = rewards.shape
    targets = np.zeros((T, B))
    for b in range(B):
        after = 0.0
        for t in reversed(range(T)):
            g = rewards[t, b] + (0.0 if terminated[t, b] else gamma * next_target_probs[t, b]
                                 @ next_q_values[t, b])
            if not (terminated[t, b] or truncated[t, b]) and t < T - 1:
                a = actions[t, b]  # c_t of this step instead of c_{t+1}
                c = lam * min(1.0, target_probs[t, b, a] / behaviour_probs[t, b, a])
                g += gamma * c * (after - q_values[t + 1, b, actions[t + 1, b]])
            targets[t, b] = after = g
    return targets


def gae_masked_by_multiplying(rewards, values, next_values, terminated, truncated, *, gamma,
                              lam):
    """NaN * 0 = NaN: multiplies by (1 - terminated) instead of masking"""
    nv = next_values * (1.0 - terminated)
    safe = np.where(np.isnan(nv), 0.0, nv)
    out = gae_closed_form(rewards, values, safe, terminated, truncated, gamma=gamma, lam=lam)
    return out + 0.0 * nv  # the NaN leaks into the step it was read at


def gae_float32_inside(rewards, values, next_values, terminated, truncated, *, gamma, lam):
    f = lambda x: np.asarray(x, np.float32)  # noqa: E731
    out = gae_closed_form(f(rewards), f(values), f(next_values), terminated, truncated,
                          gamma=np.float32(gamma), lam=np.float32(lam))
    return out.astype(np.float32).astype(np.float64)


BUGGY = [
    (gae_next_row, "gae", dict(), "next_value_from_next_row"),
    (gae_cut_at_termination_only, "gae", dict(), "trace_not_cut_at_truncation"),
    (gae_no_lambda, "gae", dict(), "lambda_missing_from_trace"),
    (cleanrl_style_gae, "gae", dict(layout=conform.DoneNext("as_done")),
     "truncation_as_termination"),
    (nstep_across_done, "nstep_returns", dict(), "nstep_window_crosses_done"),
    (vtrace_ratio_inverted, "vtrace", dict(layout="rlax", c_clip=1.0, pg_rho_clip=1.0),
     "ratio_inverted"),
    (retrace_same_step_trace, "retrace", dict(layout="q_tables"), "retrace_c_same_step"),
    (_puffer_to_contract, "puff_advantage", dict(layout=conform.PufferRows("ignored")),
     "truncations_ignored"),
    (gae_float32_inside, "gae", dict(), "float32_arithmetic"),
]


@pytest.mark.parametrize("fn,estimator,kw,bug", BUGGY, ids=[b[3] for b in BUGGY])
def test_buggy_functions_fail_with_a_short_counterexample_and_the_bug_named(fn, estimator, kw,
                                                                            bug):
    report = conform.check(fn, estimator, **FAST, **kw)
    assert not report.ok
    assert report.diagnosis == bug, str(report)
    cx = report.counterexample
    assert cx is not None and cx.T <= 3 and cx.B == 1, str(report)
    assert np.any(cx.got != cx.expected)
    # the counterexample really fails: the reference gives `expected` on these inputs
    spec = conform.ESTIMATORS[estimator]
    again = spec.reference()(*[cx.inputs[k] for k in spec.inputs], **cx.params)
    np.testing.assert_allclose(again if spec.outputs == ("advantages",) or
                               len(spec.outputs) == 1 else again[0], cx.expected)


def test_the_failing_family_is_the_one_the_bug_lives_in():
    report = conform.check(gae_cut_at_termination_only, "gae", **FAST)
    assert report.case("truncations_inside").verdict == "fail"
    assert report.case("no_dones").verdict == "pass"
    assert report.case("terminations_inside").verdict in ("pass", "fail")
    report = conform.check(gae_next_row, "gae", **FAST)
    assert report.case("inconsistent_next_values").verdict == "fail"
    assert report.case("no_dones").verdict == "pass"  # consistent data cannot see it


def test_nan_under_terminated_is_a_warning_unless_strict():
    report = conform.check(gae_masked_by_multiplying, "gae", **FAST)
    assert report.ok and report.warnings, str(report)
    assert report.case("nan_under_terminated").reason.startswith("warning:")
    strict = conform.check(gae_masked_by_multiplying, "gae", strict_nan=True, **FAST)
    assert not strict.ok and strict.failed == ["nan_under_terminated"]
    assert strict.diagnosis == "nan_leak_under_terminated"


# ---------------------------------------------------------------------------------------------
# bad functions and bad arguments


def test_a_function_that_raises_gets_a_verdict():
    def broken(rewards, values, next_values, terminated, truncated, *, gamma, lam):
        raise RuntimeError("boom")

    report = conform.check(broken, "gae", **FAST)
    assert not report.ok and report.diagnosis == "raises"
    assert "RuntimeError: boom" in report.counterexample.error


def test_wrong_shape_and_nan_outputs_get_a_verdict():
    def flat(rewards, values, next_values, terminated, truncated, *, gamma, lam):
        return np.zeros(rewards.size + 1)

    def nans(rewards, values, next_values, terminated, truncated, *, gamma, lam):
        return np.full(rewards.shape, np.nan)

    report = conform.check(flat, "gae", **FAST)
    assert not report.ok and report.diagnosis == "wrong_shape"
    report = conform.check(nans, "gae", **FAST)
    assert not report.ok and "NaN" in report.cases[0].reason


def test_a_function_that_hangs_is_stopped():
    def hangs(rewards, values, next_values, terminated, truncated, *, gamma, lam):
        time.sleep(60)

    start = time.perf_counter()
    report = conform.check(hangs, "gae", timeout=0.2, **FAST)
    assert time.perf_counter() - start < 10
    assert not report.ok and report.diagnosis == "hangs"
    assert all(c.verdict in ("fail", "n/a") for c in report.cases)


@pytest.mark.parametrize("kw,name", [
    (dict(estimator="bogus"), "estimator"),
    (dict(layout="bogus"), "layout"),
    (dict(output="bogus"), "output"),
    (dict(gamma=1.5), "gamma"),
    (dict(lam=-0.1), "lam"),
    (dict(rho_clip=1.0), "rho_clip"),  # gae has no rho_clip
    (dict(examples=0), "examples"),
    (dict(dtype="float16"), "dtype"),
    (dict(array="cupy"), "array"),
])
def test_bad_arguments_are_usage_errors_naming_the_argument(kw, name):
    kw = {"estimator": "gae", **kw}
    with pytest.raises(conform.ConformUsageError, match=f"^{name}"):
        conform.check(ref.gae, **kw)


def test_a_parameter_the_function_does_not_take_must_be_fixed():
    def hard_coded(rewards, values, next_values, terminated, truncated):
        return ref.gae(rewards, values, next_values, terminated, truncated, gamma=0.9,
                       lam=0.5).advantages

    with pytest.raises(conform.ConformUsageError, match="^gamma"):
        conform.check(hard_coded, "gae", layout="done_next")
    assert conform.check(hard_coded, "gae", gamma=0.9, lam=0.5, **FAST).ok


def test_same_seed_same_report():
    a = json.loads(conform.check(gae_next_row, "gae", seed=3, **FAST).to_json())
    b = json.loads(conform.check(gae_next_row, "gae", seed=3, **FAST).to_json())
    a.pop("seconds"), b.pop("seconds")
    assert a == b


def test_json_report_schema():
    d = json.loads(conform.check(gae_next_row, "gae", **FAST).to_json())
    assert d["ok"] is False and d["estimator"] == "gae" and d["layout"] == "contract"
    assert all(set(c) == {"name", "verdict", "reason"} for c in d["cases"])
    assert {c["verdict"] for c in d["cases"]} <= {"pass", "fail", "n/a"}
    cx = d["counterexample"]
    assert set(cx["inputs"]) == {"rewards", "values", "next_values", "terminated", "truncated"}
    assert len(cx["inputs"]["rewards"]) == len(cx["expected"]) == len(cx["got"])
    assert d["diagnosis"] == "next_value_from_next_row"


# ---------------------------------------------------------------------------------------------
# pytest fixture and CLI


def test_the_pytest_fixture(conform_check):
    report = conform_check(gae_closed_form, "gae", **FAST)
    assert report.ok
    with pytest.raises(AssertionError, match="DOES NOT CONFORM"):
        conform_check(gae_next_row, "gae", **FAST)


def test_cli_exit_codes(tmp_path, monkeypatch, capsys):
    (tmp_path / "user_estimators.py").write_text(
        "import numpy as np\n"
        "from estimators import numpy as ref\n"
        "def good(rewards, values, next_values, terminated, truncated, *, gamma, lam):\n"
        "    return ref.gae(rewards, values, next_values, terminated, truncated,\n"
        "                   gamma=gamma, lam=lam).advantages\n"
        "def bad(rewards, values, next_values, terminated, truncated, *, gamma, lam):\n"
        "    return good(rewards, values, next_values, terminated | truncated,\n"
        "                np.zeros_like(truncated), gamma=gamma, lam=lam)\n"
        "x = 3\n")
    (tmp_path / "broken_module.py").write_text("raise ImportError('missing dependency')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    base = ["--estimator", "gae", "--examples", "10"]
    assert cli_main(["user_estimators:good", *base]) == 0
    out = tmp_path / "report.json"
    assert cli_main(["user_estimators:bad", *base, "--json", str(out)]) == 1
    d = json.loads(out.read_text())
    assert d["ok"] is False and d["diagnosis"] == "truncation_as_termination"
    capsys.readouterr()
    for argv in (["broken_module:f", *base], ["user_estimators:nope", *base],
                 ["user_estimators:x", *base], ["user_estimators", *base],
                 ["user_estimators:good", "--estimator", "bogus"],
                 ["user_estimators:good", *base, "--param", "gamma"],
                 ["user_estimators:good", *base, "--param", "gamma=abc"],
                 ["user_estimators:good", *base, "--json", str(tmp_path)],
                 ["user_estimators:good", *base, "--truncation-fold", "as_done"]):
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "Traceback" not in err, (argv, err)


def test_cli_usage_error_has_no_traceback_in_a_fresh_process():
    result = subprocess.run([sys.executable, "-m", "offpolicy.conform", "no_such_module:gae",
                             "--estimator", "gae"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("offpolicy.conform: error: target")


def test_a_function_that_writes_into_its_inputs_fails():
    def in_place(rewards, values, next_values, terminated, truncated, *, gamma, lam):
        rewards += 0.0 * rewards + 1.0  # SB3-style folding written in place
        return gae_closed_form(rewards - 1.0, values, next_values, terminated, truncated,
                               gamma=gamma, lam=lam)

    report = conform.check(in_place, "gae", **FAST)
    assert not report.ok and report.diagnosis == "modifies_inputs_in_place"
    assert "'rewards'" in report.diagnosis_detail or "0" in report.diagnosis_detail


def test_per_step_gamma_lambda_family_runs_when_asked():
    def per_step_loop(rewards, values, next_values, terminated, truncated, *, gamma, lam):
        T, B = rewards.shape
        gamma = np.broadcast_to(gamma, (T, B))
        lam = np.broadcast_to(lam, (T, B))
        out, acc = np.zeros((T, B)), np.zeros(B)
        for t in reversed(range(T)):
            boot = np.where(terminated[t], 0.0, next_values[t])
            cont = ~(terminated[t] | truncated[t]) & (t < T - 1)
            acc = rewards[t] + gamma[t] * boot - values[t] + gamma[t] * lam[t] * cont * acc
            out[t] = acc
        return out

    def late_discount(rewards, values, next_values, terminated, truncated, *, gamma, lam):
        """the trace into t+1 discounted by gamma_{t+1} instead of gamma_t"""
        T, B = rewards.shape
        gamma = np.broadcast_to(gamma, (T, B))
        lam = np.broadcast_to(lam, (T, B))
        out, acc = np.zeros((T, B)), np.zeros(B)
        for t in reversed(range(T)):
            boot = np.where(terminated[t], 0.0, next_values[t])
            cont = ~(terminated[t] | truncated[t]) & (t < T - 1)
            trace_discount = gamma[t + 1] if t < T - 1 else 0.0
            acc = (rewards[t] + gamma[t] * boot - values[t]
                   + trace_discount * lam[t] * cont * acc)
            out[t] = acc
        return out

    report = conform.check(per_step_loop, "gae", **FAST)
    assert report.case("per_step_gamma_lambda").verdict == "n/a"
    assert conform.check(per_step_loop, "gae", per_step=True, **FAST).ok
    report = conform.check(late_discount, "gae", per_step=True, **FAST)
    assert report.failed == ["per_step_gamma_lambda"]
    assert report.diagnosis == "per_step_gamma_read_one_step_late", str(report)
    assert report.counterexample.T <= 3


@pytest.mark.slow
def test_every_catalogue_bug_is_named_by_the_runner():
    """Every mutant of the catalogue, run as a user's function, fails with a counterexample of
    T <= 3 and its own name (or a class that behaves identically on every example)."""
    from offpolicy import mutation
    from offpolicy.conform.diagnosis import load_mutant

    outputs = {"vtrace_pg": "pg_advantages", "returns_from": "returns", "value_target": "returns"}
    for mutant in mutation.MUTANTS:
        if mutant.name == "nan_leak_under_terminated":
            continue  # the patched reference's own output guard raises; tested directly above
        for estimator in mutant.estimators:
            if estimator not in conform.ESTIMATORS:
                continue
            output = next((o for k, o in outputs.items() if mutant.name.startswith(k)), None)
            if output and output not in conform.ESTIMATORS[estimator].outputs:
                continue
            fn = getattr(load_mutant(mutant), estimator)
            report = conform.check(fn, estimator, output=output, examples=20,
                                   per_step="per_step" in mutant.name, moments=False,
                                   strict_nan="nan" in mutant.name)
            assert not report.ok, (mutant.name, estimator)
            assert report.counterexample.T <= 3, (mutant.name, estimator, str(report))
            same = report.diagnosis_detail or ""
            assert report.diagnosis == mutant.name or mutant.name in same, \
                (mutant.name, estimator, str(report))


def test_the_readme_conformance_example_prints_what_it_says(tmp_path, monkeypatch, capsys):
    """The README's my_gae.py and its Python snippet run, and print what the comments say."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Check your own estimator", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    module = next(b for b in blocks if b.lstrip().startswith("import numpy"))
    snippet = next(b for b in blocks if "conform.check(my_gae.gae" in b)
    (tmp_path / "my_gae.py").write_text(module)
    monkeypatch.syspath_prepend(str(tmp_path))
    exec(compile(snippet, "README", "exec"), {})
    printed = capsys.readouterr().out.split("\n")
    promised = [line.split("#", 1)[1].strip() for line in snippet.splitlines()
                if line.startswith("print(")]
    assert [p.strip() for p in printed[:len(promised)]] == promised
    assert "DoneNext" in snippet and "--truncation-fold as_done" in section


def test_a_single_stream_function_is_checked_column_by_column():
    def gae_one_stream(rewards, values, next_values, terminated, truncated, *, gamma, lam):
        T = len(rewards)
        out, acc = np.zeros(T), 0.0
        for t in reversed(range(T)):
            boot = 0.0 if terminated[t] else next_values[t]
            cont = (not (terminated[t] or truncated[t])) and t < T - 1
            acc = rewards[t] + gamma * boot - values[t] + (gamma * lam * acc if cont else 0.0)
            out[t] = acc
        return out

    report = conform.check(gae_one_stream, "gae", **FAST)
    assert report.ok and report.layout == "contract(batched=False)", str(report)
    assert any("one stream" in w for w in report.warnings)
    assert conform.check(ref.gae, "gae", **FAST).layout == "contract"  # batched stays batched


def test_a_function_that_needs_float_flags_is_checked_with_them():
    import torch

    def gae_float_flags(rewards, values, next_values, terminated, truncated, *, gamma, lam):
        not_terminated = 1 - terminated  # torch refuses this for bool tensors
        goes_on = 1 - torch.maximum(terminated, truncated)
        T = rewards.shape[0]
        out, acc = torch.zeros_like(rewards), torch.zeros_like(rewards[0])
        for t in reversed(range(T)):
            keep = goes_on[t] if t < T - 1 else torch.zeros_like(goes_on[t])
            boot = torch.where(not_terminated[t] > 0, next_values[t], 0.0)
            acc = rewards[t] + gamma * boot - values[t] + gamma * lam * keep * acc
            out[t] = acc
        return out

    report = conform.check(gae_float_flags, "gae", array="torch", **FAST)
    assert report.ok and report.layout == "contract(flags='float')", str(report)


def test_pick_finds_the_output_in_what_the_function_returns():
    import collections

    Out = collections.namedtuple("Out", ["errors", "pg_advantage", "q_estimate"])

    def vtrace_named(*args, **kw):
        out = ref.vtrace(*args, **kw)
        return Out(out.advantages, out.pg_advantages, out.value_targets)

    # the singular field name is found; a plain tuple is read in the contract's order
    assert conform.check(vtrace_named, "vtrace", output="pg_advantages", **FAST).ok
    assert conform.check(lambda *a, **k: tuple(ref.vtrace(*a, **k)), "vtrace",
                         output="value_targets", **FAST).ok
    # no field of that name: never a silent positional guess
    report = conform.check(vtrace_named, "vtrace", output="value_targets", **FAST)
    assert not report.ok and "pick" in report.cases[0].reason
    assert conform.check(vtrace_named, "vtrace", output="value_targets", pick="q_estimate",
                         **FAST).ok
    assert conform.check(vtrace_named, "vtrace", output="advantages", pick=0, **FAST).ok


def test_shrinking_never_leaves_what_the_layout_can_hold():
    def gae_next_row_done_next(rewards, values, dones, last_values, last_dones, *, gamma, lam):
        return cleanrl_style_gae(rewards, values, dones, last_values, np.zeros_like(last_dones),
                                 gamma=gamma, lam=lam)  # forgets the last done

    report = conform.check(gae_next_row_done_next, "gae", layout="done_next", **FAST)
    assert not report.ok
    cx = report.counterexample
    x = cx.inputs
    goes_on = ~(x["terminated"] | x["truncated"])[:-1]
    np.testing.assert_array_equal(x["next_values"][:-1][goes_on], x["values"][1:][goes_on])


def test_rlax_q_side_cannot_hold_inconsistent_tables():
    def general_returns(q_t, a_t, r_t, discount_t, pi_t, mu_t, lambda_):
        return np.zeros_like(r_t)

    report = conform.check(general_returns, "retrace", layout="rlax", **FAST)
    assert report.case("inconsistent_next_values").verdict == "n/a"


def test_two_bugs_at_once_are_both_named():
    def two_bugs(rewards, values, next_values, terminated, truncated, *, gamma, lam):
        return gae_closed_form(rewards, values, next_values, terminated | truncated,
                               np.zeros_like(truncated), gamma=gamma, lam=1.0)

    def float32_and_truncation(rewards, values, next_values, terminated, truncated, *, gamma,
                               lam):
        f = lambda x: np.asarray(x, np.float32)  # noqa: E731
        return gae_closed_form(f(rewards), f(values), f(next_values), terminated | truncated,
                               np.zeros_like(truncated), gamma=np.float32(gamma),
                               lam=np.float32(lam)).astype(np.float64)

    report = conform.check(two_bugs, "gae", examples=15, moments=False)
    assert set(report.diagnosis.split("+")) == {"lambda_missing_from_trace",
                                                "truncation_as_termination"}, str(report)
    report = conform.check(float32_and_truncation, "gae", examples=15, moments=False)
    assert report.diagnosis == "truncation_as_termination+float32_arithmetic", str(report)
