"""More of the runner's paths pinned by their effect (issue 20): the Q side with conforming
functions written the way Q-learning code is written, the recorded call in the function's own
parameter names, and the diagnosis's ranking and tie rule."""

from __future__ import annotations

import numpy as np
import pytest

from offpolicy import conform
from offpolicy.conform import diagnosis


def q_trace_tables(trace):
    """A Q-trace on full tables, a backward loop over time (the way a Q(lambda)/Retrace learner
    writes it): G_t = r_t + gamma E_pi Q(s_{t+1}, .) + gamma c_{t+1} (G_{t+1} - Q(s_{t+1},
    a_{t+1})) while the episode and the segment go on; no bootstrap after a termination."""

    def fn(rewards, q_values, actions, next_q_values, next_target_probs, target_probs,
           behaviour_probs, terminated, truncated, *, gamma, lam):
        T, B = rewards.shape
        out = np.zeros((T, B))
        g = np.zeros(B)
        for t in reversed(range(T)):
            boot = np.where(terminated[t], 0.0,
                            gamma * (next_target_probs[t] * next_q_values[t]).sum(-1))
            if t + 1 < T:
                a1 = actions[t + 1]
                pi1 = np.take_along_axis(target_probs[t + 1], a1[:, None], -1)[:, 0]
                mu1 = np.take_along_axis(behaviour_probs[t + 1], a1[:, None], -1)[:, 0]
                q1 = np.take_along_axis(q_values[t + 1], a1[:, None], -1)[:, 0]
                c = lam * {"retrace": np.minimum(1.0, pi1 / mu1), "tree_backup": pi1,
                           "q_lambda": np.ones_like(pi1)}[trace]
                go_on = ~(terminated[t] | truncated[t])
                corr = np.where(go_on, gamma * c * (g - q1), 0.0)
            else:
                corr = np.zeros(B)
            g = rewards[t] + boot + corr
            out[t] = g
        return out

    return fn


@pytest.mark.parametrize("estimator", ["retrace", "tree_backup", "q_lambda"])
def test_a_correct_q_trace_on_full_tables_conforms(estimator):
    report = conform.check(q_trace_tables(estimator), estimator, layout="q_tables",
                           examples=8)
    assert report.ok, str(report)
    assert sum(c.verdict == "pass" for c in report.cases) >= 5


def test_a_q_trace_with_the_wrong_trace_fails_on_the_q_side():
    # tree-backup's trace under Retrace's name: the runner must see the difference
    report = conform.check(q_trace_tables("tree_backup"), "retrace", layout="q_tables",
                           examples=8, moments=False)
    assert not report.ok


def done_next_gae(rewards, values, dones, last_values, last_dones, *, gamma, lam):
    """SB3's compute_returns_and_advantage (its names: episode-start ``dones``, ``last_values``,
    ``last_dones``), with one bug: the last step never bootstraps."""
    T = rewards.shape[0]
    adv = np.zeros_like(rewards)
    last = 0.0
    for t in reversed(range(T)):
        if t == T - 1:
            nonterminal, next_v = 1.0 - last_dones, 0.0 * last_values
        else:
            nonterminal, next_v = 1.0 - dones[t + 1], values[t + 1]
        delta = rewards[t] + gamma * next_v * nonterminal - values[t]
        last = delta + gamma * lam * nonterminal * last
        adv[t] = last
    return adv


def test_the_recorded_call_is_in_the_functions_own_parameter_names():
    report = conform.check(done_next_gae, "gae", layout="done_next", examples=5,
                           moments=False, output="advantages")
    assert not report.ok
    call = report.counterexample.call
    assert call is not None, str(report)
    # what the function received, under the names it declares, not the contract's inputs
    assert set(call) == {"rewards", "values", "dones", "last_values", "last_dones", "gamma",
                         "lam"}, call
    T = len(report.counterexample.inputs["rewards"])
    assert np.asarray(call["rewards"]).shape[0] == T


def entry(key, name):
    """A scored entry as diagnose_full builds it: (key, name, detail, k, n, mutant, run)."""
    return (key, name, f"{name} detail", 3, 4, None, None)


def test_ranking_failing_fraction_first_then_all_recorded():
    best = diagnosis._name_best([entry((0.8, 1.0, -1), "a"), entry((0.9, 0.95, -3), "b")])
    assert best[1] == "b"  # more failing examples reproduced wins over more recorded ones
    best = diagnosis._name_best([entry((0.9, 0.95, -1), "a"), entry((0.9, 0.97, -3), "b")])
    assert best[1] == "b"


def test_ties_go_to_the_narrower_class_then_catalogue_order_and_are_reported():
    # equal on the first two: fewer estimators (-breadth larger) wins
    best = diagnosis._name_best([entry((1.0, 1.0, -5), "wide"), entry((1.0, 1.0, -1), "narrow")])
    assert best[1] == "narrow" and "indistinguishable here from: wide" in best[2]
    # equal everywhere: the first in catalogue order
    best = diagnosis._name_best([entry((1.0, 1.0, -2), "first"), entry((1.0, 1.0, -2), "second")])
    assert best[1] == "first" and "indistinguishable here from: second" in best[2]


@pytest.mark.parametrize("key, named", [((0.5, 0.9, 0), True), ((0.49, 1.0, 0), False),
                                        ((1.0, 0.89, 0), False)])
def test_a_class_is_named_only_above_both_thresholds(key, named):
    best = diagnosis._name_best([entry(key, "only")])
    assert (best is not None) == named
    if named:
        assert "[reproduces 3 of 4 failing examples]" in best[2]
