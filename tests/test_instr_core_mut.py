"""Mutation-guided tests of the core instruments (issue 20, group ``core`` of
.ci/mutation_score): ``offpolicy/_cli.py``'s Ctrl-C machinery in-process (the child-process
walk, ``run_main``'s exit paths, ``finish``) and ``registry.call_estimator``'s P3O branch.

Each test pins one path by its observable effect; the expected figures come from the contract
(docs/DESIGN.md's exit codes, the P3O formula of ``estimators.numpy.p3o_advantage``'s
docstring worked out by hand), never from the code's own output. The Ctrl-C tests stub
``finish`` (which ends the process) and ``kill_descendants`` so that they run inside pytest.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis.errors import InvalidArgument

from offpolicy import _cli, registry, strategies

# ---- the child-process walk --------------------------------------------------------------------


def _sleeper():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _stop(*procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def _state(pid):
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return stat[stat.rindex(")") + 2]


@pytest.fixture
def no_children_file(monkeypatch):
    """A kernel without /proc/PID/task/TID/children: opening it fails as it does there, so
    ``_children`` must fall back to scanning every process's parent."""
    real = open

    def fake(path, *a, **k):
        if str(path).endswith("/children"):
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(_cli, "open", fake, raising=False)


def test_children_finds_a_live_child_through_the_children_file():
    p = _sleeper()
    try:
        assert p.pid in _cli._children(os.getpid())
        assert _cli._children(p.pid) == []  # a sleeping python starts nothing
    finally:
        _stop(p)


def test_children_falls_back_to_the_parent_scan_without_the_children_file(no_children_file):
    """The fallback path: every /proc/N/stat whose parent field (the 4th, after the command in
    parentheses) is this process, state not Z. A missing children file is not "process gone"."""
    p = _sleeper()
    try:
        assert p.pid in _cli._children(os.getpid())
        assert _cli._children(p.pid) == []
    finally:
        _stop(p)


def test_children_parent_scan_skips_a_zombie(no_children_file):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        for _ in range(1000):  # until it has exited and is a zombie (not yet waited for)
            if _state(p.pid) == "Z":
                break
            time.sleep(0.01)
        assert _state(p.pid) == "Z"
        assert p.pid not in _cli._children(os.getpid())
    finally:
        p.wait()


def test_children_of_a_process_that_is_gone_is_empty():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # reaped: /proc/PID no longer exists
    assert _cli._children(p.pid) == []


def test_children_parent_scan_with_a_process_table_that_cannot_be_read(no_children_file,
                                                                         monkeypatch):
    def refuse(path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(_cli.os, "listdir", refuse)
    assert _cli._children(os.getpid()) == []


def test_descendants_lists_children_before_grandchildren():
    p = subprocess.Popen([sys.executable, "-c",
                          "import subprocess, sys, time\n"
                          "c = subprocess.Popen([sys.executable, '-c', "
                          "'import time; time.sleep(60)'])\n"
                          "print(c.pid, flush=True)\n"
                          "time.sleep(60)\n"], stdout=subprocess.PIPE, text=True)
    try:
        grandchild = int(p.stdout.readline())
        below = _cli.descendants()
        assert p.pid in below and grandchild in below
        assert below.index(p.pid) < below.index(grandchild)
        assert _cli.descendants(p.pid) == [grandchild]
    finally:
        os.kill(grandchild, signal.SIGKILL)
        _stop(p)


def test_kill_descendants_kills_all_but_the_spared():
    a, b = _sleeper(), _sleeper()
    try:
        spare = frozenset(x for x in _cli.descendants() if x != b.pid)
        assert a.pid in spare
        _cli.kill_descendants(spare)
        assert b.wait(timeout=30) == -signal.SIGKILL
        assert a.poll() is None
    finally:
        _stop(a, b)


# ---- run_main's exit paths and finish ----------------------------------------------------------


class Finished(Exception):
    """Stands for ``finish`` ending the process."""


@pytest.fixture
def ctrl_c(monkeypatch):
    """finish and kill_descendants recorded instead of run; the signal handlers that run_main
    installs are put back afterwards."""
    calls = []

    def finish(prog, detail=""):
        calls.append(("finish", prog, detail))
        raise Finished

    monkeypatch.setattr(_cli, "finish", finish)
    monkeypatch.setattr(_cli, "kill_descendants",
                        lambda spare=frozenset(): calls.append(("kill", spare)))
    saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield calls
    signal.signal(signal.SIGINT, saved[0])
    signal.signal(signal.SIGTERM, saved[1])


@pytest.mark.parametrize("returned,code", [(0, 0), (1, 1), (2, 2), (None, 0), ("x", 0)])
def test_run_main_exits_with_mains_code_and_nothing_else(ctrl_c, returned, code):
    """No interrupt: exit with main's int (anything else is 0), no kill, no interrupted line."""
    with pytest.raises(SystemExit) as e:
        _cli.run_main(lambda: returned, "prog")
    assert e.value.code == code
    assert ctrl_c == []


def test_run_main_installs_its_handler_for_sigint_and_sigterm(ctrl_c):
    seen = {}

    def main():
        seen["int"] = signal.getsignal(signal.SIGINT)
        seen["term"] = signal.getsignal(signal.SIGTERM)
        return 0

    with pytest.raises(SystemExit):
        _cli.run_main(main, "prog")
    assert isinstance(seen["int"], _cli._Interrupt) and seen["int"].prog == "prog"
    assert seen["term"] is seen["int"]


def test_run_main_leaves_an_ignored_sigint_ignored(ctrl_c):
    """A background job started with SIGINT ignored keeps ignoring it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    seen = {}

    def main():
        seen["int"] = signal.getsignal(signal.SIGINT)
        return 0

    with pytest.raises(SystemExit):
        _cli.run_main(main, "prog")
    assert seen["int"] == signal.SIG_IGN


def test_run_main_main_returning_130_keeps_its_own_line(ctrl_c):
    """main caught the interrupt, printed its line and returned 130: children killed, then
    finish with no line of its own (detail None)."""
    with pytest.raises(Finished):
        _cli.run_main(lambda: _cli.INTERRUPTED, "prog")
    assert ctrl_c == [("kill", frozenset()), ("finish", "prog", None)]


def test_run_main_keyboard_interrupt_out_of_main_finishes_with_the_line(ctrl_c):
    def main():
        raise KeyboardInterrupt

    with pytest.raises(Finished):
        _cli.run_main(main, "prog")
    assert ctrl_c == [("kill", frozenset()), ("finish", "prog", "")]


def test_run_main_a_signal_that_main_swallowed_still_ends_as_interrupted(ctrl_c):
    """The handler ran (SIGTERM: nothing spared), main caught the KeyboardInterrupt and
    returned 0: the process still ends as interrupted, with the line (detail "")."""
    def main():
        handler = signal.getsignal(signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):
            handler(signal.SIGTERM, None)
        return 0

    with pytest.raises(Finished):
        _cli.run_main(main, "prog")
    assert ctrl_c[0] == ("kill", frozenset())  # the handler's own kill, nothing spared
    assert ctrl_c[-2:] == [("kill", frozenset()), ("finish", "prog", "")]


def test_interrupt_second_signal_kills_and_finishes_at_once(ctrl_c):
    handler = _cli._Interrupt("prog")
    with pytest.raises(KeyboardInterrupt):
        handler(signal.SIGTERM, None)
    handler.stop.set()  # the reaper thread stops
    ctrl_c.clear()
    with pytest.raises(Finished):
        handler(signal.SIGTERM, None)
    assert handler.count == 2
    assert ctrl_c == [("kill", frozenset()), ("finish", "prog", "")]


def test_interrupt_sigint_spares_the_children_running_already(ctrl_c, monkeypatch):
    """Ctrl-C reached the running children through the process group: they are spared; kill
    (SIGTERM) reached only this process: nothing is spared."""
    monkeypatch.setattr(_cli, "descendants", lambda pid=None: [11, 12])
    handler = _cli._Interrupt("prog")
    with pytest.raises(KeyboardInterrupt):
        handler(signal.SIGINT, None)
    handler.stop.set()
    assert ctrl_c[0] == ("kill", frozenset({11, 12}))


@pytest.mark.parametrize("detail,err", [("", "\nprog: interrupted\n"),
                                        (": kept 3 cells", "\nprog: interrupted: kept 3 cells\n"),
                                        (None, "")])
def test_finish_prints_one_line_and_exits_130(monkeypatch, capsys, detail, err):
    codes = []

    def fake_exit(code):
        codes.append(code)
        raise Finished

    monkeypatch.setattr(_cli.os, "_exit", fake_exit)
    with pytest.raises(Finished):
        _cli.finish("prog", detail)
    assert codes == [130]
    assert capsys.readouterr().err == err


# ---- registry.call_estimator's P3O branch ------------------------------------------------------


class Recorder:
    def __init__(self):
        self.args, self.kwargs = None, None

    def p3o_advantage(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
        return np.zeros(1)


def _p3o_inputs():
    return {"rewards": np.array([[1.0], [2.0], [4.0]]), "states": np.array([[0], [1], [0]]),
            "terminated": np.zeros((3, 1), bool), "truncated": np.zeros((3, 1), bool)}


MEANS = np.array([[0.5, 1.0], [0.25, 3.0]])  # [S=2, H=2]


def test_call_estimator_p3o_feeds_fixed_weights_through_the_backend():
    """reward_std = weights^-1/2 per state (weight 0 -> +inf), means per state, no
    normalisation and no batch-std floor, as documented."""
    rec = Recorder()
    w = np.array([[1.0, 0.25], [4.0, 0.0]])
    registry.call_estimator(rec, "p3o", _p3o_inputs(), gamma=0.5, means=MEANS, weights=w)
    rewards, mean, std, term, trunc = rec.args
    assert rec.kwargs == {"batch_reward_std": np.inf, "normalize": "none"}
    np.testing.assert_array_equal(mean[:, 0], MEANS[[0, 1, 0]])
    np.testing.assert_array_equal(std[:, 0], [[1.0, 2.0], [0.5, np.inf], [1.0, 2.0]])
    assert std.dtype == np.float64 and mean.dtype == np.float64


def test_call_estimator_p3o_default_weights_are_gamma_to_the_k_for_every_state():
    rec = Recorder()
    registry.call_estimator(rec, "p3o", _p3o_inputs(), gamma=0.25, means=MEANS)
    std = rec.args[2]
    # weights 1, 0.25 -> std 1, 2 in every state
    np.testing.assert_array_equal(std[:, 0], [[1.0, 2.0]] * 3)


def test_call_estimator_p3o_reproduces_the_weighted_sum_by_hand():
    """A_t = sum_{k < min(H, T-t)} w_{s_t,k} (r_{t+k} - mu_{s_t,k}), no done, with the
    reference backend. States 0,1,0; rewards 1,2,4; H = 2:
    A_0 = 1*(1 - 0.5) + 0.25*(2 - 1.0) = 0.75
    A_1 = 4*(2 - 0.25) + 0*(4 - 3.0)  = 7.0
    A_2 = 1*(4 - 0.5)                 = 3.5 (the window ends at T)."""
    import estimators.numpy as reference

    w = np.array([[1.0, 0.25], [4.0, 0.0]])
    got = registry.call_estimator(reference, "p3o", _p3o_inputs(), gamma=0.5, means=MEANS,
                                  weights=w)
    np.testing.assert_allclose(got, [[0.75], [7.0], [3.5]], rtol=0, atol=1e-12)
    # 1-D weights are shared by every state: w = (1, 0.5) (gamma^k with gamma = 0.5)
    got = registry.call_estimator(reference, "p3o", _p3o_inputs(), gamma=0.5, means=MEANS)
    # A_0 = 0.5 + 0.5*1 = 1.0; A_1 = 1.75 + 0.5*(4 - 3) = 2.25; A_2 = 3.5
    np.testing.assert_allclose(got, [[1.0], [2.25], [3.5]], rtol=0, atol=1e-12)


def test_call_estimator_p3o_integer_means_are_floats():
    rec = Recorder()
    registry.call_estimator(rec, "p3o", _p3o_inputs(), gamma=0.5, means=[[1, 2], [3, 4]],
                            weights=[1, 1])
    assert rec.args[1].dtype == np.float64 and rec.args[2].dtype == np.float64


# ---- registry: the messages that name the argument ---------------------------------------------


def test_resolve_names_output_when_it_is_not_a_string():
    with pytest.raises(TypeError, match=r"^output: expected a str, got int$"):
        registry.resolve("gae", 3)


def test_output_for_lists_every_output_with_its_quantity():
    with pytest.raises(ValueError) as e:
        registry.lookup("gae").output_for("nope")
    assert str(e.value) == ("output: gae has outputs advantages (advantage), "
                            "returns (value); got 'nope'")


def test_call_estimator_selects_by_position_from_a_plain_tuple():
    """A backend returning a plain tuple (no attribute names): the output by its position in
    the entry's outputs (V-trace: advantages, value_targets, pg_advantages)."""
    class Plain:
        def vtrace(self, *a, **k):
            return ("adv", "vt", "pg")

    inputs = {k: None for k in registry.lookup("vtrace").inputs}
    assert registry.call_estimator(Plain(), "vtrace", inputs, gamma=0.9) == "vt"
    assert registry.call_estimator(Plain(), "vtrace", inputs, gamma=0.9,
                                   output="pg_advantage") == "pg"
    assert registry.call_estimator(Plain(), "vtrace", inputs, gamma=0.9,
                                   output="advantages") == "adv"


# ---- strategies: every argument check, at its edges --------------------------------------------

@pytest.mark.parametrize("make,message", [
    (lambda: strategies.mdps(min_states=0), "min_states: must be >= 1, got 0"),
    (lambda: strategies.mdps(min_states=3, max_states=2), "max_states: must be >= 3, got 2"),
    (lambda: strategies.mdps(min_actions=0), "min_actions: must be >= 1, got 0"),
    (lambda: strategies.mdps(min_actions=2, max_actions=1), "max_actions: must be >= 2, got 1"),
    (lambda: strategies.mdps(min_actions=2.0), "min_actions: expected an integer, got 2.0"),
    (lambda: strategies.mdps(max_actions=True), "max_actions: expected an integer, got True"),
    (lambda: strategies.mdps(terminal=1), "terminal: True, False or None, got 1"),
    (lambda: strategies.mdps(gamma=1.0000001), "gamma: must be in [0.0, 1.0], got 1.0000001"),
    (lambda: strategies.mdps(gamma=-0.1), "gamma: must be in [0.0, 1.0], got -0.1"),
    (lambda: strategies.mdps(gamma=float("nan")), "gamma: must be in [0.0, 1.0], got nan"),
    (lambda: strategies.mdps(gamma=True), "gamma: expected a real number, got True"),
    (lambda: strategies.mdps(gamma="0.5"), "gamma: expected a real number, got '0.5'"),
    (lambda: strategies.mdps(noise=-1e-9), "noise: must be in [0.0, inf], got -1e-09"),
    (lambda: strategies.mdps(min_gamma=0.991), "min_gamma: must be in [0.0, 0.99], got 0.991"),
    (lambda: strategies.policies(0, 2), "S: must be >= 1, got 0"),
    (lambda: strategies.policies(2, 0), "A: must be >= 1, got 0"),
    (lambda: strategies.policy_pairs(1, 1, divergence="far"), "divergence: one of "),
    (lambda: strategies.done_patterns(1, 0), "B: must be >= 1, got 0"),
    (lambda: strategies.trajectory_batches(min_T=0), "min_T: must be >= 1, got 0"),
    (lambda: strategies.trajectory_batches(max_T=0), "max_T: must be >= 1, got 0"),
    (lambda: strategies.trajectory_batches(consistent=0), "consistent: True, False or None, "
     "got 0"),
])
def test_strategy_arguments_are_checked_with_a_message_naming_them(make, message):
    with pytest.raises(InvalidArgument) as e:
        make()
    assert str(e.value).startswith(message), str(e.value)


@pytest.mark.parametrize("make", [
    lambda: strategies.mdps(min_states=1, max_states=1, min_actions=1, max_actions=1),
    lambda: strategies.mdps(min_states=np.int64(2), max_states=np.int64(2)),
    lambda: strategies.mdps(gamma=1.0, terminal=True),
    lambda: strategies.mdps(gamma=0.0),
    lambda: strategies.mdps(gamma=1),
    lambda: strategies.mdps(gamma=np.float32(0.5)),
    lambda: strategies.mdps(min_gamma=0.99),
    lambda: strategies.mdps(noise=0.0),
    lambda: strategies.mdps(noise=float("inf")),
    lambda: strategies.mdps(terminal=np.bool_(False)),
    lambda: strategies.policies(1, 1),
    lambda: strategies.done_patterns(1, 1),
    lambda: strategies.trajectory_batches(min_T=1, max_T=1, max_B=1),
])
def test_strategy_arguments_at_the_ends_of_their_range_are_accepted(make):
    make()



def test_mdps_at_gamma_one_draws_gamma_one():
    """The closed upper end of gamma's [0, 1]: every draw has gamma exactly 1."""
    from hypothesis import HealthCheck, Phase, given, settings

    seen = []

    @settings(max_examples=5, derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(strategies.mdps(max_states=3, gamma=1.0, terminal=True, min_gamma=0.99))
    def collect(m):
        seen.append(m.gamma)

    collect()
    assert seen and set(seen) == {1.0}


def test_mdps_at_gamma_one_are_proper_whatever_the_draw():
    """Undiscounted MDPs must end under every policy (TabularMDP refuses them otherwise): each
    drawn one has S >= 2, a terminal state, and every live (s, a) reaches a terminal state
    with positive probability in one step."""
    from hypothesis import HealthCheck, Phase, given, settings

    n = []

    @settings(max_examples=40, derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(strategies.mdps(min_states=1, max_states=5, gamma=1.0))
    def check(m):
        live = ~m.terminal
        assert m.num_states >= 2 and m.terminal.any() and m.gamma == 1.0
        assert (m.P[live][:, :, m.terminal].sum(-1) > 0).all()
        n.append(1)

    check()
    assert len(n) == 40


@pytest.mark.parametrize("kw", [dict(max_states=1), dict(terminal=False)])
def test_mdps_at_gamma_one_without_a_possible_terminal_state_is_refused(kw):
    with pytest.raises(InvalidArgument, match=r"^gamma: 1 needs a terminal state"):
        strategies.mdps(gamma=1.0, **kw)
