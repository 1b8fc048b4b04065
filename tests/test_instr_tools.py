"""The shared instruments outside the estimator numerics (issue 20): the argument checks every
tabular object goes through (offpolicy/_checks.py), the one-line missing-extra errors
(offpolicy/_extras.py), the pytest plugin's fixture (offpolicy/_pytest_plugin.py) and the
process pool behind ``--jobs`` (offpolicy/parallel.py). Each test states the input and the
outcome worked out by hand."""

from __future__ import annotations

import os
import pathlib
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


# ---- the mutation catalogue CLI (offpolicy/mutation.py): its bookkeeping, suite runs replaced --


def test_check_hands_the_suite_the_patched_copy_the_tests_and_the_first_estimators(
        monkeypatch, tmp_path):
    from offpolicy import mutation

    seen = {}

    def recorder(package_dir, tests, pytest_args, first=()):
        seen.update(text=(package_dir / "estimators" / "numpy.py").read_text(), tests=tests,
                    args=pytest_args, first=first, package_dir=package_dir)
        return False, 1.5, "x\nFAILED tests/test_p.py::test_q - assert 1 == 2\n1 failed"

    monkeypatch.setattr(mutation, "run_suite", recorder)
    m = mutation.CATALOGUE[0]
    src = mutation.reference_source()
    tests = tmp_path / "the_tests"
    out = mutation._check(m, src, tmp_path, tests, ["-k", "gae"])
    assert out == ("killed", 1.5, "test_q - assert 1 == 2")
    assert seen["text"] == mutation.apply(src, m) and seen["text"] != src
    assert seen["tests"] == tests and seen["args"] == ["-k", "gae"]
    assert seen["first"] == m.estimators
    assert seen["package_dir"].parent == tmp_path  # a fresh copy inside the run's directory
    assert (seen["package_dir"] / "estimators" / "__init__.py").is_file()

    monkeypatch.setattr(mutation, "run_suite", lambda *a, **k: (True, 2.0, "1 passed"))
    assert mutation._check(m, src, tmp_path, tests, []) == ("SURVIVED", 2.0, f"({m.bug})")
    assert mutation._check(None, src, tmp_path, tests, []) == ("passes", 2.0, "")
    monkeypatch.setattr(mutation, "run_suite", lambda *a, **k: (False, 3.0, "boom"))
    assert mutation._check(None, src, tmp_path, tests, []) == ("FAILS", 3.0, "boom")
    assert mutation._check(m, src, tmp_path, tests, []) == ("killed", 3.0, "boom")  # no ::
    stale = mutation._check(m, "nothing to patch", tmp_path, tests, [])
    assert stale[:2] == ("STALE", 0.0) and "occurs 0 times" in stale[2]


def test_run_suite_runs_the_property_files_of_the_copy_first_on_the_path(monkeypatch, tmp_path):
    from offpolicy import mutation

    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_prop.py").write_text(
        "import pytest\n@pytest.mark.property\ndef test_a():\n    pass\n")
    pkg = tmp_path / "copy"
    calls = []

    class Done:
        def __init__(self, stdout, returncode=0, stderr=""):
            self.stdout, self.returncode, self.stderr = stdout, returncode, stderr

    def fake_run(cmd, cwd, env, capture_output, text):
        calls.append((cmd, cwd, env))
        if len(calls) == 1:  # which estimators package the copy's path imports
            return Done(str(pkg / "estimators" / "__init__.py") + "\n")
        return Done("l1\nl2\nl3\nl4\n", returncode=1)

    monkeypatch.setattr(mutation.subprocess, "run", fake_run)
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    passed, secs, tail = mutation.run_suite(pkg, tests, ["--maxfail", "1"], ("retrace",))
    assert passed is False and secs >= 0 and tail == "l2\nl3\nl4"
    check_cmd, check_cwd, _ = calls[0]
    assert check_cmd == [sys.executable, "-c", "import estimators; print(estimators.__file__)"]
    assert check_cwd == pkg
    cmd, cwd, env = calls[1]
    assert cwd == pkg
    assert env["PYTHONPATH"].split(os.pathsep) == [str(pkg), str(mutation.ROOT), "/elsewhere"]
    assert env["HYPOTHESIS_PROFILE"] == "ci"
    assert env["OFFPOLICY_MUTATION_FIRST"] == "retrace"
    assert cmd[:3] == [sys.executable, "-m", "pytest"]
    assert cmd[3] == str(tests / "test_prop.py")
    joined = " ".join(cmd)
    for part in ("-m property", "-x", "-k not T12", "-p offpolicy.mutation",
                 f"--rootdir {tmp_path}", "--maxfail 1"):
        assert part in joined
    # the copy must win the import: else the run would test the installed reference
    calls.clear()
    monkeypatch.setattr(mutation.subprocess, "run",
                        lambda *a, **k: Done("/site-packages/estimators/__init__.py\n"))
    with pytest.raises(RuntimeError, match="the copy is not imported first"):
        mutation.run_suite(pkg, tests, [], ())


def test_run_suite_names_every_registry_name_of_the_first_estimators(monkeypatch, tmp_path):
    from offpolicy import mutation

    envs = []

    class Done:
        returncode, stderr = 0, ""

        def __init__(self, stdout):
            self.stdout = stdout

    def fake_run(cmd, cwd, env, capture_output, text):
        envs.append(env)
        return Done(str(tmp_path) + "/estimators\n")

    monkeypatch.setattr(mutation.subprocess, "run", fake_run)
    for var in ("PYTHONPATH", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "t").mkdir()
    assert mutation.run_suite(tmp_path, tmp_path / "t", [], ("puff_advantage", "nstep_returns")
                              )[0] is True
    env = envs[-1]
    assert env["OFFPOLICY_MUTATION_FIRST"] == "puff_advantage,puff,nstep_returns,nstep"
    # no empty entry at the end (it would put the working directory on the path)
    assert env["PYTHONPATH"] == os.pathsep.join([str(tmp_path), str(mutation.ROOT)])
    # one BLAS/OpenMP thread per suite unless the caller chose (suites run side by side)
    assert env["OMP_NUM_THREADS"] == "1" and env["OPENBLAS_NUM_THREADS"] == "1"


def test_property_files_keeps_property_tests_fast_ones_first_and_skips_t12_only(tmp_path):
    from offpolicy import mutation

    prop = "import pytest\n@pytest.mark.property\ndef test_{}():\n    pass\n"
    (tmp_path / "test_a.py").write_text(prop.format("a"))
    (tmp_path / "test_property_moments.py").write_text(prop.format("m"))
    (tmp_path / "test_property_splitting.py").write_text(prop.format("s"))
    (tmp_path / "test_b.py").write_text("def test_b():\n    pass\n")  # no property mark
    (tmp_path / "test_t12.py").write_text(prop.format("T12_only"))  # theorem 12 only
    (tmp_path / "helper.py").write_text(prop.format("h"))  # not a test file
    names = [p.name for p in mutation.property_files(tmp_path)]
    assert names == ["test_property_splitting.py", "test_property_moments.py", "test_a.py"]


def test_the_ordering_hook_moves_tests_naming_the_mutated_estimators_first(monkeypatch):
    from offpolicy import mutation

    class Item:
        def __init__(self, nodeid):
            self.nodeid = nodeid

    items = [Item("t.py::test_gae"), Item("t.py::test_retrace[x]"), Item("t.py::test_other"),
             Item("t.py::test_vtrace")]
    monkeypatch.setenv("OFFPOLICY_MUTATION_FIRST", "retrace,vtrace")
    mutation.pytest_collection_modifyitems(None, None, items)
    assert [i.nodeid for i in items] == ["t.py::test_retrace[x]", "t.py::test_vtrace",
                                        "t.py::test_gae", "t.py::test_other"]
    monkeypatch.setenv("OFFPOLICY_MUTATION_FIRST", "")
    mutation.pytest_collection_modifyitems(None, None, items)  # no words: order kept
    assert [i.nodeid for i in items][0] == "t.py::test_retrace[x]"


def test_catalogue_markdown_escapes_table_bars(monkeypatch):
    from offpolicy import mutation

    m = mutation.Mutant("bar_class", "uses a | b", "seen | there", ("gae",), (("x", "y"),))
    monkeypatch.setattr(mutation, "CATALOGUE", (m,))
    page = mutation.catalogue_markdown()
    assert "| `bar_class` | uses a \\| b | `gae` | seen \\| there |" in page
    assert "1 classes." in page


def test_a_loaded_mutant_is_a_module_of_the_estimators_package_named_for_its_source():
    from offpolicy import mutation

    mod = mutation.load(mutation.CATALOGUE[0].name)
    assert mod.__name__ == f"estimators._mutant_{mutation.CATALOGUE[0].name}"
    assert mod.__package__ == "estimators"
    assert mod.__file__ == str(mutation.PACKAGE_DIR / "numpy.py")  # where its code comes from
    assert mutation.load(None).__name__ == "estimators._mutant_unmutated"


def test_mutation_cli_prints_the_unmutated_run_first_then_each_mutant(monkeypatch, capsys):
    from offpolicy import mutation

    def fake_check(mutant, source, tmp, tests, pytest_args):
        return ("passes", 0.5, "") if mutant is None else ("killed", 1.0, "test_z")

    monkeypatch.setattr(mutation, "_check", fake_check)
    names = [m.name for m in mutation.CATALOGUE[:2]]
    here = str(pathlib.Path(__file__).resolve().parent)
    assert mutation.main(["--tests", here, "--jobs", "1", "--only", *names]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("(unmutated reference)") and "passes" in lines[0]
    assert lines[1].startswith(names[0]) and "killed" in lines[1] and "test_z" in lines[1]
    assert lines[-1].startswith("2/2 mutants killed in ") and lines[-1].endswith(
        "(1 at a time)")


def test_mutation_cli_help_describes_every_option(capsys):
    from offpolicy import mutation

    with pytest.raises(SystemExit) as e:
        mutation.main(["--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in ("--list list the catalogue (name, estimators, seen in) and exit",
                 "--only NAME [NAME ...] run only these mutants",
                 "--tests DIR the tests directory (default: the checkout's tests/)",
                 "--jobs N suites run at once (default: min(2, CPUs))",
                 "pytest_args extra pytest arguments (after --)"):
        assert text in out, text


def test_a_catalogue_entry_must_name_known_estimators_and_edits():
    from offpolicy import mutation

    with pytest.raises(ValueError, match=r"^x: estimators \['nope'\] are not in ESTIMATORS$"):
        mutation.Mutant("x", "b", "s", ("gae", "nope"), (("a", "b"),))
    with pytest.raises(ValueError, match=r"^x: estimators \[\] are not in ESTIMATORS$"):
        mutation.Mutant("x", "b", "s", (), (("a", "b"),))
    with pytest.raises(ValueError, match=r"^x: no edits$"):
        mutation.Mutant("x", "b", "s", ("gae",), ())
    m = mutation.Mutant("x", "b", "s", ("gae",), (("old1", "new1"), ("old2", "new2")))
    assert (m.old, m.new) == ("old1", "new1")


def test_pool_defaults_to_one_local_process():
    pool = parallel.Pool()
    assert (pool.executor, pool.jobs, pool.address) == ("process", 1, None)


# ---- parallel's Ray path, with Ray replaced by a stand-in (tests/test_ray.py runs the real one)


class _FakeRay:
    """The part of Ray's API the pool uses: tasks run at once; ``fingerprints`` is what each
    worker reports (default: the driver's)."""

    def __init__(self, fingerprint=None, init_error=None):
        self.initialized, self.calls = False, []
        self.fingerprint, self.init_error = fingerprint, init_error

    def is_initialized(self):
        return self.initialized

    def init(self, **kw):
        self.calls.append(("init", kw))
        if self.init_error:
            raise self.init_error
        self.initialized = True

    def shutdown(self):
        self.calls.append(("shutdown",))
        self.initialized = False

    def cluster_resources(self):
        return {"CPU": 6.0}

    def remote(self, **kw):
        ray = self

        def wrap(fn):
            class Remote:
                @staticmethod
                def remote(f, task, init, fingerprint):
                    fp, out = fn(f, task, init, fingerprint)
                    return ("ref", task, ray.fingerprint or fp, out)
            return Remote
        return wrap

    def wait(self, pending, num_returns):
        return pending[-1:], pending[:-1]  # the last submitted finishes first

    def get(self, ref):
        return ref[2], ref[3]


def _fp():
    return "code-v1"


def test_ray_pool_yields_every_result_with_its_task_index(monkeypatch):
    fake = _FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(parallel, "ray_available", lambda: True)
    monkeypatch.setattr(parallel, "_RAY_INITIALISED", False)
    with parallel.Pool("ray", 3, fingerprint=_fp) as pool:
        assert pool.workers == 6  # the cluster's CPUs, not jobs
        got = list(pool.imap_unordered(abs, [-1, 2, -3]))
    assert got == [(2, 3), (1, 2), (0, 1)]  # in the order they finish
    init = fake.calls[0]
    assert init[0] == "init" and init[1]["address"] == "local" and init[1]["num_cpus"] == 3
    assert fake.calls[-1] == ("shutdown",)  # started here: shut down here


def test_ray_pool_rejects_a_worker_running_other_code(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", _FakeRay(fingerprint="code-v0"))
    monkeypatch.setattr(parallel, "ray_available", lambda: True)
    with pytest.raises(parallel.WorkerCodeMismatch,
                       match=r"fingerprint code-v0, driver code-v1"):
        with parallel.Pool("ray", 1, fingerprint=_fp) as pool:
            list(pool.imap_unordered(abs, [1]))


def test_ray_pool_uses_a_running_instance_as_is_and_leaves_it_running(monkeypatch):
    fake = _FakeRay()
    fake.initialized = True  # the caller connected already
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(parallel, "ray_available", lambda: True)
    with parallel.Pool("ray", 2) as pool:
        assert dict(pool.imap_unordered(abs, [-5])) == {0: 5}
    assert fake.calls == []  # neither init nor shutdown


def test_ray_pool_start_failures_are_one_line_naming_the_option(monkeypatch):
    monkeypatch.setattr(parallel, "ray_available", lambda: True)
    fake = _FakeRay(init_error=RuntimeError("first line\nsecond line"))
    monkeypatch.setitem(sys.modules, "ray", fake)
    with pytest.raises(ConnectionError,
                       match=r"^--executor ray: cannot start or reach Ray: first line$"):
        with parallel.Pool("ray", 1):
            pass
    monkeypatch.setattr(parallel, "_unreachable", lambda a: None)
    with pytest.raises(ConnectionError,
                       match=r"^--address h:1: cannot start or reach Ray: first line$"):
        with parallel.Pool("ray", 1, address="h:1"):
            pass
    assert fake.calls[-1][1] == {"address": "h:1", "logging_level": 30, "log_to_driver": True}
    monkeypatch.setattr(parallel, "_unreachable", lambda a: "nothing answers there (refused)")
    with pytest.raises(ConnectionError, match=r"^--address h:2: nothing answers there"):
        with parallel.Pool("ray", 1, address="h:2"):
            pass
    assert all(c[1].get("address") != "h:2" for c in fake.calls)  # never tried to init


def test_ray_start_keeps_the_drivers_sigterm_handler(monkeypatch):
    fake = _FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(parallel, "ray_available", lambda: True)

    def ours(signum, frame):  # pragma: no cover - never delivered here
        pass

    previous = signal.signal(signal.SIGTERM, ours)
    try:
        real_init = fake.init

        def init_replacing_sigterm(**kw):  # what Ray's core worker does
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            real_init(**kw)

        fake.init = init_replacing_sigterm
        with parallel.Pool("ray", 1):
            assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Stop(Exception):
    pass


class _Proxy:
    """A module with some attributes replaced, seen only by ``parallel`` (the real ``os``,
    ``time``, ``threading`` and ``sys`` stay untouched for everything else)."""

    def __init__(self, real, **over):
        self._real, self._over = real, over

    def __getattr__(self, name):
        return self._over[name] if name in self._over else getattr(self._real, name)


def test_die_with_parent_arms_the_kernel_and_a_watch_that_kills_an_orphan(monkeypatch):
    # everything that would act on this process is replaced: the prctl call, the thread, the
    # signals, the exit; the watch loop is then run by hand
    calls, threads, kills = [], [], []

    class FakeLibc:
        def prctl(self, *args):
            calls.append(args)

    class FakeThread:
        def __init__(self, target, name, daemon):
            threads.append((target, name, daemon))

        def start(self):
            calls.append("start")

    driver = {"alive": True}

    def fake_kill(pid, sig):
        if sig == 0:  # _alive's probe of the driver
            if not driver["alive"]:
                raise ProcessLookupError
            return
        kills.append((pid, sig))
        raise _Stop

    sleeps = []

    def fake_sleep(s):
        sleeps.append(s)
        if len(sleeps) > 3:
            raise _Stop

    def fake_exit(code):
        raise SystemExit(code)

    monkeypatch.setattr(parallel, "sys", _Proxy(sys, platform="linux"))
    monkeypatch.setattr(parallel, "ctypes",
                        _Proxy(parallel.ctypes, CDLL=lambda *a, **k: FakeLibc()))
    monkeypatch.setattr(parallel, "threading", _Proxy(parallel.threading, Thread=FakeThread))
    monkeypatch.setattr(parallel, "os", _Proxy(os, kill=fake_kill, _exit=fake_exit))
    monkeypatch.setattr(parallel, "time", _Proxy(parallel.time, sleep=fake_sleep))

    parallel.die_with_parent(driver_pid=12345)
    assert calls == [(1, int(signal.SIGKILL), 0, 0, 0), "start"]  # PR_SET_PDEATHSIG, SIGKILL
    watch, name, daemon = threads[0]
    assert name == "offpolicy-parent-watch" and daemon is True
    with pytest.raises(_Stop):  # parent and driver there: it only polls
        watch()
    assert kills == [] and sleeps == [parallel._POLL_S] * 4
    driver["alive"] = False
    sleeps.clear()
    with pytest.raises(_Stop):  # the driver gone: SIGKILL to itself after one poll
        watch()
    assert kills == [(os.getpid(), signal.SIGKILL)] and len(sleeps) == 1
    # already orphaned when called: exit at once (1), no thread started
    threads.clear()
    with pytest.raises(SystemExit) as e:
        parallel.die_with_parent(driver_pid=12345)
    assert e.value.code == 1 and threads == []


def test_die_with_parent_watches_the_parent_when_there_is_no_driver(monkeypatch):
    threads, kills = [], []

    class FakeThread:
        def __init__(self, target, name, daemon):
            threads.append(target)

        def start(self):
            pass

    def fake_kill(pid, sig):
        kills.append((pid, sig))
        raise _Stop

    def no_prctl(*a, **k):
        pytest.fail("prctl called off Linux")

    parent = os.getppid()
    monkeypatch.setattr(parallel, "sys", _Proxy(sys, platform="other"))  # the thread alone
    monkeypatch.setattr(parallel, "ctypes", _Proxy(parallel.ctypes, CDLL=no_prctl))
    monkeypatch.setattr(parallel, "threading", _Proxy(parallel.threading, Thread=FakeThread))
    monkeypatch.setattr(parallel, "time", _Proxy(parallel.time, sleep=lambda s: None))
    monkeypatch.setattr(parallel, "os", _Proxy(os, kill=fake_kill))
    parallel.die_with_parent()
    # reparented: orphaned
    monkeypatch.setattr(parallel, "os", _Proxy(os, kill=fake_kill, getppid=lambda: parent + 1))
    with pytest.raises(_Stop):
        threads[0]()
    assert kills == [(os.getpid(), signal.SIGKILL)]


def test_a_pool_worker_starts_watched_ignoring_sigint_and_runs_init(monkeypatch):
    calls = []
    fake_signal = _Proxy(
        signal, signal=lambda sig, handler: calls.append(("signal", sig, handler)),
        pthread_sigmask=lambda how, sigs: calls.append(("mask", how, set(sigs))))
    monkeypatch.setattr(parallel, "signal", fake_signal)
    monkeypatch.setattr(parallel, "die_with_parent", lambda pid: calls.append(("watch", pid)))
    parallel._process_worker_start(4242, lambda: calls.append("init"))
    assert calls == [("watch", 4242), ("signal", signal.SIGINT, signal.SIG_IGN),
                     ("signal", signal.SIGTERM, signal.SIG_DFL),
                     ("mask", signal.SIG_UNBLOCK, {signal.SIGINT}), "init"]


def test_mutation_cli_unknown_name_lists_every_valid_name_in_one_line(capsys):
    from offpolicy import mutation

    assert mutation.main(["--only", "nope"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "unknown mutant 'nope'; valid names: " + ", ".join(
        m.name for m in mutation.CATALOGUE) in err
