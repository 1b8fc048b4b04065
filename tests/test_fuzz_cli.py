"""Fuzzing every command line's arguments (issue 21): whatever the argument list, a command
line exits 0, 1, 2 or 130 (a usage error as one line on stderr), never with a traceback, and
writes nothing outside its working directory.

Each ``main`` runs in this process, in a fresh temporary directory, with the step that would
compute (run the grid, the suites, the timings, the check) replaced by one that stops at
once: the arguments are what is fuzzed, and a run that gets that far has passed every check.
The argument lists mix each command line's own flags and choices with values from the edges
(negative, zero, huge, NaN, empty, commas, unknown names, paths to a file or below one), so
most of them fail fast, as a user's mistakes do; a Ctrl-C at every point is
tests/test_interrupt.py's."""

from __future__ import annotations

import os
import subprocess
import tempfile

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from offpolicy import bench, mutation
from offpolicy.conform import __main__ as conform_cli
from offpolicy.conform import peers, runner
from offpolicy.harness import __main__ as harness_cli
from offpolicy.harness import grid as harness_grid
from offpolicy.report import cli as report_cli
from offpolicy.report import run as report_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXIT_CODES = {0, 1, 2, 130}


class WouldCompute(Exception):
    """The arguments passed every check and the computation would start here."""


def _stop(*args, **kwargs):
    raise WouldCompute


# values from the edges; no ":" in free text, so that no argument names a network address or a
# module to import other than these
VALUES = st.one_of(
    st.sampled_from(["0", "-1", "1", "2", "1e9", "99999999999999999999", "nan", "inf", "-inf",
                     "", " ", ",", ",,", "a,b", "none", "true", "0.5", "1.5", "-0", "0x10",
                     "8x4", "0x4", "64x64,0x0", "{file}", "{file}/below", "{dir}", "out",
                     "auto", "127.0.0.1:1", "math:pi", "estimators.numpy:gae",
                     "no_such_module:f", "gae", "vtrace,gae", "puff", "ppo", "dqn", "chain",
                     "garnet_small", "float32", "numpy", "torch", "x=1", "lam=2", "n=0",
                     "gamma=nan", "--", "-", "é", "\x00"]),
    st.integers(-10**12, 10**12).map(str),
    st.text(st.characters(blacklist_characters=":", blacklist_categories=("Cs",)),
            max_size=12),
)


def argument_lists(flags: list[str]):
    """Lists of up to six tokens: the command line's flags and edge values in any order."""
    return st.lists(st.one_of(st.sampled_from(flags), VALUES), max_size=6)


def _flags(parser) -> list[str]:
    return [o for a in parser._actions for o in a.option_strings if o not in ("-h", "--help")]


def _fill(argv, where):
    f = os.path.join(where, "a_file")
    if not os.path.exists(f):
        with open(f, "w") as fh:
            fh.write("not a directory")
    return [a.replace("{file}", f).replace("{dir}", where) for a in argv]


def _status() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def checkout_untouched():
    """The checkout's ``git status`` is the same after the fuzzing as before."""
    try:
        before = _status()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    yield
    assert _status() == before


@pytest.fixture
def nothing_computes(monkeypatch):
    monkeypatch.setattr(report_run, "run_cells", _stop)
    monkeypatch.setattr(harness_grid, "run_grid", _stop)
    monkeypatch.setattr(bench, "run", _stop)
    monkeypatch.setattr(mutation, "_check", _stop)
    monkeypatch.setattr(runner, "check", _stop)
    monkeypatch.setattr(peers, "run_peers", _stop)


def run_fuzzed(main, argv, capsys):
    """Run ``main(argv)`` in a fresh directory; check the exit code, the one-line usage error,
    and that every file it wrote is inside that directory."""
    with tempfile.TemporaryDirectory(prefix="offpolicy-fuzz-") as where:
        argv = _fill(argv, where)
        cwd = os.getcwd()
        os.chdir(where)
        try:
            try:
                rc = main(argv)
            except SystemExit as e:
                rc = e.code
            except WouldCompute:
                rc = 0
        finally:
            os.chdir(cwd)
        out, err = capsys.readouterr()
    if rc is None or isinstance(rc, list):  # bench's main returns its rows
        rc = 0
    assert rc in EXIT_CODES, (argv, rc, err)
    if rc == 2 and not any(a in ("-h", "--help") for a in argv):
        lines = [x for x in err.splitlines() if x.strip()]
        assert len(lines) == 1, (argv, err)


FUZZ = settings(max_examples=max(10, settings.default.max_examples * 2 // 5), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

pytestmark = pytest.mark.usefixtures("checkout_untouched", "nothing_computes")


REPORT_FLAGS = ["--profile", "quick", "full", "--estimators", "--mdps", "--seed", "--jobs",
                "--executor", "serial", "process", "--out", "--check", "--update-baseline",
                "--fresh", "--limit", "--no-plots", "--no-progress", "--quiet"]
HARNESS_FLAGS = [*_flags(harness_cli.build_parser()), "--algo", "ppo", "--algo", "dqn"]
CONFORM_FLAGS = [*_flags(conform_cli._parser()), "estimators.numpy:gae", "--estimator"]
MUTATION_FLAGS = ["--list", "--only", "--tests", "--jobs", "dones_ignored", "tests"]
BENCH_FLAGS = ["--sizes", "--estimators", "--backends", "--repeats", "--out", "--quick"]


@FUZZ
@given(argv=argument_lists(REPORT_FLAGS))
@example(argv=["--jobs", "1\r2"])  # found here: a carriage return split the error line
def test_report_arguments(argv, capsys):
    run_fuzzed(report_cli.main, argv, capsys)


@FUZZ
@given(argv=argument_lists(HARNESS_FLAGS))
@example(argv=["--jobs", "1\r2"])  # found here: a carriage return split the error line
def test_harness_arguments(argv, capsys):
    run_fuzzed(harness_cli.main, argv, capsys)


@FUZZ
@given(argv=argument_lists(CONFORM_FLAGS))
@example(argv=["--examples", "1\r2"])  # a carriage return split the error line
def test_conform_arguments(argv, capsys):
    run_fuzzed(conform_cli.main, argv, capsys)


@FUZZ
@given(argv=argument_lists(MUTATION_FLAGS))
@example(argv=["--jobs", "1\r2"])  # found here: a carriage return split the error line
def test_mutation_arguments(argv, capsys):
    run_fuzzed(mutation.main, argv, capsys)


@FUZZ
@given(argv=argument_lists(BENCH_FLAGS))
@example(argv=["--jobs", "1\r2"])  # found here: a carriage return split the error line
def test_bench_arguments(argv, capsys):
    run_fuzzed(bench.main, argv, capsys)
