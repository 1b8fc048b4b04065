"""The conformance runner on estimator code written the way real training code is written.

Every function here is written in this file, in the convention of a kind of real code (a
CleanRL-style loop over ``reversed(range(T))`` with ``nextnonterminal``, an SB3-style buffer
with ``episode_starts`` and a time-out folded into the rewards, a per-trajectory
``finish_path`` with a last value, pytorch-a2c-ppo-acktr's ``masks``/``bad_masks``, index
lists, per-step ``dones`` + ``next_values``, ...): no library code is copied. The correct ones
(the false-positive suite) must all conform; each buggy one must fail in the family that
isolates its factor and be named by its bug class.

The expected answers are the contract's (docs/DESIGN.md): a correct function conforms
whatever its convention; the hand-computed numbers below are worked out from
A_t = sum_l (gamma lam)^l delta_{t+l} with delta_t = r_t + gamma V(s'_t) [not terminated] - V(s_t).
"""

from __future__ import annotations

import numpy as np
import pytest

from offpolicy import conform
from offpolicy.conform import Fold, StoredValues

FAST = dict(examples=6, moments=False)


# ---------------------------------------------------------------------------------------------
# correct functions, one per convention


def cleanrl_loop(rewards, values, dones, next_value, next_done, gamma, lam):
    """CleanRL's ppo.py shape: dones[t] = 'obs_t starts an episode'; next_value/next_done
    close the segment; the rollout folded gamma V(final obs) into the time-out reward."""
    T = rewards.shape[0]
    advantages = np.zeros_like(rewards)
    lastgaelam = 0.0
    for t in reversed(range(T)):
        if t == T - 1:
            nextnonterminal = 1.0 - next_done
            nextvalues = next_value
        else:
            nextnonterminal = 1.0 - dones[t + 1]
            nextvalues = values[t + 1]
        delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
        advantages[t] = lastgaelam = delta + gamma * lam * nextnonterminal * lastgaelam
    return advantages


def sb3_buffer(rewards, values, episode_starts, last_values, last_dones, gamma, lam):
    """An SB3-style rollout buffer's compute_returns_and_advantage: returns the buffer's two
    arrays in a dict (advantages, returns = advantages + values)."""
    buffer_size = rewards.shape[0]
    advantages = np.zeros_like(rewards)
    last_gae_lam = 0
    for step in reversed(range(buffer_size)):
        if step == buffer_size - 1:
            next_non_terminal = 1.0 - last_dones
            next_values = last_values
        else:
            next_non_terminal = 1.0 - episode_starts[step + 1]
            next_values = values[step + 1]
        delta = rewards[step] + gamma * next_values * next_non_terminal - values[step]
        last_gae_lam = delta + gamma * lam * next_non_terminal * last_gae_lam
        advantages[step] = last_gae_lam
    return {"advantages": advantages, "returns": advantages + values}


def finish_path(rewards, values, last_value, gamma, lam):
    """Per finished trajectory (Spinning Up's shape): append the last value, discounted
    cumulative sum of the TD errors."""
    vals = np.append(values, last_value)
    deltas = rewards + gamma * vals[1:] - vals[:-1]
    out = np.zeros_like(deltas)
    running = 0.0
    for t in range(len(deltas) - 1, -1, -1):
        running = deltas[t] + gamma * lam * running
        out[t] = running
    return out


def finish_path_values_plus_one(rewards, values, gamma, lam):
    """Per trajectory, with the last value already appended to ``values`` (length L+1)."""
    deltas = rewards + gamma * values[1:] - values[:-1]
    out = np.zeros_like(deltas)
    running = 0.0
    for t in reversed(range(len(deltas))):
        out[t] = running = deltas[t] + gamma * lam * running
    return out


def a2c_masks(rewards, values, masks, bad_masks, gamma, lam):
    """pytorch-a2c-ppo-acktr's storage: value_preds and masks have T+1 rows (masks[t+1] = 0
    after a done of step t); the rollout folded gamma V(final obs) into the time-out reward,
    so bad_masks is not needed."""
    T = rewards.shape[0]
    gae = 0.0
    returns = np.zeros((T + 1,) + rewards.shape[1:])
    returns[-1] = values[-1]
    for step in reversed(range(T)):
        delta = rewards[step] + gamma * values[step + 1] * masks[step + 1] - values[step]
        gae = delta + gamma * lam * masks[step + 1] * gae
        returns[step] = gae + values[step]
    return returns[:-1] - values[:-1]


def timeouts_kept_apart(rewards, values, next_values, terminated, time_outs, gamma, lam):
    """Terminations and time-outs as separate flags, the next observation's value per step
    (the time-out bootstraps from it, a termination from nothing)."""
    T = rewards.shape[0]
    adv = np.zeros_like(rewards)
    acc = np.zeros_like(rewards[0])
    for t in reversed(range(T)):
        bootstrap = np.where(terminated[t], 0.0, next_values[t])
        delta = rewards[t] + gamma * bootstrap - values[t]
        goes_on = ~(terminated[t] | time_outs[t])
        acc = delta + gamma * lam * np.where(goes_on, acc, 0.0)
        adv[t] = acc
    return adv


def per_step_dones(rewards, values, next_values, dones, gamma, lam):
    """One per-step ``dones`` flag and per-step ``next_values`` (the time-out already folded
    into the reward by the rollout)."""
    not_done = 1.0 - dones.astype(float)
    deltas = rewards + gamma * next_values * not_done - values
    adv = np.zeros_like(rewards)
    for t in reversed(range(len(rewards))):
        later = adv[t + 1] if t + 1 < len(rewards) else 0.0
        adv[t] = deltas[t] + gamma * lam * not_done[t] * later
    return adv


def index_lists(rewards, values, next_values, terminal_indices, timeout_indices, gamma, lam):
    """One stream; the episode ends as lists of step indices."""
    ends = set(terminal_indices.tolist()) | set(timeout_indices.tolist())
    terminal = set(terminal_indices.tolist())
    adv = np.zeros(len(rewards))
    acc = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        if t in ends:
            acc = 0.0
        boot = 0.0 if t in terminal else next_values[t]
        acc = rewards[t] + gamma * boot - values[t] + gamma * lam * acc
        adv[t] = acc
    return adv


def stream_values_plus_one(rewards, values, episode_starts, next_done, gamma, lam):
    """One environment at a time, values with T+1 entries (the last: the bootstrap)."""
    T = len(rewards)
    adv = np.zeros(T)
    gae = 0.0
    for t in reversed(range(T)):
        nonterminal = 1.0 - (next_done if t == T - 1 else episode_starts[t + 1])
        delta = rewards[t] + gamma * values[t + 1] * nonterminal - values[t]
        gae = delta + gamma * lam * nonterminal * gae
        adv[t] = gae
    return adv


def lambda_return_recursive(rewards, values, dones, next_value, next_done, gamma, lam):
    """The lambda-return by its own recursion, G_t = r_t + gamma ((1 - lam) V(s_{t+1}) +
    lam G_{t+1}) (checked as GAE's ``returns`` output)."""
    T = rewards.shape[0]
    G = np.zeros_like(rewards)
    for t in reversed(range(T)):
        if t == T - 1:
            nonterminal, v_next, g_next = 1.0 - next_done, next_value, next_value
        else:
            nonterminal, v_next, g_next = 1.0 - dones[t + 1], values[t + 1], G[t + 1]
        G[t] = rewards[t] + gamma * nonterminal * ((1 - lam) * v_next + lam * g_next)
    return G


def quadratic_forward_sum(rewards, values, masks, gamma, lam):
    """O(T^2): for each t, sum (gamma lam)^k delta_{t+k} until the first done; the discount
    restarts for every t (values has T+1 rows)."""
    T = rewards.shape[0]
    deltas = rewards + gamma * values[1:] * masks[1:] - values[:-1]
    adv = np.zeros_like(rewards)
    for b in range(rewards.shape[1]):
        for t in range(T):
            weight, total = 1.0, 0.0
            for k in range(t, T):
                total += weight * deltas[k, b]
                if masks[k + 1, b] == 0:
                    break
                weight *= gamma * lam
            adv[t, b] = total
    return adv


def torch_cleanrl(rewards, values, dones, next_value, next_done, gamma, lam):
    """The CleanRL loop in torch."""
    import torch

    T = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in reversed(range(T)):
        nonterminal = 1.0 - (next_done if t == T - 1 else dones[t + 1])
        nextvalues = next_value if t == T - 1 else values[t + 1]
        delta = rewards[t] + gamma * nextvalues * nonterminal - values[t]
        advantages[t] = last = delta + gamma * lam * nonterminal * last
    return advantages


def nstep_per_trajectory(rewards, values, last_value, gamma, n):
    """n-step returns of one finished trajectory: a window that reaches the trajectory's end
    closes with its last value (0 after a termination), another with values[t+n]."""
    L = len(rewards)
    vals = np.append(values, last_value)
    out = np.zeros(L)
    for t in range(L):
        end = min(t + n, L)
        out[t] = sum(gamma ** (k - t) * rewards[k] for k in range(t, end)) \
            + gamma ** (end - t) * vals[end]
    return out


def nstep_stored(rewards, values, terminated, time_outs, next_values, gamma, n):
    """n-step returns over a segment with separate termination and time-out flags."""
    T = len(rewards)
    out = np.zeros(T)
    for t in range(T):
        total, discount = 0.0, 1.0
        for k in range(t, min(t + n, T)):
            total += discount * rewards[k]
            discount *= gamma
            if terminated[k]:
                break
            if time_outs[k] or k == min(t + n, T) - 1:
                total += discount * next_values[k]
                break
        out[t] = total
    return out


def vtrace_masks(rewards, values, masks, log_rhos, gamma, lam, rho_clip, c_clip):
    """V-trace value targets with a2c-style masks [T+1] and values [T+1] (the rollout folded
    gamma V(final obs) into time-out rewards)."""
    T = rewards.shape[0]
    rho = np.exp(log_rhos)
    rho_hat, c = np.minimum(rho_clip, rho), lam * np.minimum(c_clip, rho)
    acc = np.zeros_like(rewards[0])
    vs = np.zeros_like(rewards)
    for t in reversed(range(T)):
        m = masks[t + 1]
        delta = rho_hat[t] * (rewards[t] + gamma * m * values[t + 1] - values[t])
        acc = delta + gamma * m * c[t] * acc
        vs[t] = values[t] + acc
    return vs


# (function, estimator, check keywords): each must conform
CORRECT = [
    pytest.param(cleanrl_loop, "gae",
                 dict(layout=StoredValues(flags="episode_starts", fold="bootstrap_reward")),
                 id="cleanrl-loop-episode-starts"),
    pytest.param(sb3_buffer, "gae",
                 dict(layout=StoredValues(flags="episode_starts"),
                      fold=Fold("gamma_final_value")), id="sb3-buffer-dict"),
    pytest.param(sb3_buffer, "gae",
                 dict(layout=StoredValues(flags="episode_starts"), fold="bootstrap_reward",
                      output="returns"), id="sb3-buffer-returns"),
    pytest.param(finish_path, "gae", dict(layout=StoredValues(calls="trajectory")),
                 id="finish-path-last-value"),
    pytest.param(finish_path_values_plus_one, "gae",
                 dict(layout=StoredValues(calls="trajectory", bootstrap="values_plus_one")),
                 id="finish-path-values-plus-one"),
    pytest.param(a2c_masks, "gae",
                 dict(layout=StoredValues(flags="masks", bootstrap="values_plus_one",
                                          fold="bootstrap_reward")), id="a2c-masks"),
    pytest.param(timeouts_kept_apart, "gae", dict(layout=StoredValues(next_values=True)),
                 id="terminated-time-outs-next-values"),
    pytest.param(timeouts_kept_apart, "gae",
                 dict(layout=StoredValues(next_values=True, calls="stream")),
                 id="terminated-time-outs-stream"),
    pytest.param(per_step_dones, "gae",
                 dict(layout=StoredValues(flags="dones", next_values=True,
                                          fold="bootstrap_reward")), id="per-step-dones"),
    pytest.param(index_lists, "gae",
                 dict(layout=StoredValues(flags="indices", calls="stream", next_values=True)),
                 id="index-lists"),
    pytest.param(stream_values_plus_one, "gae",
                 dict(layout=StoredValues(flags="episode_starts", calls="stream",
                                          bootstrap="values_plus_one",
                                          fold="bootstrap_reward")),
                 id="stream-values-plus-one"),
    pytest.param(lambda_return_recursive, "gae",
                 dict(layout=StoredValues(flags="episode_starts", fold="bootstrap_reward"),
                      output="returns"), id="lambda-return-recursion"),
    pytest.param(quadratic_forward_sum, "gae",
                 dict(layout=StoredValues(flags="masks", bootstrap="values_plus_one",
                                          fold="bootstrap_reward")),
                 id="quadratic-forward-sum"),
    pytest.param(torch_cleanrl, "gae",
                 dict(layout=StoredValues(flags="episode_starts", fold="bootstrap_reward"),
                      array="torch"), id="torch-cleanrl"),
    pytest.param(nstep_per_trajectory, "nstep_returns",
                 dict(layout=StoredValues(calls="trajectory")), id="nstep-per-trajectory"),
    pytest.param(nstep_stored, "nstep_returns",
                 dict(layout=StoredValues(calls="stream", next_values=True)),
                 id="nstep-stream-time-outs"),
    pytest.param(vtrace_masks, "vtrace",
                 dict(layout=StoredValues(flags="masks", bootstrap="values_plus_one",
                                          fold="bootstrap_reward"), output="value_targets",
                      pg_rho_clip=1.0), id="vtrace-masks"),
    pytest.param(lambda rewards, values, dones, last_values, last_dones, gamma, lam:
                 cleanrl_loop(rewards, values, dones, last_values, last_dones, gamma, lam),
                 "gae", dict(layout=conform.DoneNext(truncation_fold="bootstrap_reward")),
                 id="done-next-layout-kept"),
]


@pytest.mark.parametrize("fn, estimator, kw", CORRECT)
def test_correct_real_code_conforms(fn, estimator, kw):
    report = conform.check(fn, estimator, **{**FAST, **kw})
    assert report.ok, str(report)
    ran = [c.name for c in report.cases if c.verdict == "pass"]
    assert "no_dones" in ran and "terminations_inside" in ran, str(report)


def test_false_positive_suite_is_wide():
    """The issue asks for at least 15 correct functions in different conventions."""
    functions = {p.values[0] for p in CORRECT}
    assert len(CORRECT) >= 15 and len(functions) >= 15


@pytest.mark.parametrize("fn, estimator, kw", [CORRECT[3], CORRECT[6]])
def test_time_outs_inside_are_checked_where_the_form_carries_them(fn, estimator, kw):
    report = conform.check(fn, estimator, **{**FAST, **kw})
    assert report.case("truncations_inside").verdict == "pass", str(report)


def test_with_moments_too():
    report = conform.check(finish_path, "gae", layout=StoredValues(calls="trajectory"),
                           examples=4)
    assert report.case("exact_moments").verdict == "pass", str(report)


# ---------------------------------------------------------------------------------------------
# what a form cannot receive is n/a, never a failure nor the counterexample


def test_what_a_form_cannot_receive_is_not_applicable():
    report = conform.check(cleanrl_loop, "gae", layout=StoredValues(flags="episode_starts"),
                           **FAST)
    assert report.ok, str(report)
    assert report.case("inconsistent_next_values").verdict == "n/a"
    assert report.case("truncations_inside").verdict == "n/a"  # no fold: no V(final obs)
    assert report.case("truncated_at_last_step").verdict == "pass"  # the segment's end


# ---------------------------------------------------------------------------------------------
# real bugs in these conventions: the failing family is the factor, the class is named


def cleanrl_without_fold(rewards, values, dones, next_value, next_done, gamma, lam):
    return cleanrl_loop(rewards, values, dones, next_value, next_done, gamma, lam)


def segment_end_zero(rewards, values, dones, next_value, next_done, gamma, lam):
    """The loop starts from a next value of 0 at the segment's end."""
    return cleanrl_loop(rewards, values, dones, np.zeros_like(next_value), next_done, gamma,
                        lam)


def trace_runs_over_time_outs(rewards, values, next_values, terminated, time_outs, gamma, lam):
    """Only terminations cut the trace."""
    return timeouts_kept_apart(rewards, values, next_values, terminated,
                               np.zeros_like(time_outs), gamma, lam)


def bootstraps_after_termination(rewards, values, next_values, terminated, time_outs, gamma,
                                 lam):
    """The bootstrap is not masked at a termination (the trace is still cut)."""
    T = rewards.shape[0]
    adv = np.zeros_like(rewards)
    acc = np.zeros_like(rewards[0])
    for t in reversed(range(T)):
        delta = rewards[t] + gamma * next_values[t] - values[t]
        acc = delta + gamma * lam * np.where(terminated[t] | time_outs[t], 0.0, acc)
        adv[t] = acc
    return adv


def a2c_bad_masks_zeroing(rewards, values, masks, bad_masks, gamma, lam):
    """pytorch-a2c-ppo-acktr's use_proper_time_limits loop: the advantage of a time-out step
    is multiplied by bad_masks (0)."""
    T = rewards.shape[0]
    gae = 0.0
    adv = np.zeros_like(rewards)
    for step in reversed(range(T)):
        delta = rewards[step] + gamma * values[step + 1] * masks[step + 1] - values[step]
        gae = delta + gamma * lam * masks[step + 1] * gae
        gae = gae * bad_masks[step + 1]
        adv[step] = gae
    return adv


BUGGY = [
    pytest.param(cleanrl_without_fold, dict(layout=StoredValues(flags="episode_starts"),
                                            fold="as_done"),
                 "truncation_as_termination", "truncations_inside", id="cleanrl-as-done"),
    pytest.param(cleanrl_loop, dict(layout=StoredValues(flags="episode_starts"),
                                    fold=Fold("gamma_current_value")),
                 "timeout_bootstrap_from_current_value", "truncations_inside",
                 id="rsl-rl-current-value-fold"),
    pytest.param(segment_end_zero, dict(layout=StoredValues(flags="episode_starts",
                                                            fold="bootstrap_reward")),
                 "segment_end_not_bootstrapped", "no_dones", id="segment-end-zero"),
    pytest.param(trace_runs_over_time_outs, dict(layout=StoredValues(next_values=True)),
                 "trace_not_cut_at_truncation", "truncations_inside", id="trace-over-time-out"),
    pytest.param(bootstraps_after_termination, dict(layout=StoredValues(next_values=True)),
                 "bootstrap_at_termination", "terminations_inside",
                 id="bootstrap-after-termination"),
    pytest.param(a2c_bad_masks_zeroing, dict(layout=StoredValues(flags="masks",
                                                                 bootstrap="values_plus_one"),
                                             fold="as_done"),
                 "truncated_step_advantage_zeroed", "truncations_inside",
                 id="a2c-bad-masks"),
    # the repository's TimeLimitMask marks every step at the limit, terminal or not: with the
    # fold on every time-out bad_masks is 0 on a both-flags step too, and the class is the
    # both-flags variant (the survey's hand verdict on ikostrikov/pytorch-a2c-ppo-acktr-gail)
    pytest.param(a2c_bad_masks_zeroing, dict(layout=StoredValues(flags="masks",
                                                                 bootstrap="values_plus_one"),
                                             fold=Fold("nothing", "every_timeout")),
                 "truncated_step_advantage_zeroed_both_flags", "truncations_inside",
                 id="a2c-time-limit-mask"),
]


@pytest.mark.parametrize("fn, kw, bug, family", BUGGY)
def test_real_bugs_are_named_in_their_family(fn, kw, bug, family):
    report = conform.check(fn, "gae", **{**FAST, **kw})
    assert not report.ok
    assert report.case(family).verdict == "fail", str(report)
    assert report.case("no_dones").verdict == ("fail" if family == "no_dones" else "pass")
    assert report.diagnosis == bug, str(report)
    cx = report.counterexample
    assert cx.T <= 3 and cx.B == 1, str(report)


def test_each_isolated_family_varies_only_its_factor():
    """A correct treatment of terminations with a wrong one of time-outs passes
    terminations_inside (its examples carry no time-out)."""
    report = conform.check(trace_runs_over_time_outs, "gae",
                           layout=StoredValues(next_values=True), **FAST)
    assert report.case("terminations_inside").verdict == "pass", str(report)
    assert report.case("both_flags_one_step").verdict == "pass", str(report)
    assert report.case("truncations_inside").verdict == "fail", str(report)


def test_every_time_out_fold_on_terminated_steps_fails_only_where_it_terminates():
    """Spinning Up's loop: last_val = V(o) 'if timeout or epoch_ended', checked before
    'terminated': a step that terminated at a time-out or at the segment's end bootstraps.
    Only the both-flags and terminated-at-the-last-step families (and mixed ones) can see it.
    By hand, T=1: r, V(s_0), terminated and timed out, V(final) = x: the contract says
    A = r - V(s_0); the function gives r - V(s_0) + gamma x."""
    from offpolicy import mutation

    layout = StoredValues(calls="trajectory", fold=Fold("last_value", "every_timeout"))
    report = conform.check(finish_path, "gae", layout=layout, **FAST)
    isolated = [c.name for c in report.cases
                if c.verdict == "fail" and not c.name.startswith("mixed_")]
    assert isolated == ["both_flags_one_step", "terminated_at_last_step"], str(report)
    if "timeout_checked_before_termination" in {m.name for m in mutation.CATALOGUE}:
        assert report.diagnosis == "timeout_checked_before_termination", str(report)
    cx = report.counterexample
    assert cx.family in ("both_flags_one_step", "terminated_at_last_step") and cx.T == 1
    gamma, x = cx.params["gamma"], cx.call["last_value"]
    assert cx.expected[0, 0] == pytest.approx(cx.inputs["rewards"][0, 0]
                                              - cx.inputs["values"][0, 0])
    assert cx.got[0, 0] == pytest.approx(cx.expected[0, 0] + gamma * x)


def test_per_trajectory_function_ignoring_its_last_value_names_both_bugs():
    """Ignoring last_value is two bugs at once in the contract's terms: no bootstrap at the
    segment's end and none at a time-out."""
    def no_last_value(rewards, values, gamma, lam):
        return finish_path(rewards, values, 0.0, gamma, lam)

    report = conform.check(no_last_value, "gae", layout=StoredValues(calls="trajectory"),
                           **FAST)
    names = set((report.diagnosis or "").split("+"))
    # one class where the catalogue has it as one (conform-survey's
    # trajectory_end_never_bootstrapped), else both halves together
    assert names == {"trajectory_end_never_bootstrapped"} or \
        {"segment_end_not_bootstrapped", "truncation_as_termination"} <= names, str(report)


def three_bugs(rewards, values, next_values, terminated, truncated, *, gamma, lam):
    """A hand-written loop with three bugs: the bootstrap has no gamma, the trace has no
    lambda, and only terminations cut it (it runs on across a time-out)."""
    T = rewards.shape[0]
    adv = np.zeros_like(rewards)
    acc = np.zeros_like(rewards[0])
    for t in reversed(range(T)):
        delta = rewards[t] + np.where(terminated[t], 0.0, next_values[t]) - values[t]
        goes_on = ~terminated[t] & (t < T - 1)
        acc = delta + gamma * np.where(goes_on, acc, 0.0)
        adv[t] = acc
    return adv


def test_every_bug_of_a_three_bug_function_is_named():
    report = conform.check(three_bugs, "gae", examples=10, moments=False)
    assert set((report.diagnosis or "").split("+")) == {
        "bootstrap_without_gamma", "lambda_missing_from_trace",
        "trace_not_cut_at_truncation"}, str(report)
    cx = report.counterexample  # from a family the combination explains, still tiny
    assert cx.T <= 3 and cx.B == 1, str(report)


def test_counterexample_keeps_the_evidence_for_the_current_value_class():
    """rsl_rl's fold adds gamma V(s_t): a counterexample with V(s_t) = 0 could not tell it
    from 'no bootstrap'; the shrunk one keeps V(s_t) != V(final obs)."""
    report = conform.check(cleanrl_loop, "gae", layout=StoredValues(flags="episode_starts"),
                           fold=Fold("gamma_current_value"), **FAST)
    assert report.diagnosis == "timeout_bootstrap_from_current_value", str(report)
    cx = report.counterexample
    t = np.flatnonzero(cx.inputs["truncated"][:, 0] & ~cx.inputs["terminated"][:, 0])
    assert t.size, str(report)
    v, nv = cx.inputs["values"][t[0], 0], cx.inputs["next_values"][t[0], 0]
    assert v != nv and v != 0.0, str(report)
    # the counterexample is one the named class explains: its patched reference, run on the
    # counterexample's contract inputs, gives what the function gave
    from offpolicy import mutation

    patched = mutation.load(mutation.by_name("timeout_bootstrap_from_current_value"))
    x = cx.inputs
    got = patched.gae(x["rewards"], x["values"], x["next_values"], x["terminated"],
                      x["truncated"], **cx.params).advantages
    np.testing.assert_allclose(got, cx.got, rtol=0, atol=1e-12)
    assert not np.allclose(got, cx.expected)


# every fold a rollout loop gets wrong, through the correct CleanRL loop: the pipeline's bug
# is named by its class (the classes marked conform-survey are added to the catalogue by that
# branch; until it is merged they are skipped here, by name)
FOLD_BUGS = [
    (Fold("nothing"), "truncation_as_termination"),
    (Fold("nothing", done=False), "truncations_ignored"),
    (Fold("gamma_current_value"), "timeout_bootstrap_from_current_value"),
    (Fold("final_value"), "timeout_folded_without_gamma"),
    (Fold("final_value", "every_timeout"), "timeout_folded_without_gamma_both_flags"),
    (Fold("gamma_current_value", "every_timeout"),
     "timeout_bootstrap_from_current_value_both_flags"),
    (Fold("gamma_final_value", "every_timeout"), "bootstrap_at_terminated_and_truncated"),
]


@pytest.mark.parametrize("fold, bug", FOLD_BUGS, ids=[b for _, b in FOLD_BUGS])
def test_each_wrong_fold_is_named(fold, bug):
    from offpolicy import mutation

    if bug not in {m.name for m in mutation.CATALOGUE}:
        pytest.skip(f"the catalogue has no {bug} yet (conform-survey adds it)")
    report = conform.check(cleanrl_loop, "gae", layout=StoredValues(flags="episode_starts"),
                           fold=fold, **FAST)
    assert report.diagnosis == bug, str(report)
    assert report.counterexample.T <= 3 and report.counterexample.B == 1, str(report)
    if fold.on == "every_timeout":  # the fold's fault is on the both-flags step alone
        assert report.case("both_flags_one_step").verdict == "fail", str(report)
