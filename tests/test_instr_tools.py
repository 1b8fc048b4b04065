"""The shared instruments outside the estimator numerics (issue 20): the argument checks every
tabular object goes through (offpolicy/_checks.py), the one-line missing-extra errors
(offpolicy/_extras.py), the pytest plugin's fixture (offpolicy/_pytest_plugin.py) and the
process pool behind ``--jobs`` (offpolicy/parallel.py). Each test states the input and the
outcome worked out by hand."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from offpolicy import _checks, _extras, parallel

# ---- _checks --------------------------------------------------------------------------------


def test_as_float_array_converts_and_checks_dimensions_and_shape():
    out = _checks.as_float_array([[1, 2], [3, 4]], "p", ndim=2, shape=(2, None))
    assert out.dtype == np.float64 and out.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    with pytest.raises(TypeError, match=r"^p: expected a numeric array, got str$"):
        _checks.as_float_array("abc", "p")
    with pytest.raises(ValueError, match=r"^p: expected 1 dimensions, got shape \(2, 2\)$"):
        _checks.as_float_array([[1, 2], [3, 4]], "p", ndim=1)
    with pytest.raises(ValueError, match=r"^p: expected shape \(3, \?\), got \(2, 2\)$"):
        _checks.as_float_array([[1, 2], [3, 4]], "p", shape=(3, None))
    with pytest.raises(ValueError, match=r"^p: expected shape \(2, 2, 1\), got \(2, 2\)$"):
        _checks.as_float_array([[1, 2], [3, 4]], "p", shape=(2, 2, 1))  # other ndim
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match=r"^p: contains NaN or inf$"):
            _checks.as_float_array([0.0, bad], "p")


def test_check_distribution_names_the_negative_entry_and_the_bad_row():
    _checks.check_distribution(np.array([[0.25, 0.75], [1.0, 0.0]]), "pi")
    _checks.check_distribution(np.array([0.5, 0.5 + 5e-9]), "pi")  # within PROB_ATOL = 1e-8
    with pytest.raises(ValueError, match=r"^pi: negative probability -0.25 at index \(1, 0\)$"):
        _checks.check_distribution(np.array([[0.5, 0.5], [-0.25, 1.25]]), "pi")
    with pytest.raises(ValueError, match=r"^pi: probabilities sum to 0.9, not 1 \(row \(1,\)\)$"):
        _checks.check_distribution(np.array([[0.5, 0.5], [0.5, 0.4]]), "pi")
    with pytest.raises(ValueError, match=r"^pi: probabilities sum to 1.00000002, not 1$"):
        _checks.check_distribution(np.array([0.5, 0.5 + 2e-8]), "pi")  # 1-D: no row
    with pytest.raises(ValueError, match="sum to 1.5"):
        _checks.check_distribution(np.array([0.5, 1.0]), "pi", atol=0.4)  # 0.5 > atol
    _checks.check_distribution(np.array([0.5, 0.8]), "pi", atol=0.4)  # 0.3 <= atol


@pytest.mark.parametrize("kw, x, message", [
    ({"low": 0.0}, -0.5, r"^g: must be >= 0.0, got -0.5$"),
    ({"low": 0.0, "low_open": True}, 0.0, r"^g: must be > 0.0, got 0.0$"),
    ({"high": 1.0}, 1.5, r"^g: must be <= 1.0, got 1.5$"),
    ({"high": 1.0, "high_open": True}, 1.0, r"^g: must be < 1.0, got 1.0$"),
    ({}, float("nan"), r"^g: must be finite, got nan$"),
    ({}, float("inf"), r"^g: must be finite, got inf$"),
])
def test_check_scalar_rejects_values_outside_the_interval(kw, x, message):
    with pytest.raises(ValueError, match=message):
        _checks.check_scalar(x, "g", **kw)


def test_check_scalar_accepts_the_closed_ends_and_numpy_numbers():
    assert _checks.check_scalar(0.0, "g", low=0.0, high=1.0) == 0.0
    assert _checks.check_scalar(1, "g", low=0.0, high=1.0) == 1.0
    v = _checks.check_scalar(np.float32(0.5), "g", low=0.0, high=1.0, low_open=True,
                             high_open=True)
    assert v == 0.5 and type(v) is float
    assert _checks.check_scalar(np.int64(3), "g") == 3.0
    for bad in (True, "0.5", None, [0.5]):
        with pytest.raises(TypeError, match=r"^g: expected a real number, got "):
            _checks.check_scalar(bad, "g")


def test_check_int_range_and_types():
    assert _checks.check_int(3, "n", low=3, high=3) == 3
    v = _checks.check_int(np.int32(7), "n")
    assert v == 7 and type(v) is int
    with pytest.raises(ValueError, match=r"^n: must be >= 1, got 0$"):
        _checks.check_int(0, "n", low=1)
    with pytest.raises(ValueError, match=r"^n: must be <= 4, got 5$"):
        _checks.check_int(5, "n", high=4)
    for bad in (True, 1.0, "1", None):
        with pytest.raises(TypeError, match=r"^n: expected an integer, got "):
            _checks.check_int(bad, "n")


def test_check_policy_lam_and_covers():
    pol = _checks.check_policy([[0.5, 0.5], [1, 0]], "behaviour", 2, 2)
    assert pol.dtype == np.float64
    with pytest.raises(ValueError, match=r"^behaviour: expected shape \(2, 3\)"):
        _checks.check_policy([[0.5, 0.5], [1, 0]], "behaviour", 2, 3)
    with pytest.raises(ValueError, match=r"^behaviour: probabilities sum to 0.5"):
        _checks.check_policy([[0.5, 0.0], [1, 0]], "behaviour", 2, 2)
    assert _checks.check_lam(0) == 0.0 and _checks.check_lam(1.0) == 1.0
    with pytest.raises(ValueError, match=r"^lam: must be <= 1.0, got 1.5$"):
        _checks.check_lam(1.5)
    with pytest.raises(ValueError, match=r"^trace: must be >= 0.0, got -0.1$"):
        _checks.check_lam(-0.1, "trace")
    target = np.array([[0.5, 0.5], [0.0, 1.0]])
    _checks.check_covers(target, np.array([[0.1, 0.9], [1.0, 1e-12]]))
    with pytest.raises(ValueError, match=r"^mu: must be > 0 wherever the target policy is > 0 "
                                         r"\(state 1, action 1: target 1, mu 0\)$"):
        _checks.check_covers(target, np.array([[0.1, 0.9], [1.0, 0.0]]), "mu")
    with pytest.raises(ValueError, match=r"^behaviour: .*state 0, action 0"):
        _checks.check_covers(target, np.array([[0.0, 1.0], [0.0, 1.0]]))


# ---- _extras --------------------------------------------------------------------------------


def test_require_passes_when_every_module_is_found():
    _extras.require("the report", "report", "json", "numpy")  # no error, nothing printed


def test_require_names_the_extra_and_every_missing_module(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["prog"])
    with pytest.raises(_extras.MissingExtra) as e:
        _extras.require("the harness", "harness", "json", "no_such_mod_a", "no_such_mod_b")
    assert str(e.value) == ('the harness needs the [harness] extra: pip install '
                            '"offpolicy[harness]" (not installed: no_such_mod_a, no_such_mod_b)')
    assert e.value.name == "no_such_mod_a"
    assert isinstance(e.value, ModuleNotFoundError)  # `except ImportError` still catches it


def test_require_under_python_dash_m_prints_one_line_and_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["-m"])  # what sys.argv holds while -m imports a package
    with pytest.raises(SystemExit) as e:
        _extras.require("the report", "report", "no_such_mod_c")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == ('error: the report needs the [report] extra: pip install "offpolicy[report]" '
                   "(not installed: no_such_mod_c)\n")


# ---- the pytest plugin ----------------------------------------------------------------------


def test_the_plugin_fixture_returns_the_report_of_a_conforming_function(conform_check):
    import estimators.numpy as ref

    report = conform_check(ref.gae, "gae", examples=2, moments=False)
    assert report.ok and report.estimator == "gae"


def test_the_plugin_fixture_fails_the_test_for_a_buggy_function(conform_check):
    import estimators.numpy as ref

    def gae_times_two(rewards, values, next_values, terminated, truncated, *, gamma, lam):
        out = ref.gae(rewards, values, next_values, terminated, truncated, gamma=gamma, lam=lam)
        return out.advantages * 2.0

    with pytest.raises(AssertionError, match="DOES NOT CONFORM to the gae contract"):
        conform_check(gae_times_two, "gae", examples=2, moments=False)


def test_the_plugin_module_imports_nothing_heavy():
    code = ("import sys, offpolicy._pytest_plugin as p\n"
            "heavy = [m for m in ('offpolicy.conform', 'hypothesis', 'torch', 'estimators')"
            " if m in sys.modules]\n"
            "assert callable(p.conform_check), 'no fixture'\n"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == ""


# ---- parallel -------------------------------------------------------------------------------


def test_check_executor_names_the_option_of_each_problem(monkeypatch):
    assert parallel.check_executor("serial", None) is None
    assert parallel.check_executor("process", None) is None
    assert parallel.check_executor("threads", None) == (
        "--executor: unknown 'threads'; choose from process, serial, ray")
    assert parallel.check_executor("process", "auto") == "--address: only with --executor ray"
    monkeypatch.setattr(parallel, "ray_available", lambda: True)
    assert parallel.check_executor("ray", "  ") == "--address: empty (use auto or HOST:PORT)"
    monkeypatch.setattr(parallel, "_unreachable", lambda a: "nothing answers there (x)")
    assert parallel.check_executor("ray", "h:1") == "--address h:1: nothing answers there (x)"
    monkeypatch.setattr(parallel, "_unreachable", lambda a: None)
    assert parallel.check_executor("ray", "h:1") is None
    assert parallel.check_executor("ray", None) is None
    monkeypatch.setattr(parallel, "ray_available", lambda: False)
    assert parallel.check_executor("ray", None) == (
        "--executor ray: Ray is not installed (pip install 'offpolicy[ray]')")


def test_unreachable_tells_a_listening_port_from_a_closed_one():
    assert parallel._unreachable("auto") is None  # not HOST:PORT: left to Ray
    assert parallel._unreachable("host:port") is None
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        assert parallel._unreachable(f"127.0.0.1:{port}") is None
        assert parallel._unreachable(f"ray://127.0.0.1:{port}") is None
        assert parallel._unreachable(f":{port}") is None  # empty host: this machine
    # the port is closed now (nothing listens): connection refused
    problem = parallel._unreachable(f"127.0.0.1:{port}", timeout_s=2.0)
    assert problem is not None and problem.startswith("nothing answers there (")


def test_pool_rejects_bad_arguments_naming_them():
    with pytest.raises(ValueError, match=r"^--executor: unknown 'x'"):
        parallel.Pool("x")
    with pytest.raises(ValueError, match=r"^address: only with the ray executor$"):
        parallel.Pool("process", 1, address="auto")
    with pytest.raises(ValueError, match=r"^jobs: must be >= 1, got 0$"):
        parallel.Pool("serial", 0)


_INIT_CALLS = []


def _record_init():
    _INIT_CALLS.append(os.getpid())


def test_serial_pool_runs_init_once_and_yields_every_task_in_order():
    _INIT_CALLS.clear()
    with parallel.Pool("serial", 3, init=_record_init) as pool:
        assert pool.workers == 1
        assert _INIT_CALLS == [os.getpid()]
        assert list(pool.imap_unordered(abs, [-3, 4, -5])) == [(0, 3), (1, 4), (2, 5)]
    assert _INIT_CALLS == [os.getpid()]


def test_process_pool_returns_each_result_with_its_task_index():
    with parallel.Pool("process", 2) as pool:
        assert pool.workers == 2
        got = dict(pool.imap_unordered(abs, [-3, 4, -5, 0]))
    assert got == {0: 3, 1: 4, 2: 5, 3: 0}


def test_process_pool_kills_its_workers_when_the_block_raises():
    pool = parallel.Pool("process", 2)
    with pytest.raises(RuntimeError, match="stop"):
        with pool:
            dict(pool.imap_unordered(abs, [1, 2]))  # the workers exist now
            procs = list(pool._pool._processes.values())
            assert procs and all(p.is_alive() for p in procs)
            raise RuntimeError("stop")
    assert all(not p.is_alive() for p in procs)
    assert all(p.exitcode == -signal.SIGKILL for p in procs)  # killed, not shut down
    assert pool._pool is None


def test_ray_call_runs_init_once_per_worker_and_returns_the_fingerprint(monkeypatch):
    monkeypatch.setattr(parallel, "_RAY_INITIALISED", False)
    calls = []
    init = lambda: calls.append("init")  # noqa: E731
    assert parallel._ray_call(abs, -2, init, lambda: "fp1") == ("fp1", 2)
    assert parallel._ray_call(abs, -3, init, None) == (None, 3)
    assert calls == ["init"]


def test_alive_tells_a_running_process_from_a_reaped_one():
    assert parallel._alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not parallel._alive(child.pid)


def test_sigint_is_blocked_inside_and_restored_after():
    if not hasattr(signal, "pthread_sigmask"):
        pytest.skip("no pthread_sigmask on this platform")
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    assert signal.SIGINT not in before
    with parallel._sigint_blocked():
        assert signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == before
